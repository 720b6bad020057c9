//! The stages, one file each: what a stage does through the agent, and the summary it records
//! (what it did, and what it observed of the clusters afterwards).

pub mod component_kill;
pub mod hold;
pub mod node_churn;
pub mod pod_churn;
pub mod ramp;
pub mod scale_nodes;
pub mod tunnel_drop;
pub mod wait_active;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spec::{Scenario, Share};
use crate::agent::{Agent, ClusterView};
use crate::kwok::ComponentProfile;
use crate::store::AgentPhase;

/// What a stage works with.
pub struct StageContext<'a> {
    pub agent: &'a Agent,
    pub scenario: &'a Scenario,
    /// The profile new clusters get.
    pub profile: ComponentProfile,
    /// The run's only source of randomness, seeded from the scenario.
    pub rng: &'a mut StdRng,
    /// Cancelled when the run must stop after the step in progress.
    pub stop: &'a CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("stopped on request")]
    Stopped,
    #[error("stage {index} ({kind}) failed: {reason}")]
    Failed {
        index: usize,
        kind: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Agent(#[from] crate::agent::AgentError),
    #[error("cannot record the run: {0}")]
    Record(String),
    #[error("{0}")]
    Check(String),
}

/// How often stages look at the clusters while they wait for something.
pub const OBSERVE: Duration = Duration::from_millis(250);

impl StageContext<'_> {
    /// The scenario's clusters (`<prefix>-NNNNN`) that are not being deleted, by number.
    pub async fn clusters(&self) -> Result<Vec<ClusterView>, StageError> {
        let prefix = format!("{}-", self.scenario.clusters.prefix);
        let mut clusters: Vec<(u64, ClusterView)> = self
            .agent
            .list()
            .await?
            .into_iter()
            .filter(|c| c.phase != AgentPhase::Deleting)
            .filter_map(|c| {
                let number = c.name.strip_prefix(&prefix)?.parse::<u64>().ok()?;
                Some((number, c))
            })
            .collect();
        clusters.sort_by_key(|(number, _)| *number);
        Ok(clusters.into_iter().map(|(_, c)| c).collect())
    }

    /// A seeded random pick of `share` of the scenario's clusters (those up, with [`Only::Up`]).
    pub async fn pick_clusters(
        &mut self,
        share: Share,
        only: Only,
    ) -> Result<Vec<String>, StageError> {
        let names: Vec<String> = self
            .clusters()
            .await?
            .into_iter()
            .filter(|c| only == Only::Any || is_up(c))
            .map(|c| c.name)
            .collect();
        Ok(self.pick(share, &names))
    }

    /// A seeded random pick of `share` of `from`, in name order.
    pub fn pick(&mut self, share: Share, from: &[String]) -> Vec<String> {
        let count = share.of(from.len() as u32) as usize;
        let mut picked: Vec<String> = from.choose_multiple(self.rng, count).cloned().collect();
        picked.sort();
        picked
    }

    /// Sleeps until `deadline`; `Err(Stopped)` as soon as a stop is requested.
    pub async fn sleep_until(&self, deadline: Instant) -> Result<(), StageError> {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Ok(()),
            _ = self.stop.cancelled() => Err(StageError::Stopped),
        }
    }

    /// Waits until every scenario cluster is up ([`is_up`]) and returns when that was seen, or
    /// `None` at `deadline`: how fault stages measure recovery.
    pub async fn all_up_by(&self, deadline: Instant) -> Result<Option<Instant>, StageError> {
        loop {
            if self.clusters().await?.iter().all(is_up) {
                return Ok(Some(Instant::now()));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.sleep_until((Instant::now() + OBSERVE).min(deadline))
                .await?;
        }
    }

    pub fn check_stop(&self) -> Result<(), StageError> {
        if self.stop.is_cancelled() {
            Err(StageError::Stopped)
        } else {
            Ok(())
        }
    }
}

/// Which clusters a stage picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Any,
    /// Up as Rancher sees it ([`is_up`]): faults are injected only into healthy clusters.
    Up,
}

/// Whether a cluster is fully up as Rancher sees it: active, both tunnels connected, and
/// Rancher's own state active once known.
pub fn is_up(cluster: &ClusterView) -> bool {
    cluster.phase == AgentPhase::Active
        && cluster.tunnels.main == "connected"
        && cluster.tunnels.steve == "connected"
        && cluster
            .rancher_state
            .as_deref()
            .is_none_or(|state| state == "active")
}

pub fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// The most of `times` (milliseconds, any order) that fall within any one-second window.
pub fn max_in_one_second(times: &[u64]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let mut most = 0;
    let mut first = 0;
    for (last, at) in sorted.iter().enumerate() {
        while at - sorted[first] >= 1000 {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// p50 and max of a set of durations, in milliseconds.
pub fn p50_max(mut values: Vec<u64>) -> serde_json::Value {
    if values.is_empty() {
        return serde_json::Value::Null;
    }
    values.sort_unstable();
    serde_json::json!({
        "p50Ms": values[(values.len() - 1) / 2],
        "maxMs": values[values.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_in_one_second_slides_a_window_over_the_times() {
        assert_eq!(max_in_one_second(&[]), 0);
        assert_eq!(max_in_one_second(&[5]), 1);
        // 0, 999 in one window; 1000 starts the next (a window is [t, t + 1 s)).
        assert_eq!(max_in_one_second(&[1000, 0, 999]), 2);
        assert_eq!(max_in_one_second(&[0, 300, 600, 900, 2500, 2600]), 4);
    }
}
