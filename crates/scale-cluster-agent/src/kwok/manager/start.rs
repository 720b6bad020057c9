//! `start`: start a stopped cluster on its own ports and wait for `/readyz`.

use super::processes::{port_is_free, port_taken};
use super::{require_phase, ClusterInfo, ClusterManager, KwokError};
use crate::kwok::status;
use crate::store::{EtcdKind, Phase};

impl ClusterManager {
    /// Starts a stopped cluster on its own ports and waits for `/readyz`; objects are kept in etcd
    /// (its own, or the shared one, which is started first if it does not run).
    pub async fn start(&self, name: &str) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        require_phase(
            &record,
            "start",
            &[Phase::Stopped, Phase::Running],
            "stopped",
        )?;
        let dir = self.cluster_dir(name);
        if status::processes_in_async(&dir).await.is_empty() {
            if let Some(port) = record.ports.all().into_iter().find(|p| !port_is_free(*p)) {
                return Err(port_taken(name, port).await);
            }
        }
        if record.etcd == EtcdKind::Shared {
            self.shared_etcd.ensure_running().await?;
        }
        self.kwokctl.start_cluster(name).await?;
        self.attach_controllers(name).await?;
        self.wait_ready(name, record.ports.kube_apiserver).await?;
        self.store.set_phase(name, Phase::Running, None).await?;
        self.get(name).await
    }
}
