//! Cluster status from reality: each component's pid file checked against `/proc` (a zombie or a
//! recycled pid counts as dead), and the apiserver's `/readyz` over TLS with the cluster's own CA.

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
            let pid = read_pid(&cluster_dir.join("pids").join(format!("{name}.pid")));
            ComponentProcess {
                name: (*name).to_string(),
                pid,
                alive: pid.is_some_and(|pid| is_cluster_process(pid, name, cluster_dir)),
            }
        })
        .collect()
}

/// Every pid recorded under `<cluster_dir>/pids` whose process is still one of this cluster's.
pub fn live_pids(cluster_dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(cluster_dir.join("pids")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(".pid")?.to_string();
            let pid = read_pid(&e.path())?;
            is_cluster_process(pid, &name, cluster_dir).then_some((name, pid))
        })
        .collect()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// True if `pid` runs, is not a zombie, and is this cluster's `component`: its command line names the
/// component binary and mentions the cluster directory (every kwokctl component gets a path inside
/// it), which rules out a recycled pid.
pub fn is_cluster_process(pid: u32, component: &str, cluster_dir: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state field follows the parenthesised command name, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let Some(argv0) = args.next() else {
        return false;
    };
    let program = argv0.rsplit('/').next().unwrap_or_default().to_string();
    let dir = cluster_dir.to_string_lossy();
    program == component && args.any(|a| a.contains(dir.as_ref()))
}

/// GETs `https://127.0.0.1:<port>/readyz`, trusting only the cluster CA at `ca_file`.
pub async fn apiserver_ready(port: u16, ca_file: &Path) -> bool {
    let Ok(pem) = tokio::fs::read(ca_file).await else {
        return false;
    };
    let Ok(ca) = reqwest::Certificate::from_pem(&pem) else {
        return false;
    };
    let Ok(client) = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
    else {
        return false;
    };
    match client
        .get(format!("https://127.0.0.1:{port}/readyz"))
        .send()
        .await
    {
        Ok(resp) => resp.status().is_success(),
        Err(_) => false,
    }
}
