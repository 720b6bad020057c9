//! The cluster manager: one object that creates, starts, stops, scales and deletes simulated clusters,
//! keeping the state database, kwokctl's work dir and the running processes consistent. Every
//! operation either completes or is rolled back, so a failure leaves no processes, directories or
//! reserved ports behind; a crash mid-operation is finished or rolled back by [`ClusterManager::recover`].
//! A running cluster whose components die or hang is repaired by [`ClusterManager::heal`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::time::Instant;

use super::heal::{
    self, ClusterHealth, ComponentHealth, ComponentState, HealOutcome, HealthMemory,
};
use super::kwokctl::{CreateCluster, Kwokctl, KwokctlError};
use super::names::{self, InvalidName};
use super::population::{self, PopulationError, PopulationProfile};
use super::profile::ComponentProfile;
use super::status::{self, ComponentProcess};
use crate::store::ports::PortBlock;
use crate::store::ports::PortRange;
use crate::store::{ClusterRecord, NewCluster, Phase, Store, StoreError};
use crate::toolchain::Toolchain;

/// Grace period between SIGTERM and SIGKILL when stopping a cluster that keeps its data. kube-apiserver
/// drains watches for well over 10 s on SIGTERM; etcd, the one whose data matters, recovers from its
/// WAL after SIGKILL anyway (kwokctl itself only ever SIGKILLs), so the grace is kept short.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for SIGKILLed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// How long kube-apiserver may take to answer `/readyz` after kwokctl returned.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

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
    #[error(
        "port {port} of cluster {name:?} is now in use by another process; stop that process first"
    )]
    PortTaken { name: String, port: u16 },
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
}

#[derive(Clone)]
pub struct ClusterManager {
    store: Store,
    kwokctl: Kwokctl,
    toolchain: Toolchain,
    config_dir: PathBuf,
    ports: PortRange,
    health: Arc<HealthMemory>,
}

