//! The cluster manager: one object that creates, starts, stops, scales and deletes simulated clusters,
//! keeping the state database, kwokctl's work dir and the running processes consistent. Every
//! operation either completes or is rolled back, so a failure leaves no processes, directories or
//! reserved ports behind; a crash mid-operation is finished or rolled back by [`ClusterManager::recover`].
//! A running cluster whose components die or hang is repaired by [`ClusterManager::heal`].
//!
//! Like kwok's own `pkg/kwokctl/runtime`, each lifecycle verb lives in its own file (`create.rs`,
//! `start.rs`, `stop.rs`, `scale.rs`, `delete.rs`, `heal.rs`, `recover.rs`, `ensure_running.rs`,
//! `schedule.rs`);
//! this file holds the manager, its types and where a cluster's files are. What a cluster runs is
//! data ([`ComponentProfile`]); how kwokctl is invoked is `kwokctl.rs`.

mod controllers;
mod create;
mod delete;
mod ensure_running;
mod files;
mod heal;
mod kill;
mod observe;
mod processes;
mod recover;
mod scale;
mod schedule;
mod start;
mod stop;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::heal::HealthMemory;
use super::kwokctl::{Kwokctl, KwokctlError};
use super::names::InvalidName;
use super::population::{PopulationError, PopulationProfile};
use super::profile::ComponentProfile;
use super::shared_etcd::{SharedEtcd, SharedEtcdError};
use super::status::{self, ComponentProcess};
use crate::store::ports::PortBlock;
use crate::store::ports::PortRange;
use crate::store::{ClusterRecord, EtcdKind, Phase, Store, StoreError};
use crate::toolchain::Toolchain;

pub use processes::port_is_free;

#[derive(Debug, thiserror::Error)]
pub enum KwokError {
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kwokctl(#[from] KwokctlError),
    #[error(transparent)]
    Population(#[from] PopulationError),
    #[error("invalid population profile: {0}")]
    InvalidPopulation(String),
    #[error(
        "{dir} already exists but the agent has no record of cluster {name:?}; \
         remove it (e.g. `kwokctl delete cluster --name {name}` with KWOK_WORKDIR set) or pick another name"
    )]
    ForeignClusterDir { name: String, dir: PathBuf },
    #[error("kube-apiserver of cluster {name:?} was not ready on port {port} within {timeout:?}; see {log}")]
    NotReady {
        name: String,
        port: u16,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("cluster {name:?} is {phase}; {action} needs it {needed}")]
    WrongPhase {
        name: String,
        phase: Phase,
        action: &'static str,
        needed: &'static str,
    },
    #[error("port {port} of cluster {name:?} is now in use ({holder}); stop that process first")]
    PortTaken {
        name: String,
        port: u16,
        holder: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{component} of cluster {name:?} did not come back after a restart; see {log}")]
    NotRestarted {
        name: String,
        component: String,
        log: PathBuf,
    },
    #[error("cluster {name:?} is {phase}; another operation owns it, so it cannot be adopted")]
    Busy { name: String, phase: Phase },
    #[error("cluster {name:?} has no running {component} process of its own")]
    NoSuchProcess { name: String, component: String },
    #[error(transparent)]
    SharedEtcd(#[from] SharedEtcdError),
    #[error("cannot detach cluster {name:?} from its kwokctl etcd in {path}: {reason}")]
    DetachEtcd {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot write the kubernetes Service's endpoints of cluster {name:?}: {source}")]
    Endpoints {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    ControllerHost(#[from] crate::controllers::ControllerHostError),
    #[error("{0}; rolling back also failed: {1}")]
    RollbackFailed(Box<KwokError>, Box<KwokError>),
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub profile: ComponentProfile,
    pub population: PopulationProfile,
}

/// Durations since a create started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateTimings {
    /// Until kube-apiserver answered `/readyz`.
    pub ready: Duration,
    /// Until the population was applied (the create returned).
    pub populated: Duration,
}

/// A cluster's health as observed from its stored phase, its processes and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Running, every component alive and the apiserver ready.
    Ready,
    /// Running, but a component is gone or the apiserver is not ready.
    Degraded,
    Stopped,
    Creating,
    Deleting,
    Failed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ready => "ready",
            Health::Degraded => "degraded",
            Health::Stopped => "stopped",
            Health::Creating => "creating",
            Health::Deleting => "deleting",
            Health::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`: tables align this with `{:<9}`.
        f.pad(self.as_str())
    }
}

/// Where a cluster's kube-apiserver serves: loopback, on its port block's apiserver port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub port: u16,
}

impl Endpoint {
    /// `127.0.0.1:<port>`, what a tunnel dials.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:<port>`, what a kubeconfig names.
    pub fn url(&self) -> String {
        format!("https://{}", self.address())
    }
}

/// A cluster as stored plus what is observed right now.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    pub name: String,
    pub phase: Phase,
    pub health: Health,
    pub profile: String,
    pub ports: PortBlock,
    pub server: String,
    pub kubeconfig: PathBuf,
    pub apiserver_ready: bool,
    pub components: Vec<ComponentProcess>,
    pub nodes: u32,
    pub pods_per_node: u32,
    pub last_error: Option<String>,
}

impl ClusterInfo {
    /// Where its apiserver serves.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            port: self.ports.kube_apiserver,
        }
    }
}

