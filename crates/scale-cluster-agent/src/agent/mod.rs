//! The agent: registers simulated clusters with Rancher and plays the cattle-cluster-agent of each.
//!
//! Desired state lives in the store (`agent_clusters`): a cluster is wanted until its deletion is
//! requested, running unless a stop is requested, with the node count asked for; the observed
//! phase and node count are kept apart from that. [`Agent`] is the handle the HTTP API and the CLI
//! use to change it, and a reconcile loop ([`reconcile`]) drives every cluster through
//! `pending → provisioning → registering → connecting → active` (or `stopping → stopped`),
//! retrying failures with backoff.
//! Every step is idempotent, so a restart (or `kill -9`) simply resumes from the stored phase.
//! Shutdown waits for every task the agent spawned.
//!
//! The agent has an instance id (created once, kept in the store, or set on purpose with
//! `--instance-id`); every Rancher cluster it creates carries it, and it adopts, reconnects to or
//! deletes only clusters that do.
//!
//! - [`prepare`]: what the real agent finds inside its cluster (namespace, service account, token
//!   Secret, CA) and the tunnel params built from it.
//! - [`tunnels`]: the two remotedialer sessions per cluster (main: spliced to that cluster's own
//!   apiserver only; steve: answers Rancher's `/ping`).
//! - `rancher_watch`: one cluster list per poll: Rancher states, and deletions made in Rancher
//!   (believed only once confirmed).
//! - [`desired`]: shard mode, converging to a count of clusters named `<prefix>-<shard>-NNNNN`.
//! - [`view`]: what the API shows ([`ClusterView`], [`Health`]).
//! - `faults`: tunnel drops, process kills and cluster clients for scenarios.
//! - [`pressure`]: whether the machine can take more (CPU pressure, memory): the heal's grace and
//!   the hold on new bring-ups.

pub mod desired;
mod faults;
pub mod prepare;
pub mod pressure;
mod rancher_watch;
mod reconcile;
pub mod tunnels;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kwok::{names, ClusterManager, ComponentProfile, PopulationProfile};
use crate::rancher::{Backoff, RancherClient};
use crate::store::{AgentPhase, AgentRecord, PhaseWrite, Store, StoreError};
pub use view::{ClusterView, Health};

/// Most clusters one bulk request may add.
pub const MAX_BULK: usize = 1000;

/// Most fake nodes one cluster may be scaled to: each is a Node object the apiserver keeps and
/// kwok-controller heartbeats.
pub const MAX_NODES: u32 = 10_000;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Clusters brought up at once (KWOK creation and Rancher registration).
    pub concurrency: usize,
    /// What each new cluster contains.
    pub population: PopulationProfile,
    /// The instance id to use (`--instance-id`); `None` keeps the stored one or creates one.
    pub instance_id: Option<String>,
    /// How often the agent lists its clusters in Rancher (one request for all of them).
    pub rancher_poll: Duration,
    /// How long a cluster must be missing from Rancher's list (and then 404 by id) before the
    /// agent believes it was deleted there and removes it locally.
    pub rancher_gone_after: Duration,
    /// How long to wait for Rancher to report a connected cluster `active`.
    pub active_timeout: Duration,
    /// Backoff before a failed cluster is retried: up to `base * 2^attempts`, capped, full jitter.
    pub retry: Backoff,
    /// Tunnel options shared by every cluster (keepalive, reconnect backoff). What the tunnels
    /// trust comes from the Rancher client ([`RancherClient::tunnel_tls`]).
    pub tunnel: tunnels::TunnelOptions,
    /// Shard mode: the series of clusters to converge to ([`desired`]); `None` leaves the
    /// clusters to the API.
    pub shard: Option<desired::ShardSpec>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            concurrency: 3,
            population: PopulationProfile::default(),
            instance_id: None,
            rancher_poll: Duration::from_secs(30),
            rancher_gone_after: Duration::from_secs(60),
            active_timeout: Duration::from_secs(300),
            retry: Backoff {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(120),
            },
            tunnel: tunnels::TunnelOptions::default(),
            shard: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    InvalidName(#[from] names::InvalidName),
    #[error("invalid bulk request: {0}")]
    InvalidBulk(String),
    #[error("a cluster named {0:?} already exists")]
    Duplicate(String),
    #[error("no cluster named {0:?}")]
    NotFound(String),
    #[error("cluster {0:?} is being deleted; it can no longer be started, stopped or scaled")]
    Deleting(String),
    #[error("invalid node count {0}: it must be between 0 and {MAX_NODES}")]
    InvalidNodes(i64),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("cluster {0:?} has no open tunnels")]
    NoTunnels(String),
    #[error("{0}")]
    Fault(String),
    #[error(
        "invalid instance id {0:?}: 1 to 63 letters, digits, '-', '_' or '.', starting and ending \
         with a letter or digit (it becomes a Kubernetes label value in Rancher)"
    )]
    InvalidInstanceId(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AgentError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Duplicate(name) => AgentError::Duplicate(name),
            StoreError::NotFound(name) => AgentError::NotFound(name),
            other => AgentError::Store(other),
        }
    }
}

