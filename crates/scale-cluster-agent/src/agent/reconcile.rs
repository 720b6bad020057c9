//! The reconcile loop: compares every stored cluster with what runs and starts one worker per
//! cluster that needs work. A worker brings its cluster up (bounded by the agent's concurrency),
//! then stays to watch it: tunnels rejected, or the cluster gone from Rancher, leads to a retry or
//! to local clean-up. Each step is idempotent and records its phase first, so after a crash the
//! next start resumes where the last one stopped, without creating anything twice.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::prepare::{self, tunnel_params};
use super::tunnels::{TunnelError, TunnelSpec};
use super::Agent;
use crate::kwok::{ClusterInfo, ComponentProfile, CreateRequest, KwokError};
use crate::rancher::{RancherError, TlsMode as RancherTls};
use crate::store::{now_secs, AgentPhase, AgentRecord, RancherRegistration, StoreError};

/// How long to wait for both tunnels after opening them.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a worker looks at its tunnels while the cluster is active.
const WATCH_TICK: Duration = Duration::from_secs(1);

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
    #[error("KWOK cluster is {0}; the agent cannot adopt it")]
    KwokBusy(String),
    /// Not a failure: the cluster was deleted in Rancher, so the agent removes it locally.
    #[error("the cluster was deleted in Rancher")]
    GoneFromRancher,
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

/// Whether a cluster needs a worker now: always, unless it failed recently (then after a backoff
/// that doubles per attempt, spread per cluster so retries do not come in lockstep).
fn is_due(agent: &Agent, record: &AgentRecord) -> bool {
    if record.last_error.is_none()
        || !matches!(record.phase, AgentPhase::Failed | AgentPhase::Deleting)
    {
        return true;
    }
    let config = &agent.inner.config;
    let ceiling = config
        .retry_base
        .saturating_mul(1u32 << record.attempts.min(16))
        .min(config.retry_cap)
        .as_secs()
        .max(1);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.name.hash(&mut hasher);
    let wait = ceiling / 2 + hasher.finish() % (ceiling / 2 + 1);
    now_secs() >= record.updated_at + wait
}

fn spawn_worker(agent: &Agent, name: String) {
    let cancel = {
        let mut workers = agent
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if workers.contains_key(&name) {
            return;
        }
        let cancel = agent.inner.shutdown.child_token();
        workers.insert(name.clone(), cancel.clone());
        cancel
    };
    let agent = agent.clone();
    tokio::spawn(async move {
        work(&agent, &name, &cancel).await;
        agent
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        agent.inner.wake.notify_one();
    });
}

async fn work(agent: &Agent, name: &str, cancel: &CancellationToken) {
    let inner = &agent.inner;
    loop {
        let record = match inner.store.agent_cluster(name).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(cluster = name, %error, "reading agent state");
                return;
            }
        };
        if record.phase == AgentPhase::Deleting {
            if let Err(error) = delete_everywhere(agent, &record).await {
                tracing::warn!(cluster = name, %error, "deleting; will retry");
                let _ = inner
                    .store
                    .set_agent_phase(name, AgentPhase::Deleting, Some(error.to_string()))
                    .await;
            }
            return;
        }
        if cancel.is_cancelled() {
            return;
        }
        let outcome = if record.phase == AgentPhase::Active && inner.tunnels.is_open(name) {
            tokio::select! {
                result = watch(agent, &record) => result,
                _ = cancel.cancelled() => return,
            }
        } else {
            let permit = tokio::select! {
                permit = inner.bring_up_permits.acquire() => permit,
                _ = cancel.cancelled() => return,
            };
            let result = tokio::select! {
                result = bring_up(agent, &record) => result,
                _ = cancel.cancelled() => return,
            };
            drop(permit);
            match result {
                Ok(()) => inner
                    .store
                    .set_agent_phase(name, AgentPhase::Active, None)
                    .await
                    .map_err(StepError::from),
                Err(error) => Err(error),
            }
        };
        match outcome {
            Ok(()) => continue,
            Err(StepError::GoneFromRancher) => {
                tracing::info!(cluster = name, "deleted in Rancher; removing it here too");
                let _ = inner
                    .store
                    .set_agent_phase(
                        name,
                        AgentPhase::Deleting,
                        Some("deleted in Rancher".into()),
                    )
                    .await;
            }
            Err(error) => {
                tracing::warn!(cluster = name, %error, "will retry with backoff");
                inner.tunnels.close(name).await;
                let _ = inner
                    .store
                    .set_agent_phase(name, AgentPhase::Failed, Some(error.to_string()))
                    .await;
                return;
            }
        }
    }
}

