//! `scale-cluster-agent scenario run|list|get|stop`: scenario files, run by the agent and followed
//! from here.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::output::{self, out, outln, OutputArgs, Table};
use crate::api::AgentClient;
use crate::config::Settings;
use crate::scenario::plan::whole;
use crate::scenario::{plan, Limits, Plan, Scenario};
use crate::store::scenarios::{RunRecord, RunState, StageRecord};

/// How often a followed run is read again.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// The widest a stage's result is printed in the summary table (`-o json` has all of it).
const RESULT_WIDTH: usize = 100;

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run a scenario file on the running agent and follow it; Ctrl-C stops it after the step in
    /// progress and leaves the clusters as they are.
    Run(RunArgs),
    /// List the runs, newest first.
    List(OutputArgs),
    /// Show one run and its stages.
    Get {
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Ask a run to stop after the step in progress.
    Stop { id: String },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (YAML).
    pub file: PathBuf,
    /// Check the file and print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start the run and return; follow it later with `scenario get`.
    #[arg(long)]
    pub no_wait: bool,
    /// Also write the finished run (stages and their results) to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn run(settings: &Settings, cmd: ScenarioCommand) -> anyhow::Result<()> {
    let agent = super::cluster::running_agent(settings).await;
    match cmd {
        ScenarioCommand::Run(args) => run_file(settings, agent.as_ref(), args).await,
        ScenarioCommand::List(output) => {
            let runs = need(agent.as_ref(), settings)?.scenario_runs().await?;
            if !output::print_object(&runs, output.output)? {
                print_runs(&runs)?;
            }
            Ok(())
        }
        ScenarioCommand::Get { id, output } => {
            let run = need(agent.as_ref(), settings)?.scenario_run(&id).await?;
            if !output::print_object(&run, output.output)? {
                print_run(&run)?;
            }
            Ok(())
        }
        ScenarioCommand::Stop { id } => {
            let run = need(agent.as_ref(), settings)?.scenario_stop(&id).await?;
            outln!(
                "scenario run {} stopping after the step in progress",
                run.id
            )?;
            Ok(())
        }
    }
}

fn need<'a>(
    agent: Option<&'a AgentClient>,
    settings: &Settings,
) -> anyhow::Result<&'a AgentClient> {
    agent.with_context(|| {
        format!(
            "no agent is running on data dir {} (scenarios run inside the agent: start it with \
             `scale-cluster-agent serve`)",
            settings.data_dir.display()
        )
    })
}

async fn run_file(
    settings: &Settings,
    agent: Option<&AgentClient>,
    args: RunArgs,
) -> anyhow::Result<()> {
    let spec = tokio::fs::read_to_string(&args.file)
        .await
        .with_context(|| format!("cannot read scenario {}", args.file.display()))?;
    // The agent's own words, prefixed with the file when it is the file that is wrong.
    let file = args.file.display().to_string();
    let refused = |error: crate::api::ClientError| match error.code() {
        Some("invalid_scenario") => {
            anyhow::Error::new(error).context(format!("invalid scenario {file}"))
        }
        _ => anyhow::Error::new(error),
    };
    if args.dry_run {
        let plan = match agent {
            // The agent also checks what it can give (its population profile).
            Some(agent) => {
                agent
                    .scenario_start(&spec, true)
                    .await
                    .map_err(refused)?
                    .plan
            }
            None => {
                let limits = Limits {
                    max_clusters: u32::from(settings.ports.blocks),
                };
                let scenario = Scenario::parse(&spec, limits)
                    .map_err(|reason| anyhow::anyhow!("invalid scenario {file}: {reason}"))?;
                plan(&scenario, scenario.seed)
            }
        };
        if !output::print_object(&plan, args.output.output)? {
            print_plan(&plan)?;
        }
        return Ok(());
    }
    let agent = need(agent, settings)?;
    // Listening before the run exists: a Ctrl-C at any moment after it started is seen (and one
    // before the listener would kill the CLI, not a run).
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for Ctrl-C")?;
    let started = agent.scenario_start(&spec, false).await.map_err(refused)?;
    let id = started.id.context("the agent started no run")?;
    if args.output.output.is_table() {
        print_plan(&started.plan)?;
        let seed = started.plan.seed.unwrap_or_default();
        outln!("\nrun {id} started with seed {seed} (`seed: {seed}` in the file repeats it)")?;
    }
    if args.no_wait {
        if !args.output.output.is_table() {
            output::print_object(&agent.scenario_run(&id).await?, args.output.output)?;
        }
        return Ok(());
    }
    let run = follow(agent, &id, args.output.output.is_table(), interrupt).await?;
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&run)?;
        tokio::fs::write(path, text)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !output::print_object(&run, args.output.output)? {
        outln!()?;
        print_run(&run)?;
    }
    match run.state {
        RunState::Succeeded | RunState::Stopped => Ok(()),
        state => bail!(
            "scenario run {} {}: {}",
            run.id,
            state.as_str(),
            run.reason.as_deref().unwrap_or("no reason recorded")
        ),
    }
}

