//! `stop`: stop a running cluster's processes and keep its data.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::processes::{wait_gone, wait_ports_free, TERM_GRACE};
use super::{require_phase, ClusterInfo, ClusterManager, KwokError};
use crate::kwok::status;
use crate::store::Phase;

impl ClusterManager {
    /// Stops a running cluster's processes (SIGTERM, then kwokctl's SIGKILL for stragglers).
    pub async fn stop(&self, name: &str) -> Result<ClusterInfo, KwokError> {
        let record = self.record(name).await?;
        require_phase(
            &record,
            "stop",
            &[Phase::Running, Phase::Stopped],
            "running",
        )?;
        let dir = self.cluster_dir(name);
        self.detach_controllers(name).await;
        self.terminate_processes(&dir).await;
        self.kwokctl.stop_cluster(name).await?;
        self.kill_remaining(&dir).await;
        wait_ports_free(&record.ports).await;
        self.store.set_phase(name, Phase::Stopped, None).await?;
        // A stopped cluster's health is no longer checked: an unreadiness seen before the stop
        // would otherwise count as a running apiserver hurt by the load forever.
        self.health.forget_unready(name);
        self.get(name).await
    }

    /// SIGTERM every live component, then wait up to [`TERM_GRACE`] for them to exit.
    pub(super) async fn terminate_processes(&self, dir: &Path) {
        for pid in status::processes_in_async(dir).await {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        wait_gone(dir, TERM_GRACE).await;
    }
}
