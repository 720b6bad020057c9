//! The plan of a scenario: what each stage will do to how many clusters, and how long it takes at
//! least, worked out from the file alone (`scenario run --dry-run` prints it, and a run records it).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::{Scenario, Span, Stage};

/// One stage as it will run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStage {
    pub index: usize,
    pub kind: String,
    /// What it does, in words, with the numbers resolved (`create 500 clusters at 2/s`).
    pub action: String,
    /// Clusters of the scenario that exist once it is done.
    pub clusters_after: u32,
    /// The least time it takes (`hold`, churns, a rate-limited ramp), if it has a floor.
    #[serde(default, with = "optional_seconds")]
    pub at_least: Option<Duration>,
    /// The most time it may take before it fails (`waitActive`).
    #[serde(default, with = "optional_seconds")]
    pub at_most: Option<Duration>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub name: String,
    /// `None` in a dry run of a file without a seed: the run chooses one (and prints it).
    pub seed: Option<u64>,
    pub stages: Vec<PlannedStage>,
    /// The sum of the stages' floors.
    #[serde(with = "seconds")]
    pub at_least: Duration,
}

/// Works out the plan of `scenario`, with `seed` (the file's or the one chosen for the run).
pub fn plan(scenario: &Scenario, seed: Option<u64>) -> Plan {
    let mut clusters = 0u32;
    let mut stages = Vec::with_capacity(scenario.stages.len());
    for (index, stage) in scenario.stages.iter().enumerate() {
        let (action, at_least, at_most) = match stage {
            Stage::Ramp(ramp) => {
                let (verb, count) = if ramp.to >= clusters {
                    ("create", ramp.to - clusters)
                } else {
                    ("delete the highest-numbered", clusters - ramp.to)
                };
                let pace = match ramp.rate {
                    Some(rate) => format!(" at {rate}"),
                    None => String::new(),
                };
                let floor = ramp.rate.map(|rate| rate.time_for(count.saturating_sub(1)));
                clusters = ramp.to;
                (
                    format!("{verb} {count} {}{pace}", plural(count, "cluster")),
                    floor,
                    None,
                )
            }
            Stage::WaitActive(wait) => (
                format!(
                    "wait until all {clusters} {} are active in Rancher",
                    plural(clusters, "cluster")
                ),
                None,
                Some(wait.timeout.0),
            ),
            Stage::Hold(span) => ("hold".to_string(), Some(span.0), None),
            Stage::NodeChurn(churn) => (
                format!(
                    "flap {} of the nodes of {} {} NotReady and back, every {} for {}",
                    churn.nodes,
                    churn.clusters.of(clusters),
                    plural(churn.clusters.of(clusters), "cluster"),
                    churn.every,
                    churn.duration
                ),
                Some(churn.duration.0),
                None,
            ),
            Stage::PodChurn(churn) => (
                format!(
                    "delete and recreate pods of {} {} at {} for {}",
                    churn.clusters.of(clusters),
                    plural(churn.clusters.of(clusters), "cluster"),
                    churn.rate,
                    churn.duration
                ),
                Some(churn.duration.0),
                None,
            ),
            Stage::TunnelDrop(drop) => {
                let n = drop.clusters.of(clusters);
                let how = if drop.spread.0.is_zero() {
                    "all at once".to_string()
                } else {
                    format!("spread over {}", drop.spread)
                };
                (
                    format!("cut the tunnels of {n} {}, {how}", plural(n, "cluster")),
                    Some(drop.spread.0),
                    None,
                )
            }
            Stage::ScaleNodes(scale) => {
                let n = scale.clusters.of(clusters);
                (
                    format!(
                        "scale {n} {} to {} {}",
                        plural(n, "cluster"),
                        scale.to,
                        plural(scale.to, "node")
                    ),
                    None,
                    None,
                )
            }
            Stage::ComponentKill(kill) => {
                let n = kill.clusters.of(clusters);
                (
                    format!(
                        "kill {} of {n} {} (the agent heals it)",
                        kill.component.as_str(),
                        plural(n, "cluster")
                    ),
                    None,
                    None,
                )
            }
        };
        stages.push(PlannedStage {
            index,
            kind: stage.kind().to_string(),
            action,
            clusters_after: clusters,
            at_least,
            at_most,
        });
    }
    Plan {
        name: scenario.name.clone(),
        seed,
        at_least: stages.iter().filter_map(|s| s.at_least).sum(),
        stages,
    }
}

impl PlannedStage {
    /// `≥ 4m9s`, `≤ 20m`, `10m` or `-`, for a table column.
    pub fn takes(&self) -> String {
        match (self.at_least, self.at_most) {
            (Some(floor), _) if self.kind == "hold" => Span(floor).to_string(),
            (Some(floor), None) if !floor.is_zero() => format!(">= {}", whole(floor)),
            (_, Some(ceiling)) => format!("<= {}", Span(ceiling)),
            _ => "-".to_string(),
        }
    }
}

/// A duration rounded to whole seconds, printed like the file writes it.
pub fn whole(duration: Duration) -> Span {
    Span(Duration::from_secs(duration.as_secs_f64().round() as u64))
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// Durations travel as seconds (a float), as the rest of the API's durations do.
mod seconds {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Duration::try_from_secs_f64(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

mod optional_seconds {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::spec::Limits;

    #[test]
    fn the_plan_resolves_counts_and_floors() {
        let s = Scenario::parse(
            "name: p\nclusters: {prefix: c}\nstages:\n\
             - ramp: {to: 11, rate: 2/s}\n\
             - waitActive: {timeout: 20m}\n\
             - hold: 10m\n\
             - tunnelDrop: {clusters: 50%, spread: 10s}\n\
             - scaleNodes: {clusters: 1, to: 5}\n\
             - ramp: {to: 4}\n",
            Limits { max_clusters: 100 },
        )
        .unwrap();
        let plan = plan(&s, Some(7));
        let actions: Vec<_> = plan.stages.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "create 11 clusters at 2/s",
                "wait until all 11 clusters are active in Rancher",
                "hold",
                "cut the tunnels of 6 clusters, spread over 10s",
                "scale 1 cluster to 5 nodes",
                "delete the highest-numbered 7 clusters",
            ]
        );
        // Eleven creates at 2/s: the first at once, the last 5 s later.
        assert_eq!(plan.stages[0].at_least, Some(Duration::from_secs(5)));
        assert_eq!(plan.stages[0].takes(), ">= 5s");
        assert_eq!(plan.stages[1].takes(), "<= 20m");
        assert_eq!(plan.stages[2].takes(), "10m");
        assert_eq!(plan.stages[4].takes(), "-");
        assert_eq!(plan.at_least, Duration::from_secs(5 + 600 + 10));
        assert_eq!(plan.stages[5].clusters_after, 4);
        assert_eq!(plan.seed, Some(7));
    }
}
