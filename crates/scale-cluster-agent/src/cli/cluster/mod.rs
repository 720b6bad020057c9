//! `scale-cluster-agent cluster ...`: the clap commands and their dispatch.
//!
//! When an agent runs on this data directory (`agent.json` names a live process and its `/health`
//! answers), every verb that changes or shows a cluster (`create`, `list`, `get`, `delete`,
//! `start`, `stop`, `scale`) goes through its HTTP API ([`agent`]), so the agent's database stays
//! the one source of truth: its clusters are registered with Rancher, and a stopped cluster is
//! one the agent knows it must not heal. Without an agent they work straight on the KWOK cluster
//! manager ([`direct`]), on KWOK-only clusters. `kubeconfig` and `logs` read the cluster's files,
//! which are the same either way. [`print`] renders both kinds of cluster.

mod agent;
pub(super) use agent::running as running_agent;
mod direct;
mod print;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::output::OutputArgs;
use crate::config::Settings;
use crate::kwok::ComponentProfile;

pub use direct::{create_many, open_manager};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create one cluster (NAME) or many (--count N --prefix P).
    Create(CreateArgs),
    /// List clusters: the agent's view (phase, Rancher, tunnels) when one runs, else KWOK health.
    List(OutputArgs),
    /// Show one cluster.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a cluster (or all of them): processes, files and port block (and, through a running
    /// agent, the cluster in Rancher).
    Delete {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Delete every cluster.
        #[arg(long)]
        all: bool,
        /// With a running agent: wait until the clusters are gone (the agent deletes in the
        /// background). Without one, deletion is always complete when the command returns.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 90s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Start a stopped cluster (through a running agent: back to active in Rancher).
    Start {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop a cluster's processes, keeping its data (through a running agent: its tunnels close
    /// and the agent no longer heals it).
    Stop {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set a cluster's node count (pods follow the cluster's population profile).
    Scale {
        name: String,
        #[arg(long)]
        nodes: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print a cluster's admin kubeconfig (or its path with --path).
    Kubeconfig {
        name: String,
        #[arg(long)]
        path: bool,
    },
    /// Print a component's log, or list the log files.
    Logs {
        name: String,
        /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler or kwok-controller.
        component: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Cluster name (RFC 1123 label). Omit with --count.
    #[arg(required_unless_present = "count", conflicts_with = "count")]
    pub name: Option<String>,
    /// Create this many clusters named <prefix>-NNNNN, numbered after the highest existing one.
    #[arg(long, requires = "prefix")]
    pub count: Option<usize>,
    /// Name prefix for --count.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Component profile: `lean` (no scheduler, minimal controller-manager) or `full`. Default:
    /// the running agent's profile, else `lean`.
    #[arg(long)]
    pub profile: Option<ComponentProfile>,
    /// Population profile (YAML: nodes, podsPerNode, namespaces, serviceAccounts, node, pod).
    /// KWOK-only clusters; a running agent populates clusters as its `serve` options say.
    #[arg(long)]
    pub population: Option<PathBuf>,
    /// Node count (overrides the population profile's). KWOK-only clusters; with a running agent,
    /// use `cluster scale` once created.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// How many clusters to create at once with --count (default 2). KWOK-only clusters; a
    /// running agent uses its own concurrency.
    #[arg(long)]
    pub parallel: Option<usize>,
    /// With a running agent: wait until every new cluster is active (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// With a running agent: return as soon as the agent has accepted the clusters.
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
    /// How long to wait for the clusters to become active, e.g. 90s, 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// How `start`, `stop` and `scale` wait for a running agent to do what was asked. Without an
/// agent the change is complete when the command returns.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// With a running agent: return as soon as the agent has accepted the change.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the agent to apply it, e.g. 90s, 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

pub async fn run(settings: &Settings, cmd: ClusterCommand) -> anyhow::Result<()> {
    let through_agent = !matches!(
        cmd,
        ClusterCommand::Kubeconfig { .. } | ClusterCommand::Logs { .. }
    );
    let agent = if through_agent {
        agent::running(settings).await
    } else {
        None
    };
    match agent {
        Some(agent) => agent::run(&agent, cmd).await,
        None => direct::run(settings, cmd).await,
    }
}

/// `90s`, `10m`, `1h`, `500ms`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 10m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "" | "s" => Some(value),
        "m" => value.checked_mul(60),
        "h" => value.checked_mul(3600),
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    seconds
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> ClusterCommand {
        let cli =
            crate::cli::Cli::try_parse_from(["scale-cluster-agent", "cluster"].iter().chain(args))
                .expect("parses");
        match cli.command {
            crate::cli::Command::Cluster(cmd) => cmd,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }

    #[test]
    fn create_waits_by_default_and_no_wait_wins_when_last() {
        let create = |args: &[&str]| match parse(&[&["create"], args].concat()) {
            ClusterCommand::Create(args) => args,
            other => panic!("parsed as {other:?}"),
        };
        let default = create(&["demo"]);
        assert!(!default.no_wait);
        assert_eq!(default.timeout, Duration::from_secs(600));
        assert_eq!(default.profile, None);
        assert!(create(&["demo", "--no-wait"]).no_wait);
        assert!(!create(&["demo", "--no-wait", "--wait"]).no_wait);
        let bulk = create(&[
            "--count",
            "3",
            "--prefix",
            "sim",
            "--profile",
            "full",
            "--timeout",
            "90s",
        ]);
        assert_eq!(bulk.profile, Some(ComponentProfile::Full));
        assert_eq!(bulk.timeout, Duration::from_secs(90));
    }

    #[test]
    fn start_stop_and_scale_wait_unless_told_not_to() {
        match parse(&["stop", "demo"]) {
            ClusterCommand::Stop { name, wait } => {
                assert_eq!(name, "demo");
                assert!(!wait.no_wait);
                assert_eq!(wait.timeout, Duration::from_secs(600));
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["start", "demo", "--no-wait"]) {
            ClusterCommand::Start { wait, .. } => assert!(wait.no_wait),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["scale", "demo", "--nodes", "3", "--timeout", "90s"]) {
            ClusterCommand::Scale { nodes, wait, .. } => {
                assert_eq!(nodes, 3);
                assert_eq!(wait.timeout, Duration::from_secs(90));
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
