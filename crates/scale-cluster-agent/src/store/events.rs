//! The event log (`agent_events`, migration 7): every phase transition of an agent cluster, every
//! tunnel drop and reconnect, every creation and removal, with a millisecond timestamp and a
//! reason, so that metrics, the status page and the run report are all made from the same record,
//! after the fact and across restarts. Phase events are written in the same transaction as the
//! phase itself (a phase that did not land leaves no event), and carry the time spent in the
//! phase they leave, so a reader needs no pairing of its own.
//!
//! Bounded: the oldest events beyond [`EVENT_RETENTION`] are dropped as new ones come in.
//! `agent_samples` holds the agent's own resource use over time (one row per sample), and
//! `cluster_load` the last Rancher load sampled per cluster (one row per cluster, overwritten).

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{AgentPhase, Store, StoreError};

/// Most events kept (newest win). 500 clusters brought up once make about 3,000 events (created,
/// four phases, removed); 200,000 rows (about 20 MB) keep dozens of such runs, and a flapping
/// tunnel cannot grow the database without bound.
pub const EVENT_RETENTION: i64 = 200_000;

/// Most samples of the agent's own resource use kept: a week at one sample per 15 s.
pub const SAMPLE_RETENTION: i64 = 40_320;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The cluster was added (phase `pending`).
    Created,
    /// The cluster moved to `phase` from `previous`.
    Phase,
    /// A tunnel (`tunnel`) left the connected state; `reason` is its last error.
    TunnelDown,
    /// A tunnel (`tunnel`) is connected again after `duration_ms` down.
    Reconnected,
    /// The cluster's row was removed (deleted everywhere).
    Removed,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Phase => "phase",
            EventKind::TunnelDown => "tunnel_down",
            EventKind::Reconnected => "reconnected",
            EventKind::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => EventKind::Created,
            "phase" => EventKind::Phase,
            "tunnel_down" => EventKind::TunnelDown,
            "reconnected" => EventKind::Reconnected,
            "removed" => EventKind::Removed,
            _ => return None,
        })
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing: events after a given id are the ones since.
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub cluster: String,
    pub kind: EventKind,
    /// The phase entered (`Phase`, `Created`).
    pub phase: Option<AgentPhase>,
    /// The phase left (`Phase`).
    pub previous: Option<AgentPhase>,
    /// `main` or `steve` (`TunnelDown`, `Reconnected`).
    pub tunnel: Option<String>,
    /// `Phase`: time spent in `previous`; `Reconnected`: time the tunnel was down.
    pub duration_ms: Option<i64>,
    /// On the first `active`: time since the cluster was created.
    pub since_created_ms: Option<i64>,
    /// The error of a failure, a heal's note, a tunnel's last error.
    pub reason: Option<String>,
}

/// The Rancher load of one cluster (both tunnels summed) when last sampled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSample {
    pub cluster: String,
    pub at_ms: i64,
    pub streams_opened: u64,
    pub streams_long_lived: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// One sample of the agent's own resource use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: i64,
    /// Resident memory of the agent process.
    pub rss_bytes: u64,
    /// CPU time (user + system) the agent used since it started.
    pub cpu_seconds: f64,
    pub clusters_active: u64,
    pub tunnels_connected: u64,
}

const RUN_SETTINGS_KEY: &str = "run_settings";
const RUN_STARTED_KEY: &str = "run_started_ms";

pub(super) const MIGRATION: &str = "CREATE TABLE agent_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        kind TEXT NOT NULL,
        phase TEXT,
        previous TEXT,
        tunnel TEXT,
        duration_ms INTEGER,
        since_created_ms INTEGER,
        reason TEXT
     );
     CREATE INDEX agent_events_cluster ON agent_events (cluster, id);
     CREATE INDEX agent_events_at ON agent_events (at_ms);
     CREATE TABLE agent_samples (
        at_ms INTEGER PRIMARY KEY,
        rss_bytes INTEGER NOT NULL,
        cpu_seconds REAL NOT NULL,
        clusters_active INTEGER NOT NULL,
        tunnels_connected INTEGER NOT NULL
     );
     CREATE TABLE cluster_load (
        cluster TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        streams_opened INTEGER NOT NULL,
        streams_long_lived INTEGER NOT NULL,
        bytes_received INTEGER NOT NULL,
        bytes_sent INTEGER NOT NULL
     );";

