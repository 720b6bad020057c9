//! The `cluster` verbs without an agent: straight onto the KWOK cluster manager, on KWOK-only
//! clusters (not registered with Rancher). Every change is complete when the command returns.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use futures::StreamExt;

use super::print;
use super::{ClusterCommand, CreateArgs};
use crate::cli::output::{out, outln, print_object, Table};
use crate::cli::progress;
use crate::config::Settings;
use crate::kwok::names;
use crate::kwok::{
    ClusterInfo, ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use crate::store::Store;
use crate::toolchain;

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

pub(super) async fn run(settings: &Settings, cmd: ClusterCommand) -> anyhow::Result<()> {
    let manager = open_manager(settings).await?;
    match cmd {
        ClusterCommand::Create(args) => create(&manager, args).await,
        ClusterCommand::List(out) => {
            let clusters = manager.list().await?;
            print::kwok_clusters(&clusters, out.output)
        }
        ClusterCommand::Get { name, output } => {
            let info = manager.get(&name).await?;
            if !print_object(&info, output.output)? {
                print::kwok_details(&info)?;
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
                outln!("deleted cluster {name}")?;
            }
            Ok(())
        }
        ClusterCommand::Start { name, .. } => {
            let info = manager.start(&name).await?;
            outln!("started cluster {} ({})", info.name, info.server)?;
            Ok(())
        }
        ClusterCommand::Stop { name, .. } => {
            manager.stop(&name).await?;
            outln!("stopped cluster {name}")?;
            Ok(())
        }
        ClusterCommand::Scale { name, nodes, .. } => {
            let info = manager.scale(&name, nodes).await?;
            outln!(
                "cluster {} now has {} nodes ({} pods per node)",
                info.name,
                info.nodes,
                info.pods_per_node
            )?;
            Ok(())
        }
        ClusterCommand::Kubeconfig { name, path } => {
            manager.get(&name).await?;
            let file = manager.kubeconfig_path(&name);
            if path {
                outln!("{}", file.display())?;
            } else {
                let text = tokio::fs::read_to_string(&file)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                out!("{text}")?;
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
            Ok(info) => print::reach(info)?,
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
            out!("{text}")?;
        }
        None => {
            let mut table = Table::new(["COMPONENT", "BYTES", "PATH"]);
            for c in &info.components {
                let path = manager.log_path(name, &c.name);
                // A component that has not logged yet has no file: size 0.
                let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
                table.row([c.name.clone(), size.to_string(), path.display().to_string()]);
            }
            out!("{table}")?;
        }
    }
    Ok(())
}
