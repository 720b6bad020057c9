//! Self-healing of a running cluster, the decision half: the typed health of every component
//! (running, process gone, or apiserver not ready since T), which components to restart and why,
//! and the outcome the agent shows and counts. The I/O half (reading `/proc` and `/readyz`, killing
//! and restarting through kwokctl) is [`ClusterManager::check_health`] and [`ClusterManager::heal`].
//!
//! [`ClusterManager::check_health`]: super::ClusterManager::check_health
//! [`ClusterManager::heal`]: super::ClusterManager::heal

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use tokio::time::Instant;

use crate::store::ports::PortBlock;

/// The component whose `/readyz` is probed; the others are judged by their process only.
pub const APISERVER: &str = "kube-apiserver";
/// The store the apiserver needs: while it is gone the apiserver's unreadiness is its fault.
pub const ETCD: &str = "etcd";

/// One component as observed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ComponentState {
    /// Its process runs (and, for the apiserver, `/readyz` answers ready).
    Running { pid: u32 },
    /// No live process: pid file missing, process exited or killed, a zombie, or the pid now
    /// belongs to an unrelated process.
    ProcessGone,
    /// The apiserver's process runs but `/readyz` has failed on every check since `since`.
    NotReady {
        pid: u32,
        #[serde(serialize_with = "unix_secs")]
        since: SystemTime,
        #[serde(rename = "for_secs", serialize_with = "secs")]
        unready_for: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentHealth {
    pub name: String,
    #[serde(flatten)]
    pub state: ComponentState,
}

impl ComponentHealth {
    /// What is wrong, in words (`None` while running).
    pub fn problem(&self) -> Option<String> {
        match self.state {
            ComponentState::Running { .. } => None,
            ComponentState::ProcessGone => Some(format!("{} process gone", self.name)),
            ComponentState::NotReady { unready_for, .. } => Some(format!(
                "{} not ready for {}s",
                self.name,
                unready_for.as_secs()
            )),
        }
    }
}

/// Every component of one cluster, in start order (etcd first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterHealth {
    pub name: String,
    pub components: Vec<ComponentHealth>,
}

impl ClusterHealth {
    /// True when every component runs and the apiserver is ready.
    pub fn is_healthy(&self) -> bool {
        self.components
            .iter()
            .all(|c| matches!(c.state, ComponentState::Running { .. }))
    }

    /// What is wrong, one entry per unhealthy component.
    pub fn problems(&self) -> Vec<String> {
        self.components
            .iter()
            .filter_map(ComponentHealth::problem)
            .collect()
    }

    /// What [`ClusterManager::heal`](super::ClusterManager::heal) restarts: every component whose
    /// process is gone, and an apiserver that has not been ready for `unready_grace` or longer,
    /// unless etcd is gone too (the apiserver cannot be ready without it; restarting etcd is the
    /// cure, and a slow apiserver start is not a reason to kill it again).
    pub fn restarts_needed(&self, unready_grace: Duration) -> Vec<Restart> {
        let etcd_gone = self
            .components
            .iter()
            .any(|c| c.name == ETCD && c.state == ComponentState::ProcessGone);
        self.components
            .iter()
            .filter_map(|c| {
                let reason = match c.state {
                    ComponentState::Running { .. } => return None,
                    ComponentState::ProcessGone => RestartReason::ProcessGone,
                    ComponentState::NotReady { unready_for, .. }
                        if unready_for >= unready_grace && !etcd_gone =>
                    {
                        RestartReason::NotReady { unready_for }
                    }
                    ComponentState::NotReady { .. } => return None,
                };
                Some(Restart {
                    component: c.name.clone(),
                    reason,
                })
            })
            .collect()
    }
}

/// Why a component was restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RestartReason {
    ProcessGone,
    NotReady {
        #[serde(rename = "for_secs", serialize_with = "secs")]
        unready_for: Duration,
    },
}

