//! The run report (`scale-cluster-agent report`): what a run did, from what the agent recorded in
//! its state database (the event log, resource samples, the last Rancher load per cluster and the
//! run's settings), so it can be made after the fact, after restarts, with or without an agent
//! running. [`Report::build`] computes the numbers; [`render`] turns them into HTML with inline
//! SVG plots (no external asset) or Markdown.
//!
//! Phase latencies are folded by the same code as `/metrics` ([`crate::observe::Folded`]), so the
//! report and the live numbers agree.

pub mod render;
pub mod svg;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::observe::{Folded, Percentiles, RecentFailure};
use crate::store::memory::{ClusterMemory, MemorySummary};
use crate::store::requests::RequestCount;
use crate::store::scenarios::RunRecord;
use crate::store::{AgentPhase, Event, EventKind, LoadSample, Sample, Store, StoreError};

/// Points of the phase timeline.
const TIMELINE_POINTS: usize = 120;
/// Clusters listed by Rancher load.
pub const TOP_LOAD: usize = 15;
/// Clusters listed by memory.
pub const TOP_MEMORY: usize = 15;
/// (verb, resource) rows of Rancher's requests listed.
pub const TOP_REQUESTS: usize = 20;

/// How clusters are grouped in the timeline.
pub const TIMELINE_GROUPS: [&str; 5] = ["pending", "bringing up", "active", "failed", "other"];

fn group(phase: AgentPhase) -> usize {
    match phase {
        AgentPhase::Pending => 0,
        AgentPhase::Provisioning | AgentPhase::Registering | AgentPhase::Connecting => 1,
        AgentPhase::Active => 2,
        AgentPhase::Failed => 3,
        AgentPhase::Stopping | AgentPhase::Stopped | AgentPhase::Deleting => 4,
    }
}

/// Everything a report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Unix ms: the window's start and end.
    pub from_ms: i64,
    pub to_ms: i64,
    /// The run's settings (JSON object) and start (unix ms), if recorded.
    pub settings: Option<serde_json::Value>,
    pub run_started_ms: Option<i64>,
    pub events: usize,
    /// Clusters created in the window.
    pub created: usize,
    /// Clusters that first reached active in the window.
    pub first_active: usize,
    /// Failed steps in the window.
    pub failures: usize,
    /// Tunnel drops and reconnects in the window.
    pub disconnects: usize,
    pub reconnects: usize,
    /// Seconds from creation to first active, sorted (the CDF).
    pub create_to_active: Vec<f64>,
    /// By measured phase and `create_to_active`.
    pub percentiles: BTreeMap<String, Percentiles>,
    /// Failures by (phase, reason label).
    pub failures_by_reason: BTreeMap<String, u64>,
    pub recent_failures: Vec<RecentFailure>,
    /// (unix ms, clusters in each of [`TIMELINE_GROUPS`]).
    pub timeline: Vec<(i64, [usize; 5])>,
    /// Unix ms of each tunnel drop.
    pub disconnect_times: Vec<i64>,
    pub samples: Vec<Sample>,
    /// Heaviest first, at most [`TOP_LOAD`].
    pub top_load: Vec<LoadSample>,
    /// Scenario runs started in the window, oldest first, with their stages.
    pub scenarios: Vec<RunRecord>,
    /// Per-cluster memory over time (p50, max; shared processes apart), oldest first.
    pub memory: Vec<MemorySummary>,
    /// Each cluster's last memory sample, largest RSS first, at most [`TOP_MEMORY`].
    pub cluster_memory: Vec<ClusterMemory>,
    /// Rancher's requests by verb and resource over all clusters (`--request-audit`), most
    /// first, at most [`TOP_REQUESTS`]; empty without counts.
    pub requests: Vec<RequestRow>,
}

/// Rancher's requests of one verb and resource, all clusters together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestRow {
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub count: u64,
    /// Clusters with at least one such request.
    pub clusters: usize,
}

