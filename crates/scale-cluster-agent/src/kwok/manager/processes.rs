//! Waiting for and signalling a cluster's processes and ports, shared by the verbs.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::ClusterManager;
use crate::kwok::status;
use crate::store::ports::PortBlock;

/// Grace period between SIGTERM and SIGKILL when stopping a cluster that keeps its data. kube-apiserver
/// drains watches for well over 10 s on SIGTERM; etcd, the one whose data matters, recovers from its
/// WAL after SIGKILL anyway (kwokctl itself only ever SIGKILLs), so the grace is kept short.
pub(super) const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for SIGKILLed processes to disappear.
pub(super) const KILL_WAIT: Duration = Duration::from_secs(10);
pub(super) const POLL: Duration = Duration::from_millis(100);

impl ClusterManager {
    pub(super) async fn kill_remaining(&self, dir: &Path) {
        for pid in status::processes_in_async(dir).await {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        wait_gone(dir, KILL_WAIT).await;
    }
}

/// Polls until no process of the cluster in `dir` is left, or `timeout` passes.
pub(super) async fn wait_gone(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !status::processes_in_async(dir).await.is_empty() {
        tokio::time::sleep(POLL).await;
    }
}

/// SIGKILLs one component if `pid` is still that component of the cluster in `dir` (not a recycled
/// pid), and waits (bounded) until it is gone.
pub(super) async fn kill_component(dir: &Path, component: &str, pid: u32) {
    let (dir, component) = (dir.to_path_buf(), component.to_string());
    let is_it = move || status::is_cluster_process(pid, &component, &dir);
    let check = is_it.clone();
    if tokio::task::spawn_blocking(check).await.unwrap_or(false) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline
        && tokio::task::spawn_blocking(is_it.clone())
            .await
            .unwrap_or(false)
    {
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until `port` can be bound; false if it stays taken.
pub(super) async fn wait_port_free(port: u16) -> bool {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        if port_is_free(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A multi-threaded process shows as a zombie before its last thread has closed its sockets: wait
/// (bounded) until the block's ports can really be bound again.
pub(super) async fn wait_ports_free(ports: &PortBlock) {
    let deadline = Instant::now() + KILL_WAIT;
    while Instant::now() < deadline && !ports.all().into_iter().all(port_is_free) {
        tokio::time::sleep(POLL).await;
    }
}

/// A port is free if nothing listens on it on loopback or on the wildcard address.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// The error for a cluster's port that another process took, naming that process.
pub(super) async fn port_taken(name: &str, port: u16) -> super::KwokError {
    let holder = tokio::task::spawn_blocking(move || crate::sockets::port_holder(port))
        .await
        .ok()
        .flatten();
    let holder = crate::sockets::PortHolder::describe(holder);
    super::KwokError::PortTaken {
        name: name.to_string(),
        port,
        holder,
    }
}
