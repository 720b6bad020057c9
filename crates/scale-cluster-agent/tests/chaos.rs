//! Chaos: the real agent process is SIGKILLed at seeded random points of creates, deletes and
//! tunnel reconnects (rancher-sim restarts), and restarted each time. Afterwards every cluster is
//! active or gone as requested, Rancher holds no duplicate, a pre-existing foreign cluster with a
//! clashing name is untouched, and after a final delete-all nothing is left: no process, no
//! directory, no listening port.
//!
//! The seed is printed; `SCA_CHAOS_SEED=<seed>` replays a run's choices (timings on a loaded
//! machine still vary). `SCA_CHAOS_REPORT=<file>` also writes the summary there (the figures in
//! docs/reliability.md come from such runs).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::agent_home::*;
use support::rancher_sim;

const ROUNDS: usize = 15;
const MAX_CLUSTERS: usize = 10;
const PORT_BASE: u16 = 24000;
const PORT_BLOCKS: u16 = 16;
/// Generous: ten clusters come up after repeated crashes on a 2-core machine.
const CONVERGE: Duration = Duration::from_secs(600);
/// The cluster whose name a foreign (hand-imported) Rancher cluster already has.
const CLASHING: &str = "chaos-00004";

#[derive(Debug, Clone, Copy)]
enum Action {
    Create(usize),
    Delete,
    Reconnect,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_at_random_points_converges_without_duplicates_orphans_or_harm() {
    let seed: u64 = std::env::var("SCA_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("SCA_CHAOS_SEED must be a number"))
        .unwrap_or_else(rand::random);
    println!("chaos seed {seed} (replay with SCA_CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let home = Home::new(PORT_BASE);
    let mut sim = rancher_sim::start(sim_options());
    let foreign = sim.create_cluster(CLASHING, None).await;
    let blocks = PORT_BLOCKS.to_string();
    let extra = [("SCA_PORT_BLOCKS", blocks.as_str())];
    let mut agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &extra));
    let mut api = home.api_url(&mut agent.0).await;

    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let mut created = 0usize;
    let mut log = Vec::new();
    for round in 0..ROUNDS {
        let action = if round == 0 {
            // Always far enough into the series to reach the clashing name.
            Action::Create(4)
        } else {
            match rng.random_range(0..10) {
                0..=3 if created < MAX_CLUSTERS => {
                    Action::Create(rng.random_range(1..=3).min(MAX_CLUSTERS - created))
                }
                4 | 5 if wanted.len() > 2 => Action::Delete,
                _ => Action::Reconnect,
            }
        };
        let what = match action {
            Action::Create(count) => {
                let views = bulk(&api, count, "chaos").await;
                let names: Vec<String> = views
                    .iter()
                    .map(|v| v["name"].as_str().unwrap().to_string())
                    .collect();
                created += count;
                wanted.extend(names.iter().cloned());
                format!("create {}", names.join(","))
            }
            Action::Delete => {
                let victims: Vec<String> = wanted.iter().cloned().collect();
                let victim = victims[rng.random_range(0..victims.len())].clone();
                delete(&api, &victim).await;
                wanted.remove(&victim);
                format!("delete {victim}")
            }
            Action::Reconnect => {
                // Only a connected cluster can reconnect: wait for one first.
                let active = wait_for_phase(&api, "active").await;
                sim.restart();
                format!("rancher restart with {active} tunnels to reconnect")
            }
        };
        // The kill point: for a create, a seeded phase some cluster must reach first; then a
        // seeded delay into whatever the agent is doing.
        let mut what = what;
        if let Action::Create(_) = action {
            let phase =
                ["provisioning", "registering", "connecting", "active"][rng.random_range(0..4)];
            let reached = wait_for_phase(&api, phase).await;
            what.push_str(&format!(", {phase} reached by {reached}"));
        }
        let delay = Duration::from_millis(rng.random_range(0..2500));
        tokio::time::sleep(delay).await;
        let phases = phase_counts(&api).await;
        agent.0.kill().unwrap();
        agent.0.wait().unwrap();
        let line = format!(
            "round {round:2}: {what}; SIGKILL after {} ms ({phases})",
            delay.as_millis()
        );
        println!("{line}");
        log.push(line);
        agent = AgentGuard(home.serve(&sim, &sim.token.clone(), &extra));
        api = home.api_url(&mut agent.0).await;
    }

    // Convergence: what is wanted is active (the clashing one failed, never adopted), the rest
    // is gone, in the agent, in Rancher and on the host.
    let converged = Instant::now();
    support::eventually(
        CONVERGE,
        "every wanted cluster active, the rest gone",
        || {
            let api = api.clone();
            let wanted = wanted.clone();
            async move {
                let list = clusters(&api).await;
                let names: BTreeSet<String> = list
                    .iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect();
                let settled = list.iter().all(|c| {
                    let expected = if c["name"] == CLASHING {
                        "failed"
                    } else {
                        "active"
                    };
                    c["phase"] == expected
                });
                (names == wanted && settled).then_some(())
            }
        },
    )
    .await;
    let converge_time = converged.elapsed();
    if let Some(clash) = cluster_view(&api, CLASHING).await {
        let reason = clash["last_error"].as_str().unwrap_or_default();
        assert!(reason.contains("not this agent's"), "{clash}");
    }
    let mut expected_in_rancher: Vec<String> = wanted
        .iter()
        .filter(|n| n.as_str() != CLASHING)
        .cloned()
        .chain([CLASHING.to_string()])
        .collect();
    expected_in_rancher.sort();
    assert_eq!(
        rancher_cluster_names(&sim).await,
        expected_in_rancher,
        "one Rancher cluster per wanted cluster, no duplicate, the foreign one kept"
    );
    let dirs: BTreeSet<String> = std::fs::read_dir(home.kwok_workdir().join("clusters"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        dirs, wanted,
        "KWOK directories are exactly the wanted clusters"
    );
    assert_eq!(
        home.kwok_processes().len(),
        support::LEAN_AGENT_PROCESSES * wanted.len(),
        "a lean cluster's processes per wanted cluster, nothing leaked"
    );

    // Delete everything: nothing may be left but the foreign cluster, untouched.
    for name in &wanted {
        delete(&api, name).await;
    }
    for name in wanted.iter().filter(|n| n.as_str() != CLASHING) {
        wait_gone_everywhere(&home, &sim, &api, name).await;
    }
    // The foreign cluster keeps its name in Rancher; only the agent's side of it goes.
    let clash_dir = home.kwok_workdir().join("clusters").join(CLASHING);
    support::eventually(CONVERGE, "the clashing cluster gone here", || async {
        let gone = cluster_view(&api, CLASHING).await.is_none() && !clash_dir.exists();
        gone.then_some(())
    })
    .await;
    assert!(home.kwok_processes().is_empty());
    let span = PORT_BASE..PORT_BASE + 10 * PORT_BLOCKS;
    let listening = support::listening_ports(span.clone());
    assert!(
        listening.is_empty(),
        "ports still held in {span:?}: {listening:?}"
    );
    assert_eq!(rancher_cluster_names(&sim).await, [CLASHING]);
    let stats = sim.stats(&foreign).await;
    assert_eq!(
        stats["paramsHistory"],
        json!([]),
        "foreign untouched: {stats}"
    );
    assert_eq!(stats["driver"], "", "foreign never connected: {stats}");
    assert!(sim.get_v3(&format!("clusters/{foreign}")).await["removed"].is_null());

    let summary = format!(
        "seed {seed}: {ROUNDS} rounds, {ROUNDS} SIGKILLs of the agent, {created} clusters created, \
         {} deleted mid-run, {} kept; converged {:.0} s after the last restart; total {:.0} s; \
         outcome: no duplicate, no orphan, foreign cluster untouched, nothing leaked\n{}\n",
        created - wanted.len(),
        wanted.len(),
        converge_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        log.join("\n")
    );
    println!("{summary}");
    if let Ok(path) = std::env::var("SCA_CHAOS_REPORT") {
        std::fs::write(path, summary).expect("writing the chaos report");
    }
}

/// Waits (bounded) until some cluster is in `phase`; returns how many are, 0 if none got there in
/// time (the kill then happens anyway, at another point).
async fn wait_for_phase(api: &str, phase: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let count = clusters(api)
            .await
            .iter()
            .filter(|c| c["phase"] == phase)
            .count();
        if count > 0 || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `active=3 provisioning=1 …` from the agent's API, for the log of each kill.
async fn phase_counts(api: &str) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for cluster in clusters(api).await {
        *counts
            .entry(cluster["phase"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(phase, n)| format!("{phase}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