/// One component restarted by a heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restart {
    pub component: String,
    #[serde(flatten)]
    pub reason: RestartReason,
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            RestartReason::ProcessGone => write!(f, "{} process gone", self.component),
            RestartReason::NotReady { unready_for } => write!(
                f,
                "{} not ready for {}s",
                self.component,
                unready_for.as_secs()
            ),
        }
    }
}

/// What a heal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealOutcome {
    /// Empty when the cluster was healthy (or only within its grace): nothing was touched.
    pub restarted: Vec<Restart>,
    /// From the start of the heal until the apiserver was ready again.
    #[serde(rename = "took_secs", serialize_with = "secs")]
    pub took: Duration,
}

impl HealOutcome {
    pub fn restarted_anything(&self) -> bool {
        !self.restarted.is_empty()
    }
}

/// For the API view: `kube-apiserver process gone; restarted`, several reasons joined by `; `.
impl fmt::Display for HealOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.restarted.is_empty() {
            return f.write_str("healthy; nothing restarted");
        }
        for restart in &self.restarted {
            write!(f, "{restart}; ")?;
        }
        f.write_str("restarted")
    }
}

/// The ports a component binds, which must be free before it can start again.
pub(super) fn component_ports(ports: &PortBlock, component: &str) -> Vec<u16> {
    match component {
        ETCD => vec![ports.etcd_client, ports.etcd_peer],
        APISERVER => vec![ports.kube_apiserver],
        "kube-controller-manager" => vec![ports.kube_controller_manager],
        "kube-scheduler" => vec![ports.kube_scheduler],
        "kwok-controller" => vec![ports.kwok_controller],
        _ => Vec::new(),
    }
}

/// What the manager remembers between health checks, shared by its clones.
#[derive(Default)]
pub(super) struct HealthMemory {
    /// Since when each cluster's apiserver has failed `/readyz`, for the process that failed it
    /// (a new apiserver process gets a fresh grace).
    unready: Mutex<HashMap<String, Unready>>,
    /// One `/readyz` client per cluster: building one parses the CA and sets up TLS, and a kept
    /// client reuses its connection, so a check every few seconds costs one small request.
    readyz: Mutex<HashMap<String, reqwest::Client>>,
}

#[derive(Debug, Clone, Copy)]
struct Unready {
    pid: u32,
    since: Instant,
    since_wall: SystemTime,
}

impl HealthMemory {
    /// Records one `/readyz` result for the apiserver process `pid` and returns its state.
    pub(super) fn observe_apiserver(&self, cluster: &str, pid: u32, ready: bool) -> ComponentState {
        let mut unready = self.unready.lock().unwrap_or_else(|p| p.into_inner());
        if ready {
            unready.remove(cluster);
            return ComponentState::Running { pid };
        }
        let entry = unready
            .entry(cluster.to_string())
            .and_modify(|u| {
                if u.pid != pid {
                    *u = Unready::now(pid);
                }
            })
            .or_insert_with(|| Unready::now(pid));
        ComponentState::NotReady {
            pid,
            since: entry.since_wall,
            unready_for: entry.since.elapsed(),
        }
    }

    /// How many apiservers have failed every `/readyz` check for `at_least` or longer.
    pub(super) fn unready_count(&self, at_least: Duration) -> usize {
        self.unready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|u| u.since.elapsed() >= at_least)
            .count()
    }

    /// Forgets a cluster's unreadiness (its apiserver is gone, restarted or the cluster deleted).
    pub(super) fn forget_unready(&self, cluster: &str) {
        self.unready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cluster);
    }

    pub(super) fn readyz_client(&self, cluster: &str) -> Option<reqwest::Client> {
        self.readyz
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
    }

    pub(super) fn keep_readyz_client(&self, cluster: &str, client: reqwest::Client) {
        self.readyz
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.to_string(), client);
    }

    /// Drops a cluster's `/readyz` client, so the next check builds one from the CA on disk: after
    /// a failed probe (the cluster may have been recreated with a new CA) and on delete.
    pub(super) fn forget_readyz_client(&self, cluster: &str) {
        self.readyz
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(cluster);
    }
}

