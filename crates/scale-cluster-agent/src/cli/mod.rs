//! Command-line interface: clap definitions and thin dispatch into the library modules.

mod cluster;
mod preflight;
pub mod serve;
mod toolchain;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{GlobalArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "scale-cluster-agent",
    version,
    about = "Simulate many Rancher-imported clusters on real KWOK control planes"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `scale_cluster_agent=debug`.
    #[arg(long, env = "SCA_LOG", default_value = "warn", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision the toolchain if missing, create the default simulated clusters and print how to reach them.
    Up(up::UpArgs),
    /// Provision or inspect the KWOK and Kubernetes binaries.
    #[command(subcommand)]
    Toolchain(toolchain::ToolchainCommand),
    /// Check host limits that bite with many clusters, and say how to fix them.
    Preflight(preflight::PreflightArgs),
    /// Manage simulated clusters (through the running agent when there is one, else KWOK only).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run the agent: register clusters with Rancher, hold their tunnels, serve the HTTP API.
    Serve(serve::ServeArgs),
}

/// Entry point used by `main`.
pub fn main(cli: Cli) -> ExitCode {
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_args(&cli.global)?;
    match cli.command {
        Command::Up(args) => up::run(&settings, args).await,
        Command::Toolchain(cmd) => toolchain::run(&settings, cmd).await,
        Command::Preflight(args) => preflight::run(&settings, args).await,
        Command::Cluster(cmd) => cluster::run(&settings, cmd).await,
        Command::Serve(args) => serve::run(&settings, args).await,
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        // Catches clashing argument names between flattened option groups, which clap only
        // reports at run time.
        super::Cli::command().debug_assert();
    }
}
