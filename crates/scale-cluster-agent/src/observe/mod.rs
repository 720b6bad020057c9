//! What a run looks like while it runs: the lifecycle histograms, failure and reconnect counters,
//! recent failures and the rate of reaching `active`, folded from the store's event log
//! ([`crate::store::Event`]), and the agent's own memory and CPU.
//!
//! The event log is the one record: [`Observer::refresh`] reads the events written since it last
//! looked (one query on the primary key, however many clusters there are) and folds them, so
//! `/metrics`, the status page and the run report ([`crate::report`]) agree by construction.
//! Histograms and counters cover this process's lifetime, as Prometheus expects of them; the
//! report reads the whole log.

pub mod audit;
pub mod exposition;
pub mod histogram;
pub mod memory;
pub mod proc_stat;
pub mod status;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{AgentPhase, Event, EventKind, Store, StoreError};
pub use histogram::Histogram;

/// The bring-up phases whose duration is measured: time from entering each to entering the next.
pub const MEASURED_PHASES: [AgentPhase; 3] = [
    AgentPhase::Provisioning,
    AgentPhase::Registering,
    AgentPhase::Connecting,
];

/// Recent durations kept per phase for exact percentiles on the status page.
const RECENT_DURATIONS: usize = 10_000;
/// Recent failures kept for the status page.
const RECENT_FAILURES: usize = 20;
/// The window of the "reached active" rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(300);
/// Events read per query while catching up.
const BATCH: usize = 5_000;

/// The phase a forward bring-up step enters after `phase`, if `phase` is measured.
fn next_phase(phase: AgentPhase) -> Option<AgentPhase> {
    match phase {
        AgentPhase::Provisioning => Some(AgentPhase::Registering),
        AgentPhase::Registering => Some(AgentPhase::Connecting),
        AgentPhase::Connecting => Some(AgentPhase::Active),
        _ => None,
    }
}

/// A bounded label for a failure's text: the reconcile step that failed, from the fixed prefix
/// its error message starts with (see `StepError` in `agent::reconcile`).
pub fn failure_reason(text: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 8] = [
        ("KWOK:", "kwok"),
        ("preparing the cluster:", "prepare"),
        ("Rancher did not report", "not_active"),
        ("Rancher answered 404", "not_in_rancher"),
        ("Rancher:", "rancher"),
        ("tunnel:", "tunnel"),
        ("state database:", "store"),
        ("reading the cluster CA", "ca"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map(|(_, reason)| *reason)
        .unwrap_or("other")
}

/// A bounded label for a tunnel's last error: the kind of error, from its first word.
pub fn disconnect_reason(text: Option<&str>) -> &'static str {
    let Some(text) = text else {
        return "closed";
    };
    let lower = text.to_ascii_lowercase();
    let kinds = [
        ("keepalive", "keepalive"),
        ("timed out", "timeout"),
        ("timeout", "timeout"),
        ("tls", "tls"),
        ("certificate", "tls"),
        ("rejected", "rejected"),
        ("refused", "refused"),
        ("reset", "reset"),
        ("closed", "closed"),
        ("protocol", "protocol"),
    ];
    kinds
        .iter()
        .find(|(needle, _)| lower.contains(needle))
        .map(|(_, kind)| *kind)
        .unwrap_or("other")
}

/// One recent failure, as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentFailure {
    pub at_ms: i64,
    pub cluster: String,
    /// The phase that failed.
    pub phase: String,
    /// The bounded reason label ([`failure_reason`]).
    pub reason: String,
    /// The full error text.
    pub error: String,
}

/// Percentiles of one phase's recent durations, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (seconds); `None` without values.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        Some(Self {
            count: sorted.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// Everything folded from the events since the agent started.
