//! Agent rows: one per cluster the agent registers with Rancher, and the agent's own identity.
//!
//! The KWOK side of a cluster lives in the `clusters` table (owned by the cluster manager); this
//! table keeps what the user wants apart from what the agent observed, as Kubernetes objects do:
//! `deletion_requested_at` (set once, like `deletionTimestamp`, never cleared), `stop_requested`
//! (the run state: stopped or running) and `desired_nodes` are the desired state, `phase` and
//! `nodes` what was observed. A worker's phase write is conditional on the desired state it works
//! toward still being wanted: a bring-up's writes land only while the cluster is neither deleted
//! nor stopped, a stop's only while it is stopped and not deleted. So a delete can never be
//! overwritten by a bring-up or a stop that was already in flight, nor a stop by a bring-up. No secret is stored: only the Rancher cluster id is kept from Rancher's answers (the
//! registration token is fetched again when needed), and of the tunnel params, which carry the
//! cluster's service-account token, only a digest.
//! `agent_meta` holds the agent's instance id, which marks the clusters it owns in Rancher.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::events;
use super::ports::PortBlock;
use super::{now_secs, Store, StoreError};

/// The agent's lifecycle phases, in order; `Failed` is retried with backoff from the phase it
/// failed in, `Stopping` and `Stopped` follow a requested stop (the KWOK cluster's processes and
/// the tunnels are gone, its data kept), `Deleting` runs once the cluster is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum AgentPhase {
    Pending,
    Provisioning,
    Registering,
    Connecting,
    Active,
    Stopping,
    Stopped,
    Failed,
    Deleting,
}

impl AgentPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentPhase::Pending => "pending",
            AgentPhase::Provisioning => "provisioning",
            AgentPhase::Registering => "registering",
            AgentPhase::Connecting => "connecting",
            AgentPhase::Active => "active",
            AgentPhase::Stopping => "stopping",
            AgentPhase::Stopped => "stopped",
            AgentPhase::Failed => "failed",
            AgentPhase::Deleting => "deleting",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => AgentPhase::Pending,
            "provisioning" => AgentPhase::Provisioning,
            "registering" => AgentPhase::Registering,
            "connecting" => AgentPhase::Connecting,
            "active" => AgentPhase::Active,
            "stopping" => AgentPhase::Stopping,
            "stopped" => AgentPhase::Stopped,
            "failed" => AgentPhase::Failed,
            "deleting" => AgentPhase::Deleting,
            _ => return None,
        })
    }
}

impl std::fmt::Display for AgentPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One agent row. `Debug` leaves the secrets out.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub name: String,
    pub profile: String,
    pub phase: AgentPhase,
    pub rancher_cluster_id: Option<String>,
    /// Unix seconds when the user (or Rancher, by deleting the cluster there) asked for the cluster
    /// to go; `None` while it is wanted.
    pub deletion_requested_at: Option<u64>,
    /// Whether the user wants the cluster stopped (processes and tunnels gone, data kept).
    pub stop_requested: bool,
    /// The node count the user asked for; `None` keeps the agent's population profile.
    pub desired_nodes: Option<u32>,
    /// The node count last applied to the KWOK cluster (observed); `None` before it exists.
    pub nodes: Option<u32>,
    /// SHA-256 (hex) of the `X-API-Tunnel-Params` last sent: the params themselves are
    /// recomputed, byte for byte, on every start; a different digest means the KWOK cluster
    /// was recreated.
    pub tunnel_params_sha256: Option<String>,
    pub last_error: Option<String>,
    pub attempts: u32,
    pub created_at: u64,
    pub updated_at: u64,
    pub active_at: Option<u64>,
}

impl std::fmt::Debug for AgentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRecord")
            .field("name", &self.name)
            .field("profile", &self.profile)
            .field("phase", &self.phase)
            .field("rancher_cluster_id", &self.rancher_cluster_id)
            .field("deletion_requested_at", &self.deletion_requested_at)
            .field("stop_requested", &self.stop_requested)
            .field("desired_nodes", &self.desired_nodes)
            .field("nodes", &self.nodes)
            .field("tunnel_params_sha256", &self.tunnel_params_sha256)
            .field("last_error", &self.last_error)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl AgentRecord {
    /// True once the cluster is no longer wanted: only deleting it is left to do.
    pub fn deletion_requested(&self) -> bool {
        self.deletion_requested_at.is_some()
    }
}

