//! Self-healing on real control planes: components of one cluster are killed with SIGKILL (or
//! frozen with SIGSTOP) and `ClusterManager::heal` must bring exactly those back, with the cluster's
//! objects intact, while a second cluster's processes are never touched. Processes are checked
//! from `/proc` directly, not through the product's own view of them.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::Api;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, ComponentState, CreateRequest, PopulationProfile,
    RestartReason,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::Store;

const DEADLINE: Duration = Duration::from_secs(90);
/// Unready grace for the SIGKILL cases: long enough that only a gone process triggers a restart.
const LONG_GRACE: Duration = Duration::from_secs(600);

struct TestEnv {
    _dir: tempfile::TempDir,
    settings: Settings,
    manager: ClusterManager,
}

impl TestEnv {
    fn new(port_base: u16, blocks: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = support::settings();
        settings.data_dir = dir.path().join("data");
        settings.kwok_workdir = dir.path().join("kwok");
        settings.ports = PortRange::new(port_base, 10, blocks).unwrap();
        let store = Store::open(&settings.state_db()).unwrap();
        let manager = ClusterManager::new(&settings.kwok(), support::toolchain(), store);
        Self {
            _dir: dir,
            settings,
            manager,
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // A failed assertion must not leave control planes running on the CI machine.
        support::kill_processes_mentioning(&self.settings.kwok_workdir);
        // The shared etcd of `lean` clusters lives in the data dir.
        support::kill_processes_mentioning(&self.settings.data_dir);
    }
}

async fn node_names(manager: &ClusterManager, name: &str) -> Vec<String> {
    let client = scale_cluster_agent::kwok::population::client(&manager.kubeconfig_path(name))
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(client);
    let mut names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    names
}

/// `GET /readyz` with a client of the test's own, trusting only the cluster CA.
async fn readyz(manager: &ClusterManager, name: &str, port: u16) -> bool {
    let ca = std::fs::read(manager.cluster_dir(name).join("pki").join("ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()
        .unwrap();
    client
        .get(format!("https://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Process CPU time (user + system) of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_components_are_restarted_and_other_clusters_are_untouched() {
    let env = TestEnv::new(23500, 4);
    let request = |name: &str| CreateRequest {
        name: name.into(),
        profile: ComponentProfile::Lean,
        population: PopulationProfile {
            nodes: 2,
            ..PopulationProfile::default()
        },
    };
    let (a, b) = tokio::join!(
        env.manager.create(request("heal-a")),
        env.manager.create(request("heal-b"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let dir_a = env.manager.cluster_dir("heal-a");
    let dir_b = env.manager.cluster_dir("heal-b");
    let b_before = support::cluster_processes(&dir_b);
    assert_eq!(
        b_before.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "kube-apiserver",
            "kube-controller-manager",
            "kwok-controller"
        ],
        "lean runs no scheduler, and its etcd is the shared one (healed in tests/shared_etcd.rs)"
    );
    let nodes_a = node_names(&env.manager, "heal-a").await;
    assert_eq!(nodes_a.len(), 2, "{nodes_a:?}");
    let healthy = env.manager.check_health("heal-a").await.unwrap();
    assert!(healthy.is_healthy(), "{healthy:?}");
    let noop = env.manager.heal("heal-a", LONG_GRACE).await.unwrap();
    assert!(!noop.restarted_anything(), "{noop}");

    // An object that must survive both restarts: it lives only in etcd.
    let client =
        scale_cluster_agent::kwok::population::client(&env.manager.kubeconfig_path("heal-a"))
            .await
            .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let survivor = ConfigMap {
        metadata: ObjectMeta {
            name: Some("survivor".into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    maps.create(&PostParams::default(), &survivor)
        .await
        .unwrap();

    for victim in ["kube-apiserver", "kwok-controller"] {
        let before = support::cluster_processes(&dir_a);
        let (pid, _) = before[victim];
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        support::eventually(DEADLINE, &format!("{victim} to die"), || async {
            (!support::cluster_processes(&dir_a).contains_key(victim)).then_some(())
        })
        .await;

        let health = env.manager.check_health("heal-a").await.unwrap();
        let state = health
            .components
            .iter()
            .find(|c| c.name == victim)
            .map(|c| c.state);
        assert_eq!(state, Some(ComponentState::ProcessGone), "{health:?}");
        assert!(
            health
                .problems()
                .contains(&format!("{victim} process gone")),
            "{health:?}"
        );

        let outcome = env.manager.heal("heal-a", LONG_GRACE).await.unwrap();
        assert_eq!(
            outcome
                .restarted
                .iter()
                .map(|r| (r.component.as_str(), r.reason))
                .collect::<Vec<_>>(),
            [(victim, RestartReason::ProcessGone)],
            "only the killed component is restarted: {outcome}"
        );
        assert_eq!(
            outcome.to_string(),
            format!("{victim} process gone; restarted")
        );
        eprintln!("heal after SIGKILL of {victim}: {:?}", outcome.took);

        // Reality: a new process of that component, every other one the same as before.
        let after = support::cluster_processes(&dir_a);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        for (component, identity) in &after {
            if component == victim {
                assert_ne!(*identity, before[component], "{victim} is a new process");
            } else {
                assert_eq!(*identity, before[component], "{component} was left alone");
            }
        }
        assert!(readyz(&env.manager, "heal-a", a.ports.kube_apiserver).await);
        assert_eq!(node_names(&env.manager, "heal-a").await, nodes_a);
        let kept = maps.get("survivor").await.unwrap();
        assert_eq!(
            kept.data, survivor.data,
            "objects survive a {victim} restart"
        );
        assert_eq!(
            support::cluster_processes(&dir_b),
            b_before,
            "cluster B is untouched"
        );
    }

    // A hung apiserver (frozen, so /readyz times out) is restarted once its grace has passed.
    let before = support::cluster_processes(&dir_a);
    let (pid, _) = before["kube-apiserver"];
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let grace = Duration::from_secs(2);
    let outcome = support::eventually(DEADLINE, "the hung apiserver to be restarted", || async {
        let outcome = env.manager.heal("heal-a", grace).await.unwrap();
        outcome.restarted_anything().then_some(outcome)
    })
    .await;
    assert_eq!(outcome.restarted.len(), 1, "{outcome}");
    assert_eq!(outcome.restarted[0].component, "kube-apiserver");
    assert!(
        matches!(outcome.restarted[0].reason, RestartReason::NotReady { unready_for } if unready_for >= grace),
        "{outcome}"
    );
    assert!(
        support::process_identity(pid) != Some(before["kube-apiserver"]),
        "the frozen process was killed"
    );
    assert_ne!(
        support::cluster_processes(&dir_a)["kube-apiserver"],
        before["kube-apiserver"]
    );
    assert!(readyz(&env.manager, "heal-a", a.ports.kube_apiserver).await);
    assert_eq!(node_names(&env.manager, "heal-a").await, nodes_a);
    assert_eq!(
        support::cluster_processes(&dir_b),
        b_before,
        "cluster B is untouched"
    );

    // A kube-controller-manager can exit while its apiserver is frozen (seen once in CI); the heal
    // restarts it like any dead component, as the agent's watch loop does, before the costs below.
    support::eventually(DEADLINE, "heal-a healthy again", || async {
        env.manager.heal("heal-a", LONG_GRACE).await.unwrap();
        let health = env.manager.check_health("heal-a").await.unwrap();
        health.is_healthy().then_some(())
    })
    .await;

    // What a health check costs, for the watch loop that runs it every few seconds per cluster.
    let (checks, apiserver) = (200, support::cluster_processes(&dir_a)["kube-apiserver"].0);
    let (own_before, apiserver_before) = (cpu_ticks(std::process::id()), cpu_ticks(apiserver));
    let started = Instant::now();
    for _ in 0..checks {
        let health = env.manager.check_health("heal-a").await.unwrap();
        assert!(health.is_healthy(), "{health:?}");
    }
    let wall = started.elapsed() / checks;
    let ticks_ms = |t: u64| t as f64 * 10.0 / f64::from(checks);
    eprintln!(
        "check_health: {wall:?} wall, {:.2} ms agent CPU, {:.2} ms apiserver CPU per check",
        ticks_ms(cpu_ticks(std::process::id()) - own_before),
        ticks_ms(cpu_ticks(apiserver) - apiserver_before),
    );

    for info in [a, b] {
        env.manager.delete(&info.name).await.unwrap();
    }
    assert!(support::processes_mentioning(&env.settings.kwok_workdir).is_empty());
}
