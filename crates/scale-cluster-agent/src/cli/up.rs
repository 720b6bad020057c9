//! `scale-cluster-agent up`: the main job with embedded defaults.

use clap::Args;

use crate::config::Settings;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many simulated clusters to create.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
}

pub async fn run(_settings: &Settings, _args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("up is not implemented yet")
}
