//! The `cluster` verbs through a running agent's HTTP API: finding the agent (`agent.json` and
//! its `/health`), the requests, and waiting (with the shared progress loop) until the agent has
//! done what was asked: clusters active, stopped, scaled or gone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::print;
use super::{ClusterCommand, CreateArgs, WaitArgs};
use crate::api::{discovery, AgentClient, Cluster};
use crate::cli::output::{format_duration, outln, print_object};
use crate::cli::progress::{self, Until};
use crate::config::Settings;
use crate::store::AgentPhase;

/// How long the CLI waits for a discovered agent's `/health` before working on KWOK directly.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a waiting command asks the agent: often enough for a lively progress bar, rare enough
/// to cost the agent nothing next to its own work.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The running agent on this data directory, if `agent.json` names a live process and its API
/// answers. A live pid whose API does not answer is reported, then ignored.
pub(crate) async fn running(settings: &Settings) -> Option<AgentClient> {
    let found = discovery::read(&settings.data_dir)?;
    let unusable = |reason: String| {
        eprintln!(
            "warning: {} names agent pid {} at {}, but {reason}; working on KWOK directly",
            discovery::path(&settings.data_dir).display(),
            found.pid,
            found.url
        );
        None
    };
    let client = match AgentClient::new(&found.url) {
        Ok(client) => client.with_token(found.token.clone()),
        Err(err) => return unusable(err.to_string()),
    };
    // A live agent answers /health at once; a reused pid may belong to some process that
    // accepts connections and never answers.
    match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, client.health()).await {
        Ok(Ok(_)) => Some(client),
        Ok(Err(err)) => unusable(format!("its API did not answer ({err})")),
        Err(_) => unusable(format!(
            "its API did not answer within {}",
            format_duration(HEALTH_PROBE_TIMEOUT)
        )),
    }
}

pub(super) async fn run(agent: &AgentClient, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Create(args) => create(agent, args).await,
        ClusterCommand::List(out) => {
            let clusters = agent.list().await?;
            if out.output.is_table() {
                eprintln!("via agent at {}", agent.url());
            }
            print::agent_clusters(&clusters, out.output)
        }
        ClusterCommand::Get { name, output } => {
            let cluster = agent.get(&name).await?;
            if !print_object(&cluster, output.output)? {
                eprintln!("via agent at {}", agent.url());
                print::agent_details(&cluster)?;
            }
            Ok(())
        }
        ClusterCommand::Delete {
            name,
            all,
            wait,
            timeout,
        } => delete(agent, name, all, wait, timeout).await,
        ClusterCommand::Start { name, wait } => start(agent, &name, wait).await,
        ClusterCommand::Stop { name, wait } => stop(agent, &name, wait).await,
        ClusterCommand::Scale { name, nodes, wait } => scale(agent, &name, nodes, wait).await,
        // Files of the cluster, read the same with or without an agent.
        ClusterCommand::Kubeconfig { .. } | ClusterCommand::Logs { .. } => {
            bail!("internal: `cluster kubeconfig` and `cluster logs` do not go through the agent")
        }
    }
}

async fn create(agent: &AgentClient, args: CreateArgs) -> anyhow::Result<()> {
    if args.population.is_some() || args.nodes.is_some() || args.parallel.is_some() {
        bail!(
            "--population, --nodes and --parallel apply to KWOK-only clusters; the agent at {} \
             populates and brings up clusters as its `serve` options say (`cluster scale` sets \
             a cluster's node count; stop the agent to create KWOK-only clusters)",
            agent.url()
        );
    }
    eprintln!("via agent at {}", agent.url());
    let created = match (&args.name, args.count, &args.prefix) {
        (Some(name), _, _) => vec![agent.create(name, args.profile).await?],
        (None, Some(count), Some(prefix)) => agent.create_bulk(count, prefix, args.profile).await?,
        _ => bail!("give a cluster NAME, or --count N with --prefix P"),
    };
    if args.no_wait {
        for cluster in &created {
            outln!(
                "cluster {} accepted ({}, profile {})",
                cluster.name,
                cluster.phase,
                cluster.profile
            )?;
        }
        outln!("the agent brings them up in the background; `scale-cluster-agent cluster list` shows progress")?;
        return Ok(());
    }
    let names: Vec<String> = created.into_iter().map(|c| c.name).collect();
    let clusters = follow(agent, &names, Until::Settled, args.timeout).await?;
    let mut problems = Vec::new();
    for name in &names {
        match clusters.get(name) {
            Some(c) if c.phase == AgentPhase::Active => outln!(
                "cluster {name}: active in Rancher as {} (apiserver {})",
                c.rancher_cluster_id.as_deref().unwrap_or("?"),
                c.apiserver.as_deref().unwrap_or("?")
            )?,
            other => problems.push((name, problem(name, other, "active", args.timeout))),
        }
    }
    if !problems.is_empty() {
        for (_, problem) in &problems {
            eprintln!("✘ {problem}");
        }
        const NAMED: usize = 10;
        let mut named: Vec<&str> = problems
            .iter()
            .take(NAMED)
            .map(|(n, _)| n.as_str())
            .collect();
        let more = format!("and {} more", problems.len().saturating_sub(NAMED));
        if problems.len() > NAMED {
            named.push(&more);
        }
        bail!(
            "{} of {} clusters did not become active: {} (the agent keeps retrying failed \
             clusters with backoff; `scale-cluster-agent cluster list` shows them)",
            problems.len(),
            names.len(),
            named.join(", ")
        );
    }
    Ok(())
}

