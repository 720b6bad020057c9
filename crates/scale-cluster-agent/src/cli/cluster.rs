//! `scale-cluster-agent cluster ...`: KWOK cluster commands, straight onto the cluster manager.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Settings;
use crate::kwok::{
    ClusterInfo, ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use crate::store::Store;
use crate::toolchain::{self, ToolchainOptions};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create one cluster (NAME) or many (--count N --prefix P).
    Create(CreateArgs),
    /// List clusters with their observed health.
    List(OutputArgs),
    /// Show one cluster.
    Get {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a cluster (or all of them): processes, files and port block.
    Delete {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Delete every cluster.
        #[arg(long)]
        all: bool,
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
    /// Create this many clusters named <prefix>-NNN, numbered after the highest existing one.
    #[arg(long, requires = "prefix")]
    pub count: Option<usize>,
    /// Name prefix for --count.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Component profile: `lean` (no scheduler, minimal controller-manager) or `full`.
    #[arg(long, default_value = "lean")]
    pub profile: ComponentProfile,
    /// Population profile (YAML: nodes, podsPerNode, namespaces, serviceAccounts, node, pod).
    #[arg(long)]
    pub population: Option<PathBuf>,
    /// Node count (overrides the population profile's).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// How many clusters to create at once with --count.
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Opens the state database and the manager, after finishing any operation a crashed process left.
pub async fn open_manager(settings: &Settings) -> anyhow::Result<ClusterManager> {
    let toolchain = toolchain::locate(&ToolchainOptions::from_settings(settings))?;
    let store = Store::open(&settings.state_db())?;
    let manager = ClusterManager::new(settings, toolchain, store);
    for name in manager.recover().await? {
        eprintln!("cleaned up cluster {name:?}, left half-done by an interrupted command");
    }
    Ok(manager)
}

pub async fn run(settings: &Settings, cmd: ClusterCommand) -> anyhow::Result<()> {
    let manager = open_manager(settings).await?;
    match cmd {
        ClusterCommand::Create(args) => create(&manager, args).await,
        ClusterCommand::List(out) => {
            let clusters = manager.list().await?;
            print_clusters(&clusters, out.output)
        }
        ClusterCommand::Get { name, output } => {
            let info = manager.get(&name).await?;
            match output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&info)?),
                Output::Table => print_details(&info),
            }
            Ok(())
        }
        ClusterCommand::Delete { name, all } => {
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
    let results = create_many(manager, &names, args.profile, &population, args.parallel).await;
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
    let bar = Arc::new(progress_bar(names.len() as u64));
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

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// `count` new names `<prefix>-NNN`, numbered after the highest existing `<prefix>-NNN`.
async fn next_names(
    manager: &ClusterManager,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let existing = manager.store().list().await?;
    let highest = existing
        .iter()
        .filter_map(|c| {
            c.name
                .strip_prefix(prefix)?
                .strip_prefix('-')?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    Ok((highest + 1..=highest + count)
        .map(|i| format!("{prefix}-{i:03}"))
        .collect())
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
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(clusters)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "NAME",
        "HEALTH",
        "PROFILE",
        "APISERVER",
        "NODES",
        "PODS/NODE",
        "KUBECONFIG",
    ]);
    for c in clusters {
        table.add_row([
            c.name.clone(),
            c.health.to_string(),
            c.profile.clone(),
            c.server.clone(),
            c.nodes.to_string(),
            c.pods_per_node.to_string(),
            c.kubeconfig.display().to_string(),
        ]);
    }
    println!("{table}");
    Ok(())
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
            for c in &info.components {
                let path = manager.log_path(name, &c.name);
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                println!("{:<24} {:>10} bytes  {}", c.name, size, path.display());
            }
        }
    }
    Ok(())
}