#[derive(Debug, Default)]
pub struct Folded {
    last_id: i64,
    /// By measured phase name.
    pub phase_seconds: BTreeMap<&'static str, Histogram>,
    pub create_to_active_seconds: Histogram,
    /// By tunnel (`main`, `steve`).
    pub reconnect_seconds: BTreeMap<String, Histogram>,
    /// By (phase that failed, reason label).
    pub failures: BTreeMap<(String, &'static str), u64>,
    /// By (tunnel, reason label).
    pub disconnects: BTreeMap<(String, &'static str), u64>,
    /// Clusters that reached `active` (each time, heals included).
    pub reached_active: u64,
    recent: BTreeMap<&'static str, VecDeque<f64>>,
    recent_create_to_active: VecDeque<f64>,
    recent_failures: VecDeque<RecentFailure>,
    /// When clusters first reached active, within [`RATE_WINDOW`].
    recent_active_at: VecDeque<i64>,
}

fn push_bounded<T>(queue: &mut VecDeque<T>, value: T, cap: usize) {
    if queue.len() == cap {
        queue.pop_front();
    }
    queue.push_back(value);
}

impl Folded {
    /// Adds one event (events must come in id order).
    pub fn fold(&mut self, event: &Event) {
        self.last_id = self.last_id.max(event.id);
        let seconds = event.duration_ms.map(|ms| ms as f64 / 1000.0);
        match event.kind {
            EventKind::Phase => {
                let (Some(phase), Some(previous)) = (event.phase, event.previous) else {
                    return;
                };
                if let (Some(next), Some(seconds)) = (next_phase(previous), seconds) {
                    if next == phase {
                        let name = previous.as_str();
                        self.phase_seconds
                            .entry(name)
                            .or_insert_with(Histogram::seconds)
                            .observe(seconds);
                        push_bounded(
                            self.recent.entry(name).or_default(),
                            seconds,
                            RECENT_DURATIONS,
                        );
                    }
                }
                if phase == AgentPhase::Active {
                    self.reached_active += 1;
                }
                if let Some(ms) = event.since_created_ms {
                    let seconds = ms as f64 / 1000.0;
                    self.create_to_active_seconds.observe(seconds);
                    push_bounded(&mut self.recent_create_to_active, seconds, RECENT_DURATIONS);
                    self.recent_active_at.push_back(event.at_ms);
                }
                let failed = phase == AgentPhase::Failed
                    || (phase == AgentPhase::Deleting && event.reason.is_some());
                if failed {
                    let error = event.reason.clone().unwrap_or_default();
                    let reason = failure_reason(&error);
                    let failed_in = if phase == AgentPhase::Deleting {
                        AgentPhase::Deleting
                    } else {
                        previous
                    };
                    *self
                        .failures
                        .entry((failed_in.as_str().to_string(), reason))
                        .or_default() += 1;
                    push_bounded(
                        &mut self.recent_failures,
                        RecentFailure {
                            at_ms: event.at_ms,
                            cluster: event.cluster.clone(),
                            phase: failed_in.as_str().to_string(),
                            reason: reason.to_string(),
                            error,
                        },
                        RECENT_FAILURES,
                    );
                }
            }
            EventKind::TunnelDown => {
                let tunnel = event.tunnel.clone().unwrap_or_default();
                let reason = disconnect_reason(event.reason.as_deref());
                *self.disconnects.entry((tunnel, reason)).or_default() += 1;
            }
            EventKind::Reconnected => {
                if let Some(seconds) = seconds {
                    self.reconnect_seconds
                        .entry(event.tunnel.clone().unwrap_or_default())
                        .or_insert_with(Histogram::seconds)
                        .observe(seconds);
                }
            }
            EventKind::Created | EventKind::Removed => {}
        }
    }

    /// Percentiles of each measured phase's recent durations, and of create→active.
    pub fn percentiles(&self) -> BTreeMap<String, Percentiles> {
        let mut out: BTreeMap<String, Percentiles> = self
            .recent
            .iter()
            .filter_map(|(phase, values)| {
                Percentiles::of(values.iter().copied()).map(|p| (phase.to_string(), p))
            })
            .collect();
        if let Some(p) = Percentiles::of(self.recent_create_to_active.iter().copied()) {
            out.insert("create_to_active".into(), p);
        }
        out
    }

    /// Clusters that first reached active within [`RATE_WINDOW`] before `now_ms`, per minute.
    pub fn active_per_minute(&mut self, now_ms: i64) -> f64 {
        let window_ms = RATE_WINDOW.as_millis() as i64;
        while self
            .recent_active_at
            .front()
            .is_some_and(|at| *at < now_ms - window_ms)
        {
            self.recent_active_at.pop_front();
        }
        self.recent_active_at.len() as f64 * 60_000.0 / window_ms as f64
    }

    /// The most recent failures, newest first.
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        self.recent_failures.iter().rev().cloned().collect()
    }
}

/// The folded view of the event log, shared by `/metrics` and the status page.
pub struct Observer {
    store: Store,
    folded: tokio::sync::Mutex<Folded>,
}

impl Observer {
    /// An observer of the events written from now on.
    pub async fn start(store: Store) -> Result<Self, StoreError> {
        let last_id = store.last_event_id().await?;
        Ok(Self {
            store,
            folded: tokio::sync::Mutex::new(Folded {
                last_id,
                ..Default::default()
            }),
        })
    }

