//! `scale-cluster-agent up`: the main job with embedded defaults. Provisions the toolchain if
//! anything is missing and makes sure `--count` clusters named `<prefix>-NNNNN` exist. With a Rancher
//! URL configured it runs the agent in the foreground, registers every cluster with Rancher, shows
//! them going Active and keeps their tunnels up until Ctrl-C; without one it creates the KWOK
//! clusters, prints how to reach each one and exits. Running it again is safe: existing clusters are
//! started or re-adopted, never recreated.

use anyhow::bail;
use clap::Args;

use super::cluster::{create_many, open_manager};
use super::output::{or_none, out, outln, Table};
use super::progress::{self, Until};
use super::serve::shutdown_signal;
use crate::agent::AgentError;
use crate::app::{provision_toolchain, RunningAgent};
use crate::config::{AgentSettings, RancherArgs, Settings};
use crate::kwok::PopulationProfile;
use crate::store::Phase;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many simulated clusters to run.
    #[arg(long, default_value_t = 3)]
    pub count: usize,
    /// Cluster name prefix.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Agent and Rancher options; `--profile` and `--concurrency` also apply without Rancher.
    #[command(flatten)]
    pub rancher: RancherArgs,
}

pub async fn run(settings: &Settings, args: UpArgs) -> anyhow::Result<()> {
    let names: Vec<String> = (1..=args.count)
        .map(|i| format!("{}-{i:05}", args.prefix))
        .collect();
    if args.rancher.has_rancher(settings) {
        let agent_settings = args.rancher.resolve(settings)?;
        return with_rancher(settings, &agent_settings, &names).await;
    }
    let agent_file = &settings.file.agent;
    let profile = args
        .rancher
        .profile
        .or(agent_file.profile)
        .unwrap_or_default();
    let concurrency = args
        .rancher
        .concurrency
        .or(agent_file.concurrency)
        .unwrap_or(3);
    provision_toolchain(&settings.toolchain_options()).await?;
    let manager = open_manager(settings).await?;
    let mut missing = Vec::new();
    for name in &names {
        match manager.store().get(name).await? {
            Some(record) if record.phase == Phase::Stopped => {
                manager.start(name).await?;
            }
            Some(_) => {}
            None => missing.push(name.clone()),
        }
    }
    let results = create_many(
        &manager,
        &missing,
        profile,
        &PopulationProfile::default(),
        concurrency,
    )
    .await;
    let mut failures = 0;
    for result in results {
        if let Err((name, err)) = result {
            eprintln!("cluster {name}: {err:#}");
            failures += 1;
        }
    }
    outln!("\n{} simulated clusters:", names.len())?;
    let mut table = Table::new(["NAME", "HEALTH", "APISERVER", "KUBECONFIG"]);
    for name in &names {
        if let Ok(info) = manager.get(name).await {
            table.row([
                name.clone(),
                info.health.to_string(),
                info.server,
                info.kubeconfig.display().to_string(),
            ]);
        }
    }
    out!("{table}")?;
    outln!("\nreach one with `kubectl --kubeconfig <KUBECONFIG> get nodes`")?;
    outln!("\nlist them with `scale-cluster-agent cluster list`; remove them with `scale-cluster-agent cluster delete --all`")?;
    if failures > 0 {
        bail!("{failures} clusters failed to come up");
    }
    Ok(())
}

/// Runs the agent, registers `names` with Rancher, shows progress until all are active, then holds
/// their tunnels until Ctrl-C.
async fn with_rancher(
    settings: &Settings,
    agent_settings: &AgentSettings,
    names: &[String],
) -> anyhow::Result<()> {
    let running = RunningAgent::start(settings, agent_settings).await?;
    let agent = running.agent.clone();
    eprintln!(
        "agent API on {}; registering {} clusters with {}",
        running.url,
        names.len(),
        agent_settings.rancher.url
    );
    for name in names {
        // An existing cluster is started if it was stopped: `up` brings everything up.
        let result = match agent.create(name, agent_settings.profile).await {
            Err(AgentError::Duplicate(_)) => agent.start_cluster(name).await.map(drop),
            other => other.map(drop),
        };
        match result {
            Ok(()) => {}
            Err(err) => {
                running.stop().await?;
                return Err(err.into());
            }
        }
    }
    let interrupted = tokio::select! {
        followed = progress::follow(
            || async { Ok(agent.list().await?) },
            names,
            Until::AllActive,
            None,
        ) => {
            followed?;
            false
        }
        _ = shutdown_signal() => true,
    };
    if !interrupted {
        // The agent holds the tunnels whether or not anyone reads this summary: a closed stdout
        // must not end it, so write errors are ignored here.
        let _ = outln!("\n{} clusters active in Rancher:", names.len());
        let mut table = Table::new(["NAME", "RANCHER ID", "APISERVER"]);
        for v in agent
            .list()
            .await?
            .into_iter()
            .filter(|v| names.contains(&v.name))
        {
            table.row([
                v.name,
                or_none(v.rancher_cluster_id.as_deref()),
                or_none(v.apiserver.as_deref()),
            ]);
        }
        let _ = out!("{table}");
        let _ = outln!("\nholding their tunnels; Ctrl-C to stop (the clusters keep running and are re-adopted next time)");
        shutdown_signal().await;
    }
    eprintln!("stopping: closing tunnels");
    running.stop().await
}
