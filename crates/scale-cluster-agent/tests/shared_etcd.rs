//! The shared etcd of `lean` clusters on real processes: two clusters share one etcd process, each
//! apiserver under its own prefix; objects of one are invisible in the other; a SIGKILLed etcd is
//! restarted by heal and both apiservers serve again, and a stalled one restarts no apiserver; a
//! second manager adopts the running etcd; stop/start work without a per-cluster etcd; deleting a
//! cluster removes its keys and only its keys. Processes are checked in `/proc` and keys in etcd itself (its v3 JSON gateway), not
//! through the product's view. Ports 26000-26400.

mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::shared_etcd::SharedEtcd;
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, ComponentState, CreateRequest, Health, PopulationProfile,
    RestartReason,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::{EtcdKind, Store};

const DEADLINE: Duration = Duration::from_secs(90);
const LONG_GRACE: Duration = Duration::from_secs(600);
const ETCD_PORT: u16 = 26390;

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
        settings.shared_etcd_port = Some(ETCD_PORT);
        let manager = Self::manager(&settings);
        Self {
            _dir: dir,
            settings,
            manager,
        }
    }

    /// A manager of its own on the same data dir, as a second agent start has.
    fn manager(settings: &Settings) -> ClusterManager {
        let store = Store::open(&settings.state_db()).unwrap();
        ClusterManager::new(&settings.kwok(), support::toolchain(), store)
    }

    /// Live etcd processes of this data dir's shared etcd, found by their command line.
    fn shared_etcds(&self) -> Vec<(u32, u64)> {
        support::processes_mentioning(&self.settings.data_dir.join("etcd").join(""))
            .into_iter()
            .filter(|pid| support::program_name(*pid).as_deref() == Some("etcd"))
            .filter_map(support::process_identity)
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // A failed assertion must not leave control planes or the shared etcd running.
        support::kill_processes_mentioning(&self.settings.kwok_workdir);
        support::kill_processes_mentioning(&self.settings.data_dir);
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Keys under `/clusters/<name>/` in etcd itself, through its v3 JSON gateway.
async fn keys_of(cluster: &str) -> Vec<String> {
    let body = serde_json::json!({
        "key": b64(&format!("/clusters/{cluster}/")),
        "range_end": b64(&format!("/clusters/{cluster}0")),
        "keys_only": true,
    });
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{ETCD_PORT}/v3/kv/range"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(kv["key"].as_str().unwrap())
                        .unwrap();
                    String::from_utf8_lossy(&raw).into_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

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

async fn config_maps(manager: &ClusterManager, name: &str) -> Api<ConfigMap> {
    let client = scale_cluster_agent::kwok::population::client(&manager.kubeconfig_path(name))
        .await
        .unwrap();
    Api::namespaced(client, "default")
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn request(name: &str) -> CreateRequest {
    CreateRequest {
        name: name.into(),
        profile: ComponentProfile::Lean,
        population: PopulationProfile {
            nodes: 1,
            ..PopulationProfile::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_clusters_share_one_etcd_each_under_its_own_prefix() {
    let env = TestEnv::new(26000, 4);
    let (a, b) = tokio::join!(
        env.manager.create_timed(request("share-a")),
        env.manager.create_timed(request("share-b"))
    );
    let ((a, a_timings), (b, _)) = (a.unwrap(), b.unwrap());
    eprintln!(
        "lean create with the shared etcd: ready after {:?}",
        a_timings.ready
    );
    for name in ["share-a", "share-b"] {
        let row = env.manager.store().get(name).await.unwrap().unwrap();
        assert_eq!(row.etcd, EtcdKind::Shared);
    }

    // Exactly one etcd for the data dir, none per cluster, each apiserver on its own prefix.
    let etcds = env.shared_etcds();
    assert_eq!(etcds.len(), 1, "{etcds:?}");
    let all_etcds: Vec<u32> = support::processes_mentioning(&env.settings.kwok_workdir)
        .into_iter()
        .filter(|pid| support::program_name(*pid).as_deref() == Some("etcd"))
        .collect();
    assert_eq!(all_etcds, Vec::<u32>::new(), "no per-cluster etcd is left");
    // Its profiler answers on the loopback client URL (for profiling a density run).
    let profile = reqwest::get(format!(
        "http://127.0.0.1:{ETCD_PORT}/debug/pprof/profile?seconds=1"
    ))
    .await
    .unwrap();
    assert!(profile.status().is_success(), "{}", profile.status());
    assert!(!profile.bytes().await.unwrap().is_empty());
    for info in [&a, &b] {
        let dir = env.manager.cluster_dir(&info.name);
        let programs: Vec<String> = support::cluster_processes(&dir).into_keys().collect();
        assert_eq!(
            programs,
            [
                "kube-apiserver",
                "kube-controller-manager",
                "kwok-controller"
            ]
        );
        assert!(!dir.join("etcd").exists(), "kwokctl's etcd data is removed");
        let (apiserver, _) = support::cluster_processes(&dir)["kube-apiserver"];
        let args = cmdline(apiserver);
        let prefix = format!("--etcd-prefix=/clusters/{}", info.name);
        assert!(args.contains(&prefix), "{args:?}");
        assert!(
            args.contains(&format!("--etcd-servers=http://127.0.0.1:{ETCD_PORT}")),
            "{args:?}"
        );
        let health = env.manager.check_health(&info.name).await.unwrap();
        assert!(health.is_healthy(), "{health:?}");
        assert_eq!(health.components[0].name, "etcd");
        assert_eq!(
            health.components[0].state,
            ComponentState::Running { pid: etcds[0].0 }
        );
    }

    // Objects of A are A's alone.
    let maps_a = config_maps(&env.manager, "share-a").await;
    let maps_b = config_maps(&env.manager, "share-b").await;
    let only_in_a = ConfigMap {
        metadata: ObjectMeta {
            name: Some("only-in-a".into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    maps_a
        .create(&PostParams::default(), &only_in_a)
        .await
        .unwrap();
    assert!(maps_b.get_opt("only-in-a").await.unwrap().is_none());
    let keys_a = keys_of("share-a").await;
    assert!(
        keys_a
            .iter()
            .any(|k| k == "/clusters/share-a/configmaps/default/only-in-a"),
        "{keys_a:?}"
    );
    assert!(!keys_of("share-b")
        .await
        .iter()
        .any(|k| k.ends_with("/only-in-a")));

    // SIGSTOP the shared etcd (alive, answering nothing, as a saturated etcd looks): every
    // apiserver's full `/readyz` fails, but the heal neither calls an apiserver unready nor
    // restarts one, even with no grace at all: restarting apiservers does not mend their etcd.
    let (apiserver_a, _) =
        support::cluster_processes(&env.manager.cluster_dir("share-a"))["kube-apiserver"];
    kill(Pid::from_raw(etcds[0].0 as i32), Signal::SIGSTOP).unwrap();
    support::eventually(DEADLINE, "share-a's full /readyz failing", || async {
        (!readyz(&env.manager, "share-a", a.ports.kube_apiserver).await).then_some(())
    })
    .await;
    let stalled = env.manager.check_health("share-a").await;
    let healed = env.manager.heal("share-a", Duration::ZERO).await;
    kill(Pid::from_raw(etcds[0].0 as i32), Signal::SIGCONT).unwrap();
    let stalled = stalled.unwrap();
    assert!(stalled.is_healthy(), "{stalled:?}");
    let healed = healed.unwrap();
    assert!(!healed.restarted_anything(), "{healed}");
    assert_eq!(
        support::cluster_processes(&env.manager.cluster_dir("share-a"))["kube-apiserver"].0,
        apiserver_a,
        "the same apiserver process"
    );
    support::eventually(DEADLINE, "share-a's full /readyz passing again", || async {
        readyz(&env.manager, "share-a", a.ports.kube_apiserver)
            .await
            .then_some(())
    })
    .await;

    // SIGKILL the shared etcd: heal of one cluster restarts it once; both apiservers recover.
    kill(Pid::from_raw(etcds[0].0 as i32), Signal::SIGKILL).unwrap();
    support::eventually(DEADLINE, "the shared etcd to die", || async {
        env.shared_etcds().is_empty().then_some(())
    })
    .await;
    let health = env.manager.check_health("share-a").await.unwrap();
    assert!(
        health.problems().contains(&"etcd process gone".to_string()),
        "{health:?}"
    );
    let outcome = env.manager.heal("share-a", LONG_GRACE).await.unwrap();
    assert_eq!(
        outcome
            .restarted
            .iter()
            .map(|r| (r.component.as_str(), r.reason))
            .collect::<Vec<_>>(),
        [("etcd", RestartReason::ProcessGone)],
        "{outcome}"
    );
    eprintln!("heal after SIGKILL of the shared etcd: {:?}", outcome.took);
    let restarted = env.shared_etcds();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_ne!(restarted[0], etcds[0], "a new etcd process");
    // B's apiserver was not touched: it reconnects by itself.
    for info in [&a, &b] {
        let (name, port) = (info.name.as_str(), info.ports.kube_apiserver);
        support::eventually(DEADLINE, &format!("{name} ready again"), || async {
            readyz(&env.manager, name, port).await.then_some(())
        })
        .await;
    }
    let healed_b = env.manager.heal("share-b", LONG_GRACE).await.unwrap();
    assert!(!healed_b.restarted_anything(), "{healed_b}");
    assert_eq!(
        maps_a.get("only-in-a").await.unwrap().data,
        only_in_a.data,
        "objects survive an etcd restart"
    );

    // A second manager (a new agent start) adopts the running etcd instead of starting another.
    let second = TestEnv::manager(&env.settings);
    assert_eq!(
        second.shared_etcd().ensure_running().await.unwrap(),
        restarted[0].0
    );
    let info = second.ensure_running(request("share-b")).await.unwrap();
    assert_eq!(info.health, Health::Ready);
    assert_eq!(env.shared_etcds(), restarted, "still the one etcd");

    // Stop and start go through kwokctl, which must not bring back a per-cluster etcd.
    second.stop("share-b").await.unwrap();
    assert!(support::cluster_processes(&env.manager.cluster_dir("share-b")).is_empty());
    assert_eq!(
        env.shared_etcds(),
        restarted,
        "stopping B leaves the shared etcd"
    );
    let started = second.start("share-b").await.unwrap();
    assert_eq!(started.health, Health::Ready);
    let programs: Vec<String> = support::cluster_processes(&env.manager.cluster_dir("share-b"))
        .into_keys()
        .collect();
    assert_eq!(
        programs,
        [
            "kube-apiserver",
            "kube-controller-manager",
            "kwok-controller"
        ]
    );

    // Deleting A removes A's keys and only A's (B runs on, so its set of keys may change a
    // little meanwhile: its lasting objects are checked).
    let lasting_b = [
        "/clusters/share-b/namespaces/default",
        "/clusters/share-b/namespaces/sim-workloads",
        "/clusters/share-b/clusterroles/cluster-admin",
    ];
    let keys_b = keys_of("share-b").await;
    for key in lasting_b {
        assert!(keys_b.iter().any(|k| k == key), "{key} in {keys_b:?}");
    }
    env.manager.delete("share-a").await.unwrap();
    assert_eq!(keys_of("share-a").await, Vec::<String>::new());
    let keys_b = keys_of("share-b").await;
    for key in lasting_b {
        assert!(
            keys_b.iter().any(|k| k == key),
            "B's {key} stays: {keys_b:?}"
        );
    }
    assert!(readyz(&env.manager, "share-b", b.ports.kube_apiserver).await);

    env.manager.delete("share-b").await.unwrap();
    assert_eq!(keys_of("share-b").await, Vec::<String>::new());
    assert!(support::processes_mentioning(&env.settings.kwok_workdir).is_empty());
    let etcd_dir = env.settings.data_dir.join("etcd");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&etcd_dir).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{}", Path::new(&etcd_dir).display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_shared_etcd_port_fails_a_lean_create_clearly_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(26200, 10, 2).unwrap();
    settings.shared_etcd_port = Some(26393);
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", 26393)).unwrap();
    let manager = TestEnv::manager(&settings);
    let err = manager.create(request("no-etcd")).await.unwrap_err();
    assert!(
        err.to_string().contains("port 26393") && err.to_string().contains("--shared-etcd-port"),
        "{err}"
    );
    assert!(manager.store().get("no-etcd").await.unwrap().is_none());
    assert!(!manager.cluster_dir("no-etcd").exists());
    assert!(support::processes_mentioning(dir.path()).is_empty());
}

/// A caller cancelled anywhere in the shared etcd's start (a delete abandoning the bring-up that
/// started it) leaves no etcd, or one the next call adopts: never one that holds the port
/// without a pid file, which failed every later start ("port in use by another process").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cancelled_at_any_point_leaves_an_etcd_the_next_call_adopts() {
    let dir = tempfile::tempdir().unwrap();
    let etcd_dir = dir.path().join("etcd");
    let etcd = SharedEtcd::new(&support::toolchain().etcd, &etcd_dir, 26396);
    let _cleanup = KillOnDrop(etcd_dir.clone());
    // From before the spawn to the health wait: each cut lands at another point of the start.
    for cut_after_ms in [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89] {
        let cut =
            tokio::time::timeout(Duration::from_millis(cut_after_ms), etcd.ensure_running()).await;
        let pid = etcd
            .ensure_running()
            .await
            .unwrap_or_else(|e| panic!("after a cut at {cut_after_ms} ms ({cut:?}): {e}"));
        assert!(etcd.healthy().await);
        let running: Vec<u32> = support::processes_mentioning(&etcd_dir.join(""))
            .into_iter()
            .filter(|p| support::program_name(*p).as_deref() == Some("etcd"))
            .collect();
        assert_eq!(running, [pid], "one etcd, the adopted one");
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        support::eventually(DEADLINE, "the killed etcd to free its port", || async {
            std::net::TcpListener::bind(("127.0.0.1", 26396))
                .ok()
                .map(|_| ())
        })
        .await;
    }
}

struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}
