//! `scale-cluster-agent serve`: the long-running agent. It owns the tunnels and the reconcile loop,
//! serves the HTTP API, and on SIGINT/SIGTERM closes every tunnel and exits; the KWOK clusters keep
//! running and are re-adopted by the next start. One agent per data directory (a lock file).
//! The data and kwok directories are made private (0700) first; the API token, if any, goes into
//! the private discovery file for the CLI.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use fs4::fs_std::FileExt;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentConfig};
use crate::api;
use crate::config::{AgentSettings, RancherArgs, Settings};
use crate::kwok::ClusterManager;
use crate::rancher::RancherClient;
use crate::store::Store;
use crate::toolchain::{self, Progress, ToolchainOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub rancher: RancherArgs,
}

pub async fn run(settings: &Settings, args: ServeArgs) -> anyhow::Result<()> {
    let agent_settings = args.rancher.resolve(settings)?;
    let running = RunningAgent::start(settings, &agent_settings).await?;
    eprintln!(
        "agent API on {} (Ctrl-C to stop; clusters keep running)",
        running.url
    );
    shutdown_signal().await;
    eprintln!("stopping: closing tunnels");
    running.stop().await
}

/// An agent with its HTTP API, started by `serve` or `up`.
pub struct RunningAgent {
    pub agent: Agent,
    pub url: String,
    data_dir: std::path::PathBuf,
    server: JoinHandle<std::io::Result<()>>,
    stop_server: tokio::sync::oneshot::Sender<()>,
    reconcile: JoinHandle<()>,
    /// Held for the agent's lifetime: a second agent on the same data directory would run a second
    /// reconcile loop over the same clusters.
    _lock: File,
}

impl RunningAgent {
    pub async fn start(
        settings: &Settings,
        agent_settings: &AgentSettings,
    ) -> anyhow::Result<Self> {
        settings.ensure_private_dirs()?;
        let lock = lock_data_dir(&settings.data_dir)?;
        let opts = ToolchainOptions::from_settings(settings);
        let toolchain = match toolchain::locate(&opts) {
            Ok(toolchain) => toolchain,
            Err(_) => {
                eprintln!("provisioning the KWOK and Kubernetes toolchain (first run only)");
                toolchain::install(&opts, Progress::auto()).await?
            }
        };
        let store = Store::open(&settings.state_db())?;
        let manager = ClusterManager::new(settings, toolchain, store);
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
            ..AgentConfig::default()
        };
        config.tunnel.backoff.cap = agent_settings.reconnect_max;
        let listener = tokio::net::TcpListener::bind(agent_settings.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (use --listen)", agent_settings.listen)
            })?;
        let url = format!("http://{}", announced_addr(listener.local_addr()?));
        let (agent, reconcile) = Agent::start(config, manager, rancher).await?;
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(
            listener,
            agent.clone(),
            agent_settings.profile,
            agent_settings.api_token.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        // The token goes into the private discovery file so the CLI of the same user can call
        // the API; nobody else can read the file.
        api::discovery::write_with_token(
            &settings.data_dir,
            &url,
            agent_settings.api_token.as_ref(),
        )?;
        Ok(Self {
            agent,
            url,
            data_dir: settings.data_dir.clone(),
            server,
            stop_server,
            reconcile,
            _lock: lock,
        })
    }

    /// Stops the API and the reconcile loop and closes every tunnel.
    pub async fn stop(self) -> anyhow::Result<()> {
        api::discovery::remove(&self.data_dir)?;
        let _ = self.stop_server.send(());
        self.agent.shutdown().await;
        let _ = self.reconcile.await;
        self.server.await.context("API server task")??;
        Ok(())
    }
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

fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join("agent.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock_exclusive() {
        Ok(true) => Ok(file),
        _ => bail!(
            "another agent is already running on {} (its API address is in agent.json there)",
            data_dir.display()
        ),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