impl Unready {
    fn now(pid: u32) -> Self {
        Unready {
            pid,
            since: Instant::now(),
            since_wall: SystemTime::now(),
        }
    }
}

fn unix_secs<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(
        time.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    )
}

fn secs<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(states: &[(&str, ComponentState)]) -> ClusterHealth {
        ClusterHealth {
            name: "c".into(),
            components: states
                .iter()
                .map(|(name, state)| ComponentHealth {
                    name: (*name).into(),
                    state: *state,
                })
                .collect(),
        }
    }

    fn not_ready(secs: u64) -> ComponentState {
        ComponentState::NotReady {
            pid: 7,
            since: SystemTime::now(),
            unready_for: Duration::from_secs(secs),
        }
    }

    const RUNNING: ComponentState = ComponentState::Running { pid: 1 };

    #[test]
    fn restarts_what_is_gone_and_an_apiserver_unready_past_its_grace() {
        let grace = Duration::from_secs(30);
        let h = health(&[("etcd", RUNNING), (APISERVER, RUNNING)]);
        assert!(h.is_healthy());
        assert!(h.restarts_needed(grace).is_empty());

        let h = health(&[("etcd", RUNNING), (APISERVER, not_ready(10))]);
        assert!(!h.is_healthy());
        assert!(h.restarts_needed(grace).is_empty(), "within the grace");
        assert_eq!(h.problems(), ["kube-apiserver not ready for 10s"]);

        let h = health(&[("etcd", RUNNING), (APISERVER, not_ready(31))]);
        let outcome = HealOutcome {
            restarted: h.restarts_needed(grace),
            took: Duration::ZERO,
        };
        assert_eq!(
            outcome.to_string(),
            "kube-apiserver not ready for 31s; restarted"
        );

        let h = health(&[
            ("etcd", ComponentState::ProcessGone),
            (APISERVER, not_ready(60)),
            ("kwok-controller", ComponentState::ProcessGone),
        ]);
        let outcome = HealOutcome {
            restarted: h.restarts_needed(grace),
            took: Duration::ZERO,
        };
        assert_eq!(
            outcome.to_string(),
            "etcd process gone; kwok-controller process gone; restarted",
            "an apiserver waiting for its etcd is left alone"
        );
    }

    #[test]
    fn unreadiness_is_timed_per_apiserver_process() {
        let memory = HealthMemory::default();
        let first = memory.observe_apiserver("c", 10, false);
        let ComponentState::NotReady { since, .. } = first else {
            panic!("{first:?}")
        };
        let again = memory.observe_apiserver("c", 10, false);
        assert!(matches!(again, ComponentState::NotReady { since: s, .. } if s == since));
        assert!(matches!(
            memory.observe_apiserver("other", 11, true),
            ComponentState::Running { pid: 11 }
        ));
        // A new process starts a new grace.
        let new = memory.observe_apiserver("c", 12, false);
        assert!(matches!(new, ComponentState::NotReady { pid: 12, since: s, .. } if s >= since));
        assert_eq!(
            memory.observe_apiserver("c", 12, true),
            ComponentState::Running { pid: 12 }
        );
    }

    #[test]
    fn serializes_for_the_api_view() {
        let h = health(&[("etcd", ComponentState::ProcessGone), (APISERVER, RUNNING)]);
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["components"][0]["state"], "process_gone");
        assert_eq!(json["components"][1]["pid"], 1);
        let outcome = HealOutcome {
            restarted: h.restarts_needed(Duration::ZERO),
            took: Duration::from_millis(1500),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["restarted"][0]["component"], "etcd");
        assert_eq!(json["restarted"][0]["reason"], "process_gone");
        assert_eq!(json["took_secs"], 1.5);
    }
}