/// Every step from a stored phase to a connected, active cluster. Idempotent.
async fn bring_up(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    inner
        .store
        .set_agent_phase(name, AgentPhase::Provisioning, None)
        .await?;
    let profile: ComponentProfile = record.profile.parse().unwrap_or_default();
    let kwok = ensure_kwok(agent, name, profile).await?;

    let client = crate::kwok::population::client(&kwok.kubeconfig)
        .await
        .map_err(KwokError::from)?;
    let token = prepare::prepare(&client).await?;
    let ca_path = inner.manager.cluster_dir(name).join("pki").join("ca.crt");
    let ca = tokio::fs::read_to_string(&ca_path)
        .await
        .map_err(|e| StepError::Ca(ca_path.display().to_string(), e))?;
    let address = format!("127.0.0.1:{}", kwok.ports.kube_apiserver);
    let params = tunnel_params(&address, &token, &ca);
    if record.tunnel_params.as_deref() != Some(params.as_str()) {
        if record.tunnel_params.is_some() {
            tracing::warn!(
                cluster = name,
                "tunnel params changed (the KWOK cluster was recreated)"
            );
            inner.tunnels.close(name).await;
        }
        inner.store.set_tunnel_params(name, &params).await?;
    }

    inner
        .store
        .set_agent_phase(name, AgentPhase::Registering, None)
        .await?;
    let cluster_id = match &record.rancher_cluster_id {
        Some(id) => match inner.rancher.cluster(id).await? {
            Some(_) => id.clone(),
            None => return Err(StepError::GoneFromRancher),
        },
        None => {
            let cluster = inner.rancher.ensure_imported_cluster(name).await?;
            inner
                .store
                .set_rancher_cluster_id(name, &cluster.id)
                .await?;
            cluster.id
        }
    };
    let registration = inner.rancher.registration(&cluster_id).await?;
    inner
        .store
        .set_rancher_registration(
            name,
            RancherRegistration {
                cluster_id: cluster_id.clone(),
                token: registration.token.expose().to_string(),
                server_url: registration.server_url.clone(),
                ca_checksum: registration.ca_checksum.clone(),
            },
        )
        .await?;

    inner
        .store
        .set_agent_phase(name, AgentPhase::Connecting, None)
        .await?;
    let tls = match &agent.inner.config.rancher_tls {
        RancherTls::CaFile(path) => remotedialer::TlsMode::CaBundleFile(path.clone()),
        RancherTls::CaChecksum(checksum) => remotedialer::TlsMode::CaChecksum {
            checksum: checksum.clone(),
            strict: true,
        },
        RancherTls::Insecure => remotedialer::TlsMode::InsecureSkipVerify,
        RancherTls::PublicRoots => match &registration.ca_checksum {
            Some(checksum) => remotedialer::TlsMode::CaChecksum {
                checksum: checksum.clone(),
                strict: registration.strict_verify,
            },
            None => remotedialer::TlsMode::WebpkiRoots,
        },
    };
    let spec = TunnelSpec {
        server_url: registration.server_url.clone(),
        registration_token: registration.token.expose().to_string(),
        params,
        apiserver_address: address,
        tls: agent
            .inner
            .tunnels
            .shared_tls(&registration.server_url, tls)
            .await?,
    };
    inner.tunnels.open(name, &spec)?;
    match inner.tunnels.wait_connected(name, CONNECT_TIMEOUT).await {
        Ok(()) => {}
        Err(error @ TunnelError::Rejected { .. }) => {
            if inner.rancher.cluster(&cluster_id).await?.is_none() {
                return Err(StepError::GoneFromRancher);
            }
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    }

    let deadline = Instant::now() + inner.config.active_timeout;
    loop {
        let state = match inner.rancher.cluster(&cluster_id).await? {
            Some(cluster) if cluster.is_active() => {
                remember_state(agent, name, &cluster.state);
                return Ok(());
            }
            Some(cluster) => cluster.state,
            None => return Err(StepError::GoneFromRancher),
        };
        remember_state(agent, name, &state);
        if Instant::now() >= deadline {
            return Err(StepError::NotActive {
                timeout: inner.config.active_timeout,
                state,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn remember_state(agent: &Agent, name: &str, state: &str) {
    agent
        .inner
        .rancher_states
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), state.to_string());
}

/// Makes sure the KWOK cluster exists and answers `/readyz`: creates it, starts it after a reboot or
/// a stop, or recreates it if it failed.
async fn ensure_kwok(
    agent: &Agent,
    name: &str,
    profile: ComponentProfile,
) -> Result<ClusterInfo, StepError> {
    let manager = &agent.inner.manager;
    let Some(existing) = manager.store().get(name).await? else {
        return Ok(manager
            .create(CreateRequest {
                name: name.to_string(),
                profile,
                population: agent.inner.config.population.clone(),
            })
            .await?);
    };
    use crate::store::Phase;
    match existing.phase {
        Phase::Running => {
            let info = manager.get(name).await?;
            if info.health == "ready" {
                return Ok(info);
            }
            // Processes died (host reboot, OOM kill): stop what is left, then start again.
            manager.stop(name).await?;
            Ok(manager.start(name).await?)
        }
        Phase::Stopped => Ok(manager.start(name).await?),
        Phase::Failed => {
            manager.delete(name).await?;
            Ok(manager
                .create(CreateRequest {
                    name: name.to_string(),
                    profile,
                    population: agent.inner.config.population.clone(),
                })
                .await?)
        }
        phase @ (Phase::Creating | Phase::Deleting) => Err(StepError::KwokBusy(phase.to_string())),
    }
}

/// Watches an active cluster until something needs doing: Ok(()) to re-check, or an error.
async fn watch(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    let Some(cluster_id) = record.rancher_cluster_id.clone() else {
        return Ok(());
    };
    let mut last_poll = Instant::now();
    loop {
        tokio::time::sleep(WATCH_TICK).await;
        let rejected = inner.tunnels.status(name).and_then(|(main, steve)| {
            [main, steve].into_iter().find_map(|s| {
                s.last_error.filter(|e| {
                    e.is_rejection() && s.state == remotedialer::ConnectionState::Stopped
                })
            })
        });
        if rejected.is_none() && last_poll.elapsed() < inner.config.rancher_poll {
            continue;
        }
        last_poll = Instant::now();
        match inner.rancher.cluster(&cluster_id).await {
            Ok(None) => return Err(StepError::GoneFromRancher),
            Ok(Some(cluster)) => remember_state(agent, name, &cluster.state),
            // Rancher unreachable: the tunnels keep retrying on their own.
            Err(error) => tracing::debug!(cluster = name, %error, "polling Rancher"),
        }
        if let Some(error) = rejected {
            return Err(StepError::Tunnel(TunnelError::Rejected {
                tunnel: "main or steve",
                error,
            }));
        }
    }
}

/// Closes the tunnels, removes the cluster from Rancher (also one created just before a crash that
/// lost its id) and from KWOK, then forgets it.
async fn delete_everywhere(agent: &Agent, record: &AgentRecord) -> Result<(), StepError> {
    let inner = &agent.inner;
    let name = record.name.as_str();
    inner.tunnels.close(name).await;
    let cluster_id = match &record.rancher_cluster_id {
        Some(id) => Some(id.clone()),
        None => inner.rancher.find_cluster(name).await?.map(|c| c.id),
    };
    if let Some(id) = cluster_id {
        inner.rancher.delete_cluster(&id).await?;
    }
    if inner.manager.store().get(name).await?.is_some() {
        inner.manager.delete(name).await?;
    }
    inner.store.remove_agent_cluster(name).await?;
    inner
        .rancher_states
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
    Ok(())
}
