//! The application wiring shared by `serve`, `up` and the tests: [`RunningAgent`] takes the data
//! directory (lock file, private dirs), provisions the toolchain, opens the store, builds the KWOK
//! manager and the Rancher client, starts the steve host (unless Steve is off) and the controller
//! host (unless it is off), the agent and its HTTP API, writes the discovery file, and on
//! [`RunningAgent::stop`] shuts all of it down, awaiting its tasks and the hosts. It is the one place that
//! knows every layer; the CLI commands around it only parse, print and wait for a signal.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fs4::fs_std::FileExt;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentConfig};
use crate::api;
use crate::config::{AgentSettings, Settings};
use crate::controllers::{ControllerHost, ControllerHostConfig};
use crate::kwok::ClusterManager;
use crate::rancher::RancherClient;
use crate::scenario::{Limits, Runner};
use crate::steve::{SteveHost, SteveHostConfig, SteveProxy};
use crate::store::Store;
use crate::toolchain::{self, Component, Progress, Toolchain, ToolchainOptions};

/// The toolchain in `opts`, installed first (with progress on the terminal) if anything is missing.
pub async fn provision_toolchain(opts: &ToolchainOptions) -> anyhow::Result<Toolchain> {
    match toolchain::locate(opts).await {
        Ok(toolchain) => Ok(toolchain),
        Err(_) => {
            eprintln!("provisioning the KWOK and Kubernetes toolchain (first run only; a cold build takes several minutes)");
            Ok(toolchain::install(opts, Progress::auto()).await?)
        }
    }
}

/// An agent with its HTTP API, started by `serve` or `up`.
pub struct RunningAgent {
    pub agent: Agent,
    /// Scenario runs; the one in progress is interrupted on stop.
    pub runner: Runner,
    pub url: String,
    data_dir: std::path::PathBuf,
    server: JoinHandle<std::io::Result<()>>,
    stop_server: tokio::sync::oneshot::Sender<()>,
    reconcile: JoinHandle<()>,
    /// The steve host serving Steve behind the steve tunnels; `None` with Steve off.
    steve: Option<SteveHost>,
    /// The controller host running the lean clusters' controllers; `None` when it is off.
    controllers: Option<Arc<ControllerHost>>,
    /// Held for the agent's lifetime: a second agent on the same data directory would run a second
    /// reconcile loop over the same clusters.
    _lock: File,
}

