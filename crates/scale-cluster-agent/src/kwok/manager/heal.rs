//! `check_health` and `heal`: observe each component of a running cluster and restart the ones that
//! died or hang, leaving healthy ones alone. The health model itself is `kwok/heal.rs`.

use std::time::Duration;

use tokio::time::Instant;

use super::files::remove_file;
use super::processes::{kill_component, port_taken, wait_port_free};
use super::{require_phase, ClusterManager, KwokError};
use crate::kwok::heal::{self, ClusterHealth, ComponentHealth, ComponentState, HealOutcome};
use crate::kwok::status::{self, ReadyzChecks};
use crate::store::{EtcdKind, Phase};

impl ClusterManager {
    /// Every component's state right now, from its pid file, `/proc` and (apiserver) `/readyz`
    /// without its etcd checks ([`ReadyzChecks::ExceptEtcd`]: an etcd that is alive but slow is
    /// not the apiserver's fault). Cheap enough to run every few seconds per cluster: a few small
    /// file reads and, with a live apiserver, one request on a kept connection. An apiserver that
    /// fails it is reported `NotReady` with the time of the first failed check of that process. A cluster in
    /// the shared etcd lists that etcd as its `etcd` component.
    pub async fn check_health(&self, name: &str) -> Result<ClusterHealth, KwokError> {
        let record = self.record(name).await?;
        let processes = self.component_processes(&record).await;
        let mut components = Vec::with_capacity(processes.len());
        for process in processes {
            let state = match process.pid.filter(|_| process.alive) {
                None => {
                    if process.name == heal::APISERVER {
                        self.health.forget_unready(name);
                    }
                    ComponentState::ProcessGone
                }
                Some(pid) if process.name == heal::APISERVER => {
                    let ready = self
                        .apiserver_ready(
                            name,
                            record.ports.kube_apiserver,
                            ReadyzChecks::ExceptEtcd,
                        )
                        .await;
                    self.health.observe_apiserver(name, pid, ready)
                }
                Some(pid) => ComponentState::Running { pid },
            };
            components.push(ComponentHealth {
                name: process.name,
                state,
            });
        }
        Ok(ClusterHealth {
            name: name.to_string(),
            components,
        })
    }

    /// How many running apiservers (of clusters whose health is checked) have failed `/readyz`
    /// on every check for `at_least` or longer.
    pub fn unready_apiservers(&self, at_least: Duration) -> usize {
        self.health.unready_count(at_least)
    }

    /// Repairs a running cluster: restarts every component whose process is gone and an apiserver
    /// that has failed `/readyz` for `unready_grace` or longer, then waits until `/readyz` is ready
    /// again. Healthy components are not touched, and the data survives (it is in etcd, whose data
    /// directory a restart keeps). Returns what was restarted and why (nothing if healthy), so it
    /// can be called on every watch tick. Calls for one cluster must not overlap.
    ///
    /// Restarts go through `kwokctl start cluster`, which starts exactly the components whose pid
    /// file names no live process, with the arguments and environment it recorded at create. It
    /// costs ~0.15 s CPU and ~0.15 s wall over spawning the component directly (measured: apiserver
    /// ready 2.8-3.6 s after a restart either way), and keeps one way of starting components.
    /// The previous log of a restarted component is kept as `<component>.previous.log`.
    ///
    /// A dead shared etcd is restarted by [`SharedEtcd::ensure_running`] instead (once, however
    /// many clusters heal at the same time); the apiservers reconnect to it by themselves.
    ///
    /// [`SharedEtcd::ensure_running`]: crate::kwok::shared_etcd::SharedEtcd::ensure_running
    pub async fn heal(
        &self,
        name: &str,
        unready_grace: Duration,
    ) -> Result<HealOutcome, KwokError> {
        let started = Instant::now();
        let record = self.record(name).await?;
        require_phase(&record, "heal", &[Phase::Running], "running")?;
        let health = self.check_health(name).await?;
        let restarted = health.restarts_needed(unready_grace);
        if restarted.is_empty() {
            return Ok(HealOutcome {
                restarted,
                took: started.elapsed(),
            });
        }
        tracing::warn!(cluster = name, problems = ?health.problems(), "restarting failed components");
        let dir = self.cluster_dir(name);
        let is_shared_etcd =
            |component: &str| record.etcd == EtcdKind::Shared && component == heal::ETCD;
        let mut restarted = restarted;
        if restarted.iter().any(|r| is_shared_etcd(&r.component)) {
            let (_, started) = self.shared_etcd.ensure_running_and_tell().await?;
            if !started {
                // Another cluster's heal restarted it meanwhile: not this heal's restart.
                restarted.retain(|r| !is_shared_etcd(&r.component));
            }
        }
        let own: Vec<_> = restarted
            .iter()
            .filter(|r| !is_shared_etcd(&r.component))
            .cloned()
            .collect();
        for restart in &own {
            // An apiserver that runs but does not serve must go before it can be started afresh.
            if let Some(ComponentState::NotReady { pid, .. }) = health
                .components
                .iter()
                .find(|c| c.name == restart.component)
                .map(|c| c.state)
            {
                kill_component(&dir, &restart.component, pid).await;
            }
            // The pid file names a dead, zombie or recycled pid; kwokctl takes any pid that answers
            // kill(pid, 0) for a running component and would skip it.
            remove_file(&status::pid_file(&dir, &restart.component)).await?;
            // A SIGKILLed process's sockets close with its last thread; another process may also
            // have taken the port meanwhile, which kwokctl would not notice.
            for port in heal::component_ports(&record.ports, &restart.component) {
                if !wait_port_free(port).await {
                    return Err(port_taken(name, port).await);
                }
            }
        }
        // kwokctl truncates a component's log when it starts it: keep the dead process's last
        // words (an OOM kill, a panic) as `<component>.previous.log`.
        for restart in &own {
            let log = self.log_path(name, &restart.component);
            let previous = self.log_path(name, &format!("{}.previous", restart.component));
            match tokio::fs::rename(&log, &previous).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(KwokError::Io {
                        path: log,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        self.health.forget_unready(name);
        if !own.is_empty() {
            self.kwokctl.start_cluster(name).await?;
        }
        self.wait_ready(name, record.ports.kube_apiserver).await?;
        let after = self.check_health(name).await?;
        for restart in &restarted {
            let running = after.components.iter().any(|c| {
                c.name == restart.component && matches!(c.state, ComponentState::Running { .. })
            });
            if !running {
                return Err(KwokError::NotRestarted {
                    name: name.to_string(),
                    component: restart.component.clone(),
                    log: if is_shared_etcd(&restart.component) {
                        self.shared_etcd.log_path()
                    } else {
                        self.log_path(name, &restart.component)
                    },
                });
            }
        }
        let outcome = HealOutcome {
            restarted,
            took: started.elapsed(),
        };
        tracing::info!(cluster = name, outcome = %outcome, took = ?outcome.took, "cluster healed");
        Ok(outcome)
    }
}
