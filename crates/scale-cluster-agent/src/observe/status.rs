//! `GET /status`: what the status page shows, as JSON, from memory and the folded event log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Folded, Percentiles, RecentFailure};
use crate::agent::tunnels::TunnelLoad;

/// How many clusters the status page lists by Rancher load.
pub const TOP_LOAD: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Unix ms of this snapshot.
    pub at_ms: i64,
    /// Clusters by the phase the API shows, every phase present.
    pub clusters: BTreeMap<String, usize>,
    pub total: usize,
    /// Clusters that first reached active per minute, over the last five minutes.
    pub active_per_minute: f64,
    /// Seconds, by measured phase and `create_to_active`, over recent bring-ups since start.
    pub percentiles: BTreeMap<String, Percentiles>,
    pub tunnels: TunnelCounts,
    /// Newest first.
    pub recent_failures: Vec<RecentFailure>,
    pub agent: AgentUsage,
    /// The clusters Rancher loads most (bytes both ways), both tunnels summed.
    pub top_load: Vec<ClusterLoad>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelCounts {
    pub connected: usize,
    /// Open tunnels not connected now (connecting or backing off).
    pub reconnecting: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AgentUsage {
    pub rss_bytes: u64,
    /// CPU seconds since the agent started; the page shows the rate between two polls.
    pub cpu_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLoad {
    pub cluster: String,
    pub streams_opened: u64,
    pub streams_open: i64,
    pub streams_long_lived: i64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// Per-cluster load summed over both tunnels, heaviest (bytes both ways) first, at most `top`.
pub fn top_load(load: &[TunnelLoad], top: usize) -> Vec<ClusterLoad> {
    let mut by_cluster: BTreeMap<&str, ClusterLoad> = BTreeMap::new();
    for l in load {
        let entry = by_cluster.entry(&l.cluster).or_insert_with(|| ClusterLoad {
            cluster: l.cluster.clone(),
            streams_opened: 0,
            streams_open: 0,
            streams_long_lived: 0,
            bytes_received: 0,
            bytes_sent: 0,
        });
        entry.streams_opened += l.metrics.streams_opened;
        entry.streams_open += l.metrics.streams_active;
        entry.streams_long_lived += l.metrics.streams_long_lived;
        entry.bytes_received += l.metrics.bytes_received;
        entry.bytes_sent += l.metrics.bytes_sent;
    }
    let mut all: Vec<ClusterLoad> = by_cluster.into_values().collect();
    all.sort_by_key(|c| std::cmp::Reverse(c.bytes_received + c.bytes_sent));
    all.truncate(top);
    all
}

/// The status from its parts.
pub fn build(
    folded: &mut Folded,
    clusters: BTreeMap<String, usize>,
    load: &[TunnelLoad],
    agent: AgentUsage,
    now_ms: i64,
) -> Status {
    Status {
        at_ms: now_ms,
        total: clusters.values().sum(),
        clusters,
        active_per_minute: folded.active_per_minute(now_ms),
        percentiles: folded.percentiles(),
        tunnels: TunnelCounts {
            connected: load.iter().filter(|l| l.connected).count(),
            reconnecting: load.iter().filter(|l| !l.connected).count(),
        },
        recent_failures: folded.recent_failures(),
        agent,
        top_load: top_load(load, TOP_LOAD),
    }
}
