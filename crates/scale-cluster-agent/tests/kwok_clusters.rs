//! Integration tests of the KWOK cluster manager on real control planes: kwokctl's binary runtime
//! running real etcd, kube-apiserver, kube-controller-manager and kwok-controller processes.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::ByteString;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::manager::port_is_free;
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, CreateRequest, Health, KwokError, PopulationProfile,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::{Phase, Store, StoreError};
use scale_cluster_agent::toolchain::Toolchain;

const DEADLINE: Duration = Duration::from_secs(90);

/// An isolated agent home (state DB, kwok work dir) with its own port range.
struct TestEnv {
    _dir: tempfile::TempDir,
    settings: Settings,
    manager: ClusterManager,
}

impl TestEnv {
    /// `port_base` must be unique per test so tests running in parallel never compete for ports.
    fn new(port_base: u16, blocks: u16) -> Self {
        Self::with_toolchain(port_base, blocks, support::toolchain())
    }

    fn with_toolchain(port_base: u16, blocks: u16, toolchain: Toolchain) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = support::settings();
        settings.data_dir = dir.path().join("data");
        settings.kwok_workdir = dir.path().join("kwok");
        settings.ports = PortRange::new(port_base, 10, blocks).unwrap();
        let store = Store::open(&settings.state_db()).unwrap();
        let manager = ClusterManager::new(&settings.kwok(), toolchain, store);
        Self {
            _dir: dir,
            settings,
            manager,
        }
    }

    fn request(&self, name: &str, profile: ComponentProfile, nodes: u32) -> CreateRequest {
        CreateRequest {
            name: name.into(),
            profile,
            population: PopulationProfile {
                nodes,
                ..PopulationProfile::default()
            },
        }
    }

    async fn assert_nothing_left(&self, name: &str, ports: &[u16]) {
        assert_eq!(
            support::processes_mentioning(&self.manager.cluster_dir(name).join("")),
            Vec::<u32>::new(),
            "no process of {name} may survive"
        );
        assert!(
            !self.manager.cluster_dir(name).exists(),
            "cluster dir of {name} must be removed"
        );
        assert!(
            self.manager.store().get(name).await.unwrap().is_none(),
            "no state row may remain for {name}"
        );
        for port in ports {
            assert!(port_is_free(*port), "port {port} must be free again");
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

async fn client_for(manager: &ClusterManager, name: &str) -> Client {
    scale_cluster_agent::kwok::population::client(&manager.kubeconfig_path(name))
        .await
        .unwrap()
}

async fn ready_node_names(client: &Client) -> BTreeSet<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.name)
        .collect()
}

async fn running_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sim-workloads");
    pods.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

