//! Scenarios end to end: the real CLI runs a scenario file on a real agent (in-process, as `serve`
//! wires it) against rancher-sim and real KWOK clusters, and each stage's effect is checked where
//! it happens: rancher-sim's own record of the tunnels, the clusters' own apiservers (a watch on
//! their nodes, pod uids, node counts) and /proc.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::Api;
use scale_cluster_agent::app::RunningAgent;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::population;
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::scenarios::RunState;
use scale_cluster_agent::store::AgentPhase;
use support::rancher_sim::{self, RancherSim};

const DEADLINE: Duration = Duration::from_secs(600);

/// Kills the KWOK components (they outlive the agent by design) however the test ends.
struct KwokGuard(std::path::PathBuf);

impl Drop for KwokGuard {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}

struct Env {
    sim: RancherSim,
    settings: Settings,
    running: Option<RunningAgent>,
    dir: tempfile::TempDir,
    _kwok: KwokGuard,
}

impl Env {
    async fn start(port_base: u16, blocks: u16) -> Env {
        let sim =
            tokio::task::spawn_blocking(|| rancher_sim::start(support::agent_home::sim_options()))
                .await
                .expect("starting rancher-sim");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings: Settings = support::settings();
        settings.data_dir = dir.path().join("data");
        settings.kwok_workdir = dir.path().join("kwok");
        settings.ports = PortRange::new(port_base, 10, blocks).expect("port range");
        let kwok = KwokGuard(settings.kwok_workdir.clone());
        tokio::task::spawn_blocking(support::toolchain)
            .await
            .expect("toolchain");
        let mut env = Env {
            sim,
            settings,
            running: None,
            dir,
            _kwok: kwok,
        };
        env.start_agent().await;
        env
    }

    async fn start_agent(&mut self) {
        let mut agent = self.sim.agent_settings();
        agent.concurrency = 3;
        self.running = Some(
            RunningAgent::start(&self.settings, &agent)
                .await
                .expect("agent starts"),
        );
    }

    fn agent(&self) -> &RunningAgent {
        self.running.as_ref().expect("agent running")
    }

    /// Runs the real CLI against the agent on this data dir: (success, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(
            DEADLINE,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
                .args(args)
                .env("HOME", self.dir.path())
                .env("SCA_DATA_DIR", &self.settings.data_dir)
                .env("SCA_KWOK_WORKDIR", &self.settings.kwok_workdir)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("CLI finished in time")
        .expect("CLI ran");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path.display().to_string()
    }

    async fn rancher_id(&self, name: &str) -> String {
        self.agent()
            .agent
            .get(name)
            .await
            .expect("cluster")
            .rancher_cluster_id
            .expect("registered")
    }

    async fn client(&self, name: &str) -> kube::Client {
        let path = self
            .settings
            .kwok_workdir
            .join("clusters")
            .join(name)
            .join("kubeconfig.yaml");
        population::client(&path).await.expect("cluster client")
    }
}

/// The shipped example, run as it is: what CI runs is what users copy.
const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/smoke.yaml");

/// The value of the series written exactly as `series` (name and labels) in a scrape.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Every Ready status a watch saw per (cluster, node), in order.
type ReadySeen = Arc<Mutex<HashMap<(String, String), Vec<String>>>>;

fn watch_nodes(
    cluster: String,
    client: kube::Client,
    seen: ReadySeen,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let nodes: Api<Node> = Api::all(client);
        let mut events = watcher(nodes, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let node = match event {
                Ok(watcher::Event::Apply(node)) | Ok(watcher::Event::InitApply(node)) => node,
                _ => continue,
            };
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status)
                .unwrap_or_default();
            let name = node.metadata.name.unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            let statuses = seen.entry((cluster.clone(), name)).or_default();
            if statuses.last() != Some(&ready) {
                statuses.push(ready);
            }
        }
    })
}

async fn pod_uids(client: &kube::Client) -> HashMap<String, String> {
    let pods: Api<Pod> = Api::all(client.clone());
    pods.list(&ListParams::default().labels(population::MANAGED_LABEL))
        .await
        .expect("pods")
        .items
        .into_iter()
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.metadata.uid.unwrap_or_default(),
            )
        })
        .collect()
}

