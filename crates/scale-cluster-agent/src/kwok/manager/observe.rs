//! `get` and `list`: a cluster as stored plus what is observed right now (processes, `/readyz`),
//! and waiting for an apiserver to become ready.

use std::time::Duration;

use tokio::time::Instant;

use super::processes::POLL;
use super::{endpoint_of, stored_population, ClusterInfo, ClusterManager, Health, KwokError};
use crate::kwok::heal;
use crate::kwok::status::{self, ReadyzChecks};
use crate::store::{ClusterRecord, Phase};

/// How long kube-apiserver may take to answer `/readyz` after kwokctl returned.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

impl ClusterManager {
    pub(super) async fn wait_ready(&self, name: &str, port: u16) -> Result<(), KwokError> {
        let ca = self.cluster_dir(name).join("pki").join("ca.crt");
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = None;
        loop {
            if client.is_none() {
                client = status::readyz_client(&ca).await;
            }
            if let Some(client) = &client {
                if status::apiserver_ready(client, port, ReadyzChecks::All).await {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(KwokError::NotReady {
                    name: name.to_string(),
                    port,
                    timeout: READY_TIMEOUT,
                    log: self.log_path(name, "kube-apiserver"),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn get(&self, name: &str) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        Ok(self.observe(record).await)
    }

    pub async fn list(&self) -> Result<Vec<ClusterInfo>, KwokError> {
        let records = self.store.list().await?;
        let observed = records.into_iter().map(|r| self.observe(r));
        Ok(futures::future::join_all(observed).await)
    }

    pub(super) async fn observe(&self, record: ClusterRecord) -> ClusterInfo {
        let dir = self.cluster_dir(&record.name);
        let components = self.component_processes(&record).await;
        let apiserver_ready = components
            .iter()
            .any(|c| c.name == heal::APISERVER && c.alive)
            && self
                .apiserver_ready(&record.name, record.ports.kube_apiserver, ReadyzChecks::All)
                .await;
        let all_alive = components.iter().all(|c| c.alive);
        let health = match record.phase {
            Phase::Running if apiserver_ready && all_alive => Health::Ready,
            Phase::Running => Health::Degraded,
            Phase::Stopped => Health::Stopped,
            Phase::Creating => Health::Creating,
            Phase::Deleting => Health::Deleting,
            Phase::Failed => Health::Failed,
        };
        let population = stored_population(&record).unwrap_or_default();
        ClusterInfo {
            server: endpoint_of(&record).url(),
            kubeconfig: dir.join("kubeconfig.yaml"),
            name: record.name,
            phase: record.phase,
            health,
            profile: record.component_profile,
            ports: record.ports,
            apiserver_ready,
            components,
            nodes: population.nodes,
            pods_per_node: population.pods_per_node,
            last_error: record.last_error,
        }
    }

    /// `/readyz` of a cluster's apiserver with the cluster's kept client (see [`HealthMemory`]).
    pub(super) async fn apiserver_ready(
        &self,
        name: &str,
        port: u16,
        checks: ReadyzChecks,
    ) -> bool {
        let client = match self.health.readyz_client(name) {
            Some(client) => client,
            None => {
                let ca = self.cluster_dir(name).join("pki").join("ca.crt");
                let Some(client) = status::readyz_client(&ca).await else {
                    return false;
                };
                self.health.keep_readyz_client(name, client.clone());
                client
            }
        };
        let ready = status::apiserver_ready(&client, port, checks).await;
        if !ready {
            self.health.forget_readyz_client(name);
        }
        ready
    }
}