impl RunningAgent {
    pub async fn start(
        settings: &Settings,
        agent_settings: &AgentSettings,
    ) -> anyhow::Result<Self> {
        let lock = blocking({
            let settings = settings.clone();
            move || {
                settings.ensure_private_dirs()?;
                lock_data_dir(&settings.data_dir)
            }
        })
        .await?;
        let toolchain = provision_toolchain(&settings.toolchain_options()).await?;
        let state_db = settings.state_db();
        let store = blocking(move || Ok(Store::open(&state_db)?)).await?;
        let mut kwok = settings.kwok();
        kwok.request_audit = agent_settings.request_audit;
        let mut manager = ClusterManager::new(&kwok, toolchain, store);
        let controllers = if agent_settings.controller_host {
            let host = Arc::new(start_controller_host(settings).await?);
            manager = manager.with_controller_host(host.clone());
            Some(host)
        } else {
            None
        };
        let rancher = RancherClient::new(agent_settings.rancher.clone())
            .await
            .context("setting up the Rancher client")?;
        // Fail fast, before anything is created, on a wrong token or an unreachable Rancher.
        rancher
            .check_access()
            .await
            .context("checking access to Rancher")?;
        let mut config = AgentConfig {
            concurrency: agent_settings.concurrency,
            instance_id: agent_settings.instance_id.clone(),
            rancher_poll: agent_settings.rancher_poll,
            rancher_gone_after: agent_settings.rancher_gone_after,
            shard: agent_settings.shard.clone(),
            ..AgentConfig::default()
        };
        config.tunnel.backoff.cap = agent_settings.reconnect_max;
        let steve = if agent_settings.steve.enabled {
            let host = start_steve_host(settings, agent_settings).await?;
            config.tunnel.steve = Some(SteveProxy::new(host.socket()));
            Some(host)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(agent_settings.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (use --listen)", agent_settings.listen)
            })?;
        let url = format!("http://{}", announced_addr(listener.local_addr()?));
        let store = manager.store().clone();
        let (agent, reconcile) = Agent::start(config, manager, rancher).await?;
        let limits = Limits {
            max_clusters: u32::from(settings.ports.blocks),
        };
        let runner = Runner::new(agent.clone(), store, agent_settings.profile, limits).await?;
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(
            listener,
            agent.clone(),
            runner.clone(),
            agent_settings.profile,
            agent_settings.api_token.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let running = Self {
            agent,
            runner,
            url,
            data_dir: settings.data_dir.clone(),
            server,
            stop_server,
            reconcile,
            steve,
            controllers,
            _lock: lock,
        };
        // The token goes into the private discovery file so the CLI of the same user can call
        // the API; nobody else can read the file.
        let written = blocking({
            let (data_dir, url) = (running.data_dir.clone(), running.url.clone());
            let token = agent_settings.api_token.clone();
            move || {
                Ok(api::discovery::write_with_token(
                    &data_dir,
                    &url,
                    token.as_ref(),
                )?)
            }
        })
        .await;
        if let Err(err) = written {
            // Not left running half-announced: the tasks end before the error is returned.
            if let Err(stop_err) = running.stop().await {
                tracing::warn!(error = %format!("{stop_err:#}"), "stopping after a failed start");
            }
            return Err(err);
        }
        Ok(running)
    }

    /// Stops the API and the reconcile loop and closes every tunnel, awaiting every task; the
    /// discovery file goes first, so the CLI stops calling an agent on its way out.
    pub async fn stop(self) -> anyhow::Result<()> {
        let data_dir = self.data_dir.clone();
        // Shut down even when the file cannot be removed; its error is reported afterwards.
        let removed = blocking(move || Ok(api::discovery::remove(&data_dir)?)).await;
        let _ = self.stop_server.send(());
        self.runner.shutdown().await;
        self.agent.shutdown().await;
        let _ = self.reconcile.await;
        // After the tunnels: nothing forwards to the host any more.
        if let Some(steve) = &self.steve {
            steve.shutdown().await;
        }
        // After the reconcile loop: nothing registers clusters any more. The clusters keep
        // running (as they do when the agent stops); a new agent registers them again.
        if let Some(controllers) = &self.controllers {
            controllers.shutdown().await;
        }
        self.server.await.context("API server task")??;
        removed
    }
}

/// The steve host binary (built on first use, like the rest of the toolchain) started under
/// the agent's supervision, its socket in `<data-dir>/run` and its log in `<data-dir>/logs`.
async fn start_steve_host(
    settings: &Settings,
    agent_settings: &AgentSettings,
) -> anyhow::Result<SteveHost> {
    let opts = settings.toolchain_options();
    // A usable binary is taken as found, without the install lock: a read-only cache (the
    // container image) cannot hold the lock file, and there is nothing to install.
    let found = toolchain::status(&opts)
        .await
        .into_iter()
        .find(|s| s.component == Component::SteveHost && s.usable)
        .and_then(|s| s.path);
    let binary = match found {
        Some(path) => path,
        None => {
            toolchain::install_component(&opts, Component::SteveHost, Progress::auto())
                .await
                .context("providing the steve host (or run with --steve=false)")?
                .path
        }
    };
    Ok(SteveHost::start(SteveHostConfig {
        binary,
        run_dir: settings.data_dir.join("run"),
        clusters_dir: crate::steve::clusters_dir(&settings.kwok()),
        idle_timeout: agent_settings.steve.idle_timeout,
        log_file: settings.data_dir.join("logs").join("steve-host.log"),
        backoff: remotedialer::Backoff::default(),
    })
    .await?)
}

/// The controller host binary (built on first use) started under the agent's supervision, its
/// socket in `<data-dir>/run` and its log in `<data-dir>/logs`.
async fn start_controller_host(settings: &Settings) -> anyhow::Result<ControllerHost> {
    let binary = toolchain::install_component(
        &settings.toolchain_options(),
        Component::ControllerHost,
        Progress::auto(),
    )
    .await
    .context("providing the controller host (or run with --controller-host=false)")?
    .path;
    Ok(ControllerHost::start(ControllerHostConfig {
        binary,
        run_dir: settings.data_dir.join("run"),
        clusters_dir: crate::steve::clusters_dir(&settings.kwok()),
        controllers: crate::controllers::LEAN_CONTROLLERS.to_string(),
        log_file: settings.data_dir.join("logs").join("controller-host.log"),
        backoff: remotedialer::Backoff::default(),
    })
    .await?)
}

/// Runs file-system work (locks, SQLite, small files) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("blocking task")?
}

/// The address the CLI should connect to: an agent listening on all interfaces is reached
/// through loopback (`0.0.0.0` names no host to connect to, even if Linux happens to accept it).
fn announced_addr(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, local.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, local.port()))
        }
        _ => local,
    }
}

/// How long a start waits for the data dir's lock. A child forked by this process (or, in
/// tests, by another agent in the same process) holds a copy of the lock's file description
/// until it execs, so a lock released just now can still be held for a moment; an agent that
/// really runs holds it for longer than this.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// Runs on a blocking thread (it sleeps between attempts).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("agent.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let locked = file
            .try_lock_exclusive()
            .with_context(|| format!("locking {}", path.display()))?;
        if locked {
            return Ok(file);
        }
        if Instant::now() >= deadline {
            bail!(
                "another agent is already running on {} (its API address is in agent.json there)",
                data_dir.display()
            );
        }
        std::thread::sleep(LOCK_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_released_within_the_wait_is_taken_and_a_held_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Another description of the same lock file, as a forked child that has not exec'd yet
        // holds one.
        let other = File::create(dir.path().join("agent.lock")).unwrap();
        assert!(other.try_lock_exclusive().unwrap());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(other);
        });
        let started = Instant::now();
        let lock = lock_data_dir(dir.path()).expect("taken once the other copy is closed");
        assert!(started.elapsed() >= Duration::from_millis(250));
        release.join().unwrap();

        let err = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another agent is already running"), "{err}");
        drop(lock);
    }
}
