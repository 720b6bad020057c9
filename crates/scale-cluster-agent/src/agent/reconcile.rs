//! The reconcile loop: compares every stored cluster with what runs and starts one worker per
//! cluster that needs work. A worker brings its cluster up (bounded by the agent's concurrency),
//! applies the node count asked for, then stays to watch its tunnels and heal its processes; a
//! cluster whose stop was requested gets its tunnels closed and its KWOK cluster stopped, and then
//! has no worker at all (nothing heals it) until it is started again; a cluster whose deletion was
//! requested is deleted by a worker under the same bound. Each step is idempotent and records its
//! phase first, so after a crash the next start resumes where the last one stopped, without
//! creating anything twice and without starting a stopped cluster.
//!
//! Phase writes are conditional on the desired state they work toward ([`PhaseWrite::Superseded`]):
//! a delete always wins, whatever a worker had in flight, and a bring-up cannot overwrite a stop
//! nor a stop a start. A change of the desired state reaches the worker at once: a delete cancels
//! its step, a stop, start or scale interrupts its watch or its Rancher steps (not a KWOK creation,
//! which finishes so that nothing is left half-made) and the worker reads the cluster again.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rand::SeedableRng;
use sha2::Digest;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::prepare::{self, tunnel_params};
use super::pressure;
use super::tunnels::{TunnelError, TunnelSpec};
use super::Agent;
use crate::kwok::{ComponentProfile, CreateRequest, Endpoint, Health, KwokError};
use crate::rancher::RancherError;
use crate::store::{now_secs, AgentPhase, AgentRecord, PhaseWrite, StoreError};

/// How long to wait for both tunnels after opening them.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a worker looks at its tunnels while the cluster is active.
const WATCH_TICK: Duration = Duration::from_secs(1);
/// How often a connecting cluster's state is read from Rancher until it is active.
const ACTIVE_POLL: Duration = Duration::from_secs(2);
/// How often an active cluster's processes are checked (a few small /proc reads and one
/// `/readyz`): an OOM-killed apiserver or etcd is noticed within this. Kubelet's default probe
/// period; at 5 s the checks were ~1 mCPU of every idle apiserver's ~11 (docs/benchmarks.md).
const HEAL_CHECK: Duration = Duration::from_secs(10);

