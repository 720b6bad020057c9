//! The scenario runner's figures for `/metrics`: runs and stages by outcome, stage durations,
//! the stage in progress, fault recovery times and the latest reconnect storm. Kept in memory and
//! updated by the runner as stages end (from the same summaries it records), so a scrape costs
//! no database work however many runs there were.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::spec::Stage;
use crate::observe::exposition::{ScenarioFigures, StageRef, TunnelDropFigures};
use crate::observe::Histogram;
use crate::store::scenarios::RunState;

/// Outcomes a finished run or stage can have.
const OUTCOMES: [RunState; 4] = [
    RunState::Succeeded,
    RunState::Failed,
    RunState::Stopped,
    RunState::Interrupted,
];

/// Stages whose summary carries `recoveredMs`: faults that take clusters down.
const FAULT_KINDS: [&str; 2] = ["tunnelDrop", "componentKill"];

/// Shared by the runner and its runs; cheap to clone.
#[derive(Clone)]
pub struct ScenarioMetrics {
    figures: Arc<Mutex<ScenarioFigures>>,
}

impl Default for ScenarioMetrics {
    fn default() -> Self {
        // Every series starts at zero: a series that appears only once non-zero breaks `rate()`.
        let mut figures = ScenarioFigures::default();
        for outcome in OUTCOMES {
            figures.runs.insert(outcome.as_str(), 0);
        }
        for kind in Stage::KINDS {
            for outcome in &OUTCOMES[..3] {
                figures.stages.insert((kind, outcome.as_str()), 0);
            }
            figures.stage_seconds.insert(kind, Histogram::seconds());
        }
        for kind in FAULT_KINDS {
            figures
                .fault_recovery_seconds
                .insert(kind, Histogram::seconds());
        }
        Self {
            figures: Arc::new(Mutex::new(figures)),
        }
    }
}

impl ScenarioMetrics {
    fn update(&self, change: impl FnOnce(&mut ScenarioFigures)) {
        change(&mut self.figures.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A copy of the figures, for one scrape.
    pub fn snapshot(&self) -> ScenarioFigures {
        self.figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stage_started(&self, run: &str, index: usize, kind: &'static str) {
        self.update(|f| {
            f.current = Some(StageRef {
                run: run.to_string(),
                index,
                kind,
            })
        });
    }

    /// Counts a finished stage, and takes its fault recovery and reconnect figures from the
    /// summary it records.
    pub fn stage_ended(
        &self,
        stage: StageRef,
        outcome: RunState,
        took: Duration,
        summary: &serde_json::Value,
    ) {
        self.update(|f| {
            *f.stages.entry((stage.kind, outcome.as_str())).or_default() += 1;
            f.stage_seconds
                .entry(stage.kind)
                .or_default()
                .observe(took.as_secs_f64());
            if f.current.as_ref() == Some(&stage) {
                f.current = None;
            }
            if outcome != RunState::Succeeded {
                return;
            }
            if let Some(ms) = summary["recoveredMs"].as_u64() {
                let seconds = ms as f64 / 1000.0;
                f.fault_recovery_seconds
                    .entry(stage.kind)
                    .or_default()
                    .observe(seconds);
                f.last_recovery = Some((stage.clone(), seconds));
            }
            if stage.kind == "tunnelDrop" {
                let number = |key: &str| summary[key].as_u64().unwrap_or(0);
                f.last_tunnel_drop = Some(TunnelDropFigures {
                    dropped: number("dropped"),
                    reconnected: number("reconnected"),
                    spread_seconds: number("reconnectSpreadMs") as f64 / 1000.0,
                    max_reconnects_per_second: number("reconnectsMaxIn1s"),
                    stage,
                });
            }
        });
    }

    /// Counts a finished run (also runs a previous agent left running, found at start).
    pub fn run_ended(&self, outcome: RunState) {
        self.update(|f| {
            *f.runs.entry(outcome.as_str()).or_default() += 1;
            f.current = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_stage_feeds_recovery_and_storm_figures_from_its_summary() {
        let metrics = ScenarioMetrics::default();
        metrics.stage_started("r-1", 3, "tunnelDrop");
        assert!(metrics.snapshot().current.is_some());
        let stage = StageRef {
            run: "r-1".into(),
            index: 3,
            kind: "tunnelDrop",
        };
        metrics.stage_ended(
            stage.clone(),
            RunState::Succeeded,
            Duration::from_secs(2),
            &serde_json::json!({"dropped": 3, "reconnected": 3, "reconnectSpreadMs": 800,
                "reconnectsMaxIn1s": 3, "recoveredMs": 2500}),
        );
        metrics.run_ended(RunState::Succeeded);
        let f = metrics.snapshot();
        assert_eq!(f.current, None);
        assert_eq!(f.runs["succeeded"], 1);
        assert_eq!(f.runs["failed"], 0);
        assert_eq!(f.stages[&("tunnelDrop", "succeeded")], 1);
        assert_eq!(f.stage_seconds["tunnelDrop"].count(), 1);
        assert_eq!(f.fault_recovery_seconds["tunnelDrop"].sum(), 2.5);
        assert_eq!(f.last_recovery, Some((stage, 2.5)));
        let drop = f.last_tunnel_drop.expect("storm figures");
        assert_eq!(drop.spread_seconds, 0.8);
        assert_eq!(drop.max_reconnects_per_second, 3);
    }
}
