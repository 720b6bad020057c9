//! End-to-end: the real `scale-cluster-agent serve` process, the rancher-sim test peer (upstream
//! remotedialer server + client-go doing what Rancher does through the tunnels) and real KWOK
//! clusters. Clusters are created through the agent's HTTP API and must go `active` in rancher-sim.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::agent_home::*;
use support::rancher_sim::{self, SimOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_created_clusters_go_active_and_rancher_sees_only_their_own_nodes() {
    let home = Home::new(23000);
    let mut sim = rancher_sim::start(sim_options());
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;

    bulk(&api, 5, "e2e").await;
    let names: Vec<String> = (1..=5).map(|i| format!("e2e-{i:05}")).collect();
    let ids = wait_all_active(&api, &names).await;
    for (name, id) in names.iter().zip(&ids) {
        wait_active_in_rancher(&sim, id).await;
        let stats = sim.stats(id).await;
        // Through the main tunnel rancher-sim listed this cluster's nodes, and no other's.
        let seen: BTreeSet<String> = stats["stats"]["nodesSeen"]
            .as_array()
            .unwrap_or_else(|| panic!("no nodesSeen in {stats}"))
            .iter()
            .filter_map(|n| n.as_str().map(String::from))
            .collect();
        let expected: BTreeSet<String> = (0..2).map(|i| format!("{name}-node-{i:04}")).collect();
        assert_eq!(seen, expected, "{name} ({id})");
        assert!(
            stats["stats"]["pingsOk"].as_u64().unwrap_or(0) > 0,
            "steve /ping answered: {stats}"
        );
        assert_eq!(stats["paramsChanges"].as_u64().unwrap_or(0), 0, "{stats}");
        // Rancher refused the first connect with its transient update conflict; the agent
        // reconnected instead of failing the bring-up.
        assert_eq!(stats["stats"]["conflicts"].as_u64(), Some(1), "{stats}");
        assert_agent_deployment_runs(&home, name, &expected).await;
        // Cluster Explorer's path: Rancher's steve proxy, through the steve tunnel, to Steve in
        // the agent, which lists the cluster's real nodes for the admin and refuses a user
        // without RBAC in the cluster.
        let node_ids = |list: &Value| -> BTreeSet<String> {
            list["data"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|n| n["id"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        support::eventually(
            DEADLINE,
            &format!("{name}: Steve through Rancher's proxy to list the cluster's nodes"),
            || async {
                let (status, nodes) = sim.steve(id, "nodes", None).await;
                (status == 200 && node_ids(&nodes) == expected).then_some(())
            },
        )
        .await;
        let (status, refused) = sim.steve(id, "nodes", Some("u-nobody")).await;
        assert!(
            (status == 403 || status == 404) && node_ids(&refused).is_empty(),
            "{name}: a user without RBAC got {status} {refused}"
        );
    }
    // (A bring-up may still fail for another reason on a loaded machine; the conflict is not one.)
    let log = home.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("will retry with backoff")
                && l.contains("the object has been modified")),
        "no bring-up failed on Rancher's update conflict: {log}"
    );
    assert_eq!(
        rancher_cluster_names(&sim).await,
        names,
        "exactly one Rancher cluster per simulated cluster"
    );

    // No secret ever leaves the API.
    let body = get_text(&api, "/clusters").await;
    assert!(
        !body.contains(&sim.token) && !body.to_lowercase().contains("token\""),
        "{body}"
    );

    // rancher-sim restarts: every tunnel comes back on its own, with the same params.
    let connects_before: Vec<u64> = futures::future::join_all(ids.iter().map(|id| sim.stats(id)))
        .await
        .iter()
        .map(|s| s["stats"]["mainConnects"].as_u64().unwrap_or(0))
        .collect();
    sim.restart();
    for id in &ids {
        wait_active_in_rancher(&sim, id).await;
        let stats = sim.stats(id).await;
        assert!(
            stats["stats"]["mainConnects"].as_u64().unwrap_or(0) >= 1,
            "{stats}"
        );
        let history = stats["paramsHistory"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let distinct: BTreeSet<String> = history.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            distinct.len(),
            1,
            "params byte-identical across reconnects: {stats}"
        );
    }
    assert!(connects_before.iter().all(|c| *c >= 1));

    // Deleted in Rancher: the agent notices, closes the tunnels and removes the cluster here.
    let (gone_name, gone_id) = (names[0].clone(), ids[0].clone());
    sim.delete_cluster(&gone_id).await;
    support::eventually(
        DEADLINE,
        &format!("{gone_name} to be removed by the agent"),
        || async { cluster_view(&api, &gone_name).await.is_none().then_some(()) },
    )
    .await;
    assert!(!home
        .kwok_workdir()
        .join("clusters")
        .join(&gone_name)
        .exists());

    // Deleted through the agent: gone from Rancher and KWOK.
    let (del_name, del_id) = (names[1].clone(), ids[1].clone());
    delete(&api, &del_name).await;
    support::eventually(
        DEADLINE,
        &format!("{del_name} to be deleted everywhere"),
        || async {
            let agent_gone = cluster_view(&api, &del_name).await.is_none();
            let rancher_gone = sim.cluster(&del_id).await.is_none();
            (agent_gone && rancher_gone).then_some(())
        },
    )
    .await;
    assert!(!home
        .kwok_workdir()
        .join("clusters")
        .join(&del_name)
        .exists());
    assert_eq!(
        home.kwok_processes().len(),
        3 * support::LEAN_AGENT_PROCESSES,
        "three lean clusters of four processes remain"
    );

    // Clean shutdown: the agent exits 0 and rancher-sim sees the sessions go.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", home.log());
    for id in &ids[2..] {
        support::eventually(DEADLINE, &format!("{id} sessions to close"), || async {
            (sim.stats(id).await["stats"]["mainSessionsOpen"].as_u64() == Some(0)).then_some(())
        })
        .await;
    }
    assert!(
        !home.data_dir().join("agent.json").exists(),
        "discovery file removed on exit"
    );
    sim.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_bulk_create_recovers_without_duplicates_or_leaks() {
    let home = Home::new(23200);
    let sim = rancher_sim::start(sim_options());
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;
    bulk(&api, 4, "crash").await;
    // Kill it while it is mid-way: some KWOK processes run, not everything is active yet.
    support::eventually(
        DEADLINE,
        "the agent to be mid-way through the bulk create",
        || async {
            let list = clusters(&api).await;
            let started = !home.kwok_processes().is_empty();
            let all_active = list.iter().all(|c| c["phase"] == "active");
            (started && !all_active).then_some(())
        },
    )
    .await;
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();

    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;
    let names: Vec<String> = (1..=4).map(|i| format!("crash-{i:05}")).collect();
    let ids = wait_all_active(&api, &names).await;
    for id in &ids {
        wait_active_in_rancher(&sim, id).await;
    }
    assert_eq!(
        rancher_cluster_names(&sim).await,
        names,
        "no duplicate cluster in Rancher"
    );
    let dirs: BTreeSet<String> = std::fs::read_dir(home.kwok_workdir().join("clusters"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        dirs,
        names.iter().cloned().collect(),
        "no leaked cluster directories"
    );
    assert_eq!(
        home.kwok_processes().len(),
        4 * support::LEAN_AGENT_PROCESSES,
        "no leaked control-plane processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rancher_settings_fail_fast_and_create_nothing() {
    let home = Home::new(23400);
    let sim = rancher_sim::start(sim_options());
    // (what the error must say, API token, extra agent environment)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        (
            "401",
            "token-wrong:nottherightsecretatall".to_string(),
            vec![],
        ),
        (
            "checksum",
            sim.token.clone(),
            vec![
                ("SCA_RANCHER_CA_FILE", String::new()),
                ("SCA_RANCHER_CA_CHECKSUM", "00".repeat(32)),
            ],
        ),
        (
            "unreachable",
            sim.token.clone(),
            vec![("SCA_RANCHER_URL", "https://127.0.0.1:9".to_string())],
        ),
    ];
    for (expect, token, extra) in cases {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut child = home.serve(&sim, &token, &extra);
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(
            !status.success(),
            "{expect}: the agent must refuse to start"
        );
        let log = home.log().to_lowercase();
        assert!(log.contains(expect), "{expect}: {log}");
        assert!(!log.contains(&sim.token), "the token is never printed");
        assert!(!home.data_dir().join("agent.json").exists());
        assert!(home.kwok_processes().is_empty());
        assert!(
            rancher_cluster_names(&sim).await.is_empty(),
            "nothing created in Rancher"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_never_lost_whatever_phase_the_cluster_is_in() {
    let home = Home::new(23600);
    // Registration tokens appear after 4 s, so `registering` lasts long enough to be caught.
    let sim = rancher_sim::start(SimOptions {
        token_delay: Duration::from_secs(4),
        ..sim_options()
    });
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;

    for (name, phase) in [
        ("del-prov", "provisioning"),
        ("del-reg", "registering"),
        ("del-conn", "connecting"),
    ] {
        create(&api, name).await;
        support::eventually(DEADLINE, &format!("{name} to be {phase}"), || async {
            let view = cluster_view(&api, name).await?;
            (view["phase"] == phase).then_some(())
        })
        .await;
        // The answer itself: a cluster caught early has little to undo and may be gone before
        // another request could read it.
        assert_eq!(
            delete(&api, name).await["phase"],
            json!("deleting"),
            "a requested delete shows at once"
        );
        wait_gone_everywhere(&home, &sim, &api, name).await;
    }

    // The bring-ups that were in flight never revive a deleted cluster: a later cluster goes all
    // the way, and the deleted ones stay gone.
    // Through the CLI, which finds the agent and follows the cluster until it is active.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .args(["cluster", "create", "del-after"])
        .env("SCA_DATA_DIR", home.data_dir())
        .env("SCA_KWOK_WORKDIR", home.kwok_workdir())
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("del-after: active (Rancher c-"),
        "each phase change is printed: {stderr}"
    );
    assert!(
        stdout.contains("cluster del-after: active in Rancher as c-"),
        "{stdout}"
    );
    let ids = wait_all_active(&api, &["del-after".to_string()]).await;
    wait_active_in_rancher(&sim, &ids[0]).await;
    assert_eq!(rancher_cluster_names(&sim).await, ["del-after"]);
    assert_eq!(clusters(&api).await.len(), 1);
    assert_eq!(
        home.kwok_processes().len(),
        support::LEAN_AGENT_PROCESSES,
        "one lean cluster's processes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_clusters_are_never_touched_and_a_missing_answer_is_not_a_deletion() {
    let home = Home::new(23800);
    let sim = rancher_sim::start(sim_options());
    // A real cluster imported by hand, and a cluster of another agent, whose names clash.
    let foreign = sim.create_cluster("own-00001", None).await;
    let other_agents = sim.create_cluster("own-00002", Some("other-agent")).await;
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;

    bulk(&api, 3, "own").await;
    let ids = wait_all_active(&api, &["own-00003".to_string()]).await;
    wait_active_in_rancher(&sim, &ids[0]).await;
    for (name, expect) in [
        ("own-00001", "not created by scale-cluster-agent"),
        (
            "own-00002",
            "belongs to scale-cluster-agent instance other-agent",
        ),
    ] {
        let view = support::eventually(DEADLINE, &format!("{name} to fail"), || async {
            cluster_view(&api, name)
                .await
                .filter(|v| v["phase"] == "failed")
        })
        .await;
        let reason = view["last_error"].as_str().unwrap_or_default();
        assert!(reason.contains(expect), "{name}: {reason}");
        assert!(
            view["rancher_cluster_id"].is_null(),
            "never adopted: {view}"
        );
    }

    // Rancher answers empty lists and 404s for a while (a proxy, a token that lost rights):
    // nothing is removed, and the cluster is active again afterwards.
    let kwok_before = home.kwok_processes();
    sim.hide_clusters(4.0).await;
    let hidden_until = std::time::Instant::now() + Duration::from_secs(4);
    support::eventually(DEADLINE, "the fault to pass", || async {
        (std::time::Instant::now() > hidden_until + Duration::from_secs(3)).then_some(())
    })
    .await;
    let view = cluster_view(&api, "own-00003").await.expect("still there");
    assert_eq!(view["phase"], "active", "{view}");
    assert_eq!(home.kwok_processes(), kwok_before, "no process was touched");
    assert!(sim.cluster(&ids[0]).await.is_some());

    // Deleting the clashing clusters through the agent removes them here, never in Rancher.
    for name in ["own-00001", "own-00002"] {
        delete(&api, name).await;
        support::eventually(DEADLINE, &format!("{name} gone from the agent"), || async {
            cluster_view(&api, name).await.is_none().then_some(())
        })
        .await;
    }
    for id in [&foreign, &other_agents] {
        let stats = sim.stats(id).await;
        assert_eq!(stats["state"], "pending", "untouched: {stats}");
        assert_eq!(
            stats["paramsHistory"],
            json!([]),
            "no tunnel params: {stats}"
        );
        assert_eq!(stats["driver"], "", "never connected: {stats}");
        assert!(sim.get_v3(&format!("clusters/{id}")).await["removed"].is_null());
    }
    assert_eq!(
        rancher_cluster_names(&sim).await,
        ["own-00001", "own-00002", "own-00003"]
    );

    // A foreign cluster that goes away frees its name: the agent's retry then creates its own.
    create(&api, "own-00001").await;
    support::eventually(DEADLINE, "own-00001 to fail on the clash again", || async {
        cluster_view(&api, "own-00001")
            .await
            .filter(|v| v["phase"] == "failed")
    })
    .await;
    sim.delete_cluster(&foreign).await;
    let retried = wait_all_active(&api, &["own-00001".to_string()]).await;
    assert_ne!(retried[0], foreign);
    let raw = sim.get_v3(&format!("clusters/{}", retried[0])).await;
    let health: Value = serde_json::from_str(&get_text(&api, "/health").await).unwrap();
    assert_eq!(
        raw["labels"][scale_cluster_agent::rancher::INSTANCE_LABEL],
        health["instance_id"],
        "{raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_apiserver_or_etcd_of_an_active_cluster_is_healed_and_others_are_untouched() {
    let home = Home::new(24300);
    let sim = rancher_sim::start(sim_options());
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &[]));
    let api = home.api_url(&mut agent.0).await;
    bulk(&api, 2, "heal").await;
    let names = ["heal-00001".to_string(), "heal-00002".to_string()];
    let ids = wait_all_active(&api, &names).await;
    let clusters_dir = home.kwok_workdir().join("clusters");
    let (sick, healthy) = (clusters_dir.join(&names[0]), clusters_dir.join(&names[1]));
    let healthy_before = support::cluster_processes(&healthy);
    assert_eq!(
        healthy_before.len(),
        support::LEAN_AGENT_PROCESSES,
        "{healthy_before:?}"
    );

    for component in ["kube-apiserver"] {
        let before = support::cluster_processes(&sick);
        let (pid, _) = before[component];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Reality first: a new process of that component runs, the others are the same ones.
        support::eventually(DEADLINE, &format!("{component} restarted"), || async {
            let now = support::cluster_processes(&sick);
            let restarted = now
                .get(component)
                .is_some_and(|id| *id != before[component]);
            (restarted && now.len() == before.len()).then_some(now)
        })
        .await;
        // Then the agent's account: active again, with the reason.
        let view = support::eventually(DEADLINE, "the cluster active again", || async {
            cluster_view(&api, &names[0]).await.filter(|v| {
                v["phase"] == "active"
                    && v["last_heal"]
                        .as_str()
                        .is_some_and(|h| h.contains(&format!("{component} process gone")))
            })
        })
        .await;
        assert!(view["last_error"].is_null(), "{view}");
        // The objects survived (they live in etcd): the cluster's nodes through its apiserver.
        assert_eq!(
            node_count(&sick).await,
            2,
            "both fake nodes are still there"
        );
    }
    assert_eq!(
        support::cluster_processes(&healthy),
        healthy_before,
        "the other cluster's processes were never touched"
    );

    // The one shared etcd of both clusters: killed, it is restarted by the heal of one of them
    // (once), both are active again and their objects are still there.
    let etcd_dir = home.data_dir().join("etcd").join("");
    let shared_etcd = || -> Vec<(u32, u64)> {
        support::processes_mentioning(&etcd_dir)
            .into_iter()
            .filter(|pid| support::program_name(*pid).as_deref() == Some("etcd"))
            .filter_map(support::process_identity)
            .collect()
    };
    let before = shared_etcd();
    assert_eq!(before.len(), 1, "{before:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0].0 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    support::eventually(DEADLINE, "the shared etcd restarted", || async {
        let now = shared_etcd();
        (now.len() == 1 && now[0] != before[0]).then_some(())
    })
    .await;
    support::eventually(DEADLINE, "a heal naming the shared etcd", || async {
        for name in &names {
            let view = cluster_view(&api, name).await?;
            if view["last_heal"]
                .as_str()
                .is_some_and(|h| h.contains("etcd process gone"))
            {
                return Some(());
            }
        }
        None
    })
    .await;
    for (name, dir) in names.iter().zip([&sick, &healthy]) {
        support::eventually(DEADLINE, &format!("{name} active again"), || async {
            cluster_view(&api, name)
                .await
                .filter(|v| v["phase"] == "active")
        })
        .await;
        assert_eq!(
            node_count(dir).await,
            2,
            "{name}: both fake nodes are there"
        );
    }
    assert_eq!(
        support::cluster_processes(&healthy),
        healthy_before,
        "an etcd restart restarts no other component"
    );
    let metrics = get_text(&api, "/metrics").await;
    for component in ["kube-apiserver", "etcd"] {
        assert!(
            metrics.contains(&format!(
                "sca_cluster_heals_total{{component=\"{component}\"}} 1\n"
            )),
            "{metrics}"
        );
    }
    wait_active_in_rancher(&sim, &ids[0]).await;
}

/// The number of nodes the cluster in `dir` lists through its apiserver, once it answers.
async fn node_count(dir: &std::path::Path) -> usize {
    let kubeconfig = dir.join("kubeconfig.yaml");
    support::eventually(DEADLINE, "nodes listed", || async {
        let client = scale_cluster_agent::kwok::population::client(&kubeconfig)
            .await
            .ok()?;
        let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        api.list(&Default::default())
            .await
            .ok()
            .map(|l| l.items.len())
    })
    .await
}

/// The cattle-cluster-agent Deployment that rancher-sim applied through the main tunnel is
/// available in the cluster's own apiserver, with a Running pod on one of the cluster's nodes, as
/// on a real cluster (in `lean` the replicaset controller makes the pod and the agent binds it).
async fn assert_agent_deployment_runs(home: &Home, name: &str, nodes: &BTreeSet<String>) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    let kubeconfig = home
        .kwok_workdir()
        .join("clusters")
        .join(name)
        .join("kubeconfig.yaml");
    let client = scale_cluster_agent::kwok::population::client(&kubeconfig)
        .await
        .unwrap();
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "cattle-system");
    support::eventually(
        DEADLINE,
        &format!("{name}: cattle-cluster-agent 1/1 available"),
        || async {
            let d = deployments.get("cattle-cluster-agent").await.ok()?;
            (d.status?.available_replicas == Some(1)).then_some(())
        },
    )
    .await;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "cattle-system");
    let listed = pods
        .list(&kube::api::ListParams::default().labels("app=cattle-cluster-agent"))
        .await
        .unwrap();
    let running: Vec<_> = listed
        .items
        .iter()
        .filter(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some_and(|n| nodes.contains(n))
        })
        .collect();
    assert_eq!(
        running.len(),
        1,
        "{name}: one Running agent pod on its own nodes"
    );
}
