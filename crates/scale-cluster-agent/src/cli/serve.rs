//! `scale-cluster-agent serve`: the long-running agent ([`RunningAgent`]) in the foreground until
//! SIGINT/SIGTERM, which closes every tunnel; the KWOK clusters keep running and are re-adopted by
//! the next start.

use clap::Args;

use crate::app::RunningAgent;
use crate::config::{RancherArgs, Settings, ShardArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub rancher: RancherArgs,
    #[command(flatten)]
    pub shard: ShardArgs,
}

pub async fn run(settings: &Settings, args: ServeArgs) -> anyhow::Result<()> {
    let mut agent_settings = args.rancher.resolve(settings)?;
    args.shard.apply(settings, &mut agent_settings)?;
    let running = RunningAgent::start(settings, &agent_settings).await?;
    eprintln!(
        "agent API on {} (Ctrl-C to stop; clusters keep running)",
        running.url
    );
    shutdown_signal().await;
    eprintln!("stopping: closing tunnels");
    running.stop().await
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
