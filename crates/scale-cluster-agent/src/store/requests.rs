//! Rancher's requests per cluster by verb and resource (`--request-audit`), as the run report
//! reads them: `rancher_requests` holds running totals per series, to which the agent adds what
//! it counted since its last write (every sample, never per request), so totals survive agent
//! restarts while the live counters start again at zero.

use rusqlite::params;

use super::{Store, StoreError};

/// One series' count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCount {
    pub cluster: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub count: u64,
    /// Unix ms of the last addition.
    pub at_ms: i64,
}

pub(super) const MIGRATION: &str = "CREATE TABLE rancher_requests (
        cluster TEXT NOT NULL,
        verb TEXT NOT NULL,
        resource TEXT NOT NULL,
        subresource TEXT NOT NULL,
        count INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (cluster, verb, resource, subresource)
     );";

impl Store {
    /// Adds each count (`count` is the increment, `at_ms` its time) to its series, in one
    /// transaction.
    pub async fn add_rancher_requests(&self, counts: Vec<RequestCount>) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO rancher_requests (cluster, verb, resource, subresource, count,
                        at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (cluster, verb, resource, subresource) DO UPDATE SET
                        count = count + excluded.count, at_ms = excluded.at_ms",
                )?;
                for c in &counts {
                    stmt.execute(params![
                        c.cluster,
                        c.verb,
                        c.resource,
                        c.subresource,
                        c.count,
                        c.at_ms
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Every series last added to at or after `since_ms`.
    pub async fn rancher_requests_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<RequestCount>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT cluster, verb, resource, subresource, count, at_ms FROM rancher_requests
                 WHERE at_ms >= ?1 ORDER BY cluster, verb, resource, subresource",
            )?;
            let rows = stmt.query_map([since_ms], |r| {
                Ok(RequestCount {
                    cluster: r.get(0)?,
                    verb: r.get(1)?,
                    resource: r.get(2)?,
                    subresource: r.get(3)?,
                    count: r.get(4)?,
                    at_ms: r.get(5)?,
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
    async fn additions_accumulate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let count = |n: u64, at_ms: i64| RequestCount {
            cluster: "a".into(),
            verb: "list".into(),
            resource: "namespaces".into(),
            subresource: String::new(),
            count: n,
            at_ms,
        };
        store.add_rancher_requests(vec![count(2, 5)]).await.unwrap();
        store.add_rancher_requests(vec![count(3, 9)]).await.unwrap();
        assert_eq!(
            store.rancher_requests_since(0).await.unwrap(),
            vec![count(5, 9)]
        );
        assert!(store.rancher_requests_since(10).await.unwrap().is_empty());
    }
}