/// The outcome of a conditional write (a worker's phase, a change of the desired state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseWrite {
    Applied,
    /// Not written: the desired state the write belonged to is no longer wanted (a deletion was
    /// requested, which always wins, or the cluster was stopped or started meanwhile).
    Superseded,
}

const SELECT: &str = "SELECT name, profile, phase, rancher_cluster_id, deletion_requested_at, \
                      tunnel_params_sha256, last_error, attempts, created_at, updated_at, active_at, \
                      stop_requested, desired_nodes, nodes FROM agent_clusters";

/// [`SELECT`] with each row's KWOK port block (`NULL` while the KWOK cluster does not exist), so a
/// list of views is one query however many clusters there are.
const SELECT_WITH_PORTS: &str = "SELECT a.name, a.profile, a.phase, a.rancher_cluster_id, \
    a.deletion_requested_at, a.tunnel_params_sha256, a.last_error, a.attempts, a.created_at, \
    a.updated_at, a.active_at, a.stop_requested, a.desired_nodes, a.nodes, k.first_port \
    FROM agent_clusters a LEFT JOIN clusters k ON k.name = a.name";

/// How many agent rows are in one phase with or without a requested deletion and stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseCount {
    pub phase: AgentPhase,
    pub deletion_requested: bool,
    pub stop_requested: bool,
    pub count: usize,
}

/// The `agent_meta` key of the agent's instance id.
const INSTANCE_ID_KEY: &str = "instance_id";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AgentRecord, String)> {
    let phase: String = r.get(2)?;
    Ok((
        AgentRecord {
            name: r.get(0)?,
            profile: r.get(1)?,
            phase: AgentPhase::Pending,
            rancher_cluster_id: r.get(3)?,
            deletion_requested_at: r.get(4)?,
            tunnel_params_sha256: r.get(5)?,
            last_error: r.get(6)?,
            attempts: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
            active_at: r.get(10)?,
            stop_requested: r.get(11)?,
            desired_nodes: r.get(12)?,
            nodes: r.get(13)?,
        },
        phase,
    ))
}

/// [`row`] plus the apiserver port of the joined KWOK row.
fn row_with_port(r: &rusqlite::Row<'_>) -> rusqlite::Result<((AgentRecord, String), Option<u16>)> {
    let first_port: Option<u16> = r.get(14)?;
    Ok((
        row(r)?,
        first_port.map(|port| PortBlock::starting_at(port).kube_apiserver),
    ))
}

fn finish((mut record, phase): (AgentRecord, String)) -> Result<AgentRecord, StoreError> {
    record.phase = AgentPhase::parse(&phase).ok_or_else(|| StoreError::Corrupt {
        name: record.name.clone(),
        reason: format!("unknown agent phase {phase:?}"),
    })?;
    Ok(record)
}

/// The outcome of a conditional update of `changed` rows: applied, superseded (the row exists but
/// did not match), or not found.
fn desired_write(
    conn: &rusqlite::Connection,
    name: String,
    changed: usize,
) -> Result<PhaseWrite, StoreError> {
    if changed == 1 {
        return Ok(PhaseWrite::Applied);
    }
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM agent_clusters WHERE name = ?1)",
        [&name],
        |r| r.get(0),
    )?;
    if exists {
        Ok(PhaseWrite::Superseded)
    } else {
        Err(StoreError::NotFound(name))
    }
}

