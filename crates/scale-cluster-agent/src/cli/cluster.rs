//! `scale-cluster-agent cluster ...`: cluster commands.
//!
//! When an agent runs on this data directory (`agent.json` names a live process and its `/health`
//! answers), `create`, `list`, `get` and `delete` go through its HTTP API, so the agent's database
//! stays the one source of truth and its clusters are registered with Rancher; `create` then waits
//! (with a progress bar) until every new cluster is active. Without an agent they work straight on
//! the KWOK cluster manager, creating KWOK-only clusters. `start`, `stop`, `scale`, `kubeconfig` and
//! `logs` always work directly on the KWOK clusters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;

use super::output::{
    format_duration, or_none, print_object, shorten, time_and_age, Output, OutputArgs, Table,
};
use super::progress::{self, Until};
use crate::api::{discovery, AgentClient, Cluster};
use crate::config::Settings;
use crate::kwok::names;
use crate::kwok::{
    ClusterInfo, ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use crate::store::{AgentPhase, Store};
use crate::toolchain;

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
    /// Start a stopped cluster.
    Start { name: String },
    /// Stop a cluster's processes, keeping its data.
    Stop { name: String },
    /// Set a cluster's node count (pods follow the cluster's population profile).
    Scale {
        name: String,
        #[arg(long)]
        nodes: u32,
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
    /// Node count (overrides the population profile's). KWOK-only clusters.
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

/// Opens the state database and the manager, after finishing any operation a crashed process left.
pub async fn open_manager(settings: &Settings) -> anyhow::Result<ClusterManager> {
    let toolchain = toolchain::locate(&settings.toolchain_options()).await?;
    settings.ensure_private_dirs()?;
    let store = Store::open(&settings.state_db())?;
    let manager = ClusterManager::new(&settings.kwok(), toolchain, store);
    for name in manager.recover().await? {
        eprintln!("cleaned up cluster {name:?}, left half-done by an interrupted command");
    }
    Ok(manager)
}

pub async fn run(settings: &Settings, cmd: ClusterCommand) -> anyhow::Result<()> {
    let agent = match &cmd {
        ClusterCommand::Create(_)
        | ClusterCommand::List(_)
        | ClusterCommand::Get { .. }
        | ClusterCommand::Delete { .. } => running_agent(settings).await,
        _ => None,
    };
    match (cmd, agent) {
        (ClusterCommand::Create(args), Some(agent)) => agent_create(&agent, args).await,
        (ClusterCommand::List(out), Some(agent)) => {
            let clusters = agent.list().await?;
            print_agent_clusters(&agent, &clusters, out.output)
        }
        (ClusterCommand::Get { name, output }, Some(agent)) => {
            let cluster = agent.get(&name).await?;
            if !print_object(&cluster, output.output)? {
                print_agent_details(&agent, &cluster);
            }
            Ok(())
        }
        (
            ClusterCommand::Delete {
                name,
                all,
                wait,
                timeout,
            },
            Some(agent),
        ) => agent_delete(&agent, name, all, wait, timeout).await,
        (cmd, _) => direct(settings, cmd).await,
    }
}

/// The running agent on this data directory, if `agent.json` names a live process and its API
/// answers. A live pid whose API does not answer is reported, then ignored.
async fn running_agent(settings: &Settings) -> Option<AgentClient> {
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

/// The KWOK-only path: straight onto the cluster manager.
async fn direct(settings: &Settings, cmd: ClusterCommand) -> anyhow::Result<()> {
    let manager = open_manager(settings).await?;
    match cmd {
        ClusterCommand::Create(args) => create(&manager, args).await,
        ClusterCommand::List(out) => {
            let clusters = manager.list().await?;
            print_clusters(&clusters, out.output)
        }
        ClusterCommand::Get { name, output } => {
            let info = manager.get(&name).await?;
            if !print_object(&info, output.output)? {
                print_details(&info);
            }
            Ok(())
        }
        ClusterCommand::Delete { name, all, .. } => {
            let names = match (name, all) {
                (Some(name), _) => vec![name],
                (None, _) => manager.list().await?.into_iter().map(|c| c.name).collect(),
            };
            for name in names {
                manager.delete(&name).await?;
                println!("deleted cluster {name}");
            }
            Ok(())
        }
        ClusterCommand::Start { name } => {
            let info = manager.start(&name).await?;
            println!("started cluster {} ({})", info.name, info.server);
            Ok(())
        }
        ClusterCommand::Stop { name } => {
            manager.stop(&name).await?;
            println!("stopped cluster {name}");
            Ok(())
        }
        ClusterCommand::Scale { name, nodes } => {
            let info = manager.scale(&name, nodes).await?;
            println!(
                "cluster {} now has {} nodes ({} pods per node)",
                info.name, info.nodes, info.pods_per_node
            );
            Ok(())
        }
        ClusterCommand::Kubeconfig { name, path } => {
            manager.get(&name).await?;
            let file = manager.kubeconfig_path(&name);
            if path {
                println!("{}", file.display());
            } else {
                let text = tokio::fs::read_to_string(&file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                print!("{text}");
            }
            Ok(())
        }
        ClusterCommand::Logs { name, component } => logs(&manager, &name, component).await,
    }
}

async fn create(manager: &ClusterManager, args: CreateArgs) -> anyhow::Result<()> {
    eprintln!(
        "no agent running: creating KWOK-only clusters, not registered with Rancher \
         (run `scale-cluster-agent serve` first to register them)"
    );
    let mut population = match &args.population {
        Some(path) => PopulationProfile::from_file(path)?,
        None => PopulationProfile::default(),
    };
    if let Some(nodes) = args.nodes {
        population.nodes = nodes;
    }
    let names = match (&args.name, args.count, &args.prefix) {
        (Some(name), _, _) => vec![name.clone()],
        (None, Some(count), Some(prefix)) => next_names(manager, prefix, count).await?,
        _ => bail!("give a cluster NAME, or --count N with --prefix P"),
    };
    let results = create_many(
        manager,
        &names,
        args.profile.unwrap_or_default(),
        &population,
        args.parallel.unwrap_or(2),
    )
    .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    for result in &results {
        match result {
            Ok(info) => print_reach(info),
            Err((name, err)) => eprintln!("cluster {name}: {err:#}"),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} clusters failed to create", names.len());
    }
    Ok(())
}

/// Creates `names` with at most `parallel` creations in flight, showing a progress bar.
pub async fn create_many(
    manager: &ClusterManager,
    names: &[String],
    profile: ComponentProfile,
    population: &PopulationProfile,
    parallel: usize,
) -> Vec<Result<ClusterInfo, (String, anyhow::Error)>> {
    let bar = Arc::new(progress::bar(names.len() as u64));
    let started = Instant::now();
    let results = futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let bar = bar.clone();
            let req = CreateRequest {
                name: name.clone(),
                profile,
                population: population.clone(),
            };
            async move {
                bar.set_message(format!("creating {name}"));
                let result = manager
                    .create(req)
                    .await
                    .map_err(|e| (name.clone(), e.into()));
                match &result {
                    Ok(_) => bar.println(format!("✔ {name} ready")),
                    Err((_, err)) => bar.println(format!("✘ {name}: {err}")),
                }
                bar.inc(1);
                result
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    bar.finish_with_message(format!("done in {:.1}s", started.elapsed().as_secs_f64()));
    results
}

/// `count` new names `<prefix>-NNNNN` (numbered as the agent numbers them), after the highest
/// existing `<prefix>-N`.
async fn next_names(
    manager: &ClusterManager,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let existing = manager.store().list().await?;
    Ok(names::next_in_series(
        prefix,
        existing.iter().map(|c| c.name.as_str()),
        count,
    ))
}

fn print_reach(info: &ClusterInfo) {
    println!(
        "cluster {name}: {server}\n  kubectl --kubeconfig {kc} get nodes",
        name = info.name,
        server = info.server,
        kc = info.kubeconfig.display()
    );
}

fn print_clusters(clusters: &[ClusterInfo], output: Output) -> anyhow::Result<()> {
    if print_object(clusters, output)? {
        return Ok(());
    }
    let wide = output == Output::Wide;
    let mut headers = vec![
        "NAME",
        "HEALTH",
        "PROFILE",
        "APISERVER",
        "NODES",
        "PODS/NODE",
    ];
    if wide {
        headers.extend(["PHASE", "KUBECONFIG", "LAST ERROR"]);
    }
    let mut table = Table::new(headers);
    for c in clusters {
        let mut row = vec![
            c.name.clone(),
            c.health.to_string(),
            c.profile.clone(),
            c.server.clone(),
            c.nodes.to_string(),
            c.pods_per_node.to_string(),
        ];
        if wide {
            row.extend([
                c.phase.to_string(),
                c.kubeconfig.display().to_string(),
                or_none(c.last_error.as_deref()),
            ]);
        }
        table.row(row);
    }
    print_table(&table);
    Ok(())
}

/// Prints a table, or, like kubectl, says on stderr that there is nothing to list.
fn print_table(table: &Table) {
    if table.is_empty() {
        eprintln!("No clusters found.");
    } else {
        print!("{table}");
    }
}

fn print_details(info: &ClusterInfo) {
    println!("name:       {}", info.name);
    println!("health:     {} (phase {})", info.health, info.phase);
    println!("profile:    {}", info.profile);
    println!(
        "apiserver:  {} (ready: {})",
        info.server, info.apiserver_ready
    );
    println!("kubeconfig: {}", info.kubeconfig.display());
    println!(
        "nodes:      {} ({} pods per node)",
        info.nodes, info.pods_per_node
    );
    let p = &info.ports;
    println!(
        "ports:      apiserver {} etcd {}/{} controller-manager {} scheduler {} kwok {}",
        p.kube_apiserver,
        p.etcd_client,
        p.etcd_peer,
        p.kube_controller_manager,
        p.kube_scheduler,
        p.kwok_controller
    );
    for c in &info.components {
        let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "  {:<24} pid {:<8} {}",
            c.name,
            pid,
            if c.alive { "running" } else { "not running" }
        );
    }
    if let Some(err) = &info.last_error {
        println!("last error: {err}");
    }
}

async fn logs(
    manager: &ClusterManager,
    name: &str,
    component: Option<String>,
) -> anyhow::Result<()> {
    let info = manager.get(name).await?;
    match component {
        Some(component) => {
            let path = manager.log_path(name, &component);
            let text = tokio::fs::read_to_string(&path).await.with_context(|| {
                let known: Vec<_> = info.components.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "no log for component {component:?} at {} (components: {})",
                    path.display(),
                    known.join(", ")
                )
            })?;
            print!("{text}");
        }
        None => {
            let mut table = Table::new(["COMPONENT", "BYTES", "PATH"]);
            for c in &info.components {
                let path = manager.log_path(name, &c.name);
                // A component that has not logged yet has no file: size 0.
                let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
                table.row([c.name.clone(), size.to_string(), path.display().to_string()]);
            }
            print!("{table}");
        }
    }
    Ok(())
}

/// How long the CLI waits for a discovered agent's `/health` before working on KWOK directly.
const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a waiting command asks the agent: often enough for a lively progress bar, rare enough
/// to cost the agent nothing next to its own work.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

async fn agent_create(agent: &AgentClient, args: CreateArgs) -> anyhow::Result<()> {
    if args.population.is_some() || args.nodes.is_some() || args.parallel.is_some() {
        bail!(
            "--population, --nodes and --parallel apply to KWOK-only clusters; the agent at {} \
             populates and brings up clusters as its `serve` options say (stop it to create \
             KWOK-only clusters)",
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
            println!(
                "cluster {} accepted ({}, profile {})",
                cluster.name, cluster.phase, cluster.profile
            );
        }
        println!("the agent brings them up in the background; `scale-cluster-agent cluster list` shows progress");
        return Ok(());
    }
    let names: Vec<String> = created.into_iter().map(|c| c.name).collect();
    let clusters = wait_until_settled(agent, &names, args.timeout).await?;
    let mut problems = Vec::new();
    for name in &names {
        match clusters.get(name) {
            Some(c) if c.phase == AgentPhase::Active => println!(
                "cluster {name}: active in Rancher as {} (apiserver {})",
                c.rancher_cluster_id.as_deref().unwrap_or("?"),
                c.apiserver.as_deref().unwrap_or("?")
            ),
            Some(c) if c.phase == AgentPhase::Failed => problems.push((
                name,
                format!(
                    "{name} failed: {}",
                    c.last_error.as_deref().unwrap_or("no error recorded")
                ),
            )),
            Some(c) => problems.push((
                name,
                format!(
                    "{name} still {} after {}{}",
                    c.phase,
                    format_duration(args.timeout),
                    c.last_error
                        .as_deref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
            )),
            None => problems.push((name, format!("{name} was deleted while waiting"))),
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

/// Follows the clusters in `names` until each is active, failed or gone, or `timeout` passes;
/// returns the last view of each cluster still there.
async fn wait_until_settled(
    agent: &AgentClient,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<HashMap<String, Cluster>> {
    eprintln!(
        "waiting up to {} for {} cluster(s) to become active (Ctrl-C stops waiting; the agent carries on)",
        format_duration(timeout),
        names.len()
    );
    progress::follow(
        || async { agent.list().await.context("asking the agent while waiting") },
        names,
        Until::Settled,
        Some(Instant::now() + timeout),
    )
    .await
}

async fn agent_delete(
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
        println!("no clusters");
        return Ok(());
    }
    for name in &names {
        agent.delete(name).await?;
        println!("deleting cluster {name}");
    }
    if !wait {
        println!("the agent removes them from Rancher and KWOK in the background; `scale-cluster-agent cluster list` shows progress (or pass --wait)");
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
            println!("deleted {} cluster(s)", names.len());
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

fn print_agent_clusters(
    agent: &AgentClient,
    clusters: &[Cluster],
    output: Output,
) -> anyhow::Result<()> {
    if print_object(clusters, output)? {
        return Ok(());
    }
    eprintln!("via agent at {}", agent.url());
    let wide = output == Output::Wide;
    let mut headers = vec![
        "NAME",
        "PHASE",
        "RANCHER ID",
        "RANCHER STATE",
        "TUNNELS (MAIN/STEVE)",
        "AGE",
    ];
    if wide {
        headers.extend(["PROFILE", "APISERVER", "ATTEMPTS"]);
    }
    headers.push("LAST ERROR");
    let mut table = Table::new(headers);
    for c in clusters {
        let mut row = vec![
            c.name.clone(),
            c.phase.to_string(),
            or_none(c.rancher_cluster_id.as_deref()),
            or_none(c.rancher_state.as_deref()),
            format!("{}/{}", c.tunnels.main, c.tunnels.steve),
            super::output::age_now(c.created_at),
        ];
        if wide {
            row.extend([
                c.profile.clone(),
                or_none(c.apiserver.as_deref()),
                c.attempts.to_string(),
            ]);
        }
        // The whole error in wide output; the default keeps one screen line per cluster.
        row.push(match (&c.last_error, wide) {
            (Some(err), true) => err.clone(),
            (Some(err), false) => shorten(err, 60),
            (None, _) => String::new(),
        });
        table.row(row);
    }
    print_table(&table);
    Ok(())
}

fn print_agent_details(agent: &AgentClient, c: &Cluster) {
    eprintln!("via agent at {}", agent.url());
    println!("name:          {}", c.name);
    println!("phase:         {} (attempts {})", c.phase, c.attempts);
    println!("profile:       {}", c.profile);
    println!(
        "rancher:       {} (state {})",
        or_none(c.rancher_cluster_id.as_deref()),
        or_none(c.rancher_state.as_deref())
    );
    println!(
        "tunnels:       main {}, steve {}",
        c.tunnels.main, c.tunnels.steve
    );
    println!("apiserver:     {}", or_none(c.apiserver.as_deref()));
    println!("created:       {}", time_and_age(c.created_at));
    if let Some(at) = c.active_at {
        println!("active since:  {}", time_and_age(at));
    }
    if let Some(err) = &c.last_error {
        println!("last error:    {err}");
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
        use clap::Parser;
        let parse = |args: &[&str]| {
            let cli = crate::cli::Cli::try_parse_from(
                ["scale-cluster-agent", "cluster", "create"]
                    .iter()
                    .chain(args),
            )
            .expect("parses");
            match cli.command {
                crate::cli::Command::Cluster(ClusterCommand::Create(args)) => args,
                other => panic!("parsed as {other:?}"),
            }
        };
        let default = parse(&["demo"]);
        assert!(!default.no_wait);
        assert_eq!(default.timeout, Duration::from_secs(600));
        assert_eq!(default.profile, None);
        assert!(parse(&["demo", "--no-wait"]).no_wait);
        assert!(!parse(&["demo", "--no-wait", "--wait"]).no_wait);
        let bulk = parse(&[
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
}
