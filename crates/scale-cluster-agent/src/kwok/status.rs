//! Cluster status from reality: each component's pid file checked against `/proc` (a zombie or a
//! recycled pid counts as dead, by [`crate::process`]'s rule), and the apiserver's `/readyz` over TLS
//! with the cluster's own CA.
//!
//! The `/proc` readers here are synchronous file I/O: async callers use the `_async` wrappers, which
//! run them on the blocking pool.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// One control-plane process of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentProcess {
    pub name: String,
    pub pid: Option<u32>,
    pub alive: bool,
}

/// Reads `<cluster_dir>/pids/<component>.pid` for each component and checks the process.
pub fn component_processes(cluster_dir: &Path, components: &[&str]) -> Vec<ComponentProcess> {
    components
        .iter()
        .map(|name| {
            let pid = read_pid(&pid_file(cluster_dir, name));
            ComponentProcess {
                name: (*name).to_string(),
                pid,
                alive: pid.is_some_and(|pid| is_cluster_process(pid, name, cluster_dir)),
            }
        })
        .collect()
}

/// Every live (non-zombie) process whose command line mentions a path inside `cluster_dir`: every
/// kwokctl component gets such a path, so this also finds processes whose pid file was never written
/// (kwokctl killed between starting a process and recording it).
pub fn processes_in(cluster_dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let inside = inside_prefix(cluster_dir);
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            crate::process::pid_alive(*pid)
                && cmdline(*pid).is_some_and(|args| args.iter().any(|a| a.contains(&inside)))
        })
        .collect()
}

/// [`processes_in`] on the blocking pool: it scans all of `/proc`.
pub async fn processes_in_async(cluster_dir: &Path) -> Vec<u32> {
    let dir = cluster_dir.to_path_buf();
    tokio::task::spawn_blocking(move || processes_in(&dir))
        .await
        .unwrap_or_default()
}

/// [`component_processes`] on the blocking pool.
pub async fn component_processes_async(
    cluster_dir: &Path,
    components: &[&'static str],
) -> Vec<ComponentProcess> {
    let dir: PathBuf = cluster_dir.to_path_buf();
    // Owned for the blocking task: the list may be computed per cluster (its kwok.yaml).
    let components = components.to_vec();
    tokio::task::spawn_blocking({
        let components = components.clone();
        move || component_processes(&dir, &components)
    })
    .await
    .unwrap_or_else(|_| {
        components
            .iter()
            .map(|name| ComponentProcess {
                name: (*name).to_string(),
                pid: None,
                alive: false,
            })
            .collect()
    })
}

/// The pid file kwokctl writes for `component`.
pub fn pid_file(cluster_dir: &Path, component: &str) -> PathBuf {
    cluster_dir.join("pids").join(format!("{component}.pid"))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if `pid` runs, is not a zombie, and is this cluster's `component`: its program name is the
/// component and its arguments mention a path inside the cluster directory, which rules out a
/// recycled pid.
pub fn is_cluster_process(pid: u32, component: &str, cluster_dir: &Path) -> bool {
    if !crate::process::pid_alive(pid) {
        return false;
    }
    let Some(args) = cmdline(pid) else {
        return false;
    };
    let inside = inside_prefix(cluster_dir);
    let program = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or_default();
    program == component && args.iter().skip(1).any(|a| a.contains(&inside))
}

/// `<dir>/`, so that cluster `a` never claims the processes of cluster `ab`.
fn inside_prefix(cluster_dir: &Path) -> String {
    format!("{}/", cluster_dir.to_string_lossy().trim_end_matches('/'))
}

pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A client for `/readyz` that trusts only the cluster CA at `ca_file`; `None` while the CA cannot
/// be read. Build it once per wait: it parses the CA and sets up TLS.
pub async fn readyz_client(ca_file: &Path) -> Option<reqwest::Client> {
    let pem = tokio::fs::read(ca_file).await.ok()?;
    let ca = reqwest::Certificate::from_pem(&pem).ok()?;
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .ok()
}

/// Which of kube-apiserver's readiness checks a `/readyz` request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyzChecks {
    /// Every check: a bring-up, or a user asking, wants an apiserver that can read its storage.
    All,
    /// Every check but etcd's: the agent's periodic heal check. Restarting an apiserver mends
    /// nothing when its etcd is slow or stalled (the agent watches the etcd processes
    /// themselves), and on a saturated machine a slow shared etcd failed every apiserver's check
    /// at once, so the heal restarted them all. The etcd check is also an etcd read per request:
    /// without it a `/readyz` costs the apiserver ~40% less CPU (docs/benchmarks.md).
    ExceptEtcd,
}

impl ReadyzChecks {
    fn path(self) -> &'static str {
        match self {
            ReadyzChecks::All => "/readyz",
            // `etcd-readiness` is the readyz-only variant of the `etcd` check; an exclusion
            // naming no check is answered with a warning, not a failure.
            ReadyzChecks::ExceptEtcd => "/readyz?exclude=etcd&exclude=etcd-readiness",
        }
    }
}

/// GETs `https://127.0.0.1:<port>/readyz` with a [`readyz_client`], running `checks`.
pub async fn apiserver_ready(client: &reqwest::Client, port: u16, checks: ReadyzChecks) -> bool {
    match client
        .get(format!("https://127.0.0.1:{port}{}", checks.path()))
        .send()
        .await
    {
        Ok(resp) => resp.status().is_success(),
        Err(_) => false,
    }
}