/// A change of a cluster's desired state other than its deletion.
enum Desired {
    /// Stopped (`true`) or running.
    Stopped(bool),
    Nodes(u32),
}

/// Cheap-to-clone handle on the running agent.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    manager: ClusterManager,
    rancher: RancherClient,
    config: AgentConfig,
    instance_id: String,
    tunnels: tunnels::TunnelSet,
    /// Rancher's state per cluster, from the last poll.
    rancher_states: Mutex<HashMap<String, String>>,
    /// The last heal per cluster, for the API view: what was restarted and why, and when (unix
    /// seconds).
    last_heals: Mutex<HashMap<String, (String, u64)>>,
    /// Components restarted by heals since start, by component name.
    heals: Mutex<BTreeMap<String, u64>>,
    /// What the agent holds back for a cluster now and why: a bring-up waiting for the machine,
    /// or a restart deferred while the CPU is saturated. Observed status, so not stored.
    held: Mutex<HashMap<String, String>>,
    /// The machine as last read ([`pressure`]).
    machine: tokio::sync::watch::Receiver<pressure::MachineReading>,
    /// Names with a worker task, so each cluster has at most one, and how to reach it.
    workers: Mutex<HashMap<String, reconcile::WorkerHandle>>,
    /// Every task the agent spawned (workers, the Rancher watcher): shutdown waits for them.
    tasks: TaskTracker,
    /// Bounds bring-ups and deletes together.
    permits: Semaphore,
    /// The event log folded into histograms and counters (`/metrics`, the status page).
    observer: crate::observe::Observer,
    /// Rancher's requests per cluster (`--request-audit`), counted from the audit logs.
    request_counts: Option<Arc<crate::observe::audit::RequestCounts>>,
    wake: Notify,
    shutdown: CancellationToken,
}