/// Why bringing a cluster up, or keeping it up, failed.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("KWOK: {0}")]
    Kwok(#[from] KwokError),
    #[error("preparing the cluster: {0}")]
    Prepare(#[from] prepare::PrepareError),
    #[error("Rancher: {0}")]
    Rancher(#[from] RancherError),
    #[error("tunnel: {0}")]
    Tunnel(#[from] TunnelError),
    #[error("state database: {0}")]
    Store(#[from] StoreError),
    #[error("reading the cluster CA {0}: {1}")]
    Ca(String, std::io::Error),
    #[error("Rancher did not report the cluster active within {timeout:?} (last state {state:?})")]
    NotActive { timeout: Duration, state: String },
    /// Rancher answered 404 for the cluster. Not taken as a deletion on its own: the Rancher
    /// watcher confirms that before anything local is removed.
    #[error(
        "Rancher answered 404 for cluster {0}; retrying until it is back or confirmed deleted"
    )]
    NotInRancher(String),
    /// Not a failure: the cluster's deletion, stop or start was requested while this step ran.
    #[error("the cluster's desired state changed")]
    Superseded,
}

/// How the agent reaches a cluster's worker.
#[derive(Clone)]
pub(super) struct WorkerHandle {
    /// Ends whatever the worker does (a delete; shutdown cancels its parent).
    cancel: CancellationToken,
    /// Ends the worker's watch or its Rancher and tunnel steps (a stop, start or scale).
    interrupt: Arc<watch::Sender<()>>,
}

impl WorkerHandle {
    pub(super) fn cancel(&self) {
        self.cancel.cancel();
    }

    pub(super) fn interrupt(&self) {
        // Bumps the version even without a receiver waiting: the worker sees it at its next wait.
        self.interrupt.send_modify(|()| {});
    }
}

pub(super) async fn run(agent: Agent) {
    let inner = &agent.inner;
    loop {
        match inner.store.agent_clusters().await {
            Ok(records) => {
                for record in records {
                    if is_due(&agent, &record) {
                        spawn_worker(&agent, record.name);
                    }
                }
            }
            Err(error) => tracing::error!(%error, "reading agent state"),
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = inner.shutdown.cancelled() => break,
        }
    }
}

/// Whether a cluster needs a worker now: always, unless its last attempt failed recently (then
/// after the agent's retry backoff, whose jitter is drawn from the cluster's name and attempt so
/// that retries do not come in lockstep and the once-a-second check sees the same delay each
/// time). A requested deletion does not wait for a failed bring-up's backoff. A stopped cluster
/// that should stay stopped needs none: nothing watches or heals it.
fn is_due(agent: &Agent, record: &AgentRecord) -> bool {
    if record.stop_requested && record.phase == AgentPhase::Stopped && !record.deletion_requested()
    {
        return false;
    }
    let backing_off = match record.phase {
        AgentPhase::Failed => !record.deletion_requested(),
        AgentPhase::Deleting => true,
        _ => false,
    };
    if record.last_error.is_none() || !backing_off {
        return true;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&record.name, record.attempts).hash(&mut hasher);
    let mut jitter = rand::rngs::StdRng::seed_from_u64(hasher.finish());
    let wait = agent
        .inner
        .config
        .retry
        .delay_with(record.attempts, &mut jitter);
    // Whole seconds, rounded up: `updated_at` has one-second resolution.
    let wait_secs = u64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
    now_secs() >= record.updated_at.saturating_add(wait_secs)
}

fn spawn_worker(agent: &Agent, name: String) {
    let (cancel, interrupted) = {
        let mut workers = agent
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if workers.contains_key(&name) {
            return;
        }
        let cancel = agent.inner.shutdown.child_token();
        let (interrupt, interrupted) = watch::channel(());
        workers.insert(
            name.clone(),
            WorkerHandle {
                cancel: cancel.clone(),
                interrupt: Arc::new(interrupt),
            },
        );
        (cancel, interrupted)
    };
    let agent = agent.clone();
    // On the agent's tracker, so shutdown waits for every worker to finish its current step.
    agent.inner.tasks.clone().spawn(async move {
        work(&agent, &name, &cancel, interrupted).await;
        agent
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        agent.inner.wake.notify_one();
    });
}

/// Resolves when the worker is interrupted (a change of the desired state); never if the agent
/// dropped the handle, which it does not while the worker runs.
async fn interruption(interrupted: &mut watch::Receiver<()>) {
    if interrupted.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One cluster's worker. `cancel` ends its current step early (a delete request, or shutdown),
/// `interrupted` its watch or Rancher steps (a stop, start or scale); the loop then reads the
/// cluster again and does what is wanted now.
async fn work(
    agent: &Agent,
    name: &str,
    cancel: &CancellationToken,
    mut interrupted: watch::Receiver<()>,
) {
    let inner = &agent.inner;
    loop {
        // Marked seen before the read: a change written after it interrupts the step below, one
        // written before it is in the record.
        interrupted.borrow_and_update();
        let record = match inner.store.agent_cluster(name).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(cluster = name, %error, "reading agent state");
                return;
            }
        };
        if record.deletion_requested() {
            delete(agent, &record).await;
            return;
        }
        if cancel.is_cancelled() {
            return;
        }
        if record.stop_requested {
            if record.phase == AgentPhase::Stopped {
                // Nothing runs and nothing is to be watched or healed until a start.
                return;
            }
            let outcome = tokio::select! {
                result = stop(agent, &record) => result,
                // Stopping is idempotent: a delete or the next start finishes what is left.
                _ = cancel.cancelled() => continue,
            };
            match outcome {
                Ok(()) | Err(StepError::Superseded) => continue,
                Err(error) => {
                    tracing::warn!(cluster = name, %error, "stopping; will retry with backoff");
                    let write = inner
                        .store
                        .set_stop_phase(name, AgentPhase::Failed, Some(error.to_string()))
                        .await;
                    if record_failure(name, write) {
                        continue;
                    }
                    return;
                }
            }
        }
        let outcome = if record.phase == AgentPhase::Active && inner.tunnels.is_open(name) {
            tokio::select! {
                result = async {
                    converge_nodes(agent, &record).await?;
                    watch(agent, &record).await
                } => result,
                _ = cancel.cancelled() => continue,
                _ = interruption(&mut interrupted) => continue,
            }
        } else {
            let permit = tokio::select! {
                permit = admitted(agent, &record) => permit,
                _ = cancel.cancelled() => continue,
                _ = interruption(&mut interrupted) => continue,
            };
            // Only a delete (or shutdown) abandons a KWOK creation: the delete then removes the
            // half-made cluster. A stop lets it finish and stops what it made.
            let provisioned = tokio::select! {
                result = provision(agent, &record) => result,
                _ = cancel.cancelled() => continue,
            };
            let result = match provisioned {
                Ok(provisioned) => tokio::select! {
                    result = connect(agent, &record, provisioned) => result,
                    _ = cancel.cancelled() => continue,
                    _ = interruption(&mut interrupted) => continue,
                },
                Err(error) => Err(error),
            };
            drop(permit);
            match result {
                Ok(()) => advance(agent, name, AgentPhase::Active).await,
                Err(error) => Err(error),
            }
        };
        match outcome {
            Ok(()) | Err(StepError::Superseded) => continue,
            Err(error) => {
                tracing::warn!(cluster = name, %error, "will retry with backoff");
                inner.tunnels.close(name).await;
                let write = inner
                    .store
                    .set_agent_phase(name, AgentPhase::Failed, Some(error.to_string()))
                    .await;
                if record_failure(name, write) {
                    continue;
                }
                return;
            }
        }
    }
}

/// A bring-up permit, once the machine can take the cluster: a cluster never provisioned
/// (`pending`) waits while [`pressure`] holds new bring-ups, with the reason shown on it; others
/// (restarts after a failure, stopped clusters started again) go at once. Checked again once the
/// permit is held, since the machine may have filled up while the worker queued for it.
async fn admitted<'a>(
    agent: &'a Agent,
    record: &AgentRecord,
) -> Result<tokio::sync::SemaphorePermit<'a>, tokio::sync::AcquireError> {
    let mut machine = agent.inner.machine.clone();
    loop {
        if record.phase == AgentPhase::Pending {
            loop {
                let hurt = agent.inner.manager.unready_apiservers(pressure::HURT_AFTER);
                let Some(reason) = machine.borrow_and_update().bring_up_hold(hurt) else {
                    break;
                };
                let held = format!("bring-up held: {reason}");
                // Once per hold, not per reading: the pressure in the reason changes every 2 s.
                if !agent
                    .held(&record.name)
                    .is_some_and(|h| h.starts_with("bring-up held"))
                {
                    tracing::info!(cluster = %record.name, %reason, "bring-up held");
                }
                agent.set_held(&record.name, Some(held));
                if machine.changed().await.is_err() {
                    // The agent is shutting down: its cancellation ends this wait.
                    std::future::pending::<()>().await;
                }
            }
            agent.set_held(&record.name, None);
        }
        let permit = agent.inner.permits.acquire().await?;
        let hurt = agent.inner.manager.unready_apiservers(pressure::HURT_AFTER);
        if record.phase != AgentPhase::Pending || agent.machine().bring_up_hold(hurt).is_none() {
            return Ok(permit);
        }
    }
}

