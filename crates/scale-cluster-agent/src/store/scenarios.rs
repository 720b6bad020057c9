//! Scenario runs and their stages: a stage's row is written before it acts and closed after, so a
//! crash never leaves a half-applied stage without a record; a run still `running` when an agent
//! starts was cut short by a stop or crash and is marked `interrupted`, with the stage it was in.
//! Times are unix milliseconds (as the event log's): stages last from milliseconds to hours.

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::{now_ms, Store, StoreError};

/// How a run or a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    /// Stopped on request after the step in progress.
    Stopped,
    /// The agent stopped (or crashed) during the run.
    Interrupted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Stopped => "stopped",
            RunState::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "stopped" => RunState::Stopped,
            "interrupted" => RunState::Interrupted,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub index: usize,
    pub kind: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// `None` while the stage runs.
    pub outcome: Option<RunState>,
    /// What the stage did and saw (stage-specific JSON).
    pub summary: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub id: String,
    pub name: String,
    pub seed: u64,
    /// The scenario file as it was given.
    pub spec: String,
    pub state: RunState,
    pub reason: Option<String>,
    pub stop_requested: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub stages: Vec<StageRecord>,
}

/// The scenario tables (a migration of `store/mod.rs`).
pub(super) const MIGRATION: &str = "CREATE TABLE scenario_runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        seed INTEGER NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER
    );
    CREATE TABLE scenario_stages (
        run_id TEXT NOT NULL REFERENCES scenario_runs(id),
        idx INTEGER NOT NULL,
        kind TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        finished_at_ms INTEGER,
        outcome TEXT,
        summary TEXT,
        PRIMARY KEY (run_id, idx)
    );";

