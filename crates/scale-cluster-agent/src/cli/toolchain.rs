//! `scale-cluster-agent toolchain install|status`.

use clap::Subcommand;

use crate::config::Settings;

#[derive(Debug, Subcommand)]
pub enum ToolchainCommand {
    /// Find, build or download every binary a KWOK cluster needs.
    Install,
    /// Show each component's version, path and source.
    Status,
}

pub async fn run(_settings: &Settings, _cmd: ToolchainCommand) -> anyhow::Result<()> {
    anyhow::bail!("toolchain commands are not implemented yet")
}
