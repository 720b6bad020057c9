//! Running a scenario inside the agent: one run at a time, its stages in order, each recorded in
//! the store before it acts and closed with a summary of what it did and saw. A stop request ends
//! the run after the step in progress (one create, one churn tick), leaving the clusters as they
//! are. No run survives its agent: the next agent marks it interrupted (see `store::scenarios`).

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio_util::sync::CancellationToken;

use super::metrics::ScenarioMetrics;
use super::plan::{plan, Plan};
use super::spec::{Limits, Scenario, Stage};
use super::stage::{self, StageContext, StageError};
use crate::agent::Agent;
use crate::kwok::ComponentProfile;
use crate::observe::exposition::{ScenarioFigures, StageRef};
use crate::store::now_ms;
use crate::store::scenarios::{RunRecord, RunState};
use crate::store::{Store, StoreError};

/// How often a run checks whether a stop was requested through the store (the API's stop
/// request also cancels the run's token at once; this catches a request from another process).
const STOP_POLL: Duration = Duration::from_secs(1);

/// Starts runs and stops them; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    agent: Agent,
    store: Store,
    default_profile: ComponentProfile,
    limits: Limits,
    current: Arc<std::sync::Mutex<Option<(String, CancellationToken)>>>,
    /// Cancelled when the agent shuts down: the run in progress ends `interrupted`.
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    metrics: ScenarioMetrics,
}

/// A started run: its id and its plan (with the seed it runs with).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub id: String,
    pub plan: Plan,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file, or what it asks of this agent.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Runner {
    /// A runner acting through `agent`. Marks runs a previous agent left `running` as
    /// interrupted.
    pub async fn new(
        agent: Agent,
        store: Store,
        default_profile: ComponentProfile,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let metrics = ScenarioMetrics::default();
        for id in store.interrupt_runs().await? {
            tracing::warn!(run = %id, "scenario run interrupted by an agent restart");
            metrics.run_ended(RunState::Interrupted);
        }
        Ok(Self {
            agent,
            store,
            default_profile,
            limits,
            current: Arc::new(std::sync::Mutex::new(None)),
            shutdown: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            metrics,
        })
    }

    /// What `/metrics` shows of the runs: kept in memory, no database read.
    pub fn figures(&self) -> ScenarioFigures {
        self.metrics.snapshot()
    }

    /// What the machine can hold, for validating scenario files.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Parses and validates a scenario file for this agent: its numbers, and a population the
    /// agent can give (it applies one population profile to every cluster; only the node count
    /// is per cluster).
    pub fn parse(&self, spec: &str) -> Result<Scenario, RunError> {
        let scenario = Scenario::parse(spec, self.limits).map_err(RunError::Invalid)?;
        let mut wanted = scenario.clusters.population.clone();
        let agent = self.agent.population();
        wanted.nodes = agent.nodes;
        if wanted != *agent {
            return Err(RunError::Invalid(format!(
                "clusters.population differs from the agent's population profile in more than \
                 `nodes`; the agent gives every cluster the same profile (start it with \
                 --population FILE), only the node count is per cluster. The agent's: {}",
                serde_json::to_string(agent).unwrap_or_default()
            )));
        }
        Ok(scenario)
    }

    /// Records and starts a run of `scenario` (`spec` is the file as given, kept with the run);
    /// refused while another run is going.
    pub async fn start(&self, spec: &str) -> Result<Started, RunError> {
        let scenario = self.parse(spec)?;
        if self.shutdown.is_cancelled() {
            return Err(RunError::Invalid("the agent is shutting down".into()));
        }
        let seed = scenario.seed.unwrap_or_else(rand::random);
        let id = format!("{}-{}", scenario.name, now_ms());
        self.store
            .begin_run(&id, &scenario.name, seed, spec)
            .await?;
        let plan = plan(&scenario, Some(seed));
        let stop = CancellationToken::new();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((id.clone(), stop.clone()));
        tracing::info!(run = %id, seed, "scenario run started");
        let run = RunTask {
            id: id.clone(),
            scenario,
            seed,
            agent: self.agent.clone(),
            store: self.store.clone(),
            profile: self.default_profile,
            stop,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
        };
        let current = self.current.clone();
        let finished_id = id.clone();
        self.tasks.spawn(async move {
            run.run().await;
            let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
            if current.as_ref().is_some_and(|(id, _)| *id == finished_id) {
                *current = None;
            }
        });
        Ok(Started { id, plan })
    }

    /// One run with its stages.
    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.store.scenario_run(id).await
    }

    /// The latest `limit` runs, newest first.
    pub async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.store.scenario_runs(limit).await
    }

    /// Asks run `id` to stop after its current step; false if it is not running.
    pub async fn stop(&self, id: &str) -> Result<bool, StoreError> {
        let requested = self.store.request_run_stop(id).await?;
        if let Some((running, token)) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            if running == id {
                token.cancel();
            }
        }
        Ok(requested)
    }

    /// Ends the run in progress, if any, after its current step (recorded `interrupted`), and
    /// waits for it to record that.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        if let Some((_, token)) = &*self.current.lock().unwrap_or_else(|p| p.into_inner()) {
            token.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

