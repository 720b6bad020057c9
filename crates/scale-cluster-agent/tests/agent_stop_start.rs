//! `cluster stop`, `start` and `scale` through a running agent, end to end: the real
//! `scale-cluster-agent serve` process with rancher-sim and a real KWOK cluster, driven by the real
//! CLI binary. What is checked is reality: the cluster's processes in `/proc`, the tunnels as
//! rancher-sim counts them, the nodes as the cluster's own apiserver lists them; the agent's word
//! only for its phase.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::agent_home::*;
use support::rancher_sim::{self, RancherSim};

/// How long a stopped cluster is watched for a heal that must not come: three heal checks (every
/// 5 s) and then some.
const STAYS_STOPPED: Duration = Duration::from_secs(16);

/// Runs the CLI on `home`'s data dir (so it finds the agent through `agent.json`) and returns its
/// stdout, asserting success.
async fn cli(home: &Home, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
            .args(args)
            .env("HOME", home.data_dir().parent().expect("home dir"))
            .env("SCA_DATA_DIR", home.data_dir())
            .env("SCA_KWOK_WORKDIR", home.kwok_workdir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("CLI finished in time")
    .expect("CLI ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{args:?}: {:?}\n{stdout}\n{stderr}\n{}",
        out.status,
        home.log()
    );
    assert!(
        stderr.contains("via agent at"),
        "{args:?} went through the agent: {stderr}"
    );
    stdout
}

/// The tunnel sessions rancher-sim holds open for the cluster: (main, steve).
async fn sessions(sim: &RancherSim, id: &str) -> (u64, u64) {
    let stats = sim.stats(id).await;
    (
        stats["stats"]["mainSessionsOpen"].as_u64().unwrap_or(0),
        stats["stats"]["steveSessionsOpen"].as_u64().unwrap_or(0),
    )
}

/// Waits until the cluster has no live process and rancher-sim no open session for it.
async fn wait_stopped_for_real(sim: &RancherSim, dir: &Path, id: &str) {
    support::eventually(DEADLINE, "processes gone and tunnels closed", || async {
        let gone = support::processes_mentioning(&dir.join("")).is_empty();
        (gone && sessions(sim, id).await == (0, 0)).then_some(())
    })
    .await;
}

/// Watches a stopped cluster for [`STAYS_STOPPED`]: no process of it may come back (the agent
/// heals running clusters only) and it stays `stopped`.
async fn assert_stays_stopped(home: &Home, api: &str, name: &str, dir: &Path) {
    let until = tokio::time::Instant::now() + STAYS_STOPPED;
    while tokio::time::Instant::now() < until {
        let back = support::processes_mentioning(&dir.join(""));
        assert!(
            back.is_empty(),
            "a stopped cluster was restarted: pids {back:?}\n{}",
            home.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let view = cluster_view(api, name).await.expect("still known");
    assert_eq!(view["phase"], "stopped", "{view}");
    assert_eq!(view["stop_requested"], true, "{view}");
}

/// The nodes the cluster's own apiserver lists.
async fn node_names(kubeconfig: &Path) -> Option<BTreeSet<String>> {
    let client = scale_cluster_agent::kwok::population::client(kubeconfig)
        .await
        .ok()?;
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let list = api.list(&Default::default()).await.ok()?;
    Some(
        list.items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect(),
    )
}

async fn post_status(api: &str, path: &str) -> (u16, Value) {
    let resp = http().post(format!("{api}{path}")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_and_scale_through_the_agent_act_on_the_real_cluster_and_survive_a_crash() {
    let home = Home::new(25200);
    let sim = rancher_sim::start(sim_options());
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;
    let name = "stop-00001";
    cli(&home, &["cluster", "create", name]).await;
    let id = wait_all_active(&api, &[name.to_string()]).await.remove(0);
    wait_active_in_rancher(&sim, &id).await;
    let dir = home.kwok_workdir().join("clusters").join(name);
    let kubeconfig = dir.join("kubeconfig.yaml");
    let running = support::cluster_processes(&dir);
    assert_eq!(
        running.len(),
        support::LEAN_AGENT_PROCESSES,
        "a lean cluster: {running:?}"
    );
    support::eventually(DEADLINE, "both tunnels open in rancher-sim", || async {
        (sessions(&sim, &id).await == (1, 1)).then_some(())
    })
    .await;

    // Stop: processes gone, tunnels closed, and the agent does not heal it back.
    let out = cli(&home, &["cluster", "stop", name]).await;
    assert!(out.contains("stopped cluster"), "{out}");
    wait_stopped_for_real(&sim, &dir, &id).await;
    assert_stays_stopped(&home, &api, name, &dir).await;
    let view = cluster_view(&api, name).await.unwrap();
    assert_eq!(view["tunnels"]["main"], "closed", "{view}");
    assert_eq!(node_names(&kubeconfig).await, None, "no apiserver answers");

    // Scaled while stopped: kept as desired state, applied when it runs again.
    let out = cli(&home, &["cluster", "scale", name, "--nodes", "3"]).await;
    assert!(out.contains("is stopped"), "{out}");
    assert!(support::processes_mentioning(&dir.join("")).is_empty());

    // Start: the same processes' programs back, tunnels back with byte-identical params, active.
    let out = cli(&home, &["cluster", "start", name]).await;
    assert!(out.contains("started cluster"), "{out}");
    let back = support::cluster_processes(&dir);
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        running.keys().collect::<Vec<_>>(),
        "every component runs again"
    );
    assert!(
        back.values()
            .all(|id| !running.values().any(|old| old == id)),
        "new processes: {back:?} vs {running:?}"
    );
    wait_active_in_rancher(&sim, &id).await;
    support::eventually(DEADLINE, "both tunnels open again", || async {
        (sessions(&sim, &id).await == (1, 1)).then_some(())
    })
    .await;
    let stats = sim.stats(&id).await;
    let params: BTreeSet<String> = stats["paramsHistory"]
        .as_array()
        .unwrap_or_else(|| panic!("no paramsHistory: {stats}"))
        .iter()
        .map(Value::to_string)
        .collect();
    assert_eq!(
        params.len(),
        1,
        "params byte-identical after start: {stats}"
    );
    assert!(
        stats["stats"]["mainConnects"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );

    // The cluster's own apiserver lists the nodes asked for while it was stopped (2 before).
    let node_set = |count: usize| -> BTreeSet<String> {
        (0..count).map(|i| format!("{name}-node-{i:04}")).collect()
    };
    assert_eq!(node_names(&kubeconfig).await, Some(node_set(3)));
    // Scaled while active: applied at once.
    let out = cli(&home, &["cluster", "scale", name, "--nodes", "1"]).await;
    assert!(out.contains("now has 1 nodes"), "{out}");
    assert_eq!(node_names(&kubeconfig).await, Some(node_set(1)));
    let view = cluster_view(&api, name).await.unwrap();
    assert_eq!(
        (&view["nodes"], &view["desired_nodes"]),
        (&1.into(), &1.into())
    );

    // A stop request, then kill -9 before (or while) it is carried out: the restarted agent
    // finishes the stop and leaves the cluster stopped.
    let (status, view) = post_status(&api, &format!("/clusters/{name}/stop")).await;
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["phase"], "stopping", "{view}");
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;
    wait_stopped_for_real(&sim, &dir, &id).await;
    support::eventually(
        DEADLINE,
        "the cluster stopped after the restart",
        || async {
            cluster_view(&api, name)
                .await
                .filter(|v| v["phase"] == "stopped")
        },
    )
    .await;
    assert_stays_stopped(&home, &api, name, &dir).await;

    // A start request, then kill -9: the restarted agent brings it back with the same params.
    let (status, view) = post_status(&api, &format!("/clusters/{name}/start")).await;
    assert_eq!(status, 202, "{view}");
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;
    wait_all_active(&api, &[name.to_string()]).await;
    assert_eq!(
        support::cluster_processes(&dir).len(),
        support::LEAN_AGENT_PROCESSES
    );
    support::eventually(DEADLINE, "both tunnels open after the restart", || async {
        (sessions(&sim, &id).await == (1, 1)).then_some(())
    })
    .await;
    let stats = sim.stats(&id).await;
    assert_eq!(stats["paramsChanges"].as_u64(), Some(0), "{stats}");
    assert_eq!(node_names(&kubeconfig).await, Some(node_set(1)), "kept");

    // Stopped once more, through the CLI, for the delete below.
    cli(&home, &["cluster", "stop", name]).await;
    wait_stopped_for_real(&sim, &dir, &id).await;

    // A stopped cluster is deleted like any other; afterwards it can be neither started nor
    // scaled (409), and unknown names are 404.
    let (status, _) = post_status(&api, "/clusters/nope/stop").await;
    assert_eq!(status, 404);
    let resp = http()
        .put(format!("{api}/clusters/{name}/scale"))
        .json(&serde_json::json!({"nodes": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_nodes", "{body}");
    cli(&home, &["cluster", "delete", name]).await;
    let (status, body) = post_status(&api, &format!("/clusters/{name}/start")).await;
    if status != 404 {
        // Still being deleted (not yet gone): refused as such.
        assert_eq!(
            (status, &body["error"]),
            (409, &"deleting".into()),
            "{body}"
        );
    }
    wait_gone_everywhere(&home, &sim, &api, name).await;
}
