//! `kill_component`: fault injection. SIGKILLs one control-plane process of a running cluster, as
//! an OOM kill or a crash would, and leaves the repair to whoever heals the cluster.

use super::processes::kill_component;
use super::{require_phase, ClusterManager, KwokError};
use crate::kwok::status;
use crate::store::Phase;

impl ClusterManager {
    /// Kills `component` (a kwokctl component name) of a running cluster and returns the pid it
    /// had; an error if the cluster runs no such process of its own right now.
    pub async fn kill_component(&self, name: &str, component: &str) -> Result<u32, KwokError> {
        let record = self.record(name).await?;
        require_phase(&record, "kill a component", &[Phase::Running], "running")?;
        let dir = self.cluster_dir(name);
        let (lookup_dir, lookup) = (dir.clone(), component.to_string());
        let process = tokio::task::spawn_blocking(move || {
            status::component_processes(&lookup_dir, &[lookup.as_str()])
        })
        .await
        .unwrap_or_default()
        .into_iter()
        .next()
        .filter(|p| p.alive)
        .and_then(|p| p.pid)
        .ok_or_else(|| KwokError::NoSuchProcess {
            name: name.to_string(),
            component: component.to_string(),
        })?;
        kill_component(&dir, component, process).await;
        Ok(process)
    }
}
