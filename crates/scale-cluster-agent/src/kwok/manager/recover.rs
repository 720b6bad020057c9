//! `recover`: finish or roll back what a crashed process left half-done.

use super::{ClusterManager, KwokError};
use crate::store::{Phase, StoreError};

impl ClusterManager {
    /// Finishes what a crashed process left half-done: a `creating` cluster whose creator is gone is
    /// rolled back, a `deleting` one is deleted (its keys in the shared etcd too: the row is only
    /// removed once they are gone). Returns the names it cleaned up.
    pub async fn recover(&self) -> Result<Vec<String>, KwokError> {
        let mut cleaned = Vec::new();
        let records = self.store.list().await?;
        // Owner liveness reads /proc. A recycled pid, even our own (a container's pid 1 after a
        // restart), does not keep a row: the owner's start time must match too.
        let orphaned: Vec<bool> = {
            let owners: Vec<_> = records
                .iter()
                .map(|r| matches!(r.phase, Phase::Creating | Phase::Deleting).then_some(r.owner))
                .collect();
            tokio::task::spawn_blocking(move || {
                owners
                    .into_iter()
                    .map(|transitional| {
                        transitional.is_some_and(|owner| !owner.is_some_and(|o| o.is_alive()))
                    })
                    .collect()
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        };
        for (record, orphaned) in records.into_iter().zip(orphaned) {
            if orphaned {
                tracing::warn!(cluster = %record.name, phase = %record.phase, "cleaning up after an interrupted operation");
                self.tear_down(&record).await?;
                self.store.remove(&record.name).await?;
                cleaned.push(record.name);
            }
        }
        Ok(cleaned)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::{manager, row_owned_by};
    use super::*;
    use crate::process::ProcessId;
    use crate::store::Owner;

    #[tokio::test]
    async fn recover_tells_a_live_owner_from_a_recycled_pid() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager(dir.path());
        let me = ProcessId::current().unwrap();
        // A real other process, alive throughout the test.
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let other_id = ProcessId::of(other.id()).unwrap();
        let owner = |id: ProcessId, start_time: Option<u64>| {
            Some(Owner {
                pid: id.pid,
                start_time,
            })
        };

        // The container case: the previous agent was pid 1 too, so its rows name our pid, but
        // with its own (earlier) start time.
        row_owned_by(
            &manager,
            "our-pid-earlier-run",
            owner(me, Some(me.start_time - 1)),
        )
        .await;
        // A row from before start times were recorded, naming our pid: an earlier run as well.
        row_owned_by(&manager, "our-pid-no-start-time", owner(me, None)).await;
        // The other process's pid, recycled: it started after the owner did.
        row_owned_by(
            &manager,
            "recycled-pid",
            owner(other_id, Some(other_id.start_time - 1)),
        )
        .await;
        row_owned_by(&manager, "no-owner", None).await;
        // Work in progress: must be left alone.
        row_owned_by(
            &manager,
            "live-other",
            owner(other_id, Some(other_id.start_time)),
        )
        .await;
        row_owned_by(&manager, "live-other-no-start-time", owner(other_id, None)).await;
        row_owned_by(&manager, "ours-now", owner(me, Some(me.start_time))).await;

        let mut cleaned = manager.recover().await.unwrap();
        cleaned.sort();
        assert_eq!(
            cleaned,
            [
                "no-owner",
                "our-pid-earlier-run",
                "our-pid-no-start-time",
                "recycled-pid"
            ]
        );
        let mut left: Vec<String> = manager
            .store()
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        left.sort();
        assert_eq!(left, ["live-other", "live-other-no-start-time", "ours-now"]);

        // Healing is for running clusters only: a row mid-create belongs to its creator.
        let err = manager.heal("ours-now", Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(
                err,
                KwokError::WrongPhase {
                    phase: Phase::Creating,
                    ..
                }
            ),
            "{err}"
        );

        // Once the other owner is gone, its rows are recovered too.
        other.kill().unwrap();
        other.wait().unwrap();
        let mut cleaned = manager.recover().await.unwrap();
        cleaned.sort();
        assert_eq!(cleaned, ["live-other", "live-other-no-start-time"]);
    }
}