/// Unix milliseconds now: the clock of events and samples.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A new event before it is stored.
#[derive(Debug, Default)]
struct NewEvent<'a> {
    cluster: &'a str,
    phase: Option<AgentPhase>,
    previous: Option<AgentPhase>,
    tunnel: Option<&'a str>,
    duration_ms: Option<i64>,
    since_created_ms: Option<i64>,
    reason: Option<&'a str>,
}

fn insert(conn: &Connection, kind: EventKind, at_ms: i64, e: NewEvent<'_>) -> rusqlite::Result<()> {
    // Cached statements: a phase write runs these every time, and parsing SQL is most of their
    // cost.
    conn.prepare_cached(
        "INSERT INTO agent_events (at_ms, cluster, kind, phase, previous, tunnel, duration_ms,
            since_created_ms, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        at_ms,
        e.cluster,
        kind.as_str(),
        e.phase.map(AgentPhase::as_str),
        e.previous.map(AgentPhase::as_str),
        e.tunnel,
        e.duration_ms,
        e.since_created_ms,
        e.reason
    ])?;
    // Ids only grow, so this is a range delete on the primary key: nothing to do (one seek)
    // until the cap is reached, then one row per insert.
    conn.prepare_cached("DELETE FROM agent_events WHERE id <= last_insert_rowid() - ?1")?
        .execute([EVENT_RETENTION])?;
    Ok(())
}

/// Records `name`'s creation. Called in the transaction that inserts the row.
pub(super) fn record_created(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    insert(
        conn,
        EventKind::Created,
        now_ms(),
        NewEvent {
            cluster: name,
            phase: Some(AgentPhase::Pending),
            ..Default::default()
        },
    )
}

/// Records `name`'s removal.
pub(super) fn record_removed(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    insert(
        conn,
        EventKind::Removed,
        now_ms(),
        NewEvent {
            cluster: name,
            ..Default::default()
        },
    )
}