impl Agent {
    /// Starts the agent: rolls back KWOK work a crash left half-done, then spawns the reconcile
    /// loop, which re-adopts every stored cluster (restarting the KWOK clusters that should run,
    /// finishing stops, reopening tunnels with the stored params); a stopped cluster stays
    /// stopped.
    pub async fn start(
        config: AgentConfig,
        manager: ClusterManager,
        rancher: RancherClient,
    ) -> Result<(Agent, tokio::task::JoinHandle<()>), AgentError> {
        if let Some(id) = &config.instance_id {
            validate_instance_id(id)?;
        }
        let instance_id = manager
            .store()
            .instance_id(config.instance_id.clone())
            .await?;
        manager
            .recover()
            .await
            .map_err(|e| AgentError::Store(StoreError::Task(e.to_string())))?;
        tracing::info!(instance = %instance_id, "agent instance");
        let store = manager.store().clone();
        store
            .record_run_settings(run_settings(
                &config,
                &instance_id,
                rancher.url(),
                manager.request_audit(),
            ))
            .await?;
        let observer = crate::observe::Observer::start(store.clone()).await?;
        let shutdown = CancellationToken::new();
        let (machine, watch_machine) = pressure::watch_machine(shutdown.clone()).await;
        let request_counts = manager
            .request_audit()
            .then(|| Arc::new(crate::observe::audit::RequestCounts::default()));
        let (memory_manager, clusters_dir) = (manager.clone(), manager.clusters_dir());
        let agent = Agent {
            inner: Arc::new(Inner {
                store: manager.store().clone(),
                instance_id,
                tunnels: tunnels::TunnelSet::new(config.tunnel.clone()).with_events(store.clone()),
                observer,
                request_counts: request_counts.clone(),
                permits: Semaphore::new(config.concurrency.max(1)),
                tasks: TaskTracker::new(),
                manager,
                rancher,
                config,
                rancher_states: Mutex::new(HashMap::new()),
                last_heals: Mutex::new(HashMap::new()),
                heals: Mutex::new(BTreeMap::new()),
                held: Mutex::new(HashMap::new()),
                machine,
                workers: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                shutdown,
            }),
        };
        agent.inner.tasks.spawn(watch_machine);
        agent.inner.tasks.spawn(rancher_watch::run(agent.clone()));
        let (sampled, loaded) = (agent.clone(), agent.clone());
        agent.inner.tasks.spawn(crate::observe::sample_loop(
            store,
            SAMPLE_EVERY,
            move || sampled.sample_counts(),
            move || loaded.tunnel_load(),
            memory_manager,
            agent.inner.shutdown.clone(),
        ));
        if let Some(counts) = request_counts {
            agent.inner.tasks.spawn(crate::observe::audit::tail_loop(
                counts,
                clusters_dir,
                crate::observe::audit::AUDIT_EVERY,
                agent.inner.store.clone(),
                SAMPLE_EVERY,
                agent.inner.shutdown.clone(),
            ));
        }
        if let Some(spec) = agent.inner.config.shard.clone() {
            agent.inner.tasks.spawn(desired::run(agent.clone(), spec));
        }
        let task = tokio::spawn(reconcile::run(agent.clone()));
        Ok((agent, task))
    }