/// Whether the worker should read the cluster again after recording a failure: yes if the
/// desired state changed meanwhile (the failure no longer matters), no if the failure was
/// recorded (a later worker retries after the backoff) or could not be.
fn record_failure(name: &str, write: Result<PhaseWrite, StoreError>) -> bool {
    match write {
        Ok(PhaseWrite::Applied) => false,
        Ok(PhaseWrite::Superseded) => true,
        Err(error) => {
            tracing::error!(cluster = name, %error, "recording the failure");
            false
        }
    }
}

/// Records a bring-up phase; [`StepError::Superseded`] if the cluster's deletion or stop was
/// requested.
async fn advance(agent: &Agent, name: &str, phase: AgentPhase) -> Result<(), StepError> {
    advance_with(agent, name, phase, None).await
}

/// [`advance`] with a note shown as the cluster's last error until the next phase.
async fn advance_with(
    agent: &Agent,
    name: &str,
    phase: AgentPhase,
    note: Option<String>,
) -> Result<(), StepError> {
    match agent.inner.store.set_agent_phase(name, phase, note).await? {
        PhaseWrite::Applied => Ok(()),
        PhaseWrite::Superseded => Err(StepError::Superseded),
    }
}

/// What [`provision`] hands to [`connect`]: where the cluster's apiserver serves, the tunnel
/// params built from what is inside it, and a client of the cluster (for `stv-aggregation`).
struct Provisioned {
    endpoint: Endpoint,
    params: String,
    client: kube::Client,
}