/// Records a phase write of `name` from `previous` to `phase`, in the transaction of that write.
/// Nothing is recorded for a write that keeps the phase and gives no reason.
/// `first_active` says the write stamped `active_at`: the create→active time is recorded with it.
pub(super) fn record_phase(
    conn: &Connection,
    name: &str,
    previous: AgentPhase,
    phase: AgentPhase,
    reason: Option<&str>,
    first_active: bool,
) -> rusqlite::Result<()> {
    if previous == phase && reason.is_none() {
        return Ok(());
    }
    let now = now_ms();
    // The last event that put the cluster in a phase: when it entered the one it leaves now.
    let entered: Option<i64> = conn
        .prepare_cached(
            "SELECT at_ms FROM agent_events WHERE cluster = ?1 AND kind IN ('created', 'phase')
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([name], |r| r.get(0))
        .optional()?;
    let since_created_ms = if first_active {
        let created: Option<i64> = conn
            .query_row(
                "SELECT at_ms FROM agent_events WHERE cluster = ?1 AND kind = 'created'
                 ORDER BY id DESC LIMIT 1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        // A cluster created before events were recorded: its row's creation time (seconds).
        let created = match created {
            Some(at) => Some(at),
            None => conn
                .query_row(
                    "SELECT created_at * 1000 FROM agent_clusters WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?,
        };
        created.map(|at| (now - at).max(0))
    } else {
        None
    };
    insert(
        conn,
        EventKind::Phase,
        now,
        NewEvent {
            cluster: name,
            phase: Some(phase),
            previous: Some(previous),
            duration_ms: entered.map(|at| (now - at).max(0)),
            since_created_ms,
            reason,
            ..Default::default()
        },
    )
}

/// The phase column of `name` now, read in a write transaction before it changes.
pub(super) fn current_phase(
    conn: &Connection,
    name: &str,
) -> Result<Option<AgentPhase>, StoreError> {
    let phase: Option<String> = conn
        .prepare_cached("SELECT phase FROM agent_clusters WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    phase
        .map(|p| {
            AgentPhase::parse(&p).ok_or_else(|| StoreError::Corrupt {
                name: name.to_string(),
                reason: format!("unknown agent phase {p:?}"),
            })
        })
        .transpose()
}

const SELECT_EVENT: &str =
    "SELECT id, at_ms, cluster, kind, phase, previous, tunnel, duration_ms, \
                            since_created_ms, reason FROM agent_events";

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = r.get(3)?;
    let phase: Option<String> = r.get(4)?;
    let previous: Option<String> = r.get(5)?;
    let bad = |what: &str, value: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown event {what} {value:?}").into(),
        )
    };
    let parse_phase = |p: Option<String>| {
        p.map(|p| AgentPhase::parse(&p).ok_or_else(|| bad("phase", &p)))
            .transpose()
    };
    Ok(Event {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        cluster: r.get(2)?,
        kind: EventKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
        phase: parse_phase(phase)?,
        previous: parse_phase(previous)?,
        tunnel: r.get(6)?,
        duration_ms: r.get(7)?,
        since_created_ms: r.get(8)?,
        reason: r.get(9)?,
    })
}

impl Store {
    /// Records that `tunnel` of `cluster` went down (`reason`: its last error).
    pub async fn record_tunnel_down(
        &self,
        cluster: &str,
        tunnel: &'static str,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let cluster = cluster.to_string();
        self.with_conn(move |conn| {
            insert(
                conn,
                EventKind::TunnelDown,
                now_ms(),
                NewEvent {
                    cluster: &cluster,
                    tunnel: Some(tunnel),
                    reason: reason.as_deref(),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
        .await
    }

    /// Records that `tunnel` of `cluster` is connected again after `down_ms`.
    pub async fn record_reconnected(
        &self,
        cluster: &str,
        tunnel: &'static str,
        down_ms: i64,
    ) -> Result<(), StoreError> {
        let cluster = cluster.to_string();
        self.with_conn(move |conn| {
            insert(
                conn,
                EventKind::Reconnected,
                now_ms(),
                NewEvent {
                    cluster: &cluster,
                    tunnel: Some(tunnel),
                    duration_ms: Some(down_ms),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` events with an id above `after`, oldest first: what happened since a reader
    /// last looked (one query on the primary key).
    pub async fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "{SELECT_EVENT} WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(
                params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
                event_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every event at or after `since_ms` (unix ms), oldest first.
    pub async fn events_since(&self, since_ms: i64) -> Result<Vec<Event>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt =
                conn.prepare(&format!("{SELECT_EVENT} WHERE at_ms >= ?1 ORDER BY id"))?;
            let rows = stmt.query_map([since_ms], event_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The newest event id (0 without events).
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        self.with_conn(|conn| {
            Ok(
                conn.query_row("SELECT COALESCE(MAX(id), 0) FROM agent_events", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    /// Keeps the settings of the run that starts now (JSON, no secret), with its start time,
    /// for the run report; the previous run's are replaced.
    pub async fn record_run_settings(&self, settings: String) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            for (key, value) in [
                (RUN_SETTINGS_KEY, settings),
                (RUN_STARTED_KEY, now_ms().to_string()),
            ] {
                tx.execute(
                    "INSERT INTO agent_meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The last run's settings (JSON) and start time (unix ms), if recorded.
    pub async fn run_settings(&self) -> Result<Option<(String, i64)>, StoreError> {
        self.with_conn(|conn| {
            let get = |key: &str| -> Result<Option<String>, StoreError> {
                Ok(conn
                    .query_row("SELECT value FROM agent_meta WHERE key = ?1", [key], |r| {
                        r.get(0)
                    })
                    .optional()?)
            };
            let settings = get(RUN_SETTINGS_KEY)?;
            let started = get(RUN_STARTED_KEY)?.and_then(|s| s.parse().ok());
            Ok(settings.zip(started))
        })
        .await
    }

    /// Stores one sample of the agent's resource use (the oldest beyond [`SAMPLE_RETENTION`]
    /// go).
    pub async fn record_sample(&self, sample: Sample) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO agent_samples (at_ms, rss_bytes, cpu_seconds,
                    clusters_active, tunnels_connected) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    sample.at_ms,
                    sample.rss_bytes,
                    sample.cpu_seconds,
                    sample.clusters_active,
                    sample.tunnels_connected
                ],
            )?;
            conn.execute(
                "DELETE FROM agent_samples WHERE at_ms <= (SELECT at_ms FROM agent_samples
                    ORDER BY at_ms DESC LIMIT 1 OFFSET ?1)",
                [SAMPLE_RETENTION],
            )?;
            Ok(())
        })
        .await
    }

    /// Overwrites the last sampled load of each cluster in `load`, in one transaction.
    pub async fn record_load(&self, load: Vec<LoadSample>) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO cluster_load (cluster, at_ms, streams_opened, streams_long_lived,
                        bytes_received, bytes_sent) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (cluster) DO UPDATE SET at_ms = excluded.at_ms,
                        streams_opened = excluded.streams_opened,
                        streams_long_lived = excluded.streams_long_lived,
                        bytes_received = excluded.bytes_received, bytes_sent = excluded.bytes_sent",
                )?;
                for l in &load {
                    stmt.execute(params![
                        l.cluster,
                        l.at_ms,
                        l.streams_opened,
                        l.streams_long_lived,
                        l.bytes_received,
                        l.bytes_sent
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The last sampled load of every cluster sampled at or after `since_ms`.
    pub async fn load_since(&self, since_ms: i64) -> Result<Vec<LoadSample>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT cluster, at_ms, streams_opened, streams_long_lived, bytes_received,
                    bytes_sent FROM cluster_load WHERE at_ms >= ?1 ORDER BY cluster",
            )?;
            let rows = stmt.query_map([since_ms], |r| {
                Ok(LoadSample {
                    cluster: r.get(0)?,
                    at_ms: r.get(1)?,
                    streams_opened: r.get(2)?,
                    streams_long_lived: r.get(3)?,
                    bytes_received: r.get(4)?,
                    bytes_sent: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every sample at or after `since_ms`, oldest first.
    pub async fn samples_since(&self, since_ms: i64) -> Result<Vec<Sample>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT at_ms, rss_bytes, cpu_seconds, clusters_active, tunnels_connected
                 FROM agent_samples WHERE at_ms >= ?1 ORDER BY at_ms",
            )?;
            let rows = stmt.query_map([since_ms], |r| {
                Ok(Sample {
                    at_ms: r.get(0)?,
                    rss_bytes: r.get(1)?,
                    cpu_seconds: r.get(2)?,
                    clusters_active: r.get(3)?,
                    tunnels_connected: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phase_writes_record_durations_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = Store::open(&path).unwrap();
            store
                .insert_agent_clusters(vec!["a".into()], "lean".into())
                .await
                .unwrap();
            for phase in [
                AgentPhase::Provisioning,
                AgentPhase::Registering,
                AgentPhase::Connecting,
            ] {
                store.set_agent_phase("a", phase, None).await.unwrap();
            }
            // Same phase again: no event.
            store
                .set_agent_phase("a", AgentPhase::Connecting, None)
                .await
                .unwrap();
            store
                .set_agent_phase("a", AgentPhase::Failed, Some("tunnel: boom".into()))
                .await
                .unwrap();
            store
                .set_agent_phase("a", AgentPhase::Active, None)
                .await
                .unwrap();
            store
                .record_tunnel_down("a", "main", Some("reset".into()))
                .await
                .unwrap();
            store.record_reconnected("a", "main", 1500).await.unwrap();
        }
        let store = Store::open(&path).unwrap();
        let events = store.events_after(0, 100).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.phase)).collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::Created, Some(AgentPhase::Pending)),
                (EventKind::Phase, Some(AgentPhase::Provisioning)),
                (EventKind::Phase, Some(AgentPhase::Registering)),
                (EventKind::Phase, Some(AgentPhase::Connecting)),
                (EventKind::Phase, Some(AgentPhase::Failed)),
                (EventKind::Phase, Some(AgentPhase::Active)),
                (EventKind::TunnelDown, None),
                (EventKind::Reconnected, None),
            ]
        );
        assert!(events[1..6].iter().all(|e| e.duration_ms.is_some()));
        assert_eq!(events[4].reason.as_deref(), Some("tunnel: boom"));
        assert_eq!(events[2].previous, Some(AgentPhase::Provisioning));
        assert!(events[5].since_created_ms.is_some(), "{:?}", events[5]);
        assert_eq!(events[7].duration_ms, Some(1500));
        assert_eq!(events[7].tunnel.as_deref(), Some("main"));
        assert_eq!(store.last_event_id().await.unwrap(), events[7].id);
        assert_eq!(store.events_after(events[5].id, 10).await.unwrap().len(), 2);
        store.remove_agent_cluster("a").await.unwrap();
        let last = store.events_after(events[7].id, 10).await.unwrap();
        assert_eq!(last[0].kind, EventKind::Removed);
    }

    #[tokio::test]
    async fn superseded_writes_leave_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .insert_agent_clusters(vec!["a".into()], "lean".into())
            .await
            .unwrap();
        store.request_deletion("a", None).await.unwrap();
        store
            .set_agent_phase("a", AgentPhase::Provisioning, None)
            .await
            .unwrap();
        let events = store.events_after(0, 10).await.unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
    }

    #[tokio::test]
    async fn samples_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let sample = Sample {
            at_ms: 5,
            rss_bytes: 10,
            cpu_seconds: 0.5,
            clusters_active: 2,
            tunnels_connected: 4,
        };
        store.record_sample(sample).await.unwrap();
        assert_eq!(store.samples_since(0).await.unwrap(), vec![sample]);
        assert!(store.samples_since(6).await.unwrap().is_empty());
    }
}
