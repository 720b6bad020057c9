//! The application wiring ([`RunningAgent`]) as `serve` and `up` use it, in-process: it brings a
//! cluster to Active in rancher-sim, serves the API at the address it announces in the discovery
//! file, holds the data directory against a second agent, and on `stop` releases all of it, so
//! that the next agent on the same data directory re-adopts the cluster.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use scale_cluster_agent::api::discovery;
use scale_cluster_agent::app::RunningAgent;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::ComponentProfile;
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::AgentPhase;
use support::rancher_sim;

const DEADLINE: Duration = Duration::from_secs(240);

/// Kills the KWOK components (they outlive the agent by design) however the test ends.
struct KwokGuard(std::path::PathBuf);

impl Drop for KwokGuard {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}

async fn health_status(url: &str) -> Option<reqwest::StatusCode> {
    // A plain client, not the product's: the socket's own word.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    http.get(format!("{url}/health"))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

async fn wait_active(running: &RunningAgent, name: &str) -> String {
    support::eventually(DEADLINE, &format!("{name} active"), || async {
        let view = running.agent.get(name).await.ok()?;
        (view.phase == AgentPhase::Active)
            .then_some(view.rancher_cluster_id)
            .flatten()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_agent_wires_every_layer_and_stop_releases_the_data_dir() {
    let sim =
        tokio::task::spawn_blocking(|| rancher_sim::start(support::agent_home::sim_options()))
            .await
            .expect("starting rancher-sim");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings: Settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(25100, 10, 2).expect("port range");
    // The KWOK components and the shared etcd (in the data dir): all under `dir`.
    let _kwok = KwokGuard(dir.path().to_path_buf());
    // Installed up front, so that the agent only has to find it.
    tokio::task::spawn_blocking(support::toolchain)
        .await
        .expect("toolchain");
    let agent = sim.agent_settings();

    let running = RunningAgent::start(&settings, &agent)
        .await
        .expect("agent starts");
    let found = discovery::read(&settings.data_dir).expect("discovery file written");
    assert_eq!(found.url, running.url);
    let mode = std::fs::metadata(discovery::path(&settings.data_dir))
        .expect("discovery file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "discovery file is private");
    assert_eq!(
        health_status(&running.url).await,
        Some(reqwest::StatusCode::OK)
    );

    // Store, manager, Rancher client and reconcile loop are all wired: a cluster reaches Active
    // in rancher-sim.
    running
        .agent
        .create("app-one", ComponentProfile::Lean)
        .await
        .expect("create");
    let id = wait_active(&running, "app-one").await;
    support::agent_home::wait_active_in_rancher(&sim, &id).await;

    // One agent per data directory.
    let err = match RunningAgent::start(&settings, &agent).await {
        Ok(second) => {
            let _ = second.stop().await;
            panic!("a second agent started on the same data directory")
        }
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("another agent is already running"), "{err}");
    assert_eq!(
        health_status(&running.url).await,
        Some(reqwest::StatusCode::OK),
        "the first agent is untouched"
    );

    let url = running.url.clone();
    running.stop().await.expect("stop");
    assert!(
        !discovery::path(&settings.data_dir).exists(),
        "discovery file removed"
    );
    assert_eq!(health_status(&url).await, None, "the API no longer answers");
    let stats = sim.stats(&id).await;
    assert_eq!(
        stats["stats"]["mainSessionsOpen"].as_u64(),
        Some(0),
        "stop closed the tunnels: {stats}"
    );
    let connects = stats["stats"]["mainConnects"].as_u64().unwrap_or(0);

    // The lock went with it: the next agent starts and re-adopts the cluster, same Rancher id,
    // with a new tunnel session.
    let again = RunningAgent::start(&settings, &agent)
        .await
        .expect("agent restarts on the same data directory");
    assert_eq!(wait_active(&again, "app-one").await, id);
    support::eventually(DEADLINE, "the main tunnel to reconnect", || async {
        let stats = sim.stats(&id).await;
        (stats["stats"]["mainSessionsOpen"].as_u64() == Some(1)
            && stats["stats"]["mainConnects"].as_u64().unwrap_or(0) > connects)
            .then_some(())
    })
    .await;
    again.stop().await.expect("stop");
}
