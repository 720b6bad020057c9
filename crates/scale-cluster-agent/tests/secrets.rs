//! Secrets stay secret. The real agent (`serve`, logging at `trace`) against rancher-sim brings two
//! clusters to active, creates and deletes one more through the API; then every byte it left
//! behind is searched for every secret: its own stdout and stderr, the CLI's output at `trace`,
//! every file under its data dir and kwok work dir (component logs, PKI, state database, binary or
//! not), and the environment and command line of every process it started. Plus the file modes
//! of the state database and the directories, fresh and pre-existing.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use scale_cluster_agent::store::Store;
use serde_json::{json, Value};
use support::agent_home::AgentProcess;
use support::rancher_sim::{self, RancherSim, SimOptions};

const DEADLINE: Duration = Duration::from_secs(240);
/// This file's KWOK port range.
const PORT_BASE: u16 = 24500;
const API_TOKEN: &str = "sca-api-token-3b9f2e61d0c84a7f";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_state_database_is_private_even_when_it_existed_with_wider_modes() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Fresh: directory 0700, database 0600, and SQLite's side files inherit 0600.
    let fresh = dir.path().join("fresh/data");
    let db = fresh.join("state.db");
    let store = Store::open(&db).expect("open");
    drop(store);
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&db), 0o600);

    // Pre-existing, world-readable: an older version, a copy, a loose umask.
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).expect("mkdir");
    let db = old.join("state.db");
    drop(Store::open(&db).expect("create"));
    let wal = old.join("state.db-wal");
    let shm = old.join("state.db-shm");
    for (path, bits) in [(&old, 0o755), (&db, 0o644), (&wal, 0o666), (&shm, 0o644)] {
        if !path.exists() {
            std::fs::write(path, b"").expect("create side file");
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).expect("chmod");
    }
    let store = Store::open(&db).expect("reopen");
    assert_eq!(mode(&old), 0o700, "the data dir is tightened");
    for path in [&db, &wal, &shm] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    drop(store);
}

/// Every secret of a run, by what it is.
#[derive(Default)]
struct Secrets {
    /// Must appear nowhere.
    everywhere: BTreeMap<String, String>,
    /// May appear only inside a KWOK cluster's own etcd data: Rancher itself writes them into
    /// the cluster (the `cattle-credentials-*` Secret holds the registration token; the `cattle`
    /// service-account token Secret is the cluster's own).
    outside_etcd: BTreeMap<String, String>,
}

impl Secrets {
    fn add(map: &mut BTreeMap<String, String>, what: String, value: &str) {
        assert!(
            value.len() >= 16,
            "{what} is too short to search for: {value:?}"
        );
        map.insert(value.to_string(), what);
    }

    /// The registration tokens, service-account tokens and tunnel params rancher-sim has seen,
    /// from its state file (so nothing goes through the product's own view).
    fn read_sim(&mut self, sim: &RancherSim) {
        let text =
            std::fs::read_to_string(sim.state_dir.join("state.json")).expect("rancher-sim state");
        let state: Value = serde_json::from_str(&text).expect("state JSON");
        for (id, token) in state["tokens"].as_object().expect("tokens") {
            let value = token["token"].as_str().expect("token value");
            Self::add(
                &mut self.outside_etcd,
                format!("registration token {id}"),
                value,
            );
        }
        for (id, cluster) in state["clusters"].as_object().expect("clusters") {
            for params in cluster["paramsHistory"].as_array().expect("params history") {
                let params = params.as_str().expect("params");
                Self::add(
                    &mut self.everywhere,
                    format!("tunnel params of {id}"),
                    params,
                );
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(params)
                    .expect("params are base64");
                let json: Value = serde_json::from_slice(&decoded).expect("params JSON");
                let sa = json["cluster"]["token"].as_str().expect("SA token");
                Self::add(
                    &mut self.outside_etcd,
                    format!("service-account token of {id}"),
                    sa,
                );
            }
        }
    }

    fn count(&self) -> usize {
        self.everywhere.len() + self.outside_etcd.len()
    }
}