    fn check_running(&self) -> Result<(), AgentError> {
        if self.inner.shutdown.is_cancelled() {
            Err(AgentError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Adds one cluster; the reconcile loop brings it up in the background.
    pub async fn create(
        &self,
        name: &str,
        profile: ComponentProfile,
    ) -> Result<ClusterView, AgentError> {
        self.check_running()?;
        names::validate(name)?;
        self.inner
            .store
            .insert_agent_clusters(vec![name.to_string()], profile.as_str().to_string())
            .await?;
        self.inner.wake.notify_one();
        self.get(name).await
    }

    /// Adds `count` clusters named `<prefix>-NNNNN`, numbered after the highest existing one, all or
    /// none.
    pub async fn create_bulk(
        &self,
        count: usize,
        prefix: &str,
        profile: ComponentProfile,
    ) -> Result<Vec<ClusterView>, AgentError> {
        self.check_running()?;
        if count == 0 || count > MAX_BULK {
            return Err(AgentError::InvalidBulk(format!(
                "count must be between 1 and {MAX_BULK}, got {count}"
            )));
        }
        let existing = self.inner.store.agent_clusters().await?;
        let batch = names::next_in_series(prefix, existing.iter().map(|c| c.name.as_str()), count);
        for name in &batch {
            names::validate(name)
                .map_err(|e| AgentError::InvalidBulk(format!("prefix {prefix:?}: {e}")))?;
        }
        self.inner
            .store
            .insert_agent_clusters(batch.clone(), profile.as_str().to_string())
            .await?;
        self.inner.wake.notify_one();
        let batch: std::collections::HashSet<String> = batch.into_iter().collect();
        let mut views = self.list().await?;
        views.retain(|view| batch.contains(&view.name));
        Ok(views)
    }

    /// Requests a cluster's deletion: whatever its worker was doing stops at its next step (its
    /// writes no longer land), then its tunnels close, it is removed from Rancher (if it is this
    /// agent's) and from KWOK, and its ports are freed, in the background. Works in every phase,
    /// stopped included.
    pub async fn delete(&self, name: &str) -> Result<ClusterView, AgentError> {
        self.check_running()?;
        self.inner.store.request_deletion(name, None).await?;
        // Read before the worker is told: a cluster with little to undo can be gone a moment
        // later, and the caller must still see the `deleting` it asked for.
        let view = self.get(name).await;
        self.cancel_worker(name);
        view
    }

    /// Ends the current step of a cluster's worker, which then reads the cluster again (and
    /// deletes it, if that was requested).
    fn cancel_worker(&self, name: &str) {
        if let Some(worker) = self.worker(name) {
            worker.cancel();
        }
        self.inner.wake.notify_one();
    }

    /// Requests a cluster's stop: its worker leaves what it was doing (a KWOK creation first
    /// finishes, so that nothing is left half-made), closes the tunnels and stops the KWOK
    /// cluster's processes, keeping its data; it then stays `stopped` (never healed) until
    /// [`Agent::start_cluster`]. Idempotent.
    pub async fn stop_cluster(&self, name: &str) -> Result<ClusterView, AgentError> {
        self.change_desired(name, Desired::Stopped(true)).await
    }

    /// Requests that a stopped cluster run again: the normal bring-up follows (KWOK start,
    /// tunnels reopened with byte-identical params) up to `active`. Idempotent: a running
    /// cluster is left as it is.
    pub async fn start_cluster(&self, name: &str) -> Result<ClusterView, AgentError> {
        self.change_desired(name, Desired::Stopped(false)).await
    }

    /// Sets the node count the cluster should have; applied (pods follow its population profile)
    /// as soon as it runs, and kept across stops and restarts.
    pub async fn scale(&self, name: &str, nodes: i64) -> Result<ClusterView, AgentError> {
        let nodes = u32::try_from(nodes)
            .ok()
            .filter(|n| *n <= MAX_NODES)
            .ok_or(AgentError::InvalidNodes(nodes))?;
        self.change_desired(name, Desired::Nodes(nodes)).await
    }

    /// Writes a change of the desired state (refused once a deletion is requested) and has the
    /// cluster's worker, if any, read it at once.
    async fn change_desired(
        &self,
        name: &str,
        desired: Desired,
    ) -> Result<ClusterView, AgentError> {
        self.check_running()?;
        let store = &self.inner.store;
        let write = match desired {
            Desired::Stopped(stop) => store.request_stop(name, stop).await?,
            Desired::Nodes(nodes) => store.request_nodes(name, nodes).await?,
        };
        match write {
            PhaseWrite::Applied => {}
            PhaseWrite::Superseded => return Err(AgentError::Deleting(name.to_string())),
        }
        if let Some(worker) = self.worker(name) {
            worker.interrupt();
        }
        self.inner.wake.notify_one();
        self.get(name).await
    }

    fn worker(&self, name: &str) -> Option<reconcile::WorkerHandle> {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn remember_state(&self, name: &str, state: &str) {
        self.inner
            .rancher_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), state.to_string());
    }

    fn record_heal(&self, name: &str, outcome: &crate::kwok::HealOutcome) {
        let mut heals = self.inner.heals.lock().unwrap_or_else(|p| p.into_inner());
        for restart in &outcome.restarted {
            *heals.entry(restart.component.clone()).or_default() += 1;
        }
        self.inner
            .last_heals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.to_string(),
                (outcome.to_string(), crate::store::now_secs()),
            );
    }

    /// Components restarted by self-healing since the agent started, by component.
    pub fn heal_counts(&self) -> Vec<(String, u64)> {
        let heals = self.inner.heals.lock().unwrap_or_else(|p| p.into_inner());
        heals.iter().map(|(c, n)| (c.clone(), *n)).collect()
    }

    /// Shows why the agent holds something of a cluster back (`None`: nothing held).
    fn set_held(&self, name: &str, reason: Option<String>) {
        let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(reason) => held.insert(name.to_string(), reason),
            None => held.remove(name),
        };
    }

