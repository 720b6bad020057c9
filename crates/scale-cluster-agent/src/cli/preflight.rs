//! `scale-cluster-agent preflight [--fix]`.

use clap::Args;

use crate::config::Settings;

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Apply the fixes that can be applied (needs root).
    #[arg(long)]
    pub fix: bool,
}

pub async fn run(_settings: &Settings, _args: PreflightArgs) -> anyhow::Result<()> {
    anyhow::bail!("preflight is not implemented yet")
}
