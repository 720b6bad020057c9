//! Per-cluster memory samples (`observe::memory`): `memory_samples`, one row per sample with the
//! clusters' p50/max/total and the shared processes apart (a week kept, like `agent_samples`),
//! and `cluster_memory`, the last sample of each cluster (one row per cluster, overwritten).

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, SAMPLE_RETENTION};

/// One cluster's memory in a sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMemory {
    pub cluster: String,
    pub at_ms: i64,
    /// Live processes of the cluster found.
    pub processes: u32,
    pub rss_bytes: u64,
    /// `None` until every one of its processes had its PSS read once.
    pub pss_bytes: Option<u64>,
}

/// A process all clusters share (the shared etcd, the controller host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedProcess {
    pub name: String,
    pub rss_bytes: u64,
    pub pss_bytes: Option<u64>,
}

/// The clusters of one sample (bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySummary {
    pub at_ms: i64,
    pub clusters: u32,
    pub rss_p50: u64,
    pub rss_max: u64,
    pub rss_total: u64,
    /// Over the clusters whose PSS is known.
    pub pss_p50: Option<u64>,
    pub pss_max: Option<u64>,
    pub shared: Vec<SharedProcess>,
}

pub(super) const MIGRATION: &str = "CREATE TABLE memory_samples (
        at_ms INTEGER PRIMARY KEY,
        clusters INTEGER NOT NULL,
        rss_p50 INTEGER NOT NULL,
        rss_max INTEGER NOT NULL,
        rss_total INTEGER NOT NULL,
        pss_p50 INTEGER,
        pss_max INTEGER,
        shared TEXT NOT NULL
     );
     CREATE TABLE cluster_memory (
        cluster TEXT PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        processes INTEGER NOT NULL,
        rss_bytes INTEGER NOT NULL,
        pss_bytes INTEGER
     );";

impl Store {
    /// Stores one sample: its summary, and each cluster's row overwritten, in one transaction
    /// (the oldest summaries beyond [`SAMPLE_RETENTION`] go).
    pub async fn record_memory(
        &self,
        summary: MemorySummary,
        clusters: Vec<ClusterMemory>,
    ) -> Result<(), StoreError> {
        let shared =
            serde_json::to_string(&summary.shared).map_err(|e| StoreError::Task(e.to_string()))?;
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO memory_samples (at_ms, clusters, rss_p50, rss_max,
                    rss_total, pss_p50, pss_max, shared) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    summary.at_ms,
                    summary.clusters,
                    summary.rss_p50,
                    summary.rss_max,
                    summary.rss_total,
                    summary.pss_p50,
                    summary.pss_max,
                    shared
                ],
            )?;
            tx.execute(
                "DELETE FROM memory_samples WHERE at_ms <= (SELECT at_ms FROM memory_samples
                    ORDER BY at_ms DESC LIMIT 1 OFFSET ?1)",
                [SAMPLE_RETENTION],
            )?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO cluster_memory (cluster, at_ms, processes, rss_bytes, pss_bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (cluster) DO UPDATE SET at_ms = excluded.at_ms,
                        processes = excluded.processes, rss_bytes = excluded.rss_bytes,
                        pss_bytes = COALESCE(excluded.pss_bytes, cluster_memory.pss_bytes)",
                )?;
                for c in &clusters {
                    stmt.execute(params![
                        c.cluster,
                        c.at_ms,
                        c.processes,
                        c.rss_bytes,
                        c.pss_bytes
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Every summary at or after `since_ms`, oldest first.
    pub async fn memory_since(&self, since_ms: i64) -> Result<Vec<MemorySummary>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT at_ms, clusters, rss_p50, rss_max, rss_total, pss_p50, pss_max, shared
                 FROM memory_samples WHERE at_ms >= ?1 ORDER BY at_ms",
            )?;
            let rows = stmt.query_map([since_ms], |r| {
                let shared: String = r.get(7)?;
                Ok(MemorySummary {
                    at_ms: r.get(0)?,
                    clusters: r.get(1)?,
                    rss_p50: r.get(2)?,
                    rss_max: r.get(3)?,
                    rss_total: r.get(4)?,
                    pss_p50: r.get(5)?,
                    pss_max: r.get(6)?,
                    // Written by this module; a row it cannot read shows no shared process.
                    shared: serde_json::from_str(&shared).unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The last sample of every cluster sampled at or after `since_ms`.
    pub async fn cluster_memory_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<ClusterMemory>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT cluster, at_ms, processes, rss_bytes, pss_bytes FROM cluster_memory
                 WHERE at_ms >= ?1 ORDER BY cluster",
            )?;
            let rows = stmt.query_map([since_ms], |r| {
                Ok(ClusterMemory {
                    cluster: r.get(0)?,
                    at_ms: r.get(1)?,
                    processes: r.get(2)?,
                    rss_bytes: r.get(3)?,
                    pss_bytes: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// One cluster's last sample, if any.
    pub async fn cluster_memory(&self, cluster: &str) -> Result<Option<ClusterMemory>, StoreError> {
        let cluster = cluster.to_string();
        self.with_conn(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT cluster, at_ms, processes, rss_bytes, pss_bytes FROM cluster_memory
                     WHERE cluster = ?1",
                    [cluster],
                    |r| {
                        Ok(ClusterMemory {
                            cluster: r.get(0)?,
                            at_ms: r.get(1)?,
                            processes: r.get(2)?,
                            rss_bytes: r.get(3)?,
                            pss_bytes: r.get(4)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_round_trips_and_keeps_a_known_pss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let summary = MemorySummary {
            at_ms: 5,
            clusters: 1,
            rss_p50: 10,
            rss_max: 10,
            rss_total: 10,
            pss_p50: Some(8),
            pss_max: Some(8),
            shared: vec![SharedProcess {
                name: "etcd".into(),
                rss_bytes: 3,
                pss_bytes: None,
            }],
        };
        let cluster = ClusterMemory {
            cluster: "a".into(),
            at_ms: 5,
            processes: 1,
            rss_bytes: 10,
            pss_bytes: Some(8),
        };
        store
            .record_memory(summary.clone(), vec![cluster.clone()])
            .await
            .unwrap();
        let later = ClusterMemory {
            at_ms: 6,
            pss_bytes: None,
            ..cluster.clone()
        };
        store
            .record_memory(
                MemorySummary {
                    at_ms: 6,
                    ..summary.clone()
                },
                vec![later],
            )
            .await
            .unwrap();
        assert_eq!(store.memory_since(0).await.unwrap()[0], summary);
        assert_eq!(store.memory_since(6).await.unwrap().len(), 1);
        let got = store.cluster_memory("a").await.unwrap().unwrap();
        assert_eq!((got.at_ms, got.pss_bytes), (6, Some(8)));
        assert_eq!(store.cluster_memory_since(7).await.unwrap(), vec![]);
    }
}
