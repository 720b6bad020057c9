//! Shard mode end to end: real `serve --desired-clusters N --shard K` processes, real KWOK
//! clusters and rancher-sim. Every check reads rancher-sim's cluster list (names, ids, instance
//! labels), never the agents' own API: two shards converge to their counts with disjoint names,
//! a changed count grows or shrinks only that shard, a restart resumes without duplicates, and
//! `shard cleanup` removes only the named shard's clusters.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use support::agent_home::*;
use support::rancher_sim::{self, RancherSim};

/// Rancher's clusters by name: (id, instance label, state). Panics on a duplicate name.
async fn rancher_clusters(sim: &RancherSim) -> BTreeMap<String, (String, String, String)> {
    let list = sim.get_v3("clusters").await;
    let mut out = BTreeMap::new();
    for c in list["data"].as_array().expect("cluster list") {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let entry = (
            c["id"].as_str().unwrap_or_default().to_string(),
            c["labels"][scale_cluster_agent::rancher::INSTANCE_LABEL]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            c["state"].as_str().unwrap_or_default().to_string(),
        );
        assert!(
            out.insert(name.clone(), entry).is_none(),
            "two Rancher clusters named {name}"
        );
    }
    out
}

fn series(shard: u32, count: usize) -> Vec<String> {
    (1..=count).map(|n| format!("sim-{shard}-{n:05}")).collect()
}

/// Waits until Rancher holds exactly `count` active clusters of `shard` (owned by the shard's
/// instance), and no other cluster of that shard; returns their ids by name.
async fn wait_shard(sim: &RancherSim, shard: u32, count: usize) -> BTreeMap<String, String> {
    let want = series(shard, count);
    let prefix = format!("sim-{shard}-");
    support::eventually(
        DEADLINE,
        &format!("shard {shard} to hold exactly {want:?}, active, in rancher-sim"),
        || async {
            let all = rancher_clusters(sim).await;
            let mine: BTreeMap<String, String> = all
                .iter()
                .filter(|(name, (_, owner, _))| {
                    name.starts_with(&prefix) && owner == &format!("sim-shard-{shard}")
                })
                .filter(|(_, (_, _, state))| state == "active")
                .map(|(name, (id, _, _))| (name.clone(), id.clone()))
                .collect();
            let named: Vec<&String> = all
                .iter()
                .filter(|(name, (_, owner, _))| {
                    name.starts_with(&prefix) && owner == &format!("sim-shard-{shard}")
                })
                .map(|(name, _)| name)
                .collect();
            (mine.keys().cloned().collect::<Vec<_>>() == want && named.len() == count)
                .then_some(mine)
        },
    )
    .await
}

async fn main_connects(sim: &RancherSim, id: &str) -> u64 {
    sim.stats(id).await["stats"]["mainConnects"]
        .as_u64()
        .unwrap_or_default()
}