/// Sums the per-cluster counts by (verb, resource/subresource), most requests first.
fn request_rows(counts: &[RequestCount], top: usize) -> Vec<RequestRow> {
    let mut by_key: BTreeMap<(String, String), (u64, usize)> = BTreeMap::new();
    for c in counts.iter().filter(|c| c.count > 0) {
        let resource = if c.subresource.is_empty() {
            c.resource.clone()
        } else {
            format!("{}/{}", c.resource, c.subresource)
        };
        let entry = by_key.entry((c.verb.clone(), resource)).or_default();
        entry.0 += c.count;
        entry.1 += 1;
    }
    let mut rows: Vec<RequestRow> = by_key
        .into_iter()
        .map(|((verb, resource), (count, clusters))| RequestRow {
            verb,
            resource,
            count,
            clusters,
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.verb.cmp(&b.verb)));
    rows.truncate(top);
    rows
}

/// How many scenario runs a report looks through.
const SCENARIO_RUNS: usize = 100;

impl Report {
    /// The report of everything recorded at or after `since_ms`, up to `now_ms`.
    pub async fn build(store: &Store, since_ms: i64, now_ms: i64) -> Result<Self, StoreError> {
        let events = store.events_since(since_ms).await?;
        let samples = store.samples_since(since_ms).await?;
        let mut load = store.load_since(since_ms).await?;
        load.sort_by_key(|l| std::cmp::Reverse(l.bytes_received + l.bytes_sent));
        load.truncate(TOP_LOAD);
        let (settings, run_started_ms) = match store.run_settings().await? {
            Some((json, started)) => (serde_json::from_str(&json).ok(), Some(started)),
            None => (None, None),
        };
        let mut scenarios: Vec<RunRecord> = store
            .scenario_runs(SCENARIO_RUNS)
            .await?
            .into_iter()
            .filter(|run| run.started_at_ms >= since_ms && run.started_at_ms <= now_ms)
            .collect();
        scenarios.reverse();
        let mut report = Self::from_parts(
            events,
            samples,
            load,
            settings,
            run_started_ms,
            since_ms,
            now_ms,
        );
        report.scenarios = scenarios;
        report.memory = store.memory_since(since_ms).await?;
        let mut cluster_memory = store.cluster_memory_since(since_ms).await?;
        cluster_memory.sort_by_key(|c| std::cmp::Reverse(c.rss_bytes));
        cluster_memory.truncate(TOP_MEMORY);
        report.cluster_memory = cluster_memory;
        report.requests =
            request_rows(&store.rancher_requests_since(since_ms).await?, TOP_REQUESTS);
        Ok(report)
    }

    fn from_parts(
        events: Vec<Event>,
        samples: Vec<Sample>,
        top_load: Vec<LoadSample>,
        settings: Option<serde_json::Value>,
        run_started_ms: Option<i64>,
        since_ms: i64,
        now_ms: i64,
    ) -> Self {
        let mut folded = Folded::default();
        for event in &events {
            folded.fold(event);
        }
        let mut create_to_active: Vec<f64> = events
            .iter()
            .filter_map(|e| e.since_created_ms)
            .map(|ms| ms as f64 / 1000.0)
            .collect();
        create_to_active.sort_by(f64::total_cmp);
        let from_ms = events
            .first()
            .map(|e| e.at_ms)
            .into_iter()
            .chain(samples.first().map(|s| s.at_ms))
            .min()
            .unwrap_or(since_ms)
            .max(since_ms);
        let to_ms = events
            .last()
            .map(|e| e.at_ms)
            .into_iter()
            .chain(samples.last().map(|s| s.at_ms))
            .max()
            .unwrap_or(now_ms);
        let count = |kind: EventKind| events.iter().filter(|e| e.kind == kind).count();
        Self {
            from_ms,
            to_ms,
            settings,
            run_started_ms,
            events: events.len(),
            created: count(EventKind::Created),
            first_active: create_to_active.len(),
            failures: folded.failures.values().sum::<u64>() as usize,
            disconnects: count(EventKind::TunnelDown),
            reconnects: count(EventKind::Reconnected),
            percentiles: folded.percentiles(),
            failures_by_reason: folded
                .failures
                .iter()
                .map(|((phase, reason), n)| (format!("{phase}: {reason}"), *n))
                .collect(),
            recent_failures: folded.recent_failures(),
            timeline: timeline(&events, from_ms, to_ms),
            disconnect_times: events
                .iter()
                .filter(|e| e.kind == EventKind::TunnelDown)
                .map(|e| e.at_ms)
                .collect(),
            create_to_active,
            samples,
            top_load,
            scenarios: Vec::new(),
            memory: Vec::new(),
            cluster_memory: Vec::new(),
            requests: Vec::new(),
        }
    }
}