impl Store {
    /// Records a new run as `running`; refused while another run is, since two runs would act on
    /// the same clusters.
    pub async fn begin_run(
        &self,
        id: &str,
        name: &str,
        seed: u64,
        spec: &str,
    ) -> Result<(), StoreError> {
        let (id, name, spec) = (id.to_string(), name.to_string(), spec.to_string());
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let running: Option<String> = tx
                .query_row(
                    "SELECT id FROM scenario_runs WHERE state = 'running'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(running) = running {
                return Err(StoreError::ScenarioRunning(running));
            }
            tx.execute(
                "INSERT INTO scenario_runs (id, name, seed, spec, state, started_at_ms)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
                params![id, name, seed as i64, spec, now_ms()],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn begin_stage(&self, run: &str, index: usize, kind: &str) -> Result<(), StoreError> {
        let (run, kind) = (run.to_string(), kind.to_string());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO scenario_stages (run_id, idx, kind, started_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![run, index as i64, kind, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn end_stage(
        &self,
        run: &str,
        index: usize,
        outcome: RunState,
        summary: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let run = run.to_string();
        let summary = summary.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE scenario_stages SET finished_at_ms = ?3, outcome = ?4, summary = ?5
                 WHERE run_id = ?1 AND idx = ?2",
                params![run, index as i64, now_ms(), outcome.as_str(), summary],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn end_run(
        &self,
        id: &str,
        state: RunState,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE scenario_runs SET state = ?2, reason = ?3, finished_at_ms = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Asks a running run to stop after its current step; false if it is not running.
    pub async fn request_run_stop(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE scenario_runs SET stop_requested = 1 WHERE id = ?1 AND state = 'running'",
                [id],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// Marks every run still `running` as interrupted (called when an agent starts: no run
    /// survives its agent), closing its open stage; returns their ids.
    pub async fn interrupt_runs(&self) -> Result<Vec<String>, StoreError> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let open: Vec<(String, Option<(i64, String)>)> = {
                let mut runs = tx.prepare("SELECT id FROM scenario_runs WHERE state = 'running'")?;
                let ids: Vec<String> = runs
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut stage = tx.prepare(
                    "SELECT idx, kind FROM scenario_stages WHERE run_id = ?1 AND outcome IS NULL",
                )?;
                let mut out = Vec::new();
                for id in ids {
                    let open = stage
                        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    out.push((id, open));
                }
                out
            };
            let now = now_ms();
            for (id, stage) in &open {
                let reason = match stage {
                    Some((idx, kind)) => format!(
                        "the agent stopped during stage {idx} ({kind}); the stages before it had \
                         completed, this one may be partly applied"
                    ),
                    None => "the agent stopped between two stages".to_string(),
                };
                tx.execute(
                    "UPDATE scenario_stages SET outcome = 'interrupted', finished_at_ms = ?2
                     WHERE run_id = ?1 AND outcome IS NULL",
                    params![id, now],
                )?;
                tx.execute(
                    "UPDATE scenario_runs SET state = 'interrupted', reason = ?2, finished_at_ms = ?3
                     WHERE id = ?1",
                    params![id, reason, now],
                )?;
            }
            tx.commit()?;
            Ok(open.into_iter().map(|(id, _)| id).collect())
        })
        .await
    }

    /// One run with its stages.
    pub async fn scenario_run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let id = id.to_string();
        self.with_conn(move |conn| {
            let run = conn
                .query_row(&format!("{SELECT_RUN} WHERE id = ?1"), [&id], raw_run)
                .optional()?;
            run.map(|run| with_stages(conn, run)).transpose()
        })
        .await
    }

    /// The latest runs first, with their stages.
    pub async fn scenario_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.with_conn(move |conn| {
            let runs: Vec<RawRun> = conn
                .prepare(&format!(
                    "{SELECT_RUN} ORDER BY started_at_ms DESC, id DESC LIMIT ?1"
                ))?
                .query_map([limit as i64], raw_run)?
                .collect::<Result<_, _>>()?;
            runs.into_iter().map(|run| with_stages(conn, run)).collect()
        })
        .await
    }
}

const SELECT_RUN: &str = "SELECT id, name, seed, spec, state, reason, stop_requested, \
                          started_at_ms, finished_at_ms FROM scenario_runs";

type RawRun = (RunRecord, String);
/// idx, kind, started, finished, outcome, summary.
type RawStage = (
    i64,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn raw_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    let state: String = r.get(4)?;
    Ok((
        RunRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            seed: r.get::<_, i64>(2)? as u64,
            spec: r.get(3)?,
            state: RunState::Running,
            reason: r.get(5)?,
            stop_requested: r.get(6)?,
            started_at_ms: r.get(7)?,
            finished_at_ms: r.get(8)?,
            stages: Vec::new(),
        },
        state,
    ))
}

fn with_stages(
    conn: &rusqlite::Connection,
    (mut run, state): RawRun,
) -> Result<RunRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        name: run.id.clone(),
        reason,
    };
    run.state = RunState::parse(&state).ok_or_else(|| corrupt(format!("run state {state:?}")))?;
    let rows: Vec<RawStage> = conn
        .prepare(
            "SELECT idx, kind, started_at_ms, finished_at_ms, outcome, summary
             FROM scenario_stages WHERE run_id = ?1 ORDER BY idx",
        )?
        .query_map([&run.id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (idx, kind, started, finished, outcome, summary) in rows {
        let outcome = match outcome {
            Some(text) => Some(
                RunState::parse(&text).ok_or_else(|| corrupt(format!("stage outcome {text:?}")))?,
            ),
            None => None,
        };
        run.stages.push(StageRecord {
            index: idx as usize,
            kind,
            started_at_ms: started,
            finished_at_ms: finished,
            outcome,
            summary: summary.and_then(|s| serde_json::from_str(&s).ok()),
        });
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_run_at_a_time_and_a_crash_leaves_an_interrupted_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store
            .begin_run("r1", "smoke", 42, "name: smoke")
            .await
            .unwrap();
        assert!(matches!(
            store.begin_run("r2", "other", 1, "x").await,
            Err(StoreError::ScenarioRunning(id)) if id == "r1"
        ));
        store.begin_stage("r1", 0, "ramp").await.unwrap();
        store
            .end_stage(
                "r1",
                0,
                RunState::Succeeded,
                &serde_json::json!({"created": 3}),
            )
            .await
            .unwrap();
        store.begin_stage("r1", 1, "hold").await.unwrap();
        drop(store);

        // A new agent on the same database.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.interrupt_runs().await.unwrap(), ["r1"]);
        let run = store.scenario_run("r1").await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Interrupted);
        assert!(run.reason.unwrap().contains("stage 1 (hold)"));
        assert_eq!(run.stages[0].outcome, Some(RunState::Succeeded));
        assert_eq!(
            run.stages[0].summary,
            Some(serde_json::json!({"created": 3}))
        );
        assert_eq!(run.stages[1].outcome, Some(RunState::Interrupted));
        assert!(!store.request_run_stop("r1").await.unwrap());
        store.begin_run("r2", "other", 1, "x").await.unwrap();
        assert!(store.request_run_stop("r2").await.unwrap());
        let runs = store.scenario_runs(10).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().any(|r| r.id == "r2" && r.stop_requested));
    }
}