fn apiserver_pid(kwok_workdir: &std::path::Path, name: &str) -> Option<u32> {
    let dir = kwok_workdir.join("clusters").join(name);
    support::processes_mentioning(&dir)
        .into_iter()
        .find(|pid| support::program_name(*pid).as_deref() == Some("kube-apiserver"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_ramps_injects_real_faults_and_records_what_it_saw() {
    let env = Env::start(28500, 6).await;
    let file = SMOKE.to_string();
    let spec: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(SMOKE).expect("scenarios/smoke.yaml"))
            .expect("smoke.yaml is YAML");
    let json = env.dir.path().join("run.json");

    let dry = env.cli(&["scenario", "run", &file, "--dry-run"]).await;
    assert!(dry.0, "{dry:?}");
    assert!(dry.1.contains("create 3 clusters at 1/s"), "{}", dry.1);
    assert!(
        env.agent().agent.list().await.expect("list").is_empty(),
        "a dry run creates nothing"
    );

    let json_arg = json.display().to_string();
    let args = ["scenario", "run", &file, "--json", &json_arg];
    let cli = env.cli(&args);
    let observe = async {
        let names = ["smoke-00001", "smoke-00002", "smoke-00003"];
        // Once all three are active, watch their nodes and note pods and apiserver pids.
        support::eventually(DEADLINE, "three clusters active", || async {
            let list = env.agent().agent.list().await.ok()?;
            (list
                .iter()
                .filter(|c| c.phase == AgentPhase::Active)
                .count()
                == 3)
                .then_some(())
        })
        .await;
        let seen: ReadySeen = Arc::default();
        let mut watches = Vec::new();
        let mut uids = HashMap::new();
        let mut pids = HashMap::new();
        let mut connects = HashMap::new();
        let mut ids = HashMap::new();
        for name in names {
            let client = env.client(name).await;
            // The file shrinks to two before its node churn; the third cluster's apiserver goes.
            if name != "smoke-00003" {
                watches.push(watch_nodes(name.to_string(), client.clone(), seen.clone()));
            }
            uids.insert(name, pod_uids(&client).await);
            pids.insert(name, apiserver_pid(&env.settings.kwok_workdir, name));
            let id = env.rancher_id(name).await;
            let stats = env.sim.stats(&id).await;
            connects.insert(
                name,
                (
                    stats["stats"]["mainConnects"].as_u64().expect("connects"),
                    stats["stats"]["mainConnectTimes"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                ),
            );
            ids.insert(name, id);
        }
        (seen, watches, uids, pids, connects, ids)
    };
    let ((ok, stdout, stderr), (seen, watches, uids_before, pids_before, connects_before, ids)) =
        tokio::join!(cli, observe);
    assert!(ok, "scenario run failed:\n{stdout}\n{stderr}");
    for watch in watches {
        watch.abort();
    }

    // The record: every stage of the file ran and succeeded, with the file's seed.
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("run JSON written")).expect("JSON");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["seed"].as_u64(), spec["seed"].as_u64(), "{run:#}");
    let stages = run["stages"].as_array().expect("stages");
    let file_stages = spec["stages"].as_sequence().expect("stages in the file");
    assert_eq!(stages.len(), file_stages.len(), "{run:#}");
    // Each stage kind appears in the file; its checks below find it by kind.
    let stage = |kind: &str| {
        stages
            .iter()
            .find(|s| s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} stage in scenarios/smoke.yaml"))
    };
    assert!(
        stages.iter().all(|s| s["outcome"] == "succeeded"),
        "{run:#}"
    );
    assert!(stdout.contains("tunnelDrop"), "the summary table: {stdout}");

    // tunnelDrop: rancher-sim saw each cluster's main tunnel drop and connect again, and the
    // stage's reconnect spread matches rancher-sim's own connect times.
    let drop = &stage("tunnelDrop")["summary"];
    assert_eq!(drop["dropped"], 3, "{drop}");
    assert_eq!(drop["reconnected"], 3, "{drop}");
    for name in ["smoke-00001", "smoke-00002"] {
        let stats = env.sim.stats(&ids[name]).await;
        let (before, times) = &connects_before[name];
        assert!(
            stats["stats"]["mainConnects"].as_u64().unwrap() > *before,
            "{name}: no reconnect seen by rancher-sim: {stats}"
        );
        assert!(
            stats["stats"]["mainDisconnects"].as_u64().unwrap() >= 1,
            "{stats}"
        );
        let after = stats["stats"]["mainConnectTimes"]
            .as_array()
            .expect("connect times");
        assert!(
            after.len() > times.len(),
            "{name}: rancher-sim recorded no new connect: {stats}"
        );
    }

    // nodeChurn: in each cluster's own apiserver, one node went NotReady and then Ready again.
    let seen = seen.lock().unwrap().clone();
    for name in ["smoke-00001", "smoke-00002"] {
        let flapped = seen.iter().any(|((cluster, _), statuses)| {
            cluster == name
                && statuses
                    .windows(2)
                    .any(|w| w[0] == "False" && w[1] == "True")
        });
        assert!(
            flapped,
            "{name}: no node went NotReady then Ready: {seen:?}"
        );
    }

    // podChurn: in the churned cluster, pods were really deleted and created again.
    let pod_churn = stage("podChurn");
    let churned = pod_churn["summary"]["clusters"][0]
        .as_str()
        .expect("churned cluster")
        .to_string();
    assert!(
        pod_churn["summary"]["recreated"].as_u64().unwrap() > 0,
        "{pod_churn}"
    );
    let uids_after = pod_uids(&env.client(&churned).await).await;
    let before = &uids_before[churned.as_str()];
    // (The same cluster may have been scaled up since, adding pods.)
    assert!(
        before.keys().all(|name| uids_after.contains_key(name)),
        "every churned pod is back under its name: {before:?} {uids_after:?}"
    );
    assert!(
        uids_after.iter().any(|(name, uid)| before[name] != *uid),
        "no pod of {churned} was recreated"
    );

    // scaleNodes: the picked cluster has 4 nodes in its own apiserver.
    let scaled = stage("scaleNodes")["summary"]["scaled"][0]
        .as_str()
        .expect("scaled cluster")
        .to_string();
    let nodes: Api<Node> = Api::all(env.client(&scaled).await);
    let count = nodes
        .list_metadata(&ListParams::default().labels(population::MANAGED_LABEL))
        .await
        .expect("nodes")
        .items
        .len();
    assert_eq!(count, 4, "{scaled}");

    // componentKill: the killed cluster's apiserver is a new process.
    let killed = stage("componentKill")["summary"]["killed"][0]["cluster"]
        .as_str()
        .expect("killed cluster")
        .to_string();
    let after = apiserver_pid(&env.settings.kwok_workdir, &killed);
    assert!(after.is_some(), "{killed}: apiserver healed");
    assert_ne!(after, pids_before[killed.as_str()], "{killed}");

    // The ramp down: the highest-numbered cluster went, in Rancher and in KWOK.
    let gone = ids["smoke-00003"].clone();
    support::eventually(DEADLINE, "smoke-00003 deleted", || async {
        let in_agent = env.agent().agent.get("smoke-00003").await.is_ok();
        let in_rancher = env.sim.cluster(&gone).await.is_some();
        (!in_agent && !in_rancher).then_some(())
    })
    .await;
    assert!(support::processes_mentioning(
        &env.settings
            .kwok_workdir
            .join("clusters")
            .join("smoke-00003")
    )
    .is_empty());

    check_metrics_against_the_run(&env, &run).await;

    let mut env = env;
    env.running
        .take()
        .expect("agent")
        .stop()
        .await
        .expect("agent stops");
}

/// The agent's `/metrics` (the test agent has no API token).
async fn scrape(env: &Env) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .get(format!("{}/metrics", env.agent().url))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics body")
}