/// Why a cluster did not reach `goal`: failed, still on its way after `timeout`, or gone.
fn problem(name: &str, cluster: Option<&Cluster>, goal: &str, timeout: Duration) -> String {
    match cluster {
        Some(c) if c.phase == AgentPhase::Failed => format!(
            "{name} failed: {}",
            c.last_error.as_deref().unwrap_or("no error recorded")
        ),
        Some(c) => format!(
            "{name} still {} (not {goal}) after {}{}",
            c.phase,
            format_duration(timeout),
            c.last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        ),
        None => format!("{name} was deleted while waiting"),
    }
}

/// Follows the clusters in `names` until `until` holds for each (or it failed or is gone), or
/// `timeout` passes; returns the last view of each cluster still there.
async fn follow(
    agent: &AgentClient,
    names: &[String],
    until: Until,
    timeout: Duration,
) -> anyhow::Result<HashMap<String, Cluster>> {
    eprintln!(
        "waiting up to {} for {} cluster(s) to be {} (Ctrl-C stops waiting; the agent carries on)",
        format_duration(timeout),
        names.len(),
        until.goal()
    );
    progress::follow(
        || async { agent.list().await.context("asking the agent while waiting") },
        names,
        until,
        Some(Instant::now() + timeout),
    )
    .await
}

/// Follows one cluster until `until` holds; an error says why it does not.
async fn follow_one(
    agent: &AgentClient,
    name: &str,
    until: Until,
    timeout: Duration,
) -> anyhow::Result<Cluster> {
    let names = [name.to_string()];
    let mut last = follow(agent, &names, until, timeout).await?;
    match last.remove(name) {
        Some(cluster) if until.reached(&cluster) => Ok(cluster),
        other => bail!("{}", problem(name, other.as_ref(), until.goal(), timeout)),
    }
}

async fn stop(agent: &AgentClient, name: &str, wait: WaitArgs) -> anyhow::Result<()> {
    eprintln!("via agent at {}", agent.url());
    let cluster = agent.stop(name).await?;
    if wait.no_wait && cluster.phase != AgentPhase::Stopped {
        outln!("stopping cluster {name}: the agent closes its tunnels and stops its processes in the background")?;
        return Ok(());
    }
    follow_one(agent, name, Until::Stopped, wait.timeout).await?;
    outln!("stopped cluster {name} (its data is kept; `cluster start {name}` brings it back)")?;
    Ok(())
}

async fn start(agent: &AgentClient, name: &str, wait: WaitArgs) -> anyhow::Result<()> {
    eprintln!("via agent at {}", agent.url());
    agent.start(name).await?;
    if wait.no_wait {
        outln!("starting cluster {name}: the agent brings it back up in the background")?;
        return Ok(());
    }
    let cluster = follow_one(agent, name, Until::AllActive, wait.timeout).await?;
    outln!(
        "started cluster {name}: active in Rancher as {} (apiserver {})",
        cluster.rancher_cluster_id.as_deref().unwrap_or("?"),
        cluster.apiserver.as_deref().unwrap_or("?")
    )?;
    Ok(())
}

async fn scale(agent: &AgentClient, name: &str, nodes: u32, wait: WaitArgs) -> anyhow::Result<()> {
    eprintln!("via agent at {}", agent.url());
    let cluster = agent.scale(name, nodes).await?;
    if cluster.stop_requested {
        outln!("cluster {name} is stopped: it gets {nodes} nodes when it is started")?;
        return Ok(());
    }
    if wait.no_wait {
        outln!("scaling cluster {name} to {nodes} nodes in the background")?;
        return Ok(());
    }
    follow_one(agent, name, Until::Scaled, wait.timeout).await?;
    outln!("cluster {name} now has {nodes} nodes")?;
    Ok(())
}

async fn delete(
    agent: &AgentClient,
    name: Option<String>,
    all: bool,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    eprintln!("via agent at {}", agent.url());
    let names = match (name, all) {
        (Some(name), _) => vec![name],
        (None, _) => agent.list().await?.into_iter().map(|c| c.name).collect(),
    };
    if names.is_empty() {
        outln!("no clusters")?;
        return Ok(());
    }
    for name in &names {
        agent.delete(name).await?;
        outln!("deleting cluster {name}")?;
    }
    if !wait {
        outln!("the agent removes them from Rancher and KWOK in the background; `scale-cluster-agent cluster list` shows progress (or pass --wait)")?;
        return Ok(());
    }
    let bar = progress::bar(names.len() as u64);
    let deadline = Instant::now() + timeout;
    loop {
        let remaining: Vec<Cluster> = agent
            .list()
            .await
            .context("asking the agent while waiting")?
            .into_iter()
            .filter(|c| names.contains(&c.name))
            .collect();
        let deleted = names.len() - remaining.len();
        bar.set_position(deleted as u64);
        bar.set_message(format!("deleted {deleted} / total {}", names.len()));
        if remaining.is_empty() {
            bar.finish();
            outln!("deleted {} cluster(s)", names.len())?;
            return Ok(());
        }
        if Instant::now() >= deadline {
            bar.finish();
            let stuck: Vec<String> = remaining
                .iter()
                .map(|c| match &c.last_error {
                    Some(err) => format!("{} ({}: {err})", c.name, c.phase),
                    None => format!("{} ({})", c.name, c.phase),
                })
                .collect();
            bail!(
                "{} cluster(s) not deleted within {}: {}",
                stuck.len(),
                format_duration(timeout),
                stuck.join(", ")
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