/// What the manager needs from the configuration.
#[derive(Debug, Clone)]
pub struct KwokSettings {
    /// kwokctl's work directory (`KWOK_WORKDIR`): clusters live in `<workdir>/clusters/<name>`.
    pub workdir: PathBuf,
    /// Where the kwokctl configuration of each cluster is written.
    pub config_dir: PathBuf,
    /// The port blocks clusters are given.
    pub ports: PortRange,
    /// The shared etcd's directory (pid file, data, log).
    pub shared_etcd_dir: PathBuf,
    /// The shared etcd's client port (the next one is its peer port), outside the port blocks.
    pub shared_etcd_port: u16,
    /// `--request-audit`: clusters created from now on write an audit log of Rancher's requests
    /// ([`crate::kwok::profile::REQUEST_AUDIT_POLICY`]).
    pub request_audit: bool,
}

#[derive(Clone)]
pub struct ClusterManager {
    store: Store,
    kwokctl: Kwokctl,
    toolchain: Toolchain,
    config_dir: PathBuf,
    ports: PortRange,
    health: Arc<HealthMemory>,
    shared_etcd: SharedEtcd,
    /// The agent's controller host, if it has one ([`ClusterManager::with_controller_host`]).
    controller_host: Option<Arc<crate::controllers::ControllerHost>>,
    request_audit: bool,
}

impl ClusterManager {
    pub fn new(settings: &KwokSettings, toolchain: Toolchain, store: Store) -> Self {
        Self {
            kwokctl: Kwokctl::new(&toolchain, &settings.workdir),
            config_dir: settings.config_dir.clone(),
            ports: settings.ports,
            shared_etcd: SharedEtcd::new(
                &toolchain.etcd,
                &settings.shared_etcd_dir,
                settings.shared_etcd_port,
            ),
            toolchain,
            store,
            health: Arc::default(),
            controller_host: None,
            request_audit: settings.request_audit,
        }
    }

    /// Whether clusters are created with the audit log of Rancher's requests.
    pub fn request_audit(&self) -> bool {
        self.request_audit
    }

    /// The directory holding every cluster's directory (`<kwok workdir>/clusters`).
    pub fn clusters_dir(&self) -> PathBuf {
        self.kwokctl.clusters_dir()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The shared etcd of the `lean` clusters (started on first use, adopted if it runs).
    pub fn shared_etcd(&self) -> &SharedEtcd {
        &self.shared_etcd
    }

    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.kwokctl.cluster_dir(name)
    }

    pub fn kubeconfig_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join("kubeconfig.yaml")
    }

    pub fn log_path(&self, name: &str, component: &str) -> PathBuf {
        self.cluster_dir(name)
            .join("logs")
            .join(format!("{component}.log"))
    }

    /// The cluster's CA certificate (kwokctl's `pki/ca.crt`), which signs its apiserver's.
    pub fn ca_path(&self, name: &str) -> PathBuf {
        self.cluster_dir(name).join("pki").join("ca.crt")
    }

    /// Where the cluster's apiserver serves, from its stored port block (no probe); `None` for a
    /// cluster the manager does not know.
    pub async fn endpoint(&self, name: &str) -> Result<Option<Endpoint>, KwokError> {
        Ok(self.store.get(name).await?.as_ref().map(endpoint_of))
    }

    pub(super) fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.yaml"))
    }

    pub(super) async fn record(&self, name: &str) -> Result<ClusterRecord, KwokError> {
        self.store
            .get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_string()).into())
    }
}

