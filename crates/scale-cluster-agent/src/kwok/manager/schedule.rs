//! `bind_unscheduled_pods`: stand in for kube-scheduler in profiles that run none, for as long as
//! the caller keeps the future (the agent does while a cluster is active).

use super::{ClusterManager, KwokError};
use crate::kwok::binder;
use crate::kwok::population;
use crate::kwok::profile::ComponentProfile;

impl ClusterManager {
    /// Binds the cluster's pods that name no node to its Ready nodes until dropped. With a
    /// kube-scheduler in the profile there is nothing to do and the future just waits.
    pub async fn bind_unscheduled_pods(&self, name: &str) -> Result<(), KwokError> {
        let record = self.record(name).await?;
        let profile: ComponentProfile = record.component_profile.parse().unwrap_or_default();
        if profile.has_scheduler() {
            std::future::pending::<()>().await;
        }
        let client = population::client(&self.kubeconfig_path(name)).await?;
        binder::bind_unscheduled_pods(client, name).await;
        Ok(())
    }
}
