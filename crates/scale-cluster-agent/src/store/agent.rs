//! Agent rows: one per cluster the agent registers with Rancher. The KWOK side of a cluster lives in
//! the `clusters` table (owned by the cluster manager); this table holds what the agent wants
//! (`desired`), where the cluster is in its lifecycle (`phase`), and what Rancher gave it. The
//! registration token and tunnel params are secrets: the database file is mode 0600 and no API
//! response or log line carries them.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_secs, Store, StoreError};

/// The agent's lifecycle phases, in order; `Failed` is retried with backoff from the phase it
/// failed in, `Deleting` runs once the cluster is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum AgentPhase {
    Pending,
    Provisioning,
    Registering,
    Connecting,
    Active,
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
            AgentPhase::Failed => "failed",
            AgentPhase::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => AgentPhase::Pending,
            "provisioning" => AgentPhase::Provisioning,
            "registering" => AgentPhase::Registering,
            "connecting" => AgentPhase::Connecting,
            "active" => AgentPhase::Active,
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
    /// Secret: the cluster registration token (`X-API-Tunnel-Token`).
    pub registration_token: Option<String>,
    /// `CATTLE_SERVER` from the import manifest.
    pub server_url: Option<String>,
    /// `CATTLE_CA_CHECKSUM` from the import manifest.
    pub ca_checksum: Option<String>,
    /// Secret: `X-API-Tunnel-Params`, computed once and replayed byte for byte on every reconnect.
    pub tunnel_params: Option<String>,
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
            .field(
                "registration_token",
                &self.registration_token.as_ref().map(|_| "<redacted>"),
            )
            .field("server_url", &self.server_url)
            .field(
                "tunnel_params",
                &self.tunnel_params.as_ref().map(|_| "<redacted>"),
            )
            .field("last_error", &self.last_error)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// What Rancher handed out for a cluster, stored in one update.
#[derive(Clone)]
pub struct RancherRegistration {
    pub cluster_id: String,
    pub token: String,
    pub server_url: String,
    pub ca_checksum: Option<String>,
}

const SELECT: &str = "SELECT name, profile, phase, rancher_cluster_id, registration_token, server_url, ca_checksum, \
                      tunnel_params, last_error, attempts, created_at, updated_at, active_at FROM agent_clusters";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AgentRecord, String)> {
    let phase: String = r.get(2)?;
    Ok((
        AgentRecord {
            name: r.get(0)?,
            profile: r.get(1)?,
            phase: AgentPhase::Pending,
            rancher_cluster_id: r.get(3)?,
            registration_token: r.get(4)?,
            server_url: r.get(5)?,
            ca_checksum: r.get(6)?,
            tunnel_params: r.get(7)?,
            last_error: r.get(8)?,
            attempts: r.get(9)?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
            active_at: r.get(12)?,
        },
        phase,
    ))
}

fn finish((mut record, phase): (AgentRecord, String)) -> Result<AgentRecord, StoreError> {
    record.phase = AgentPhase::parse(&phase).ok_or_else(|| StoreError::Corrupt {
        name: record.name.clone(),
        reason: format!("unknown agent phase {phase:?}"),
    })?;
    Ok(record)
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

    /// Moves a cluster to `phase`; `Failed` counts an attempt and keeps the error, `Active` resets
    /// the attempts and stamps `active_at` the first time.
    pub async fn set_agent_phase(
        &self,
        name: &str,
        phase: AgentPhase,
        last_error: Option<String>,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let now = now_secs();
            let changed = conn.execute(
                "UPDATE agent_clusters SET phase = ?2, last_error = ?3, updated_at = ?4,
                    attempts = CASE WHEN ?2 = 'failed' OR (?2 = 'deleting' AND ?3 IS NOT NULL) THEN attempts + 1 WHEN ?2 = 'active' THEN 0 ELSE attempts END,
                    active_at = CASE WHEN ?2 = 'active' AND active_at IS NULL THEN ?4 ELSE active_at END
                 WHERE name = ?1",
                params![name, phase.as_str(), last_error, now],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
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

    pub async fn set_rancher_registration(
        &self,
        name: &str,
        reg: RancherRegistration,
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        self.with_conn(move |conn| {
            let changed = conn.execute(
                "UPDATE agent_clusters SET rancher_cluster_id = ?2, registration_token = ?3, server_url = ?4,
                    ca_checksum = ?5, updated_at = ?6 WHERE name = ?1",
                params![name, reg.cluster_id, reg.token, reg.server_url, reg.ca_checksum, now_secs()],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(name));
            }
            Ok(())
        })
        .await
    }

    pub async fn set_tunnel_params(&self, name: &str, params: &str) -> Result<(), StoreError> {
        self.update_agent(name, "tunnel_params = ?2", vec![params.to_string()])
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
            conn.execute("DELETE FROM agent_clusters WHERE name = ?1", [&name])?;
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
        store
            .set_rancher_registration(
                "a",
                RancherRegistration {
                    cluster_id: "c-abcde".into(),
                    token: "secret-token".into(),
                    server_url: "https://rancher".into(),
                    ca_checksum: Some("ff".into()),
                },
            )
            .await
            .unwrap();
        store
            .set_tunnel_params("a", "eyJjbHVzdGVyIjp7fX0=")
            .await
            .unwrap();
        store
            .set_agent_phase("a", AgentPhase::Failed, Some("boom".into()))
            .await
            .unwrap();
        store
            .set_agent_phase("a", AgentPhase::Failed, Some("boom".into()))
            .await
            .unwrap();
        let a = store.agent_cluster("a").await.unwrap().unwrap();
        assert_eq!(a.attempts, 2);
        assert_eq!(a.registration_token.as_deref(), Some("secret-token"));
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("secret-token") && !shown.contains("eyJj"),
            "{shown}"
        );
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
    }
}
