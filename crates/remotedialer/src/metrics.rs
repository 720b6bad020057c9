//! Counters the agent can export. One [`Metrics`] is usually shared (in an `Arc`) by every
//! client of a process, so all fields are atomics and updating them never blocks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Shared counters. Gauges are signed so a racing decrement can never wrap.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) sessions_established: AtomicU64,
    pub(crate) sessions_active: AtomicI64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) streams_opened: AtomicU64,
    pub(crate) streams_active: AtomicI64,
    pub(crate) streams_long_lived: AtomicI64,
    pub(crate) streams_failed: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
    pub(crate) streams_closed_idle: AtomicU64,
    pub(crate) buffer_overflows: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) pauses_sent: AtomicU64,
}

/// How long a stream must stay open to count in [`MetricsSnapshot::streams_long_lived`]: longer
/// than any plain request, shorter than a watch's usual lifetime (minutes).
pub const LONG_LIVED_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Websocket connects tried (first connects and reconnects).
    pub connect_attempts: u64,
    /// Connects that did not reach an open session (network, TLS or HTTP rejection).
    pub connect_failures: u64,
    /// Sessions that completed the websocket upgrade.
    pub sessions_established: u64,
    /// Sessions open right now.
    pub sessions_active: i64,
    /// Connect attempts made after an earlier attempt or session of the same client.
    pub reconnects: u64,
    /// Connects received from servers.
    pub streams_opened: u64,
    /// Streams open right now (including ones still dialing).
    pub streams_active: i64,
    /// Streams open right now that have been open for [`LONG_LIVED_AFTER`] or more: a server's
    /// watches and other long-lived requests, as opposed to short request/response exchanges.
    pub streams_long_lived: i64,
    /// Streams whose target was denied, refused or failed to dial.
    pub streams_failed: u64,
    /// Connects refused because the session already had `max_streams` streams open.
    pub streams_refused: u64,
    /// In-process streams closed after their idle timeout.
    pub streams_closed_idle: u64,
    /// Streams closed because their buffer, or their session's buffers, went over the limit.
    pub buffer_overflows: u64,
    /// Data payload bytes received from servers.
    pub bytes_received: u64,
    /// Data payload bytes sent to servers.
    pub bytes_sent: u64,
    /// Sessions ended by a malformed or unexpected frame.
    pub protocol_errors: u64,
    /// Pause messages sent because a local target fell behind.
    pub pauses_sent: u64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            connect_attempts: load(&self.connect_attempts),
            connect_failures: load(&self.connect_failures),
            sessions_established: load(&self.sessions_established),
            sessions_active: self.sessions_active.load(Ordering::Relaxed),
            reconnects: load(&self.reconnects),
            streams_opened: load(&self.streams_opened),
            streams_active: self.streams_active.load(Ordering::Relaxed),
            streams_long_lived: self.streams_long_lived.load(Ordering::Relaxed),
            streams_failed: load(&self.streams_failed),
            streams_refused: load(&self.streams_refused),
            streams_closed_idle: load(&self.streams_closed_idle),
            buffer_overflows: load(&self.buffer_overflows),
            bytes_received: load(&self.bytes_received),
            bytes_sent: load(&self.bytes_sent),
            protocol_errors: load(&self.protocol_errors),
            pauses_sent: load(&self.pauses_sent),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, amount: usize) {
    counter.fetch_add(amount as u64, Ordering::Relaxed);
}

/// Increments a gauge and decrements it again when dropped, so every exit path balances.
pub(crate) struct GaugeGuard {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicI64,
}

impl GaugeGuard {
    pub(crate) fn new(metrics: Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicI64) -> Self {
        gauge(&metrics).fetch_add(1, Ordering::Relaxed);
        Self { metrics, gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}