/// `/metrics` after the run agrees with the run's JSON record: one succeeded run, each stage
/// counted under its kind with about the time the record shows, and the fault recovery and storm
/// figures equal to the stages' summaries.
async fn check_metrics_against_the_run(env: &Env, run: &serde_json::Value) {
    let text = scrape(env).await;
    let get = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(get("sca_scenario_runs_total{outcome=\"succeeded\"}"), 1.0);
    for outcome in ["failed", "stopped", "interrupted"] {
        assert_eq!(
            get(&format!("sca_scenario_runs_total{{outcome=\"{outcome}\"}}")),
            0.0
        );
    }
    assert_eq!(get("sca_scenario_running"), 0.0);
    assert!(
        !text.contains("sca_scenario_current_stage{"),
        "no stage in progress after the run: {text}"
    );

    let stages = run["stages"].as_array().expect("stages");
    let mut by_kind: HashMap<&str, (f64, f64)> = HashMap::new();
    for stage in stages {
        let took = (stage["finishedAtMs"].as_i64().expect("finished")
            - stage["startedAtMs"].as_i64().expect("started")) as f64
            / 1000.0;
        let entry = by_kind
            .entry(stage["kind"].as_str().expect("kind"))
            .or_default();
        entry.0 += 1.0;
        entry.1 += took;
    }
    for (kind, (count, seconds)) in &by_kind {
        let labels = format!("kind=\"{kind}\"");
        assert_eq!(
            get(&format!(
                "sca_scenario_stages_total{{{labels},outcome=\"succeeded\"}}"
            )),
            *count,
            "{kind}"
        );
        assert_eq!(
            get(&format!(
                "sca_scenario_stage_duration_seconds_count{{{labels}}}"
            )),
            *count,
            "{kind}"
        );
        // The runner times a stage between the store's two writes of its row.
        let measured = get(&format!(
            "sca_scenario_stage_duration_seconds_sum{{{labels}}}"
        ));
        assert!(
            (measured - seconds).abs() <= 0.25 * count,
            "{kind}: {measured} s on /metrics, {seconds} s in the record"
        );
    }

    // Fault recovery: one observation per fault stage, equal to its summary's recoveredMs.
    let id = run["id"].as_str().expect("run id");
    let mut last = None;
    for stage in stages {
        let kind = stage["kind"].as_str().expect("kind");
        if kind != "tunnelDrop" && kind != "componentKill" {
            continue;
        }
        let recovered = stage["summary"]["recoveredMs"]
            .as_u64()
            .unwrap_or_else(|| panic!("{kind} recovered: {stage}")) as f64
            / 1000.0;
        assert_eq!(
            get(&format!(
                "sca_scenario_fault_recovery_seconds_sum{{kind=\"{kind}\"}}"
            )),
            recovered,
            "{kind}"
        );
        assert_eq!(
            get(&format!(
                "sca_scenario_fault_recovery_seconds_count{{kind=\"{kind}\"}}"
            )),
            1.0
        );
        last = Some((stage["index"].as_u64().expect("index"), kind, recovered));
    }
    let (index, kind, recovered) = last.expect("a fault stage in the file");
    let labels = format!("run=\"{id}\",index=\"{index}\",kind=\"{kind}\"");
    assert_eq!(
        get(&format!(
            "sca_scenario_last_fault_recovery_seconds{{{labels}}}"
        )),
        recovered
    );

    // The storm figures are the tunnelDrop stage's.
    let drop = stages
        .iter()
        .find(|s| s["kind"] == "tunnelDrop")
        .expect("tunnelDrop");
    let summary = &drop["summary"];
    let labels = format!(
        "run=\"{id}\",index=\"{}\",kind=\"tunnelDrop\"",
        drop["index"]
    );
    assert_eq!(
        get(&format!("sca_scenario_tunnel_drop_clusters{{{labels}}}")),
        summary["dropped"].as_f64().expect("dropped")
    );
    assert_eq!(
        get(&format!(
            "sca_scenario_tunnel_drop_reconnect_spread_seconds{{{labels}}}"
        )),
        summary["reconnectSpreadMs"].as_f64().expect("spread") / 1000.0
    );
    assert_eq!(
        get(&format!(
            "sca_scenario_tunnel_drop_reconnects_max_per_second{{{labels}}}"
        )),
        summary["reconnectsMaxIn1s"].as_f64().expect("max in 1 s")
    );
    // Recovery takes at least until the last cluster reconnected.
    let recovered_ms = summary["recoveredMs"].as_u64().expect("recovered");
    assert!(
        recovered_ms
            >= summary["reconnect"]["maxMs"]
                .as_u64()
                .expect("max reconnect"),
        "{summary}"
    );
}