    /// What is held back of a cluster now, if anything.
    fn held(&self, name: &str) -> Option<String> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// How many clusters have something held back now.
    fn held_count(&self) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The machine as last read.
    pub fn machine(&self) -> pressure::MachineReading {
        *self.inner.machine.borrow()
    }

    /// Drops what the agent remembers of a cluster that is gone.
    fn forget(&self, name: &str) {
        self.set_held(name, None);
        self.inner
            .rancher_states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.inner
            .last_heals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// The instance id that marks this agent's clusters in Rancher.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Requests sent to Rancher so far, by method.
    pub fn rancher_requests(&self) -> Vec<(&'static str, u64)> {
        self.inner.rancher.request_counts()
    }

    pub async fn get(&self, name: &str) -> Result<ClusterView, AgentError> {
        let (record, apiserver_port) = self
            .inner
            .store
            .agent_cluster_with_apiserver(name)
            .await?
            .ok_or_else(|| AgentError::NotFound(name.to_string()))?;
        Ok(self.view(record, apiserver_port))
    }

    /// Every cluster, from one query (agent and KWOK rows joined).
    pub async fn list(&self) -> Result<Vec<ClusterView>, AgentError> {
        let rows = self.inner.store.agent_clusters_with_apiserver().await?;
        Ok(rows
            .into_iter()
            .map(|(record, apiserver_port)| self.view(record, apiserver_port))
            .collect())
    }

    /// Clusters by the phase the API shows them in (a requested deletion shows as `deleting`;
    /// phases without clusters are absent), from one grouped query: what `/metrics` reports, at a
    /// cost that does not grow with the number of clusters.
    pub async fn phase_counts(&self) -> Result<BTreeMap<AgentPhase, usize>, AgentError> {
        let mut counts = BTreeMap::new();
        for count in self.inner.store.agent_phase_counts().await? {
            let shown =
                view::shown_phase(count.phase, count.deletion_requested, count.stop_requested);
            *counts.entry(shown).or_default() += count.count;
        }
        Ok(counts)
    }

    /// Connected tunnels (two per fully connected cluster), from a shared gauge.
    pub fn tunnels_connected(&self) -> usize {
        self.inner.tunnels.connected_count()
    }

    pub async fn health(&self) -> Result<Health, AgentError> {
        let counts = self.inner.store.agent_phase_counts().await?;
        let in_phase = |phase: AgentPhase| {
            counts
                .iter()
                .filter(|c| c.phase == phase)
                .map(|c| c.count)
                .sum()
        };
        Ok(Health {
            status: if self.inner.shutdown.is_cancelled() {
                "shutting-down"
            } else {
                "ok"
            }
            .to_string(),
            instance_id: self.inner.instance_id.clone(),
            clusters: counts.iter().map(|c| c.count).sum(),
            active: in_phase(AgentPhase::Active),
            failed: in_phase(AgentPhase::Failed),
            tunnels_connected: self.tunnels_connected(),
            held: self.held_count(),
            cpu_pressure: self.machine().cpu_pressure,
        })
    }

    /// Tunnel metrics summed over every session.
    pub fn tunnel_metrics(&self) -> remotedialer::MetricsSnapshot {
        self.inner.tunnels.metrics()
    }

    /// Each open tunnel's Rancher load (streams, bytes, long-lived streams), by cluster.
    pub fn tunnel_load(&self) -> Vec<tunnels::TunnelLoad> {
        self.inner.tunnels.load()
    }

    /// The event log folded for `/metrics` and the status page.
    pub fn observer(&self) -> &crate::observe::Observer {
        &self.inner.observer
    }

    /// Rancher's requests per cluster by verb and resource; `None` without `--request-audit`.
    pub fn request_counts(&self) -> Option<&crate::observe::audit::RequestCounts> {
        self.inner.request_counts.as_deref()
    }

    /// (clusters active, tunnels connected) for a resource sample: the active count comes from
    /// the tunnels (two per connected cluster), so sampling costs no query.
    fn sample_counts(&self) -> (u64, u64) {
        let tunnels = self.tunnels_connected() as u64;
        (tunnels / 2, tunnels)
    }

    /// Stops the reconcile loop, waits for every worker and the Rancher watcher to end their
    /// current step, then closes every tunnel. KWOK clusters keep running; the next start
    /// re-adopts them.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.wake.notify_waiters();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.tunnels.close_all().await;
    }