/// The components kwokctl runs for a cluster: its profile's, without etcd if the cluster lives
/// in the shared etcd.
pub(super) fn kwokctl_components(record: &ClusterRecord) -> Vec<&'static str> {
    let profile: ComponentProfile = record.component_profile.parse().unwrap_or_default();
    profile
        .components()
        .iter()
        .copied()
        .filter(|c| record.etcd == EtcdKind::Own || *c != super::heal::ETCD)
        .collect()
}

impl ClusterManager {
    /// Every process a cluster needs, observed now: kwokctl's components (those its `kwok.yaml`
    /// lists: not kcm and kwok-controller when the controller host runs them) from their pid files,
    /// and (first, as it starts first) the shared etcd for a cluster that lives in it.
    pub(super) async fn component_processes(
        &self,
        record: &ClusterRecord,
    ) -> Vec<ComponentProcess> {
        let dir = self.cluster_dir(&record.name);
        let expected = self.expected_components(record).await;
        let mut processes = status::component_processes_async(&dir, &expected).await;
        if record.etcd == EtcdKind::Shared {
            let pid = self.shared_etcd.running_pid().await;
            processes.insert(
                0,
                ComponentProcess {
                    name: super::heal::ETCD.to_string(),
                    pid,
                    alive: pid.is_some(),
                },
            );
        }
        processes
    }
}

pub(super) fn stored_population(record: &ClusterRecord) -> Result<PopulationProfile, KwokError> {
    serde_json::from_str(&record.population).map_err(|e| {
        StoreError::Corrupt {
            name: record.name.clone(),
            reason: format!("population: {e}"),
        }
        .into()
    })
}

pub(super) fn require_phase(
    record: &ClusterRecord,
    action: &'static str,
    allowed: &[Phase],
    needed: &'static str,
) -> Result<(), KwokError> {
    if allowed.contains(&record.phase) {
        Ok(())
    } else {
        Err(KwokError::WrongPhase {
            name: record.name.clone(),
            phase: record.phase,
            action,
            needed,
        })
    }
}

pub(super) fn endpoint_of(record: &ClusterRecord) -> Endpoint {
    Endpoint {
        port: record.ports.kube_apiserver,
    }
}

#[cfg(test)]
pub(super) mod test_support {
    use std::path::Path;

    use super::*;
    use crate::store::{NewCluster, Owner};

    /// A manager on a temporary directory. Its toolchain does not exist: recovering rows that
    /// have no cluster directory never runs kwokctl.
    pub(crate) fn manager(dir: &Path) -> ClusterManager {
        let settings = KwokSettings {
            workdir: dir.join("kwok"),
            config_dir: dir.join("data/kwokctl"),
            ports: PortRange::new(24900, 10, 10).unwrap_or(PortRange::DEFAULT),
            shared_etcd_dir: dir.join("data/etcd"),
            shared_etcd_port: 24898,
            request_audit: false,
        };
        let missing = |n: &str| dir.join("missing").join(n);
        let toolchain = Toolchain {
            kwokctl: missing("kwokctl"),
            kwok: missing("kwok"),
            kube_apiserver: missing("kube-apiserver"),
            kube_controller_manager: missing("kube-controller-manager"),
            kube_scheduler: missing("kube-scheduler"),
            kubectl: missing("kubectl"),
            etcd: missing("etcd"),
        };
        let store = Store::open(&dir.join("data/state.db")).unwrap();
        ClusterManager::new(&settings, toolchain, store)
    }

    /// Stages a `creating` row owned by `owner`, as a crashed or concurrent process leaves it.
    pub(crate) async fn row_owned_by(manager: &ClusterManager, name: &str, owner: Option<Owner>) {
        let new = NewCluster {
            name,
            component_profile: "lean",
            population: "{}",
            etcd: crate::store::EtcdKind::Own,
        };
        manager
            .store()
            .reserve(new, manager.ports, |_| true)
            .await
            .unwrap();
        manager.store().set_owner(name, owner).await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_prints_and_serialises_as_before() {
        assert_eq!(format!("[{:<9}]", Health::Ready), "[ready    ]");
        assert_eq!(
            serde_json::to_string(&Health::Degraded).unwrap(),
            "\"degraded\""
        );
    }
}
