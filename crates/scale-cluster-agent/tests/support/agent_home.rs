//! An agent under test as a real `scale-cluster-agent serve` process: its home (state, KWOK work
//! dir, log, port range), a guard that SIGKILLs it, and the HTTP calls and waits the end-to-end
//! and chaos tests share. Everything is checked against real processes, directories and
//! rancher-sim's own view, never against the agent's word alone.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::rancher_sim::{RancherSim, SimOptions};

pub const DEADLINE: Duration = Duration::from_secs(180);

/// An agent home (state, KWOK work dir, log) with its own port range.
pub struct Home {
    dir: tempfile::TempDir,
    port_base: u16,
}

impl Home {
    pub fn new(port_base: u16) -> Self {
        // Provision before any agent starts, so the agent never builds in the background.
        super::toolchain();
        Self {
            dir: tempfile::tempdir().unwrap(),
            port_base,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn kwok_workdir(&self) -> PathBuf {
        self.dir.path().join("kwok")
    }

    /// Live processes of any KWOK cluster of this home.
    pub fn kwok_processes(&self) -> Vec<u32> {
        super::processes_mentioning(&self.kwok_workdir().join("clusters").join(""))
    }

    pub fn serve(&self, sim: &RancherSim, token: &str, extra: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"));
        cmd.arg("serve")
            .env("SCA_DATA_DIR", self.data_dir())
            .env("SCA_KWOK_WORKDIR", self.kwok_workdir())
            .env("SCA_PORT_BASE", self.port_base.to_string())
            .env("SCA_PORT_BLOCKS", "10")
            .env("SCA_RANCHER_URL", &sim.url)
            .env("SCA_RANCHER_TOKEN", token)
            .env("SCA_RANCHER_CA_FILE", sim.state_dir.join("ca.crt"))
            .env("SCA_LISTEN", "127.0.0.1:0")
            .env("SCA_RANCHER_POLL_SECONDS", "1")
            .env("SCA_RANCHER_GONE_SECONDS", "6")
            .env("SCA_RECONNECT_MAX_SECONDS", "3")
            .env("SCA_CONCURRENCY", "2")
            .env("SCA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in extra {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd.spawn().unwrap()
    }

    /// Waits for this agent process's discovery file (a killed agent leaves a stale one) and
    /// returns its API URL.
    pub async fn api_url(&self, agent: &mut Child) -> String {
        let file = self.data_dir().join("agent.json");
        let pid = agent.id();
        super::eventually(DEADLINE, "the agent's API to come up", || {
            let exited = agent.try_wait().unwrap();
            assert!(
                exited.is_none(),
                "agent exited early: {exited:?}\n{}",
                self.log()
            );
            let found = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
                .and_then(|v| v["url"].as_str().map(String::from));
            async move { found }
        })
        .await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // A failed test's agent log goes with it: the temporary home is removed below.
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(300).collect();
            eprintln!("--- last {} lines of the agent's log ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        super::kill_processes_mentioning(&self.kwok_workdir().join("clusters").join(""));
        // The shared etcd of `lean` clusters is a daemon in the data dir.
        super::kill_processes_mentioning(&self.data_dir().join("etcd").join(""));
    }
}

/// Kills the agent process (SIGKILL) when dropped, so a failed test leaves none behind.
pub struct AgentGuard(pub Child);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn clusters(api: &str) -> Vec<Value> {
    let resp = http().get(format!("{api}/clusters")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Vec<Value>>().await.unwrap()
}

/// Waits until every named cluster is `active` in the agent and returns their Rancher ids.
pub async fn wait_all_active(api: &str, names: &[String]) -> Vec<String> {
    super::eventually(
        DEADLINE,
        &format!("{names:?} to be active in the agent"),
        || async {
            let list = clusters(api).await;
            let ids: Vec<String> = names
                .iter()
                .filter_map(|n| {
                    let c = list.iter().find(|c| c["name"] == n.as_str())?;
                    (c["phase"] == "active")
                        .then(|| c["rancher_cluster_id"].as_str().map(String::from))?
                })
                .collect();
            (ids.len() == names.len()).then_some(ids)
        },
    )
    .await
}

pub async fn wait_active_in_rancher(sim: &RancherSim, id: &str) {
    super::eventually(
        DEADLINE,
        &format!("{id} to be active in rancher-sim"),
        || async {
            sim.cluster(id)
                .await
                .filter(|c| c.state == "active")
                .map(|_| ())
        },
    )
    .await;
}

/// Names of the clusters rancher-sim knows.
pub async fn rancher_cluster_names(sim: &RancherSim) -> Vec<String> {
    let list = sim.get_v3("clusters").await;
    let mut names: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

pub fn sim_options() -> SimOptions {
    SimOptions {
        probe_interval: Duration::from_secs(1),
        ..SimOptions::default()
    }
}

pub async fn cluster_view(api: &str, name: &str) -> Option<Value> {
    let resp = http()
        .get(format!("{api}/clusters/{name}"))
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        return None;
    }
    Some(resp.json::<Value>().await.unwrap())
}

/// `POST <path>` with a JSON body, asserting `201 Created`.
async fn post_created(api: &str, path: &str, body: Value) -> reqwest::Response {
    let resp = http()
        .post(format!("{api}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    resp
}

/// `GET <path>` as text, asserting `200 OK`.
pub async fn get_text(api: &str, path: &str) -> String {
    let resp = http().get(format!("{api}{path}")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {path}");
    resp.text().await.unwrap()
}

/// `POST /clusters/bulk`; returns the created clusters' views.
pub async fn bulk(api: &str, count: usize, prefix: &str) -> Vec<Value> {
    let body = json!({"count": count, "prefix": prefix});
    post_created(api, "/clusters/bulk", body)
        .await
        .json()
        .await
        .unwrap()
}

/// Kills the agent when dropped, and every process of its KWOK clusters: for tests that start
/// the agent binary without a [`Home`].
pub struct AgentProcess {
    pub child: Child,
    pub kwok: PathBuf,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::kill_processes_mentioning(&self.kwok);
        // The shared etcd of `lean` clusters: a daemon in the data dir, which every test using
        // this puts next to the kwok work dir.
        super::kill_processes_mentioning(&self.kwok.with_file_name("data").join("etcd").join(""));
    }
}

pub async fn create(api: &str, name: &str) {
    post_created(api, "/clusters", json!({ "name": name })).await;
}

/// Requests a cluster's deletion and returns the cluster as the answer showed it.
pub async fn delete(api: &str, name: &str) -> Value {
    let resp = http()
        .delete(format!("{api}/clusters/{name}"))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 202, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `name` is gone from the agent, its KWOK directory and processes are gone, and no
/// Rancher cluster has its name.
pub async fn wait_gone_everywhere(home: &Home, sim: &RancherSim, api: &str, name: &str) {
    let dir = home.kwok_workdir().join("clusters").join(name);
    super::eventually(
        DEADLINE,
        &format!("{name} to be gone everywhere"),
        || async {
            let agent_gone = cluster_view(api, name).await.is_none();
            let kwok_gone = !dir.exists() && super::processes_mentioning(&dir).is_empty();
            let rancher_gone = !rancher_cluster_names(sim).await.iter().any(|n| n == name);
            (agent_gone && kwok_gone && rancher_gone).then_some(())
        },
    )
    .await;
}