    /// The API view of a row; `apiserver_port` from its KWOK row, read in the same query.
    fn view(&self, record: AgentRecord, apiserver_port: Option<u16>) -> ClusterView {
        let apiserver = apiserver_port.map(|port| crate::kwok::Endpoint { port }.url());
        let rancher_state = self
            .inner
            .rancher_states
            .lock()
            .ok()
            .and_then(|s| s.get(&record.name).cloned());
        let (last_heal, last_heal_at) = self
            .inner
            .last_heals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.name)
            .cloned()
            .unzip();
        let held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.name)
            .cloned();
        let phase = view::shown_phase(
            record.phase,
            record.deletion_requested(),
            record.stop_requested,
        );
        ClusterView {
            tunnels: self.inner.tunnels.view(&record.name),
            name: record.name,
            phase,
            profile: record.profile,
            stop_requested: record.stop_requested,
            desired_nodes: record
                .desired_nodes
                .unwrap_or(self.inner.config.population.nodes),
            nodes: record.nodes,
            rancher_cluster_id: record.rancher_cluster_id,
            rancher_state,
            apiserver,
            last_error: record.last_error,
            last_heal,
            last_heal_at,
            held,
            attempts: record.attempts,
            created_at: record.created_at,
            active_at: record.active_at,
        }
    }
}

/// How often the agent's own memory and CPU are sampled into the store (the run report's plot).
const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// The settings of this run as the run report shows them (JSON; no secret).
fn run_settings(
    config: &AgentConfig,
    instance_id: &str,
    rancher_url: &str,
    request_audit: bool,
) -> String {
    serde_json::json!({
        "instance_id": instance_id,
        "rancher_url": rancher_url,
        "concurrency": config.concurrency,
        "nodes_per_cluster": config.population.nodes,
        "pods_per_node": config.population.pods_per_node,
        "rancher_poll_seconds": config.rancher_poll.as_secs_f64(),
        "active_timeout_seconds": config.active_timeout.as_secs_f64(),
        "retry_base_seconds": config.retry.base.as_secs_f64(),
        "retry_cap_seconds": config.retry.cap.as_secs_f64(),
        "steve": config.tunnel.steve.is_some(),
        "request_audit": request_audit,
        "agent_version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}

/// Instance ids become a Kubernetes label value on every Rancher cluster the agent creates.
fn validate_instance_id(id: &str) -> Result<(), AgentError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let valid = (1..=63).contains(&id.len())
        && id.chars().all(allowed)
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(AgentError::InvalidInstanceId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_label_values() {
        for good in [
            "a",
            "sim-a",
            "0b7c9f1e-8d2a-4c1b-9f00-1234567890ab",
            "x.y_z",
        ] {
            assert!(validate_instance_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", &"x".repeat(64)] {
            assert!(validate_instance_id(bad).is_err(), "{bad}");
        }
    }
}
