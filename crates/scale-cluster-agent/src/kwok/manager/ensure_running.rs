//! `ensure_running`: the one verb the agent's reconciler needs, converging a cluster to running
//! whatever state it was left in.

use super::{ClusterInfo, ClusterManager, CreateRequest, Health, KwokError};
use crate::store::Phase;

impl ClusterManager {
    /// Makes sure the cluster exists and is [`Health::Ready`]: creates it, starts it after a
    /// reboot or a stop, restarts it if its processes died, or recreates it if it failed. A
    /// cluster another operation is creating or deleting is [`KwokError::Busy`].
    pub async fn ensure_running(&self, req: CreateRequest) -> Result<ClusterInfo, KwokError> {
        let Some(existing) = self.store.get(&req.name).await? else {
            return self.create(req).await;
        };
        let name = req.name.as_str();
        match existing.phase {
            Phase::Running => {
                let info = self.get(name).await?;
                if info.health == Health::Ready {
                    // After an agent restart: the (new) controller host learns of the cluster.
                    self.attach_controllers(name).await?;
                    return Ok(info);
                }
                // Processes died (host reboot, OOM kill): stop what is left, then start again.
                self.stop(name).await?;
                self.start(name).await
            }
            Phase::Stopped => self.start(name).await,
            Phase::Failed => {
                self.delete(name).await?;
                self.create(req).await
            }
            phase @ (Phase::Creating | Phase::Deleting) => Err(KwokError::Busy {
                name: name.to_string(),
                phase,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{manager, row_owned_by};
    use super::*;
    use crate::kwok::{ComponentProfile, PopulationProfile};
    use crate::process::ProcessId;
    use crate::store::Owner;

    #[tokio::test]
    async fn ensure_running_leaves_a_busy_cluster_alone_and_endpoints_come_from_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let manager = manager(dir.path());
        let me = ProcessId::current().unwrap();
        let owner = Some(Owner {
            pid: me.pid,
            start_time: Some(me.start_time),
        });
        row_owned_by(&manager, "mid-create", owner).await;

        // Another operation (here: this process) is creating it: no kwokctl run, no change.
        let req = CreateRequest {
            name: "mid-create".into(),
            profile: ComponentProfile::Lean,
            population: PopulationProfile::default(),
        };
        let err = manager.ensure_running(req).await.unwrap_err();
        assert!(
            matches!(
                &err,
                KwokError::Busy {
                    phase: Phase::Creating,
                    ..
                }
            ),
            "{err}"
        );
        let row = manager.store().get("mid-create").await.unwrap().unwrap();
        assert_eq!(row.phase, Phase::Creating);

        // The endpoint is the reserved block's apiserver port, read back from the database.
        let endpoint = manager.endpoint("mid-create").await.unwrap().unwrap();
        assert_eq!(endpoint.port, row.ports.kube_apiserver);
        assert_eq!(
            endpoint.url(),
            format!("https://127.0.0.1:{}", row.ports.kube_apiserver)
        );
        assert!(manager.endpoint("unknown").await.unwrap().is_none());
        assert_eq!(
            manager.ca_path("mid-create"),
            dir.path().join("kwok/clusters/mid-create/pki/ca.crt")
        );
    }
}