    /// Folds the events written since the last call and returns the result, locked: two
    /// concurrent callers never fold the same event twice.
    pub async fn refresh(&self) -> Result<tokio::sync::MutexGuard<'_, Folded>, StoreError> {
        let mut folded = self.folded.lock().await;
        loop {
            let events = self.store.events_after(folded.last_id, BATCH).await?;
            for event in &events {
                folded.fold(event);
            }
            if events.len() < BATCH {
                return Ok(folded);
            }
        }
    }
}

/// Records a sample of the agent's own resource use, each cluster's Rancher load, and each
/// cluster's memory (its processes found by `manager`) every `every`, until `stop`.
pub async fn sample_loop(
    store: Store,
    every: Duration,
    counts: impl Fn() -> (u64, u64) + Send,
    load: impl Fn() -> Vec<crate::agent::tunnels::TunnelLoad> + Send,
    manager: crate::kwok::ClusterManager,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut sampler = Some(memory::MemorySampler::new(manager.clusters_dir()));
    loop {
        if let Some(taken) = sampler.take() {
            sampler = sample_memory(&store, &manager, taken).await;
        }
        let now = crate::store::now_ms();
        let per_cluster = status::top_load(&load(), usize::MAX)
            .into_iter()
            .map(|c| crate::store::LoadSample {
                cluster: c.cluster,
                at_ms: now,
                streams_opened: c.streams_opened,
                streams_long_lived: u64::try_from(c.streams_long_lived).unwrap_or(0),
                bytes_received: c.bytes_received,
                bytes_sent: c.bytes_sent,
            })
            .collect::<Vec<_>>();
        if !per_cluster.is_empty() {
            if let Err(error) = store.record_load(per_cluster).await {
                tracing::warn!(%error, "recording the Rancher load per cluster");
            }
        }
        match proc_stat::read_self().await {
            Ok(usage) => {
                let (clusters_active, tunnels_connected) = counts();
                let sample = crate::store::Sample {
                    at_ms: crate::store::now_ms(),
                    rss_bytes: usage.rss_bytes,
                    cpu_seconds: usage.cpu_seconds,
                    clusters_active,
                    tunnels_connected,
                };
                if let Err(error) = store.record_sample(sample).await {
                    tracing::warn!(%error, "recording a resource sample");
                }
            }
            Err(error) => tracing::warn!(%error, "reading the agent's resource use"),
        }
        if stop.is_cancelled() {
            return;
        }
        // On shutdown, one last sample (the tunnels are still open then) before returning.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// One memory sample of every cluster and the shared processes, stored; the sampler back (`None`
/// if its blocking task died: memory is then no longer sampled, the rest goes on).
async fn sample_memory(
    store: &Store,
    manager: &crate::kwok::ClusterManager,
    mut sampler: memory::MemorySampler,
) -> Option<memory::MemorySampler> {
    let mut shared: Vec<(&'static str, u32)> = Vec::new();
    if let Some(pid) = manager.shared_etcd().running_pid().await {
        shared.push(("etcd (shared)", pid));
    }
    if let Some(pid) = manager.controller_host().and_then(|host| host.pid()) {
        shared.push(("controller-host", pid));
    }
    let at_ms = crate::store::now_ms();
    let started = std::time::Instant::now();
    let (sampler, sample) = match tokio::task::spawn_blocking(move || {
        let sample = sampler.sample(&shared, at_ms);
        (sampler, sample)
    })
    .await
    {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(%error, "sampling the clusters' memory");
            return None;
        }
    };
    tracing::debug!(
        clusters = sample.clusters.len(),
        took_ms = started.elapsed().as_secs_f64() * 1000.0,
        "sampled the clusters' memory"
    );
    if let Err(error) = store.record_memory(sample.summary(), sample.clusters).await {
        tracing::warn!(%error, "recording the clusters' memory");
    }
    Some(sampler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(id: i64, at_ms: i64, previous: AgentPhase, phase: AgentPhase, ms: i64) -> Event {
        Event {
            id,
            at_ms,
            cluster: "a".into(),
            kind: EventKind::Phase,
            phase: Some(phase),
            previous: Some(previous),
            tunnel: None,
            duration_ms: Some(ms),
            since_created_ms: None,
            reason: None,
        }
    }

    #[test]
    fn folds_forward_steps_failures_and_first_actives() {
        let mut folded = Folded::default();
        folded.fold(&phase(
            1,
            0,
            AgentPhase::Pending,
            AgentPhase::Provisioning,
            10,
        ));
        folded.fold(&phase(
            2,
            0,
            AgentPhase::Provisioning,
            AgentPhase::Registering,
            4000,
        ));
        let mut failed = phase(3, 0, AgentPhase::Registering, AgentPhase::Failed, 100);
        failed.reason = Some("Rancher: 500".into());
        folded.fold(&failed);
        folded.fold(&phase(
            4,
            0,
            AgentPhase::Failed,
            AgentPhase::Provisioning,
            10,
        ));
        let mut active = phase(5, 60_000, AgentPhase::Connecting, AgentPhase::Active, 2000);
        active.since_created_ms = Some(30_000);
        folded.fold(&active);
        assert_eq!(folded.phase_seconds["provisioning"].count(), 1);
        assert_eq!(folded.phase_seconds["connecting"].count(), 1);
        assert!(!folded.phase_seconds.contains_key("pending"));
        assert_eq!(folded.create_to_active_seconds.count(), 1);
        assert_eq!(
            folded.failures.get(&("registering".to_string(), "rancher")),
            Some(&1)
        );
        assert_eq!(folded.recent_failures()[0].cluster, "a");
        assert_eq!(folded.percentiles()["create_to_active"].p50, 30.0);
        assert!((folded.active_per_minute(61_000) - 0.2).abs() < 1e-9);
        assert_eq!(folded.active_per_minute(60_000 + 301_000), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from)).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert!(Percentiles::of([]).is_none());
    }

    #[test]
    fn reasons_are_bounded_labels() {
        assert_eq!(failure_reason("tunnel: main tunnel was rejected"), "tunnel");
        assert_eq!(failure_reason("Rancher: 503"), "rancher");
        assert_eq!(
            failure_reason("Rancher did not report the cluster active"),
            "not_active"
        );
        assert_eq!(failure_reason("anything else"), "other");
        assert_eq!(disconnect_reason(Some("keepalive timed out")), "keepalive");
        assert_eq!(disconnect_reason(None), "closed");
    }
}