/// The KWOK side of a bring-up: the cluster created or started with the node count asked for,
/// what the real agent finds inside it, and the tunnel params. Idempotent.
async fn provision(agent: &Agent, record: &AgentRecord) -> Result<Provisioned, StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    advance(agent, name, AgentPhase::Provisioning).await?;
    let profile: ComponentProfile = record.profile.parse().unwrap_or_default();
    let mut population = inner.config.population.clone();
    if let Some(nodes) = record.desired_nodes {
        population.nodes = nodes;
    }
    let mut kwok = inner
        .manager
        .ensure_running(CreateRequest {
            name: name.to_string(),
            profile,
            population,
        })
        .await?;
    if let Some(nodes) = record.desired_nodes.filter(|n| *n != kwok.nodes) {
        kwok = inner.manager.scale(name, nodes).await?;
    }
    if record.nodes != Some(kwok.nodes) {
        inner.store.set_observed_nodes(name, kwok.nodes).await?;
    }

    let client = crate::kwok::population::client(&kwok.kubeconfig)
        .await
        .map_err(KwokError::from)?;
    let token = prepare::prepare(&client).await?;
    let ca_path = inner.manager.ca_path(name);
    let ca = tokio::fs::read_to_string(&ca_path)
        .await
        .map_err(|e| StepError::Ca(ca_path.display().to_string(), e))?;
    let endpoint = kwok.endpoint();
    let params = tunnel_params(&endpoint.address(), &token, &ca);
    let digest = hex::encode(sha2::Sha256::digest(params.as_bytes()));
    if record.tunnel_params_sha256.as_deref() != Some(digest.as_str()) {
        if record.tunnel_params_sha256.is_some() {
            tracing::warn!(
                cluster = name,
                "tunnel params changed (the KWOK cluster was recreated)"
            );
            inner.tunnels.close(name).await;
        }
        inner.store.set_tunnel_params_sha256(name, &digest).await?;
    }
    Ok(Provisioned {
        endpoint,
        params,
        client,
    })
}

/// The Rancher side of a bring-up: the cluster found or created in Rancher, its tunnels open and
/// connected, until Rancher reports it active. Idempotent.
async fn connect(
    agent: &Agent,
    record: &AgentRecord,
    provisioned: Provisioned,
) -> Result<(), StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    let Provisioned {
        endpoint,
        params,
        client,
    } = provisioned;
    advance(agent, name, AgentPhase::Registering).await?;
    let instance = inner.instance_id.as_str();
    let cluster_id = match &record.rancher_cluster_id {
        Some(id) => match inner.rancher.owned_cluster(id, instance).await? {
            Some(_) => id.clone(),
            None => return Err(StepError::NotInRancher(id.clone())),
        },
        None => {
            let cluster = inner
                .rancher
                .ensure_imported_cluster(name, instance)
                .await?;
            // Stored at once: the next attempt (or the next start) reuses it, never creating twice.
            inner
                .store
                .set_rancher_cluster_id(name, &cluster.id)
                .await?;
            cluster.id
        }
    };
    let registration = inner.rancher.registration(&cluster_id).await?;

    advance(agent, name, AgentPhase::Connecting).await?;
    let tls = inner.rancher.tunnel_tls(&registration).await?;
    let pinned_ca = prepare::pinned_ca(&inner.rancher, &registration, &tls).await;
    let spec = TunnelSpec {
        server_url: registration.server_url.clone(),
        registration_token: registration.token.expose().to_string(),
        params,
        apiserver_address: endpoint.address(),
        tls: inner.tunnels.shared_tls(tls).await?,
    };
    inner.tunnels.open(name, &spec)?;
    inner.tunnels.wait_connected(name, CONNECT_TIMEOUT).await?;
    prepare::apply_steve_aggregation(
        &client,
        &prepare::SteveAggregation {
            server_url: &registration.server_url,
            token: registration.token.expose(),
            ca_checksum: registration.ca_checksum.as_deref(),
            ca_pem: pinned_ca.as_deref(),
            // The tunnels just reached the Rancher whose cacerts that CA is.
            cacerts_valid: pinned_ca.is_some(),
        },
    )
    .await?;

    let deadline = Instant::now() + inner.config.active_timeout;
    loop {
        let state = match inner.rancher.cluster(&cluster_id).await? {
            Some(cluster) if cluster.is_active() => {
                agent.remember_state(name, &cluster.state);
                return Ok(());
            }
            Some(cluster) => cluster.state,
            None => return Err(StepError::NotInRancher(cluster_id)),
        };
        agent.remember_state(name, &state);
        if Instant::now() >= deadline {
            return Err(StepError::NotActive {
                timeout: inner.config.active_timeout,
                state,
            });
        }
        tokio::time::sleep(ACTIVE_POLL).await;
    }
}

