//! `delete`: remove a cluster everywhere (processes, directories, config, port reservation); also the
//! teardown that a failed create and recovery share.

use super::files::{remove_dir, remove_file};
use super::processes::wait_ports_free;
use super::{ClusterManager, KwokError};
use crate::store::ports::PortBlock;
use crate::store::Phase;

impl ClusterManager {
    /// Deletes a cluster everywhere; the row goes last, so its ports stay reserved until the
    /// processes that held them are gone.
    pub async fn delete(&self, name: &str) -> Result<(), KwokError> {
        let record = self.record(name).await?;
        self.store.set_phase(name, Phase::Deleting, None).await?;
        self.tear_down(name, &record.ports).await?;
        self.store.remove(name).await?;
        Ok(())
    }

    /// Kills every process of the cluster and removes its directory and config; does not touch the row.
    pub(super) async fn tear_down(&self, name: &str, ports: &PortBlock) -> Result<(), KwokError> {
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
        remove_dir(&dir).await?;
        remove_file(&self.config_path(name)).await?;
        Ok(())
    }
}