impl ClusterManager {
    pub fn new(settings: &KwokSettings, toolchain: Toolchain, store: Store) -> Self {
        Self {
            kwokctl: Kwokctl::new(&toolchain, &settings.workdir),
            config_dir: settings.config_dir.clone(),
            ports: settings.ports,
            toolchain,
            store,
            health: Arc::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
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

    /// Makes sure the cluster exists and is [`Health::Ready`]: creates it, starts it after a
    /// reboot or a stop, restarts it if its processes died, or recreates it if it failed. A
    /// cluster another operation is creating or deleting is [`KwokError::Busy`].
    pub async fn ensure_running(&self, req: CreateRequest) -> Result<ClusterInfo, KwokError> {
        let Some(existing) = self.store.get(&req.name).await? else {
            return self.create(req).await;
        };
        let name = req.name.as_str();
        match existing.phase {
            Phase::Running => {
                let info = self.get(name).await?;
                if info.health == Health::Ready {
                    return Ok(info);
                }
                // Processes died (host reboot, OOM kill): stop what is left, then start again.
                self.stop(name).await?;
                self.start(name).await
            }
            Phase::Stopped => self.start(name).await,
            Phase::Failed => {
                self.delete(name).await?;
                self.create(req).await
            }
            phase @ (Phase::Creating | Phase::Deleting) => Err(KwokError::Busy {
                name: name.to_string(),
                phase,
            }),
        }
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.yaml"))
    }

    /// Creates, starts, waits for `/readyz` and populates a cluster; on any failure removes every
    /// trace of it (processes, directories, port reservation) and returns the first error.
    pub async fn create(&self, req: CreateRequest) -> Result<ClusterInfo, KwokError> {
        self.create_timed(req).await.map(|(info, _)| info)
    }

    /// [`Self::create`], also reporting how long each step took (for benchmarks and progress).
    pub async fn create_timed(
        &self,
        req: CreateRequest,
    ) -> Result<(ClusterInfo, CreateTimings), KwokError> {
        let started = Instant::now();
        names::validate(&req.name)?;
        req.population
            .validate()
            .map_err(KwokError::InvalidPopulation)?;
        let population_json = serde_json::to_string(&req.population)
            .map_err(|e| KwokError::InvalidPopulation(e.to_string()))?;
        let record = self
            .store
            .reserve(
                NewCluster {
                    name: &req.name,
                    component_profile: req.profile.as_str(),
                    population: &population_json,
                },
                self.ports,
                port_is_free,
            )
            .await?;
        let dir = self.cluster_dir(&req.name);
        if dir.exists() {
            self.store.remove(&req.name).await?;
            return Err(KwokError::ForeignClusterDir {
                name: req.name,
                dir,
            });
        }
        match self.bring_up(&req, &record.ports, started).await {
            Ok(timings) => {
                self.store
                    .set_phase(&req.name, Phase::Running, None)
                    .await?;
                Ok((self.get(&req.name).await?, timings))
            }
            Err(err) => match self.tear_down(&req.name, &record.ports).await {
                Ok(()) => {
                    self.store.remove(&req.name).await?;
                    Err(err)
                }
                Err(rollback) => {
                    let _ = self
                        .store
                        .set_phase(&req.name, Phase::Failed, Some(err.to_string()))
                        .await;
                    Err(KwokError::RollbackFailed(Box::new(err), Box::new(rollback)))
                }
            },
        }
    }

    async fn bring_up(
        &self,
        req: &CreateRequest,
        ports: &PortBlock,
        started: Instant,
    ) -> Result<CreateTimings, KwokError> {
        let config = self.config_path(&req.name);
        write_file(&config, &req.profile.kwokctl_config(&self.toolchain, ports)).await?;
        self.kwokctl
            .create_cluster(&CreateCluster {
                name: &req.name,
                config: &config,
                ports,
                profile_flags: req.profile.create_flags(),
            })
            .await?;
        self.wait_ready(&req.name, ports.kube_apiserver).await?;
        let ready = started.elapsed();
        let client = population::client(&self.kubeconfig_path(&req.name)).await?;
        population::apply(&client, &req.name, &req.population).await?;
        Ok(CreateTimings {
            ready,
            populated: started.elapsed(),
        })
    }

    async fn wait_ready(&self, name: &str, port: u16) -> Result<(), KwokError> {
        let ca = self.cluster_dir(name).join("pki").join("ca.crt");
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = None;
        loop {
            if client.is_none() {
                client = status::readyz_client(&ca).await;
            }
            if let Some(client) = &client {
                if status::apiserver_ready(client, port).await {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(KwokError::NotReady {
                    name: name.to_string(),
                    port,
                    timeout: READY_TIMEOUT,
                    log: self.log_path(name, "kube-apiserver"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills every process of the cluster and removes its directory and config; does not touch the row.
    async fn tear_down(&self, name: &str, ports: &PortBlock) -> Result<(), KwokError> {
        let dir = self.cluster_dir(name);
        self.health.forget_readyz_client(name);
        self.health.forget_unready(name);
        // The data is about to be removed: no need for a graceful shutdown.
        self.kill_remaining(&dir).await;
        if dir.exists() {
            // kwokctl's own delete also cleans what it knows; its failure is not fatal as long as the
            // processes are gone and the directory is removed below.
            let unused = self.config_dir.join("never-written.kubeconfig");
            if let Err(err) = self.kwokctl.delete_cluster(name, &unused).await {
                tracing::warn!(cluster = name, error = %err, "kwokctl delete failed; cleaning up directly");
            }
        }
        self.kill_remaining(&dir).await;
        wait_ports_free(ports).await;
        remove_dir(&dir).await?;
        remove_file(&self.config_path(name)).await?;
        Ok(())
    }

    /// SIGTERM every live component, then wait up to [`TERM_GRACE`] for them to exit.
    async fn terminate_processes(&self, dir: &Path) {
        for pid in status::processes_in_async(dir).await {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        wait_gone(dir, TERM_GRACE).await;
    }

    async fn kill_remaining(&self, dir: &Path) {
        for pid in status::processes_in_async(dir).await {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        wait_gone(dir, KILL_WAIT).await;
    }

    async fn record(&self, name: &str) -> Result<ClusterRecord, KwokError> {
        self.store
            .get(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(name.to_string()).into())
    }

    /// Stops a running cluster's processes (SIGTERM, then kwokctl's SIGKILL for stragglers).
    pub async fn stop(&self, name: &str) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        require_phase(
            &record,
            "stop",
            &[Phase::Running, Phase::Stopped],
            "running",
        )?;
        let dir = self.cluster_dir(name);
        self.terminate_processes(&dir).await;
        self.kwokctl.stop_cluster(name).await?;
        self.kill_remaining(&dir).await;
        wait_ports_free(&record.ports).await;
        self.store.set_phase(name, Phase::Stopped, None).await?;
        self.get(name).await
    }

    /// Starts a stopped cluster on its own ports and waits for `/readyz`; objects are kept in etcd.
    pub async fn start(&self, name: &str) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        require_phase(
            &record,
            "start",
            &[Phase::Stopped, Phase::Running],
            "stopped",
        )?;
        let dir = self.cluster_dir(name);
        if status::processes_in_async(&dir).await.is_empty() {
            if let Some(port) = record.ports.all().into_iter().find(|p| !port_is_free(*p)) {
                return Err(KwokError::PortTaken {
                    name: name.to_string(),
                    port,
                });
            }
        }
        self.kwokctl.start_cluster(name).await?;
        self.wait_ready(name, record.ports.kube_apiserver).await?;
        self.store.set_phase(name, Phase::Running, None).await?;
        self.get(name).await
    }

    /// Deletes a cluster everywhere; the row goes last, so its ports stay reserved until the
    /// processes that held them are gone.
    pub async fn delete(&self, name: &str) -> Result<(), KwokError> {
        let record = self.record(name).await?;
        self.store.set_phase(name, Phase::Deleting, None).await?;
        self.tear_down(name, &record.ports).await?;
        self.store.remove(name).await?;
        Ok(())
    }

    /// Sets the node count (pods follow, per the stored profile) and records it.
    pub async fn scale(&self, name: &str, nodes: u32) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        require_phase(&record, "scale", &[Phase::Running], "running")?;
        let mut profile = stored_population(&record)?;
        profile.nodes = nodes;
        let client = population::client(&self.kubeconfig_path(name)).await?;
        population::scale_nodes(&client, name, &profile).await?;
        let json = serde_json::to_string(&profile)
            .map_err(|e| KwokError::InvalidPopulation(e.to_string()))?;
        self.store.set_population(name, json).await?;
        self.get(name).await
    }

    pub async fn get(&self, name: &str) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        Ok(self.observe(record).await)
    }

    pub async fn list(&self) -> Result<Vec<ClusterInfo>, KwokError> {
        let records = self.store.list().await?;
        let observed = records.into_iter().map(|r| self.observe(r));
        Ok(futures::future::join_all(observed).await)
    }

    async fn observe(&self, record: ClusterRecord) -> ClusterInfo {
        let dir = self.cluster_dir(&record.name);
        let profile: ComponentProfile = record.component_profile.parse().unwrap_or_default();
        let components = status::component_processes_async(&dir, profile.components()).await;
        let apiserver_ready = components
            .iter()
            .any(|c| c.name == heal::APISERVER && c.alive)
            && self
                .apiserver_ready(&record.name, record.ports.kube_apiserver)
                .await;
        let all_alive = components.iter().all(|c| c.alive);
        let health = match record.phase {
            Phase::Running if apiserver_ready && all_alive => Health::Ready,
            Phase::Running => Health::Degraded,
            Phase::Stopped => Health::Stopped,
            Phase::Creating => Health::Creating,
            Phase::Deleting => Health::Deleting,
            Phase::Failed => Health::Failed,
        };
        let population = stored_population(&record).unwrap_or_default();
        ClusterInfo {
            server: endpoint_of(&record).url(),
            kubeconfig: dir.join("kubeconfig.yaml"),
            name: record.name,
            phase: record.phase,
            health,
            profile: record.component_profile,
            ports: record.ports,
            apiserver_ready,
            components,
            nodes: population.nodes,
            pods_per_node: population.pods_per_node,
            last_error: record.last_error,
        }
    }

    /// `/readyz` of a cluster's apiserver with the cluster's kept client (see [`HealthMemory`]).
    async fn apiserver_ready(&self, name: &str, port: u16) -> bool {
        let client = match self.health.readyz_client(name) {
            Some(client) => client,
            None => {
                let ca = self.cluster_dir(name).join("pki").join("ca.crt");
                let Some(client) = status::readyz_client(&ca).await else {
                    return false;
                };
                self.health.keep_readyz_client(name, client.clone());
                client
            }
        };
        let ready = status::apiserver_ready(&client, port).await;
        if !ready {
            self.health.forget_readyz_client(name);
        }
        ready
    }

    /// Every component's state right now, from its pid file, `/proc` and (apiserver) `/readyz`.
    /// Cheap enough to run every few seconds per cluster: a few small file reads and, with a live
    /// apiserver, one `/readyz` request on a kept connection. An apiserver that fails `/readyz` is
    /// reported `NotReady` with the time of the first failed check of that process.
    pub async fn check_health(&self, name: &str) -> Result<ClusterHealth, KwokError> {
        let record = self.record(name).await?;
        let profile: ComponentProfile = record.component_profile.parse().unwrap_or_default();
        let dir = self.cluster_dir(name);
        let processes = status::component_processes_async(&dir, profile.components()).await;
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
                        .apiserver_ready(name, record.ports.kube_apiserver)
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
        for restart in &restarted {
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
                    return Err(KwokError::PortTaken {
                        name: name.to_string(),
                        port,
                    });
                }
            }
        }
        // kwokctl truncates a component's log when it starts it: keep the dead process's last
        // words (an OOM kill, a panic) as `<component>.previous.log`.
        for restart in &restarted {
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
        self.kwokctl.start_cluster(name).await?;
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
                    log: self.log_path(name, &restart.component),
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

    /// Finishes what a crashed process left half-done: a `creating` cluster whose creator is gone is
    /// rolled back, a `deleting` one is deleted. Returns the names it cleaned up.
    pub async fn recover(&self) -> Result<Vec<String>, KwokError> {
        let mut cleaned = Vec::new();
        let records = self.store.list().await?;
        // Owner liveness reads /proc. A recycled pid, even our own (a container's pid 1 after a
        // restart), does not keep a row: the owner's start time must match too.
        let orphaned: Vec<bool> = {
            let owners: Vec<_> = records
                .iter()
                .map(|r| matches!(r.phase, Phase::Creating | Phase::Deleting).then_some(r.owner))
                .collect();
            tokio::task::spawn_blocking(move || {
                owners
                    .into_iter()
                    .map(|transitional| {
                        transitional.is_some_and(|owner| !owner.is_some_and(|o| o.is_alive()))
                    })
                    .collect()
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        };
        for (record, orphaned) in records.into_iter().zip(orphaned) {
            if orphaned {
                tracing::warn!(cluster = %record.name, phase = %record.phase, "cleaning up after an interrupted operation");
                self.tear_down(&record.name, &record.ports).await?;
                self.store.remove(&record.name).await?;
                cleaned.push(record.name);
            }
        }
        Ok(cleaned)
    }
}

/// Polls until no process of the cluster in `dir` is left, or `timeout` passes.
async fn wait_gone(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !status::processes_in_async(dir).await.is_empty() {
        tokio::time::sleep(POLL).await;
    }
}

/// SIGKILLs one component if `pid` is still that component of the cluster in `dir` (not a recycled
/// pid), and waits (bounded) until it is gone.
async fn kill_component(dir: &Path, component: &str, pid: u32) {
    let (dir, component) = (dir.to_path_buf(), component.to_string());
    let is_it = move || status::is_cluster_process(pid, &component, &dir);
    let check = is_it.clone();
    if tokio::task::spawn_blocking(check).await.unwrap_or(false) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline
        && tokio::task::spawn_blocking(is_it.clone())
            .await
            .unwrap_or(false)
    {
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until `port` can be bound; false if it stays taken.
async fn wait_port_free(port: u16) -> bool {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        if port_is_free(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A multi-threaded process shows as a zombie before its last thread has closed its sockets: wait
/// (bounded) until the block's ports can really be bound again.
async fn wait_ports_free(ports: &PortBlock) {
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline && !ports.all().into_iter().all(port_is_free) {
        tokio::time::sleep(POLL).await;
    }
}

fn stored_population(record: &ClusterRecord) -> Result<PopulationProfile, KwokError> {
    serde_json::from_str(&record.population).map_err(|e| {
        StoreError::Corrupt {
            name: record.name.clone(),
            reason: format!("population: {e}"),
        }
        .into()
    })
}

fn require_phase(
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

fn endpoint_of(record: &ClusterRecord) -> Endpoint {
    Endpoint {
        port: record.ports.kube_apiserver,
    }
}

/// A port is free if nothing listens on it on loopback or on the wildcard address.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

async fn write_file(path: &Path, contents: &str) -> Result<(), KwokError> {
    let io = |source| KwokError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    tokio::fs::write(path, contents).await.map_err(io)
}

async fn remove_dir(path: &Path) -> Result<(), KwokError> {
    match tokio::fs::remove_dir_all(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KwokError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

async fn remove_file(path: &Path) -> Result<(), KwokError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KwokError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessId;
    use crate::store::{NewCluster, Owner};

    /// A manager on a temporary directory. Its toolchain does not exist: recovering rows that
    /// have no cluster directory never runs kwokctl.
    fn manager(dir: &Path) -> ClusterManager {
        let settings = KwokSettings {
            workdir: dir.join("kwok"),
            config_dir: dir.join("data/kwokctl"),
            ports: PortRange::new(24900, 10, 10).unwrap_or(PortRange::DEFAULT),
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
    async fn row_owned_by(manager: &ClusterManager, name: &str, owner: Option<Owner>) {
        let new = NewCluster {
            name,
            component_profile: "lean",
            population: "{}",
        };
        manager
            .store()
            .reserve(new, manager.ports, |_| true)
            .await
            .unwrap();
        manager.store().set_owner(name, owner).await.unwrap();
    }

    #[tokio::test]
    async fn recover_tells_a_live_owner_from_a_recycled_pid() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager(dir.path());
        let me = ProcessId::current().unwrap();
        // A real other process, alive throughout the test.
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let other_id = ProcessId::of(other.id()).unwrap();
        let owner = |id: ProcessId, start_time: Option<u64>| {
            Some(Owner {
                pid: id.pid,
                start_time,
            })
        };

        // The container case: the previous agent was pid 1 too, so its rows name our pid, but
        // with its own (earlier) start time.
        row_owned_by(
            &manager,
            "our-pid-earlier-run",
            owner(me, Some(me.start_time - 1)),
        )
        .await;
        // A row from before start times were recorded, naming our pid: an earlier run as well.
        row_owned_by(&manager, "our-pid-no-start-time", owner(me, None)).await;
        // The other process's pid, recycled: it started after the owner did.
        row_owned_by(
            &manager,
            "recycled-pid",
            owner(other_id, Some(other_id.start_time - 1)),
        )
        .await;
        row_owned_by(&manager, "no-owner", None).await;
        // Work in progress: must be left alone.
        row_owned_by(
            &manager,
            "live-other",
            owner(other_id, Some(other_id.start_time)),
        )
        .await;
        row_owned_by(&manager, "live-other-no-start-time", owner(other_id, None)).await;
        row_owned_by(&manager, "ours-now", owner(me, Some(me.start_time))).await;

        let mut cleaned = manager.recover().await.unwrap();
        cleaned.sort();
        assert_eq!(
            cleaned,
            [
                "no-owner",
                "our-pid-earlier-run",
                "our-pid-no-start-time",
                "recycled-pid"
            ]
        );
        let mut left: Vec<String> = manager
            .store()
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        left.sort();
        assert_eq!(left, ["live-other", "live-other-no-start-time", "ours-now"]);

        // Healing is for running clusters only: a row mid-create belongs to its creator.
        let err = manager.heal("ours-now", Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(
                err,
                KwokError::WrongPhase {
                    phase: Phase::Creating,
                    ..
                }
            ),
            "{err}"
        );

        // Once the other owner is gone, its rows are recovered too.
        other.kill().unwrap();
        other.wait().unwrap();
        let mut cleaned = manager.recover().await.unwrap();
        cleaned.sort();
        assert_eq!(cleaned, ["live-other", "live-other-no-start-time"]);
    }

    #[tokio::test]
    async fn ensure_running_leaves_a_busy_cluster_alone_and_endpoints_come_from_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager(dir.path());
        let me = ProcessId::current().unwrap();
        let owner = Some(Owner {
            pid: me.pid,
            start_time: Some(me.start_time),
        });
        row_owned_by(&manager, "mid-create", owner).await;

        // Another operation (here: this process) is creating it: no kwokctl run, no change.
        let req = CreateRequest {
            name: "mid-create".into(),
            profile: ComponentProfile::Lean,
            population: PopulationProfile::default(),
        };
        let err = manager.ensure_running(req).await.unwrap_err();
        assert!(
            matches!(
                &err,
                KwokError::Busy {
                    phase: Phase::Creating,
                    ..
                }
            ),
            "{err}"
        );
        let row = manager.store().get("mid-create").await.unwrap().unwrap();
        assert_eq!(row.phase, Phase::Creating);

        // The endpoint is the reserved block's apiserver port, read back from the database.
        let endpoint = manager.endpoint("mid-create").await.unwrap().unwrap();
        assert_eq!(endpoint.port, row.ports.kube_apiserver);
        assert_eq!(
            endpoint.url(),
            format!("https://127.0.0.1:{}", row.ports.kube_apiserver)
        );
        assert!(manager.endpoint("unknown").await.unwrap().is_none());
        assert_eq!(
            manager.ca_path("mid-create"),
            dir.path().join("kwok/clusters/mid-create/pki/ca.crt")
        );
    }

    #[test]
    fn health_prints_and_serialises_as_before() {
        assert_eq!(format!("[{:<9}]", Health::Ready), "[ready    ]");
        assert_eq!(
            serde_json::to_string(&Health::Degraded).unwrap(),
            "\"degraded\""
        );
    }
}