/// A stop request ends a run after its current step, and a run cut short by the agent's own
/// stop is recorded as interrupted, which the next agent reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stop_on_request_and_an_agent_stop_leaves_an_interrupted_record() {
    let mut env = Env::start(28600, 2).await;
    let file = env.write(
        "hold.yaml",
        "name: wait\nclusters: {prefix: w}\nstages:\n  - hold: 10m\n",
    );

    let (ok, stdout, stderr) = env.cli(&["scenario", "run", &file, "--no-wait"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    let id = stdout
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .expect("run id printed")
        .to_string();
    let (ok, _, stderr) = env.cli(&["scenario", "run", &file, "--no-wait"]).await;
    assert!(
        !ok && stderr.contains("still running"),
        "one run at a time: {stderr}"
    );
    let (ok, stdout, stderr) = env.cli(&["scenario", "stop", &id]).await;
    assert!(ok, "{stdout}\n{stderr}");
    let record = support::eventually(Duration::from_secs(30), "run stopped", || async {
        let (_, stdout, _) = env.cli(&["scenario", "get", &id, "-o", "json"]).await;
        let run: serde_json::Value = serde_json::from_str(&stdout).ok()?;
        (run["state"] == "stopped").then_some(run)
    })
    .await;
    assert_eq!(record["stages"][0]["outcome"], "stopped", "{record}");

    // Ctrl-C on a followed run stops it after the step in progress, and the CLI says how it ended.
    let follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .args(["scenario", "run", &file])
        .env("HOME", env.dir.path())
        .env("SCA_DATA_DIR", &env.settings.data_dir)
        .env("SCA_KWOK_WORKDIR", &env.settings.kwok_workdir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("CLI runs");
    let started = support::eventually(Duration::from_secs(60), "second run started", || async {
        let runs = env.agent().runner.runs(10).await.ok()?;
        runs.into_iter()
            .find(|r| r.id != id && r.state == RunState::Running)
            .map(|r| r.id)
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(follow.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = tokio::time::timeout(Duration::from_secs(60), follow.wait_with_output())
        .await
        .expect("CLI ends after Ctrl-C")
        .expect("CLI output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped"), "{stdout}");
    let run = env
        .agent()
        .runner
        .run(&started)
        .await
        .expect("run")
        .expect("recorded");
    assert_eq!(run.state, RunState::Stopped);
    // Both stopped runs are counted on /metrics, and nothing runs now.
    let text = scrape(&env).await;
    assert_eq!(
        value(&text, "sca_scenario_runs_total{outcome=\"stopped\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(value(&text, "sca_scenario_running"), Some(0.0), "{text}");

    // A run in progress when the agent stops is recorded as interrupted.
    let (ok, stdout, stderr) = env.cli(&["scenario", "run", &file, "--no-wait"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    env.running
        .take()
        .expect("agent")
        .stop()
        .await
        .expect("agent stops");
    env.start_agent().await;
    let (ok, stdout, stderr) = env.cli(&["scenario", "list", "-o", "json"]).await;
    assert!(ok, "{stdout}\n{stderr}");
    let runs: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(runs[0]["state"], "interrupted", "{runs:#}");
    assert!(
        runs[0]["reason"].as_str().unwrap().contains("shut down"),
        "{runs:#}"
    );
    assert_eq!(runs[2]["id"], id);
    env.running
        .take()
        .expect("agent")
        .stop()
        .await
        .expect("agent stops");
}
