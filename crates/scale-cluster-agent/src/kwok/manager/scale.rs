//! `scale`: set a running cluster's node count (pods follow the stored population profile).

use super::{require_phase, stored_population, ClusterInfo, ClusterManager, KwokError};
use crate::kwok::population;
use crate::store::Phase;

impl ClusterManager {
    /// Sets the node count (pods follow, per the stored profile) and records it.
    pub async fn scale(&self, name: &str, nodes: u32) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        require_phase(&record, "scale", &[Phase::Running], "running")?;
        let mut profile = stored_population(&record)?;
        profile.nodes = nodes;
        let client = population::client(&self.kubeconfig_path(name)).await?;
        population::scale_nodes(&client, name, &profile).await?;
        let json = serde_json::to_string(&profile)
            .map_err(|e| KwokError::InvalidPopulation(e.to_string()))?;
        self.store.set_population(name, json).await?;
        self.get(name).await
    }
}
