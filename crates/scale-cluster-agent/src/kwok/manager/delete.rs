//! `delete`: remove a cluster everywhere (processes, directories, config, its keys in the shared
//! etcd, port reservation); also the teardown that a failed create and recovery share.

use super::files::{remove_dir, remove_file};
use super::processes::wait_ports_free;
use super::{ClusterManager, KwokError};
use crate::kwok::shared_etcd::etcd_prefix;
use crate::store::{ClusterRecord, EtcdKind, Phase};

impl ClusterManager {
    /// Deletes a cluster everywhere; the row goes last, so its ports stay reserved until the
    /// processes that held them are gone, and a crash before its keys are gone from the shared
    /// etcd leaves a `deleting` row that [`Self::recover`] finishes.
    pub async fn delete(&self, name: &str) -> Result<(), KwokError> {
        let record = self.record(name).await?;
        self.store.set_phase(name, Phase::Deleting, None).await?;
        self.tear_down(&record).await?;
        self.store.remove(name).await?;
        Ok(())
    }

    /// Kills every process of the cluster, removes its keys from the shared etcd (once its
    /// apiserver is gone, so none is written back) and its directory and config; does not touch
    /// the row.
    pub(super) async fn tear_down(&self, record: &ClusterRecord) -> Result<(), KwokError> {
        let (name, ports) = (record.name.as_str(), &record.ports);
        let dir = self.cluster_dir(name);
        self.detach_controllers(name).await;
        self.health.forget_readyz_client(name);
        self.health.forget_unready(name);
        // The data is about to be removed: no need for a graceful shutdown.
        self.kill_remaining(&dir).await;
        if dir.exists() {
            // kwokctl's own delete also cleans what it knows; its failure is not fatal as long as the
            // processes are gone and the directory is removed below.
            let unused = self.config_dir.join("never-written.kubeconfig");
            if let Err(err) = self.kwokctl.delete_cluster(name, &unused).await {
                tracing::warn!(cluster = name, error = %err, "kwokctl delete failed; cleaning up directly");
            }
        }
        self.kill_remaining(&dir).await;
        wait_ports_free(ports).await;
        if record.etcd == EtcdKind::Shared {
            self.shared_etcd.ensure_running().await?;
            let deleted = self.shared_etcd.delete_prefix(&etcd_prefix(name)).await?;
            tracing::debug!(
                cluster = name,
                keys = deleted,
                "removed from the shared etcd"
            );
        }
        remove_dir(&dir).await?;
        remove_file(&self.config_path(name)).await?;
        Ok(())
    }
}