/// `shard cleanup --shard <shard>`: whether it succeeded, and what it printed.
fn cleanup(home: &Home, sim: &RancherSim, shard: &str, timeout: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .args(["shard", "cleanup", "--shard", shard, "--timeout", timeout])
        .env("SCA_DATA_DIR", home.data_dir())
        .env("SCA_RANCHER_URL", &sim.url)
        .env("SCA_RANCHER_TOKEN", &sim.token)
        .env("SCA_RANCHER_CA_FILE", sim.state_dir.join("ca.crt"))
        .stdin(Stdio::null())
        .output()
        .expect("running shard cleanup");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn serve(home: &Home, sim: &RancherSim, shard: u32, count: usize) -> AgentGuard {
    let (shard, count) = (shard.to_string(), count.to_string());
    AgentGuard(home.serve(
        sim,
        &sim.token.clone(),
        &[
            ("SCA_SHARD", shard.as_str()),
            ("SCA_DESIRED_CLUSTERS", count.as_str()),
            ("SCA_CLUSTER_PREFIX", "sim"),
            ("SCA_STEVE", "false"),
        ],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_converge_grow_shrink_resume_and_clean_up_only_their_own() {
    let home0 = Home::new(27500);
    let home1 = Home::new(27600);
    let sim = rancher_sim::start(sim_options());
    // A cluster named in shard 1's series that no agent created: never adopted nor deleted.
    let foreign = sim
        .create_cluster("sim-1-00009", Some("someone-else"))
        .await;

    let mut agent0 = serve(&home0, &sim, 0, 2);
    let mut agent1 = serve(&home1, &sim, 1, 2);
    let shard0 = wait_shard(&sim, 0, 2).await;
    let shard1 = wait_shard(&sim, 1, 2).await;

    // Restart without a change (SIGKILL, as a pod eviction): the same clusters, no duplicates.
    // The new process shows in Rancher as a new main-tunnel connect of each existing cluster.
    let mut before = BTreeMap::new();
    for id in shard1.values() {
        before.insert(id.clone(), main_connects(&sim, id).await);
    }
    drop(agent1);
    agent1 = serve(&home1, &sim, 1, 2);
    for (id, connects) in &before {
        support::eventually(
            DEADLINE,
            &format!("{id} reconnected after the restart"),
            || async {
                let stats = sim.stats(id).await;
                (main_connects(&sim, id).await > *connects && stats["stats"]["connected"] == true)
                    .then_some(())
            },
        )
        .await;
    }
    assert_eq!(wait_shard(&sim, 1, 2).await, shard1, "same Rancher ids");

    // Grow shard 0 to 3: one new cluster; shard 1 untouched.
    drop(agent0);
    agent0 = serve(&home0, &sim, 0, 3);
    let grown = wait_shard(&sim, 0, 3).await;
    for (name, id) in &shard0 {
        assert_eq!(grown.get(name), Some(id), "{name} kept its Rancher cluster");
    }
    assert_eq!(wait_shard(&sim, 1, 2).await, shard1);

    // Shrink shard 1 to 1: the highest number goes, in Rancher and in KWOK; shard 0 untouched.
    drop(agent1);
    agent1 = serve(&home1, &sim, 1, 1);
    let shrunk = wait_shard(&sim, 1, 1).await;
    assert_eq!(shrunk.get("sim-1-00001"), shard1.get("sim-1-00001"));
    let gone_dir = home1.kwok_workdir().join("clusters").join("sim-1-00002");
    support::eventually(DEADLINE, "sim-1-00002's KWOK cluster to be gone", || {
        let gone = !gone_dir.exists() && support::processes_mentioning(&gone_dir).is_empty();
        async move { gone.then_some(()) }
    })
    .await;
    assert_eq!(wait_shard(&sim, 0, 3).await, grown);

    // Cleanup refuses a shard whose agent still runs (it would recreate the clusters).
    let (ok, printed) = cleanup(&home0, &sim, "0", "4");
    assert!(!ok && printed.contains("still connected"), "{printed}");
    assert_eq!(wait_shard(&sim, 0, 3).await, grown, "nothing deleted");

    // Shard 1's replica is gone for good: its agent stops, cleanup removes its clusters only.
    drop(agent1);
    let (ok, printed) = cleanup(&home1, &sim, "1", "120");
    assert!(ok, "{printed}");
    assert!(
        printed.contains("left alone: sim-1-00009"),
        "the foreign cluster is reported: {printed}"
    );
    assert!(
        !printed.contains(&sim.token),
        "the token is never printed: {printed}"
    );
    let after = rancher_clusters(&sim).await;
    assert!(!after.contains_key("sim-1-00001"), "{after:?}");
    assert_eq!(
        after.get("sim-1-00009").map(|c| c.0.as_str()),
        Some(foreign.as_str()),
        "the foreign cluster is untouched"
    );
    assert_eq!(wait_shard(&sim, 0, 3).await, grown, "shard 0 untouched");
    home0.api_url(&mut agent0.0).await;
    drop(agent0);
}