/// One place searched, and what it holds.
struct Haystack {
    what: String,
    bytes: Vec<u8>,
    /// A KWOK cluster's etcd storage.
    etcd: bool,
    /// The discovery file, which holds the API token by design.
    discovery: bool,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// Every regular file under `dir`, recursively (symlinks are not followed: their targets are
/// searched where they live).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

async fn clusters(api: &str) -> Vec<Value> {
    let response = http()
        .get(format!("{api}/clusters"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("list");
    assert_eq!(response.status(), 200);
    response.json().await.expect("list JSON")
}

async fn wait_active(api: &str, names: &[&str]) {
    support::eventually(DEADLINE, &format!("{names:?} active"), || async {
        let list = clusters(api).await;
        names
            .iter()
            .all(|n| {
                list.iter()
                    .any(|c| c["name"] == *n && c["phase"] == "active")
            })
            .then_some(())
    })
    .await;
}

/// The CLI against the agent at `trace`, with no secret in its environment (it reads the API
/// token from agent.json); returns its stdout and stderr.
fn cli(home: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("SCA_DATA_DIR", home.join("data"))
        .env("SCA_KWOK_WORKDIR", home.join("kwok"))
        .env("SCA_LOG", "trace")
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut all = output.stdout;
    all.extend_from_slice(&output.stderr);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_files_or_child_environments_at_trace_level() {
    support::toolchain();
    let sim = tokio::task::spawn_blocking(|| rancher_sim::start(SimOptions::default()))
        .await
        .expect("starting rancher-sim");
    let home = tempfile::tempdir().expect("temp dir");
    let kwok = home.path().join("kwok");
    let log_path = home.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let ca = sim.state_dir.join("ca.crt");
    let mut agent = AgentProcess {
        child: Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
            .arg("serve")
            .env("SCA_DATA_DIR", home.path().join("data"))
            .env("SCA_KWOK_WORKDIR", &kwok)
            .env("SCA_PORT_BASE", PORT_BASE.to_string())
            .env("SCA_PORT_BLOCKS", "4")
            .env("SCA_RANCHER_URL", &sim.url)
            .env("SCA_RANCHER_TOKEN", &sim.token)
            .env("SCA_RANCHER_CA_FILE", &ca)
            .env("SCA_API_TOKEN", API_TOKEN)
            .env("SCA_LISTEN", "127.0.0.1:0")
            .env("SCA_RANCHER_POLL_SECONDS", "1")
            .env("SCA_RECONNECT_MAX_SECONDS", "3")
            .env("SCA_CONCURRENCY", "2")
            .env("SCA_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn serve"),
        kwok: kwok.clone(),
    };
    let pid = agent.child.id();
    let discovery = home.path().join("data/agent.json");
    let api: String = support::eventually(DEADLINE, "the agent's API", || {
        let exited = agent.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "agent exited: {exited:?}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        let url = std::fs::read_to_string(&discovery)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)))
            .and_then(|v| v["url"].as_str().map(String::from));
        async move { url }
    })
    .await;

    let created = http()
        .post(format!("{api}/clusters/bulk"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"count": 2, "prefix": "sec"}))
        .send()
        .await
        .expect("bulk create");
    assert_eq!(created.status(), 201);
    wait_active(&api, &["sec-00001", "sec-00002"]).await;

    // The components' environment and arguments, while they run.
    let mut pids = support::processes_mentioning(&kwok.join("clusters").join(""));
    assert_eq!(
        pids.len(),
        2 * support::LEAN_AGENT_PROCESSES,
        "two clusters' components are running: {pids:?}"
    );
    // The shared etcd of `lean` clusters, a daemon the agent starts itself.
    let shared_etcd = support::processes_mentioning(&home.path().join("data/etcd/"));
    assert_eq!(shared_etcd.len(), 1, "{shared_etcd:?}");
    pids.extend(shared_etcd);
    // Every other child of the agent: its hosts (Steve, the clusters' controllers) and whatever
    // runs at this moment.
    let children: Vec<u32> = support::children_of(agent.child.id())
        .into_iter()
        .filter(|pid| !pids.contains(pid))
        .collect();
    let names: Vec<String> = children
        .iter()
        .filter_map(|pid| support::program_name(*pid))
        .collect();
    for host in ["steve-host", "controller-host"] {
        assert!(names.iter().any(|n| n == host), "{host} runs: {names:?}");
    }
    pids.extend(children);
    let mut haystacks = Vec::new();
    for pid in &pids {
        for file in ["environ", "cmdline"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{file}")) {
                haystacks.push(Haystack {
                    what: format!("/proc/{pid}/{file}"),
                    bytes,
                    etcd: false,
                    discovery: false,
                });
            }
        }
    }
    let mut secrets = Secrets::default();
    Secrets::add(
        &mut secrets.everywhere,
        "Rancher API token".into(),
        &sim.token,
    );
    Secrets::add(&mut secrets.everywhere, "agent API token".into(), API_TOKEN);
    secrets.read_sim(&sim);

    let list = tokio::task::spawn_blocking({
        let home = home.path().to_path_buf();
        move || cli(&home, &["cluster", "list", "-o", "json"])
    })
    .await
    .expect("join");
    assert!(
        String::from_utf8_lossy(&list).contains("rancher_cluster_id"),
        "the CLI went through the agent"
    );
    haystacks.push(Haystack {
        what: "`cluster list` output".into(),
        bytes: list,
        etcd: false,
        discovery: false,
    });

    // Deleted through the API: gone locally and in Rancher.
    let deleted = http()
        .delete(format!("{api}/clusters/sec-00002"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 202);
    support::eventually(DEADLINE, "sec-00002 deleted", || async {
        let list = clusters(&api).await;
        (!list.iter().any(|c| c["name"] == "sec-00002")).then_some(())
    })
    .await;
    // Rancher keeps a removed cluster a moment (its finalizers), as rancher-sim does.
    support::eventually(DEADLINE, "sec-00002 deleted in Rancher", || async {
        let names: Vec<String> = sim.get_v3("clusters").await["data"]
            .as_array()
            .expect("clusters")
            .iter()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect();
        (names == ["sec-00001"]).then_some(())
    })
    .await;

    // Stop the agent the way a user does, so its last log lines are written.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    support::eventually(Duration::from_secs(60), "the agent to exit", || {
        let exited = agent.child.try_wait().expect("try_wait");
        async move { exited }
    })
    .await;

    let mut files = Vec::new();
    files_under(home.path(), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("state.db"))
            && files.iter().any(|f| f.ends_with("kube-apiserver.log")),
        "the state and the component logs are searched: {files:?}"
    );
    for file in files {
        let relative = file.strip_prefix(home.path()).expect("under home");
        let etcd = (relative.starts_with("kwok/clusters")
            && relative
                .components()
                .nth(3)
                .is_some_and(|c| c.as_os_str() == "etcd"))
            // The shared etcd's storage (`lean` clusters).
            || relative.starts_with("data/etcd/data");
        haystacks.push(Haystack {
            what: relative.display().to_string(),
            bytes: std::fs::read(&file).unwrap_or_default(),
            etcd,
            discovery: relative == Path::new("data/agent.json"),
        });
    }
    let log_text = std::fs::read_to_string(&log_path).expect("agent log");
    assert!(
        log_text.contains("TRACE") && log_text.contains("tunnel connected"),
        "the agent really logged at trace: {} bytes",
        log_text.len()
    );

    let mut hits = Vec::new();
    for haystack in &haystacks {
        let mut check = |secrets: &BTreeMap<String, String>| {
            for (value, what) in secrets {
                let by_design = haystack.discovery && value == API_TOKEN;
                if !by_design && contains(&haystack.bytes, value.as_bytes()) {
                    hits.push(format!("{what} in {}", haystack.what));
                }
            }
        };
        check(&secrets.everywhere);
        if !haystack.etcd {
            check(&secrets.outside_etcd);
        }
    }
    assert!(
        hits.is_empty(),
        "{} secrets searched in {} places; found:\n{}",
        secrets.count(),
        haystacks.len(),
        hits.join("\n")
    );
    assert!(
        secrets.count() >= 8,
        "tokens and params of both clusters were collected"
    );

    // The directories holding all this are private.
    assert_eq!(mode(&home.path().join("data")), 0o700);
    assert_eq!(mode(&kwok), 0o700);
    assert_eq!(mode(&home.path().join("data/state.db")), 0o600);
}