/// Waits until exactly `nodes` nodes are Ready and `nodes * pods_per_node` pods are Running, each on
/// one of those nodes.
async fn wait_population(client: &Client, cluster: &str, nodes: u32, pods_per_node: u32) {
    let expected: BTreeSet<String> = (0..nodes)
        .map(|i| scale_cluster_agent::kwok::population::node_name(cluster, i))
        .collect();
    support::eventually(DEADLINE, &format!("{nodes} Ready nodes"), || async {
        (ready_node_names(client).await == expected).then_some(())
    })
    .await;
    let pods = support::eventually(
        DEADLINE,
        &format!("{} Running pods", nodes * pods_per_node),
        || async {
            let pods = running_pods(client).await;
            (pods.len() as u32 == nodes * pods_per_node).then_some(pods)
        },
    )
    .await;
    for pod in pods {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(
            expected.contains(&node),
            "pod bound to unexpected node {node:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_lifecycle_on_real_control_planes() {
    let env = TestEnv::new(21000, 10);
    let names = ["life-a", "life-b", "life-c"];
    let creations = names.map(|n| {
        env.manager
            .create(env.request(n, ComponentProfile::Lean, 2))
    });
    let infos: Vec<_> = futures::future::join_all(creations)
        .await
        .into_iter()
        .map(|r| r.expect("create"))
        .collect();

    let ports: BTreeSet<u16> = infos.iter().flat_map(|i| i.ports.all()).collect();
    assert_eq!(ports.len(), 3 * 6, "every cluster gets its own six ports");
    for info in &infos {
        assert_eq!(info.health, Health::Ready, "{info:?}");
        assert!(info.components.iter().all(|c| c.alive), "{info:?}");
        let client = client_for(&env.manager, &info.name).await;
        let version = client.apiserver_version().await.unwrap();
        assert_eq!(
            version.git_version, "v1.36.1",
            "apiserver reports the pinned version"
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .get("sim-workloads")
            .await
            .expect("population namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "sim-workloads");
        accounts
            .get("sim-app")
            .await
            .expect("population service account");
        wait_population(&client, &info.name, 2, 3).await;
    }

    // Scale up, then down: nodes and their pods follow.
    let client = client_for(&env.manager, "life-a").await;
    let info = env.manager.scale("life-a", 4).await.unwrap();
    assert_eq!(info.nodes, 4);
    wait_population(&client, "life-a", 4, 3).await;
    env.manager.scale("life-a", 1).await.unwrap();
    wait_population(&client, "life-a", 1, 3).await;
    assert_eq!(
        env.manager.get("life-a").await.unwrap().nodes,
        1,
        "scale is recorded"
    );

    // Stop, then start: processes go away and come back, objects survive in etcd.
    let stopped = env.manager.stop("life-b").await.unwrap();
    assert_eq!(stopped.health, Health::Stopped);
    // All but the shared etcd, which serves other clusters too.
    assert!(
        stopped
            .components
            .iter()
            .all(|c| !c.alive || c.name == "etcd"),
        "{stopped:?}"
    );
    // Reality, read from /proc independently of the product's own liveness code.
    let life_b = env.settings.kwok_workdir.join("clusters").join("life-b");
    let left = support::cluster_processes(&life_b);
    assert!(left.is_empty(), "processes of a stopped cluster: {left:?}");
    for port in stopped.ports.all() {
        assert!(
            port_is_free(port),
            "port {port} of a stopped cluster must not be bound"
        );
    }
    let started = env.manager.start("life-b").await.unwrap();
    assert_eq!(started.health, Health::Ready, "{started:?}");
    let running = support::cluster_processes(&life_b);
    assert_eq!(
        running.len(),
        started.components.len() - 1,
        "one process per component (the shared etcd aside) runs again: {running:?}"
    );
    assert_eq!(
        started.ports, infos[1].ports,
        "a restarted cluster keeps its ports"
    );
    let client = client_for(&env.manager, "life-b").await;
    wait_population(&client, "life-b", 2, 3).await;

    // State survives a new manager (a restart of the CLI / agent).
    let reopened = ClusterManager::new(
        &env.settings.kwok(),
        support::toolchain(),
        Store::open(&env.settings.state_db()).unwrap(),
    );
    // Listed by port; the three were created at once, so their port order is not fixed.
    let listed: BTreeSet<_> = reopened
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.health))
        .collect();
    assert_eq!(
        listed,
        names
            .iter()
            .map(|n| (n.to_string(), Health::Ready))
            .collect::<BTreeSet<_>>()
    );

    for info in &infos {
        env.manager.delete(&info.name).await.unwrap();
        env.assert_nothing_left(&info.name, &info.ports.all()).await;
    }
    assert!(env.manager.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_lean_profiles() {
    let env = TestEnv::new(21200, 4);
    let (full, lean) = tokio::join!(
        env.manager
            .create(env.request("prof-full", ComponentProfile::Full, 1)),
        env.manager
            .create(env.request("prof-lean", ComponentProfile::Lean, 1)),
    );
    let (full, lean) = (full.unwrap(), lean.unwrap());
    // From the real processes, not from the product's component list.
    let programs = |name: &str| -> BTreeSet<String> {
        support::processes_mentioning(&env.manager.cluster_dir(name).join(""))
            .into_iter()
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let program = cmdline.split(|b| *b == 0).next()?;
                Some(
                    String::from_utf8_lossy(program)
                        .rsplit('/')
                        .next()?
                        .to_string(),
                )
            })
            .collect()
    };
    let expected = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        programs("prof-full"),
        expected(&[
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok-controller"
        ])
    );
    assert_eq!(
        programs("prof-lean"),
        expected(&[
            "kube-apiserver",
            "kube-controller-manager",
            "kwok-controller"
        ]),
        "lean runs no scheduler, and its etcd is the shared one"
    );
    // Every component kwokctl started may share its identical pages with the other clusters'
    // (KSM; the kernel says so per process).
    for name in ["prof-full", "prof-lean"] {
        for pid in support::processes_mentioning(&env.manager.cluster_dir(name).join("")) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/ksm_stat")).unwrap();
            assert!(
                stat.contains("ksm_merge_any: yes"),
                "{name} pid {pid} is not mergeable:\n{stat}"
            );
        }
    }
    // lean has no scheduler: the agent's own binding puts its pods on nodes.
    wait_population(
        &client_for(&env.manager, "prof-lean").await,
        "prof-lean",
        1,
        3,
    )
    .await;

    // full: the real scheduler binds a pod that names no node.
    let client = client_for(&env.manager, "prof-full").await;
    wait_population(&client, "prof-full", 1, 3).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sim-workloads");
    let unbound: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "needs-scheduling"},
        "spec": {"serviceAccountName": "sim-app", "containers": [{"name": "c", "image": "pause"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &unbound).await.unwrap();
    support::eventually(DEADLINE, "the scheduler to bind the pod", || async {
        let pod = pods.get("needs-scheduling").await.ok()?;
        (pod.spec?.node_name.as_deref() == Some("prof-full-node-0000")).then_some(())
    })
    .await;

    // lean: the restricted controller-manager still fills legacy service-account token Secrets,
    // creates default service accounts and aggregates the admin/edit/view roles.
    for name in ["prof-lean", "prof-full"] {
        let client = client_for(&env.manager, name).await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "sim-workloads");
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("sim-app-token".into()),
                annotations: Some(
                    [(
                        "kubernetes.io/service-account.name".to_string(),
                        "sim-app".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let token: ByteString = support::eventually(
            DEADLINE,
            &format!("{name}: token controller to fill the secret"),
            || async {
                secrets
                    .get("sim-app-token")
                    .await
                    .ok()?
                    .data?
                    .remove("token")
            },
        )
        .await;
        assert!(
            token.0.len() > 100,
            "a signed JWT, got {} bytes",
            token.0.len()
        );
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "sim-workloads");
        support::eventually(
            DEADLINE,
            &format!("{name}: default service account"),
            || async { accounts.get("default").await.ok() },
        )
        .await;
    }

    // Both authorize with RBAC (lean without kwokctl's Node authorizer): a user with no binding
    // is refused, as Steve's and Rancher's impersonated requests must be.
    for name in ["prof-lean", "prof-full"] {
        let client = client_for(&env.manager, name).await;
        let as_nobody = hyper::http::Request::get("/api/v1/nodes")
            .header("Impersonate-User", "nobody")
            .body(Vec::new())
            .unwrap();
        let err = client.request_text(as_nobody).await.unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(status) if status.code == 403),
            "{name}: {err}"
        );
    }
    // The `kubernetes` Service's endpoints: full's own reconciler publishes them; lean runs
    // none (its real command line says so) and the agent wrote them at create, with the address
    // full's apiserver chose for itself and lean's own port.
    let published = |name: &'static str| {
        let manager = &env.manager;
        async move {
            let client = client_for(manager, name).await;
            let endpoints: Endpoints = Api::namespaced(client.clone(), "default")
                .get("kubernetes")
                .await
                .ok()?;
            let subset = endpoints.subsets?.into_iter().next()?;
            let from_endpoints = (
                subset.addresses?.into_iter().next()?.ip,
                subset.ports?.into_iter().next()?.port,
            );
            let slice: EndpointSlice = Api::namespaced(client, "default")
                .get("kubernetes")
                .await
                .ok()?;
            let from_slice = (
                slice
                    .endpoints?
                    .into_iter()
                    .next()?
                    .addresses
                    .into_iter()
                    .next()?,
                slice.ports?.into_iter().next()?.port?,
            );
            (from_endpoints == from_slice).then_some(from_endpoints)
        }
    };
    let full_published = support::eventually(
        DEADLINE,
        "full's reconciler to publish its endpoints",
        || published("prof-full"),
    )
    .await;
    assert_eq!(full_published.1, i32::from(full.ports.kube_apiserver));
    let host = scale_cluster_agent::kwok::endpoints::host_address().await;
    let reconciler_flags = |name: &str| -> Vec<String> {
        support::processes_mentioning(&env.manager.cluster_dir(name).join(""))
            .into_iter()
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|cmdline| {
                cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|args| args.first().is_some_and(|p| p.ends_with("/kube-apiserver")))
            .flatten()
            .filter(|a| a.starts_with("--endpoint-reconciler-type="))
            .collect()
    };
    assert!(reconciler_flags("prof-full").is_empty());
    if let Some(host) = host {
        let lean_published = published("prof-lean")
            .await
            .expect("lean's endpoints are written by the create itself");
        assert_eq!(lean_published.0, full_published.0, "the same host address");
        assert_eq!(lean_published.0, host.to_string());
        assert_eq!(lean_published.1, i32::from(lean.ports.kube_apiserver));
        assert_eq!(
            reconciler_flags("prof-lean"),
            ["--endpoint-reconciler-type=none"]
        );
    } else {
        // Endpoints may not name loopback, so a host without a default route keeps the
        // apiserver's own reconciler in lean too.
        eprintln!("no default route: checking that lean keeps the endpoint reconciler");
        assert!(reconciler_flags("prof-lean").is_empty());
    }

    // lean serves only the API groups Rancher and its UI use, as discovery shows.
    let served = |groups: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList| {
        groups
            .groups
            .into_iter()
            .flat_map(|g| g.versions.into_iter().map(|v| v.group_version))
            .collect::<BTreeSet<_>>()
    };
    let lean_groups = served(
        client_for(&env.manager, "prof-lean")
            .await
            .list_api_groups()
            .await
            .unwrap(),
    );
    for kept in [
        "apps/v1",
        "batch/v1",
        "rbac.authorization.k8s.io/v1",
        "autoscaling/v2",
    ] {
        assert!(
            lean_groups.contains(kept),
            "lean keeps {kept}: {lean_groups:?}"
        );
    }
    for dropped in [
        "storage.k8s.io/v1",
        "flowcontrol.apiserver.k8s.io/v1",
        "resource.k8s.io/v1",
        "events.k8s.io/v1",
    ] {
        assert!(!lean_groups.contains(dropped), "lean drops {dropped}");
    }
    let full_groups = served(
        client_for(&env.manager, "prof-full")
            .await
            .list_api_groups()
            .await
            .unwrap(),
    );
    assert!(full_groups.contains("storage.k8s.io/v1"), "{full_groups:?}");

    for info in [full, lean] {
        env.manager.delete(&info.name).await.unwrap();
        env.assert_nothing_left(&info.name, &info.ports.all()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_leaves_nothing() {
    let env = TestEnv::new(21300, 1);
    for bad in [
        "",
        "Upper",
        "under_score",
        "-lead",
        "trail-",
        "dots.in.name",
        &"x".repeat(59),
    ] {
        let err = env
            .manager
            .create(env.request(bad, ComponentProfile::Lean, 1))
            .await
            .unwrap_err();
        assert!(matches!(err, KwokError::InvalidName(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("invalid cluster name"), "{err}");
    }
    let mut bad_population = env.request("bad-pop", ComponentProfile::Lean, 1);
    bad_population.population.node.memory = "plenty".into();
    let err = env.manager.create(bad_population).await.unwrap_err();
    assert!(err.to_string().contains("node.memory"), "{err}");
    assert!(
        env.manager.list().await.unwrap().is_empty(),
        "rejected input creates no state"
    );

    let first = env
        .manager
        .create(env.request("only", ComponentProfile::Lean, 1))
        .await
        .unwrap();

    let err = env
        .manager
        .create(env.request("only", ComponentProfile::Lean, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KwokError::Store(StoreError::Duplicate(_))),
        "{err}"
    );
    let still = env.manager.get("only").await.unwrap();
    assert_eq!(
        still.health,
        Health::Ready,
        "a duplicate create leaves the original alone"
    );

    let err = env
        .manager
        .create(env.request("second", ComponentProfile::Lean, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KwokError::Store(StoreError::PortsExhausted { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("--port-blocks"),
        "the error says how to fix it: {err}"
    );
    assert!(!env.manager.cluster_dir("second").exists());
    assert!(env.manager.store().get("second").await.unwrap().is_none());

    env.manager.delete("only").await.unwrap();
    env.assert_nothing_left("only", &first.ports.all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_is_skipped() {
    let env = TestEnv::new(21400, 3);
    // Another process holds the second port (etcd client) of the first block.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", 21401)).unwrap();
    let info = env
        .manager
        .create(env.request("skips", ComponentProfile::Lean, 1))
        .await
        .unwrap();
    assert_eq!(
        info.ports.kube_apiserver, 21410,
        "the block with a busy port is skipped"
    );
    env.manager.delete("skips").await.unwrap();
    env.assert_nothing_left("skips", &info.ports.all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_toolchain_binary_fails_cleanly() {
    let mut toolchain = support::toolchain();
    toolchain.kwokctl = PathBuf::from("/nonexistent/kwokctl");
    let env = TestEnv::with_toolchain(21500, 2, toolchain);
    let err = env
        .manager
        .create(env.request("no-tools", ComponentProfile::Lean, 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/kwokctl"), "{err}");
    env.assert_nothing_left(
        "no-tools",
        &PortRange::new(21500, 10, 1)
            .unwrap()
            .block(0)
            .unwrap()
            .all(),
    )
    .await;
}

/// kwokctl starts every process, then fails: the manager must roll everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kwokctl_failure_mid_create_is_rolled_back() {
    let real = support::toolchain();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("kwokctl");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\"{}\" \"$@\" || exit $?\ncase \"$*\" in *'create cluster'*) echo 'injected failure after create' >&2; exit 3;; esac\n",
            real.kwokctl.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut toolchain = real.clone();
    toolchain.kwokctl = wrapper;
    let env = TestEnv::with_toolchain(21600, 2, toolchain);

    let err = env
        .manager
        .create(env.request("midway", ComponentProfile::Lean, 1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("injected failure after create"),
        "{err}"
    );
    let ports = PortRange::new(21600, 10, 1)
        .unwrap()
        .block(0)
        .unwrap()
        .all();
    env.assert_nothing_left("midway", &ports).await;
}

/// A CLI process killed with SIGKILL in the middle of `cluster create`: the next command rolls the
/// half-created cluster back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_create_is_recovered() {
    let env = TestEnv::new(21700, 2);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .args(["cluster", "create", "crashy"])
        .env("SCA_DATA_DIR", &env.settings.data_dir)
        .env("SCA_KWOK_WORKDIR", &env.settings.kwok_workdir)
        .env("SCA_PORT_BASE", "21700")
        .env("SCA_PORT_BLOCKS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once control-plane processes exist.
    let workdir = env.settings.kwok_workdir.clone();
    support::eventually(
        DEADLINE,
        "the child to start control-plane processes",
        || {
            let workdir = workdir.clone();
            async move {
                (!support::processes_mentioning(&workdir.join("clusters")).is_empty()).then_some(())
            }
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let record = env
        .manager
        .store()
        .get("crashy")
        .await
        .unwrap()
        .expect("row left by the crash");
    assert_eq!(record.phase, Phase::Creating);
    let cleaned = env.manager.recover().await.unwrap();
    assert_eq!(cleaned, vec!["crashy".to_string()]);
    env.assert_nothing_left("crashy", &record.ports.all()).await;
    // The name and ports are usable again.
    let info = env
        .manager
        .create(env.request("crashy", ComponentProfile::Lean, 1))
        .await
        .unwrap();
    assert_eq!(info.ports, record.ports);
    env.manager.delete("crashy").await.unwrap();
}