/// Watches an active cluster until one of its tunnels is given up (Rancher refused it for good),
/// which sends the cluster back through bring-up, and heals it: a component whose process is
/// gone, or an apiserver not ready for [`pressure::UNREADY_GRACE`] (longer while the CPU is
/// saturated), is restarted while the cluster shows
/// `provisioning` with the reason, then it is `active` again. Whether the cluster still exists in
/// Rancher is the Rancher watcher's business, with one list for all clusters.
async fn watch(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let name = record.name.as_str();
    // Without kube-scheduler (`lean`), pods others create, such as the cattle-cluster-agent
    // Deployment's that Rancher applies, are bound here while the cluster is active.
    let binder = agent.inner.manager.bind_unscheduled_pods(name);
    tokio::select! {
        result = watch_tunnels_and_health(agent, name) => result,
        Err(error) = binder => Err(error.into()),
    }
}

async fn watch_tunnels_and_health(agent: &Agent, name: &str) -> Result<(), StepError> {
    let mut last_check = Instant::now();
    loop {
        tokio::time::sleep(WATCH_TICK).await;
        if last_check.elapsed() >= HEAL_CHECK {
            heal(agent, name).await?;
            last_check = Instant::now();
        }
        let Some((main, steve)) = agent.inner.tunnels.status(name) else {
            return Ok(());
        };
        let given_up =
            [("main", main), ("steve", steve)]
                .into_iter()
                .find_map(|(tunnel, status)| {
                    (status.state == remotedialer::ConnectionState::Stopped)
                        .then_some(status.last_error)
                        .flatten()
                        .map(|error| (tunnel, error))
                });
        if let Some((tunnel, error)) = given_up {
            return Err(StepError::Tunnel(TunnelError::Rejected { tunnel, error }));
        }
    }
}

/// Applies the node count asked for to an active cluster, if it differs from the one applied.
async fn converge_nodes(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let Some(nodes) = record.desired_nodes.filter(|n| record.nodes != Some(*n)) else {
        return Ok(());
    };
    let name = record.name.as_str();
    tracing::info!(cluster = name, nodes, "scaling");
    let kwok = agent.inner.manager.scale(name, nodes).await?;
    agent
        .inner
        .store
        .set_observed_nodes(name, kwok.nodes)
        .await?;
    Ok(())
}

/// Stops a cluster whose stop was requested: its tunnels close (Rancher sees the agent go), its
/// KWOK cluster's processes stop (data kept), and it is `stopped`. Idempotent, so a crash at any
/// point is finished by the next start.
async fn stop(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    stop_advance(agent, name, AgentPhase::Stopping).await?;
    inner.tunnels.close(name).await;
    // A cluster stopped before it was ever provisioned has no KWOK side yet, and one stopped
    // just before a crash need not be stopped again.
    if inner.manager.endpoint(name).await?.is_some()
        && inner.manager.get(name).await?.health != Health::Stopped
    {
        inner.manager.stop(name).await?;
    }
    stop_advance(agent, name, AgentPhase::Stopped).await
}

/// Records a stop phase; [`StepError::Superseded`] if the cluster was deleted or started.
async fn stop_advance(agent: &Agent, name: &str, phase: AgentPhase) -> Result<(), StepError> {
    match agent.inner.store.set_stop_phase(name, phase, None).await? {
        PhaseWrite::Applied => Ok(()),
        PhaseWrite::Superseded => Err(StepError::Superseded),
    }
}

