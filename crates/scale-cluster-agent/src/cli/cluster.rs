//! `scale-cluster-agent cluster ...`: KWOK cluster commands.

use clap::Subcommand;

use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List clusters.
    List,
}

pub async fn run(_settings: &Settings, _cmd: ClusterCommand) -> anyhow::Result<()> {
    anyhow::bail!("cluster commands are not implemented yet")
}