/// Polls the run until it ends, printing each stage as it starts and ends. The first Ctrl-C asks
/// the agent to stop the run after its current step; a second leaves it running and returns.
async fn follow(
    agent: &AgentClient,
    id: &str,
    progress: bool,
    mut interrupt: tokio::signal::unix::Signal,
) -> anyhow::Result<RunRecord> {
    let mut started_shown = 0;
    let mut ended_shown = 0;
    let mut stop_sent = false;
    loop {
        let run = agent.scenario_run(id).await?;
        if progress {
            for stage in &run.stages[started_shown.min(run.stages.len())..] {
                outln!("stage {} {}: started", stage.index, stage.kind)?;
                started_shown += 1;
            }
            let ended: Vec<&StageRecord> =
                run.stages.iter().filter(|s| s.outcome.is_some()).collect();
            for stage in &ended[ended_shown.min(ended.len())..] {
                outln!(
                    "stage {} {}: {} in {} {}",
                    stage.index,
                    stage.kind,
                    stage.outcome.map(RunState::as_str).unwrap_or("-"),
                    took(stage),
                    stage
                        .summary
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                )?;
                ended_shown += 1;
            }
        }
        if run.state != RunState::Running {
            return Ok(run);
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = interrupt.recv() => {
                if stop_sent {
                    eprintln!("leaving run {id} running; follow it with `scenario get {id}`");
                    return Ok(agent.scenario_run(id).await?);
                }
                agent.scenario_stop(id).await?;
                stop_sent = true;
                eprintln!("stopping run {id} after the step in progress (Ctrl-C again to leave it running)");
            }
        }
    }
}

fn print_plan(plan: &Plan) -> anyhow::Result<()> {
    let seed = match plan.seed {
        Some(seed) => seed.to_string(),
        None => "chosen at run".to_string(),
    };
    outln!(
        "scenario {} (seed {seed}), at least {}:",
        plan.name,
        whole(plan.at_least)
    )?;
    let mut table = Table::new(["#", "stage", "clusters", "takes", "action"]);
    for stage in &plan.stages {
        table.row([
            stage.index.to_string(),
            stage.kind.clone(),
            stage.clusters_after.to_string(),
            stage.takes(),
            stage.action.clone(),
        ]);
    }
    out!("{table}")?;
    Ok(())
}

fn took(stage: &StageRecord) -> String {
    match stage.finished_at_ms {
        Some(end) => output::format_duration(Duration::from_millis(
            u64::try_from(end - stage.started_at_ms).unwrap_or_default(),
        )),
        None => "-".to_string(),
    }
}

fn print_run(run: &RunRecord) -> anyhow::Result<()> {
    outln!(
        "run {} ({}, seed {}): {}{}",
        run.id,
        run.name,
        run.seed,
        run.state.as_str(),
        run.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    )?;
    let mut table = Table::new(["#", "stage", "outcome", "took", "result"]);
    for stage in &run.stages {
        table.row([
            stage.index.to_string(),
            stage.kind.clone(),
            stage
                .outcome
                .map(RunState::as_str)
                .unwrap_or("running")
                .to_string(),
            took(stage),
            output::shorten(
                &stage
                    .summary
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                RESULT_WIDTH,
            ),
        ]);
    }
    out!("{table}")?;
    Ok(())
}

fn print_runs(runs: &[RunRecord]) -> anyhow::Result<()> {
    let mut table = Table::new(["id", "name", "state", "stages done", "started"]);
    for run in runs {
        let done = run.stages.iter().filter(|s| s.outcome.is_some()).count();
        table.row([
            run.id.clone(),
            run.name.clone(),
            run.state.as_str().to_string(),
            done.to_string(),
            output::time_and_age(u64::try_from(run.started_at_ms / 1000).unwrap_or_default()),
        ]);
    }
    if table.is_empty() {
        outln!("No scenario runs.")?;
    } else {
        out!("{table}")?;
    }
    Ok(())
}