impl Store {
    /// Inserts `names` as pending, all or none: one duplicate (here or among KWOK-only clusters)
    /// fails the whole batch.
    pub async fn insert_agent_clusters(
        &self,
        names: Vec<String>,
        profile: String,
    ) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_secs();
            for name in &names {
                let taken: bool = tx.query_row(
                    "SELECT EXISTS(SELECT 1 FROM agent_clusters WHERE name = ?1)
                        OR EXISTS(SELECT 1 FROM clusters WHERE name = ?1)",
                    [name],
                    |r| r.get(0),
                )?;
                if taken {
                    return Err(StoreError::Duplicate(name.clone()));
                }
                tx.execute(
                    "INSERT INTO agent_clusters (name, profile, phase, attempts, created_at, updated_at)
                     VALUES (?1, ?2, 'pending', 0, ?3, ?3)",
                    params![name, profile, now],
                )?;
                events::record_created(&tx, name)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn agent_cluster(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.query_row(&format!("{SELECT} WHERE name = ?1"), [&name], row)
                .optional()?
                .map(finish)
                .transpose()
        })
        .await
    }

    pub async fn agent_clusters(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY created_at, name"))?;
            let rows = stmt.query_map([], row)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(finish))
                .collect()
        })
        .await
    }

    /// Every agent row with the apiserver port of its KWOK cluster (if that exists), in one query.
    pub async fn agent_clusters_with_apiserver(
        &self,
    ) -> Result<Vec<(AgentRecord, Option<u16>)>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(&format!(
                "{SELECT_WITH_PORTS} ORDER BY a.created_at, a.name"
            ))?;
            let rows = stmt.query_map([], row_with_port)?;
            rows.map(|r| {
                let (raw, port) = r?;
                Ok((finish(raw)?, port))
            })
            .collect()
        })
        .await
    }

    /// One agent row with the apiserver port of its KWOK cluster (if that exists), in one query.
    pub async fn agent_cluster_with_apiserver(
        &self,
        name: &str,
    ) -> Result<Option<(AgentRecord, Option<u16>)>, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            conn.query_row(
                &format!("{SELECT_WITH_PORTS} WHERE a.name = ?1"),
                [&name],
                row_with_port,
            )
            .optional()?
            .map(|(raw, port)| Ok((finish(raw)?, port)))
            .transpose()
        })
        .await
    }

    /// Rows per phase, requested deletion and requested stop: a summary whose cost does not grow
    /// with the rows read back (one small grouped query).
    pub async fn agent_phase_counts(&self) -> Result<Vec<PhaseCount>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare(
                "SELECT phase, deletion_requested_at IS NOT NULL, stop_requested, COUNT(*)
                 FROM agent_clusters GROUP BY 1, 2, 3",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, usize>(3)?,
                ))
            })?;
            rows.map(|r| {
                let (phase, deletion_requested, stop_requested, count) = r?;
                let phase = AgentPhase::parse(&phase).ok_or_else(|| StoreError::Corrupt {
                    name: format!("{count} agent row(s)"),
                    reason: format!("unknown agent phase {phase:?}"),
                })?;
                Ok(PhaseCount {
                    phase,
                    deletion_requested,
                    stop_requested,
                    count,
                })
            })
            .collect()
        })
        .await
    }

    /// A bring-up (or the watch of an active cluster) moves a cluster to `phase`, unless its
    /// deletion or stop was requested meanwhile (then nothing is written and
    /// [`PhaseWrite::Superseded`] says so). `Failed` counts an attempt and keeps the error,
    /// `Active` resets the attempts and stamps `active_at` the first time.
    pub async fn set_agent_phase(
        &self,
        name: &str,
        phase: AgentPhase,
        last_error: Option<String>,
    ) -> Result<PhaseWrite, StoreError> {
        debug_assert!(phase != AgentPhase::Deleting, "use set_deleting");
        debug_assert!(
            !matches!(phase, AgentPhase::Stopping | AgentPhase::Stopped),
            "use set_stop_phase"
        );
        self.write_phase(name, phase, last_error, false).await
    }

    /// A stop moves a cluster to `phase` (`Stopping`, `Stopped`, or `Failed` with the error),
    /// unless its deletion was requested or it was started again meanwhile
    /// ([`PhaseWrite::Superseded`]).
    pub async fn set_stop_phase(
        &self,
        name: &str,
        phase: AgentPhase,
        last_error: Option<String>,
    ) -> Result<PhaseWrite, StoreError> {
        debug_assert!(
            matches!(
                phase,
                AgentPhase::Stopping | AgentPhase::Stopped | AgentPhase::Failed
            ),
            "a stop only writes stopping, stopped or failed"
        );
        self.write_phase(name, phase, last_error, true).await
    }

    /// The phase write of a worker heading for `stopped` (`stop`) or for `active`: applied only
    /// while that is still the desired run state and no deletion was requested.
    async fn write_phase(
        &self,
        name: &str,
        phase: AgentPhase,
        last_error: Option<String>,
        stop: bool,
    ) -> Result<PhaseWrite, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_secs();
            let previous = events::current_phase(&tx, &name)?;
            let first_active: bool = phase == AgentPhase::Active
                && tx
                    .query_row(
                        "SELECT active_at IS NULL FROM agent_clusters WHERE name = ?1",
                        [&name],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(false);
            let changed = tx.execute(
                "UPDATE agent_clusters SET phase = ?2, last_error = ?3, updated_at = ?4,
                    attempts = CASE WHEN ?2 = 'failed' THEN attempts + 1
                                    WHEN ?2 IN ('active', 'stopped') THEN 0 ELSE attempts END,
                    active_at = CASE WHEN ?2 = 'active' AND active_at IS NULL THEN ?4 ELSE active_at END
                 WHERE name = ?1 AND deletion_requested_at IS NULL AND stop_requested = ?5",
                params![name, phase.as_str(), last_error, now, stop],
            )?;
            if let (1, Some(previous)) = (changed, previous) {
                events::record_phase(
                    &tx,
                    &name,
                    previous,
                    phase,
                    last_error.as_deref(),
                    first_active,
                )?;
            }
            let write = desired_write(&tx, name, changed)?;
            tx.commit()?;
            Ok(write)
        })
        .await
    }

    /// Records that the cluster is no longer wanted (idempotent: the first request's time stays).
    /// `reason` is shown as the cluster's last error, e.g. why Rancher's deletion was believed.
    pub async fn request_deletion(
        &self,
        name: &str,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE agent_clusters SET deletion_requested_at = COALESCE(deletion_requested_at, ?2),
                    last_error = COALESCE(?3, last_error), updated_at = ?2
                 WHERE name = ?1",
                params![name, now_secs(), reason],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }

    /// Records the run state the user wants: stopped (`stop`) or running. Refused
    /// ([`PhaseWrite::Superseded`]) once the cluster's deletion was requested: a delete wins over
    /// everything. A change of mind resets the retry count, so the worker acts at once rather than
    /// after the backoff of the other direction's failures.
    pub async fn request_stop(&self, name: &str, stop: bool) -> Result<PhaseWrite, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE agent_clusters SET
                    attempts = CASE WHEN stop_requested = ?2 THEN attempts ELSE 0 END,
                    stop_requested = ?2, updated_at = ?3
                 WHERE name = ?1 AND deletion_requested_at IS NULL",
                params![name, stop, now_secs()],
            )?;
            desired_write(conn, name, changed)
        })
        .await
    }

    /// Records the node count the user wants; refused ([`PhaseWrite::Superseded`]) once the
    /// cluster's deletion was requested.
    pub async fn request_nodes(&self, name: &str, nodes: u32) -> Result<PhaseWrite, StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE agent_clusters SET desired_nodes = ?2, updated_at = ?3
                 WHERE name = ?1 AND deletion_requested_at IS NULL",
                params![name, nodes, now_secs()],
            )?;
            desired_write(conn, name, changed)
        })
        .await
    }

    /// Records the node count the KWOK cluster now has (observed).
    pub async fn set_observed_nodes(&self, name: &str, nodes: u32) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE agent_clusters SET nodes = ?2 WHERE name = ?1",
                params![name, nodes],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }

    /// The deleter's own phase write: `deleting`, with the error of a failed attempt (which counts
    /// toward the retry backoff).
    pub async fn set_deleting(&self, name: &str, error: Option<String>) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let previous = events::current_phase(&tx, &name)?;
            let changed = tx.execute(
                "UPDATE agent_clusters SET phase = 'deleting', last_error = COALESCE(?2, last_error),
                    updated_at = ?3, attempts = CASE WHEN ?2 IS NULL THEN attempts ELSE attempts + 1 END
                 WHERE name = ?1",
                params![name, error, now_secs()],
            )?;
            let Some(previous) = previous.filter(|_| changed == 1) else {
                return Err(StoreError::NotFound(name));
            };
            // A failed delete attempt is recorded with its error, like a failed bring-up.
            if previous != AgentPhase::Deleting || error.is_some() {
                events::record_phase(
                    &tx,
                    &name,
                    previous,
                    AgentPhase::Deleting,
                    error.as_deref(),
                    false,
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The agent's instance id: created once (from `requested`, or a new UUID) and kept. A
    /// different `requested` id than the stored one is refused: it would orphan this data dir's
    /// clusters in Rancher.
    pub async fn instance_id(&self, requested: Option<String>) -> Result<String, StoreError> {
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT value FROM agent_meta WHERE key = ?1",
                    [INSTANCE_ID_KEY],
                    |r| r.get(0),
                )
                .optional()?;
            let id = match (stored, requested) {
                (Some(stored), Some(requested)) if stored != requested => {
                    return Err(StoreError::InstanceMismatch { stored, requested })
                }
                (Some(stored), _) => stored,
                (None, requested) => {
                    let id = requested.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    tx.execute(
                        "INSERT INTO agent_meta (key, value) VALUES (?1, ?2)",
                        params![INSTANCE_ID_KEY, id],
                    )?;
                    id
                }
            };
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    /// Records the Rancher cluster id as soon as it is known, so a crash right after creating the
    /// cluster in Rancher never leads to a second one.
    pub async fn set_rancher_cluster_id(
        &self,
        name: &str,
        cluster_id: &str,
    ) -> Result<(), StoreError> {
        self.update_agent(
            name,
            "rancher_cluster_id = ?2",
            vec![cluster_id.to_string()],
        )
        .await
    }

    pub async fn set_tunnel_params_sha256(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<(), StoreError> {
        self.update_agent(name, "tunnel_params_sha256 = ?2", vec![digest.to_string()])
            .await
    }

    async fn update_agent(
        &self,
        name: &str,
        set: &'static str,
        values: Vec<String>,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let sql = format!(
                "UPDATE agent_clusters SET {set}, updated_at = {} WHERE name = ?1",
                now_secs()
            );
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&name];
            args.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
            let changed = conn.execute(&sql, args.as_slice())?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }

    pub async fn remove_agent_cluster(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM agent_clusters WHERE name = ?1", [&name])? == 1 {
                events::record_removed(&tx, &name)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn agent_rows_round_trip_and_batches_are_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .insert_agent_clusters(vec!["a".into(), "b".into()], "lean".into())
            .await
            .unwrap();
        let err = store
            .insert_agent_clusters(vec!["c".into(), "a".into()], "lean".into())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Duplicate(ref n) if n == "a"));
        assert!(
            store.agent_cluster("c").await.unwrap().is_none(),
            "a failed batch inserts nothing"
        );

        store.set_rancher_cluster_id("a", "c-abcde").await.unwrap();
        store.set_tunnel_params_sha256("a", "00ff").await.unwrap();
        for _ in 0..2 {
            let write = store
                .set_agent_phase("a", AgentPhase::Failed, Some("boom".into()))
                .await
                .unwrap();
            assert_eq!(write, PhaseWrite::Applied);
        }
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!(a.attempts, 2);
        assert_eq!(a.rancher_cluster_id.as_deref(), Some("c-abcde"));
        assert_eq!(a.tunnel_params_sha256.as_deref(), Some("00ff"));
        store
            .set_agent_phase("a", AgentPhase::Active, None)
            .await
            .unwrap();
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!((a.phase, a.attempts), (AgentPhase::Active, 0));
        assert!(a.active_at.is_some());
        assert_eq!(store.agent_clusters().await.unwrap().len(), 2);
        store.remove_agent_cluster("a").await.unwrap();
        assert!(store.agent_cluster("a").await.unwrap().is_none());
        assert!(matches!(
            store.set_agent_phase("a", AgentPhase::Active, None).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn views_join_the_kwok_ports_and_counts_group_by_phase_in_one_query() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .insert_agent_clusters(vec!["a".into(), "b".into(), "c".into()], "lean".into())
            .await
            .unwrap();
        let range = crate::store::ports::PortRange::new(20000, 10, 4).unwrap();
        let block = store
            .reserve(
                super::super::NewCluster {
                    name: "b",
                    component_profile: "lean",
                    population: "{}",
                    etcd: crate::store::EtcdKind::Own,
                },
                range,
                |_| true,
            )
            .await
            .unwrap()
            .ports;
        store
            .set_agent_phase("a", AgentPhase::Active, None)
            .await
            .unwrap();
        store
            .set_agent_phase("b", AgentPhase::Active, None)
            .await
            .unwrap();
        store.request_deletion("b", None).await.unwrap();

        let rows = store.agent_clusters_with_apiserver().await.unwrap();
        let ports: Vec<_> = rows.iter().map(|(r, p)| (r.name.as_str(), *p)).collect();
        assert_eq!(
            ports,
            [("a", None), ("b", Some(block.kube_apiserver)), ("c", None)]
        );
        let (b, port) = store
            .agent_cluster_with_apiserver("b")
            .await
            .unwrap()
            .unwrap();
        assert!(b.deletion_requested());
        assert_eq!(port, Some(block.kube_apiserver));
        assert!(store
            .agent_cluster_with_apiserver("x")
            .await
            .unwrap()
            .is_none());

        let mut counts = store.agent_phase_counts().await.unwrap();
        counts.sort_by_key(|c| (c.phase, c.deletion_requested));
        let count = |phase, deletion_requested, count| PhaseCount {
            phase,
            deletion_requested,
            stop_requested: false,
            count,
        };
        assert_eq!(
            counts,
            [
                count(AgentPhase::Pending, false, 1),
                count(AgentPhase::Active, false, 1),
                count(AgentPhase::Active, true, 1),
            ]
        );
    }

    #[tokio::test]
    async fn a_requested_deletion_wins_over_every_later_worker_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .insert_agent_clusters(vec!["a".into()], "lean".into())
            .await
            .unwrap();
        store
            .set_agent_phase("a", AgentPhase::Connecting, None)
            .await
            .unwrap();
        store.request_deletion("a", None).await.unwrap();
        let first = store.agent_cluster("a").await.unwrap().unwrap();
        assert!(first.deletion_requested());
        // A worker that was mid-bring-up finishes after the delete: its writes must not land.
        for phase in [
            AgentPhase::Active,
            AgentPhase::Failed,
            AgentPhase::Provisioning,
        ] {
            assert_eq!(
                store.set_agent_phase("a", phase, None).await.unwrap(),
                PhaseWrite::Superseded
            );
        }
        store
            .request_deletion("a", Some("again".into()))
            .await
            .unwrap();
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!(a.phase, AgentPhase::Connecting);
        assert_eq!(a.deletion_requested_at, first.deletion_requested_at);
        store
            .set_deleting("a", Some("Rancher down".into()))
            .await
            .unwrap();
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!((a.phase, a.attempts), (AgentPhase::Deleting, 1));
        assert_eq!(a.last_error.as_deref(), Some("Rancher down"));
    }

    #[tokio::test]
    async fn stop_start_and_scale_are_desired_state_and_a_delete_wins_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store
            .insert_agent_clusters(vec!["a".into(), "b".into()], "lean".into())
            .await
            .unwrap();
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert!(!a.stop_requested);
        assert_eq!((a.desired_nodes, a.nodes), (None, None));
        store
            .set_agent_phase("a", AgentPhase::Active, None)
            .await
            .unwrap();

        // Stop requested: a bring-up (or heal) in flight can no longer write; the stop can.
        assert_eq!(
            store.request_stop("a", true).await.unwrap(),
            PhaseWrite::Applied
        );
        for phase in [
            AgentPhase::Provisioning,
            AgentPhase::Active,
            AgentPhase::Failed,
        ] {
            assert_eq!(
                store.set_agent_phase("a", phase, None).await.unwrap(),
                PhaseWrite::Superseded,
                "{phase}"
            );
        }
        for phase in [AgentPhase::Stopping, AgentPhase::Stopped] {
            assert_eq!(
                store.set_stop_phase("a", phase, None).await.unwrap(),
                PhaseWrite::Applied
            );
        }
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert!(a.stop_requested);
        assert_eq!(a.phase, AgentPhase::Stopped);

        // Started again: a stop still in flight can no longer write; the bring-up can.
        store
            .set_stop_phase("a", AgentPhase::Failed, Some("kwokctl".into()))
            .await
            .unwrap();
        assert_eq!(store.agent_cluster("a").await.unwrap().unwrap().attempts, 1);
        assert_eq!(
            store.request_stop("a", false).await.unwrap(),
            PhaseWrite::Applied
        );
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!(
            a.attempts, 0,
            "a change of mind does not wait out the backoff"
        );
        assert_eq!(
            store
                .set_stop_phase("a", AgentPhase::Stopped, None)
                .await
                .unwrap(),
            PhaseWrite::Superseded
        );
        assert_eq!(
            store
                .set_agent_phase("a", AgentPhase::Provisioning, None)
                .await
                .unwrap(),
            PhaseWrite::Applied
        );

        // Scale: desired apart from observed.
        assert_eq!(
            store.request_nodes("a", 3).await.unwrap(),
            PhaseWrite::Applied
        );
        store.set_observed_nodes("a", 2).await.unwrap();
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!((a.desired_nodes, a.nodes), (Some(3), Some(2)));
        let (viewed, _) = store
            .agent_cluster_with_apiserver("a")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(viewed, a, "the joined view reads the same row");

        // Delete after stop works, and then nothing but the deleter writes.
        store.request_stop("b", true).await.unwrap();
        store
            .set_stop_phase("b", AgentPhase::Stopped, None)
            .await
            .unwrap();
        store.request_deletion("b", None).await.unwrap();
        assert_eq!(
            store
                .set_stop_phase("b", AgentPhase::Stopped, None)
                .await
                .unwrap(),
            PhaseWrite::Superseded
        );
        store.set_deleting("b", None).await.unwrap();
        assert_eq!(
            store.agent_cluster("b").await.unwrap().unwrap().phase,
            AgentPhase::Deleting
        );
        // Stop, start or scale after a delete are refused and change nothing.
        for write in [
            store.request_stop("b", false).await.unwrap(),
            store.request_stop("b", true).await.unwrap(),
            store.request_nodes("b", 5).await.unwrap(),
        ] {
            assert_eq!(write, PhaseWrite::Superseded);
        }
        let b = store.agent_cluster("b").await.unwrap().unwrap();
        assert!(b.stop_requested && b.desired_nodes.is_none(), "{b:?}");

        let mut counts = store.agent_phase_counts().await.unwrap();
        counts.sort_by_key(|c| c.phase);
        assert_eq!(
            counts,
            [
                PhaseCount {
                    phase: AgentPhase::Provisioning,
                    deletion_requested: false,
                    stop_requested: false,
                    count: 1
                },
                PhaseCount {
                    phase: AgentPhase::Deleting,
                    deletion_requested: true,
                    stop_requested: true,
                    count: 1
                },
            ]
        );
        for missing in [
            store.request_stop("x", true).await,
            store.request_nodes("x", 1).await,
            store.set_stop_phase("x", AgentPhase::Stopped, None).await,
        ] {
            assert!(
                matches!(missing, Err(StoreError::NotFound(_))),
                "{missing:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_instance_id_is_created_once_and_never_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let id = {
            let store = Store::open(&path).unwrap();
            let id = store.instance_id(None).await.unwrap();
            assert_eq!(id.len(), 36, "a UUID: {id}");
            assert_eq!(store.instance_id(None).await.unwrap(), id);
            id
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.instance_id(Some(id.clone())).await.unwrap(), id);
        assert!(matches!(
            store.instance_id(Some("other".into())).await,
            Err(StoreError::InstanceMismatch { ref stored, .. }) if *stored == id
        ));
        let fresh = Store::open(&dir.path().join("other.db")).unwrap();
        assert_eq!(
            fresh.instance_id(Some("sim-a".into())).await.unwrap(),
            "sim-a",
            "a replacement agent takes over an instance on purpose"
        );
    }

    #[test]
    fn old_databases_migrate_and_lose_the_stored_registration_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            for sql in &super::super::MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO agent_clusters (name, profile, phase, registration_token, tunnel_params,
                    attempts, created_at, updated_at)
                 VALUES ('a', 'lean', 'deleting', 'secret-token', 'secret-params', 0, 1, 5)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = rt.block_on(store.agent_cluster("a")).unwrap().unwrap();
        assert_eq!(
            a.deletion_requested_at,
            Some(5),
            "an old delete stays requested"
        );
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('agent_clusters')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !columns.iter().any(|c| c == "registration_token"),
            "{columns:?}"
        );
    }
}