/// Clusters per timeline group at [`TIMELINE_POINTS`] instants from `from_ms` to `to_ms`, by
/// replaying the phase events. A cluster whose first event in the window is not its creation
/// counts from its first phase event on.
fn timeline(events: &[Event], from_ms: i64, to_ms: i64) -> Vec<(i64, [usize; 5])> {
    let span = (to_ms - from_ms).max(1);
    let mut phases: BTreeMap<&str, AgentPhase> = BTreeMap::new();
    let mut out = Vec::with_capacity(TIMELINE_POINTS + 1);
    let mut next = events.iter().peekable();
    for i in 0..=TIMELINE_POINTS {
        let at = from_ms + span * i as i64 / TIMELINE_POINTS as i64;
        while let Some(event) = next.next_if(|e| e.at_ms <= at) {
            match (event.kind, event.phase) {
                (EventKind::Removed, _) => {
                    phases.remove(event.cluster.as_str());
                }
                (EventKind::Created | EventKind::Phase, Some(phase)) => {
                    phases.insert(&event.cluster, phase);
                }
                _ => {}
            }
        }
        let mut counts = [0; 5];
        for phase in phases.values() {
            counts[group(*phase)] += 1;
        }
        out.push((at, counts));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, at_ms: i64, kind: EventKind, phase: Option<AgentPhase>) -> Event {
        Event {
            id,
            at_ms,
            cluster: format!("c{}", id % 2),
            kind,
            phase,
            previous: None,
            tunnel: None,
            duration_ms: None,
            since_created_ms: None,
            reason: None,
        }
    }

    #[test]
    fn timeline_replays_phases_and_removals() {
        let mut active = event(3, 5_000, EventKind::Phase, Some(AgentPhase::Active));
        active.since_created_ms = Some(5_000);
        let events = vec![
            event(0, 0, EventKind::Created, Some(AgentPhase::Pending)),
            event(1, 0, EventKind::Created, Some(AgentPhase::Pending)),
            event(2, 1_000, EventKind::Phase, Some(AgentPhase::Provisioning)),
            active,
            event(5, 10_000, EventKind::Removed, None),
        ];
        let report = Report::from_parts(events, vec![], vec![], None, None, 0, 20_000);
        assert_eq!((report.from_ms, report.to_ms), (0, 10_000));
        assert_eq!(report.timeline[0].1, [2, 0, 0, 0, 0]);
        let mid = report.timeline[TIMELINE_POINTS / 2].1;
        assert_eq!(mid, [0, 1, 1, 0, 0], "at 5 s: c0 provisioning, c1 active");
        assert_eq!(report.timeline[TIMELINE_POINTS].1, [0, 1, 0, 0, 0]);
        assert_eq!(report.created, 2);
        assert_eq!(report.create_to_active, vec![5.0]);
        assert_eq!(report.first_active, 1);
    }

    #[test]
    fn requests_are_summed_over_clusters_most_first() {
        let count = |cluster: &str, verb: &str, resource: &str, sub: &str, n: u64| RequestCount {
            cluster: cluster.into(),
            verb: verb.into(),
            resource: resource.into(),
            subresource: sub.into(),
            count: n,
            at_ms: 0,
        };
        let rows = request_rows(
            &[
                count("a", "get", "namespaces", "", 3),
                count("b", "get", "namespaces", "", 4),
                count("a", "watch", "pods", "", 9),
                count("a", "get", "pods", "log", 1),
            ],
            2,
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].verb.as_str(),
                rows[0].resource.as_str(),
                rows[0].count
            ),
            ("watch", "pods", 9)
        );
        assert_eq!((rows[1].count, rows[1].clusters), (7, 2));
        let all = request_rows(&[count("a", "get", "pods", "log", 1)], 5);
        assert_eq!(all[0].resource, "pods/log");
    }
}