struct RunTask {
    id: String,
    scenario: Scenario,
    seed: u64,
    agent: Agent,
    store: Store,
    profile: ComponentProfile,
    stop: CancellationToken,
    shutdown: CancellationToken,
    metrics: ScenarioMetrics,
}

impl RunTask {
    async fn run(self) {
        let (state, reason) = match self.stages().await {
            Ok(()) => (RunState::Succeeded, None),
            Err(StageError::Stopped) if self.shutdown.is_cancelled() => (
                RunState::Interrupted,
                Some("the agent was shut down during the run".to_string()),
            ),
            Err(StageError::Stopped) => (
                RunState::Stopped,
                Some("stopped on request; the clusters were left as they were".to_string()),
            ),
            Err(error) => (RunState::Failed, Some(error.to_string())),
        };
        tracing::info!(run = %self.id, state = state.as_str(), reason = reason.as_deref().unwrap_or(""), "scenario run ended");
        // Counted before the record is closed: whoever sees the run ended sees it counted.
        self.metrics.run_ended(state);
        if let Err(error) = self.store.end_run(&self.id, state, reason).await {
            tracing::error!(run = %self.id, %error, "cannot record the end of a scenario run");
        }
    }

    async fn stages(&self) -> Result<(), StageError> {
        let watcher = self.watch_stop_requests();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let result = async {
            for (index, stage) in self.scenario.stages.iter().enumerate() {
                if self.stop.is_cancelled() {
                    return Err(StageError::Stopped);
                }
                self.store
                    .begin_stage(&self.id, index, stage.kind())
                    .await
                    .map_err(|e| StageError::Record(e.to_string()))?;
                self.metrics.stage_started(&self.id, index, stage.kind());
                let started = std::time::Instant::now();
                let mut context = StageContext {
                    agent: &self.agent,
                    scenario: &self.scenario,
                    profile: self.scenario.clusters.profile.unwrap_or(self.profile),
                    rng: &mut rng,
                    stop: &self.stop,
                };
                let outcome = run_stage(&mut context, stage).await;
                let (state, summary) = match &outcome {
                    Ok(summary) => (RunState::Succeeded, summary.clone()),
                    Err(StageError::Stopped) => {
                        (RunState::Stopped, serde_json::json!({"stopped": true}))
                    }
                    Err(error) => (
                        RunState::Failed,
                        serde_json::json!({"error": error.to_string()}),
                    ),
                };
                tracing::info!(run = %self.id, index, kind = stage.kind(), outcome = state.as_str(), %summary, "scenario stage ended");
                let stage_ref = StageRef {
                    run: self.id.clone(),
                    index,
                    kind: stage.kind(),
                };
                self.metrics
                    .stage_ended(stage_ref, state, started.elapsed(), &summary);
                self.store
                    .end_stage(&self.id, index, state, &summary)
                    .await
                    .map_err(|e| StageError::Record(e.to_string()))?;
                outcome.map_err(|error| match error {
                    StageError::Stopped => StageError::Stopped,
                    other => StageError::Failed {
                        index,
                        kind: stage.kind(),
                        reason: other.to_string(),
                    },
                })?;
            }
            Ok(())
        }
        .await;
        watcher.cancel();
        result
    }

    /// Cancels the run's token when a stop request shows up in the store.
    fn watch_stop_requests(&self) -> CancellationToken {
        let done = CancellationToken::new();
        let (store, id, stop, until) = (
            self.store.clone(),
            self.id.clone(),
            self.stop.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = until.cancelled() => return,
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(STOP_POLL) => {}
                }
                if let Ok(Some(run)) = store.scenario_run(&id).await {
                    if run.stop_requested {
                        stop.cancel();
                        return;
                    }
                }
            }
        });
        done
    }
}

async fn run_stage(
    context: &mut StageContext<'_>,
    stage: &Stage,
) -> Result<serde_json::Value, StageError> {
    match stage {
        Stage::Ramp(ramp) => stage::ramp::run(context, ramp).await,
        Stage::WaitActive(wait) => stage::wait_active::run(context, wait).await,
        Stage::Hold(span) => stage::hold::run(context, *span).await,
        Stage::NodeChurn(churn) => stage::node_churn::run(context, churn).await,
        Stage::PodChurn(churn) => stage::pod_churn::run(context, churn).await,
        Stage::TunnelDrop(drop) => stage::tunnel_drop::run(context, drop).await,
        Stage::ScaleNodes(scale) => stage::scale_nodes::run(context, scale).await,
        Stage::ComponentKill(kill) => stage::component_kill::run(context, kill).await,
    }
}