/// Restarts what is broken in an active cluster, if anything; an error sends the cluster through
/// a full bring-up (which restarts every component) after a backoff.
async fn heal(agent: &Agent, name: &str) -> Result<(), StepError> {
    let manager = &agent.inner.manager;
    let machine = agent.machine();
    let grace = machine.unready_grace();
    let health = manager.check_health(name).await?;
    let needed = health.restarts_needed(grace);
    let deferred = health.restarts_needed(pressure::UNREADY_GRACE);
    agent.set_held(
        name,
        (needed.is_empty() && !deferred.is_empty()).then(|| {
            format!(
                "restart held while the CPU is saturated (pressure {:.0}%): {}; restarted after \
                 {}s not ready if the CPU stays saturated",
                machine.cpu_pressure.unwrap_or_default(),
                health.problems().join("; "),
                grace.as_secs()
            )
        }),
    );
    if needed.is_empty() {
        return Ok(());
    }
    let reason = needed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    tracing::warn!(cluster = name, %reason, "healing");
    advance_with(
        agent,
        name,
        AgentPhase::Provisioning,
        Some(format!("healing: {reason}")),
    )
    .await?;
    let outcome = manager.heal(name, grace).await?;
    agent.record_heal(name, &outcome);
    advance(agent, name, AgentPhase::Active).await
}

/// Deletes the cluster under the agent's concurrency bound; a failure is recorded and retried
/// with backoff by a later worker.
async fn delete(agent: &Agent, record: &AgentRecord) {
    let inner = &agent.inner;
    let name = record.name.as_str();
    let result = tokio::select! {
        result = async {
            let _permit = inner.permits.acquire().await;
            delete_everywhere(agent, record).await
        } => result,
        // Every step is idempotent: the next start finishes what shutdown interrupted.
        _ = inner.shutdown.cancelled() => return,
    };
    if let Err(error) = result {
        tracing::warn!(cluster = name, %error, "deleting; will retry");
        if let Err(error) = inner
            .store
            .set_deleting(name, Some(error.to_string()))
            .await
        {
            tracing::error!(cluster = name, %error, "recording the failed delete");
        }
    }
}

/// Closes the tunnels, removes the cluster from Rancher if it is this agent's (also one created
/// just before a crash that lost its id) and from KWOK, then forgets it. A Rancher cluster that is
/// not this agent's is never deleted.
async fn delete_everywhere(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    let instance = inner.instance_id.as_str();
    inner.store.set_deleting(name, None).await?;
    inner.tunnels.close(name).await;
    let cluster_id = match &record.rancher_cluster_id {
        Some(id) => Some(id.clone()),
        None => match inner.rancher.find_owned(name, instance).await {
            Ok(found) => found.map(|c| c.id),
            Err(error @ RancherError::NotOwned { .. }) => {
                tracing::info!(cluster = name, %error, "leaving the Rancher cluster alone");
                None
            }
            Err(error) => return Err(error.into()),
        },
    };
    if let Some(id) = cluster_id {
        match inner.rancher.delete_owned_cluster(&id, instance).await {
            Ok(()) => {}
            Err(error @ RancherError::NotOwned { .. }) => {
                tracing::warn!(cluster = name, %error, "leaving the Rancher cluster alone");
            }
            Err(error) => return Err(error.into()),
        }
    }
    if inner.manager.store().get(name).await?.is_some() {
        inner.manager.delete(name).await?;
    }
    inner.store.remove_agent_cluster(name).await?;
    agent.forget(name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` labels failures by the prefix of these messages
    /// ([`crate::observe::failure_reason`]): a reworded message must keep its label.
    #[test]
    fn step_errors_map_to_failure_reasons() {
        let cases = [
            (
                StepError::Ca("ca.crt".into(), std::io::Error::other("gone")),
                "ca",
            ),
            (
                StepError::NotActive {
                    timeout: Duration::from_secs(1),
                    state: "pending".into(),
                },
                "not_active",
            ),
            (StepError::NotInRancher("c-1".into()), "not_in_rancher"),
            (StepError::Store(StoreError::Task("x".into())), "store"),
            (
                StepError::Tunnel(TunnelError::ServerUrl("x".into())),
                "tunnel",
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(
                crate::observe::failure_reason(&error.to_string()),
                reason,
                "{error}"
            );
        }
    }
}
