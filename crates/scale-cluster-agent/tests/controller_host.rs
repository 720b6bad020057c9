//! The agent's controller host on real clusters: a cluster manager with a controller host
//! creates `lean` clusters without kube-controller-manager and kwok-controller processes, and the
//! one host process runs their controllers: service-account tokens, default service accounts, the
//! root CA ConfigMap, namespace deletion, Deployments and ReplicaSets, and kwok's nodes, leases
//! and pods. Port base 26500.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use scale_cluster_agent::controllers::{ControllerHost, ControllerHostConfig, LEAN_CONTROLLERS};
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::Store;
use scale_cluster_agent::toolchain::{self, Component, Progress};

const DEADLINE: Duration = Duration::from_secs(90);

struct Env {
    dir: tempfile::TempDir,
    manager: ClusterManager,
    host: Arc<ControllerHost>,
}

impl Env {
    async fn new(port_base: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = support::settings();
        settings.data_dir = dir.path().join("data");
        settings.kwok_workdir = dir.path().join("kwok");
        settings.ports = PortRange::new(port_base, 10, 4).unwrap();
        let binary = toolchain::install_component(
            &settings.toolchain_options(),
            Component::ControllerHost,
            Progress::Plain,
        )
        .await
        .expect("the controller host builds from its embedded sources")
        .path;
        let host = Arc::new(
            ControllerHost::start(ControllerHostConfig {
                binary,
                run_dir: dir.path().join("run"),
                clusters_dir: settings.kwok_workdir.join("clusters"),
                controllers: LEAN_CONTROLLERS.to_string(),
                log_file: dir.path().join("logs/controller-host.log"),
                backoff: remotedialer::Backoff {
                    base: Duration::from_millis(200),
                    cap: Duration::from_secs(2),
                },
            })
            .await
            .unwrap(),
        );
        let store = Store::open(&settings.state_db()).unwrap();
        let manager = ClusterManager::new(&settings.kwok(), support::toolchain(), store)
            .with_controller_host(host.clone());
        Self { dir, manager, host }
    }

    async fn create(&self, name: &str) -> Client {
        self.manager
            .create(CreateRequest {
                name: name.into(),
                profile: ComponentProfile::Lean,
                population: PopulationProfile {
                    nodes: 1,
                    ..PopulationProfile::default()
                },
            })
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        scale_cluster_agent::kwok::population::client(&self.manager.kubeconfig_path(name))
            .await
            .unwrap()
    }

    /// Live controller-host processes serving this test's socket, from /proc.
    fn host_processes(&self) -> Vec<u32> {
        support::processes_mentioning(&self.dir.path().join("run"))
            .into_iter()
            .filter(|pid| support::program_name(*pid).as_deref() == Some("controller-host"))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        support::kill_processes_mentioning(self.dir.path());
    }
}

/// The programs running for a cluster, from /proc.
fn programs(cluster_dir: &Path) -> BTreeSet<String> {
    support::cluster_processes(cluster_dir)
        .into_keys()
        .collect()
}

/// In a new namespace: the default ServiceAccount appears, a token Secret for it is filled and
/// `kube-root-ca.crt` is published (kcm's serviceaccount, serviceaccount-token and
/// root-ca-certificate-publisher controllers).
async fn assert_namespace_controllers(client: &Client, cluster: &str, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    support::eventually(
        DEADLINE,
        &format!("{cluster}/{ns}: default service account"),
        || async { accounts.get("default").await.ok() },
    )
    .await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    support::eventually(
        DEADLINE,
        &format!("{cluster}/{ns}: kube-root-ca.crt"),
        || async {
            configmaps
                .get("kube-root-ca.crt")
                .await
                .ok()?
                .data?
                .get("ca.crt")
                .filter(|ca| ca.contains("BEGIN CERTIFICATE"))
                .map(|_| ())
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "default-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token"
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let token = support::eventually(
        DEADLINE,
        &format!("{cluster}/{ns}: the token controller to fill the secret"),
        || async {
            secrets
                .get("default-token")
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
}

/// A Deployment becomes 1/1 with its pod Running on the fake node (kcm's deployment and
/// replicaset controllers, kwok's pod controller).
async fn assert_deployment_runs(client: &Client, cluster: &str, ns: &str) {
    let node = format!("{cluster}-node-0000");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                // Lean clusters have no scheduler; the agent's binder would bind it, the test
                // names the node itself.
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    support::eventually(DEADLINE, &format!("{cluster}: deployment 1/1"), || async {
        let status = deployments.get("web").await.ok()?.status?;
        (status.ready_replicas == Some(1) && status.available_replicas == Some(1)).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{cluster}: one pod");
    let pod = &listed.items[0];
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running"),
        "{cluster}: pod phase"
    );
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.as_str())
    );
}

/// The fake node is Ready and its Lease is renewed (kwok's node and lease controllers).
async fn assert_node_ready_and_lease_renewed(client: &Client, cluster: &str) {
    let node = format!("{cluster}-node-0000");
    let nodes: Api<Node> = Api::all(client.clone());
    support::eventually(DEADLINE, &format!("{cluster}: node Ready"), || async {
        let conditions = nodes.get(&node).await.ok()?.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = || async { leases.get(&node).await.ok()?.spec?.renew_time };
    let first = support::eventually(DEADLINE, &format!("{cluster}: node lease"), renewed).await;
    support::eventually(DEADLINE, &format!("{cluster}: lease renewed"), || async {
        renewed().await.filter(|t| *t != first)
    })
    .await;
}

/// Deleting a namespace with objects in it completes (kcm's namespace and garbage-collector
/// controllers).
async fn assert_namespace_deletion_completes(client: &Client, cluster: &str, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
    support::eventually(
        DEADLINE,
        &format!("{cluster}: namespace {ns} deleted"),
        || async {
            match namespaces.get(ns).await {
                Err(kube::Error::Api(status)) if status.code == 404 => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_runs_every_lean_clusters_controllers() {
    let env = Env::new(26500).await;
    let a = env.create("ch-a").await;
    let b = env.create("ch-b").await;

    // One host process; each cluster runs its kube-apiserver only (its objects are in the shared
    // etcd).
    support::eventually(Duration::from_secs(10), "one controller host", || async {
        (env.host_processes().len() == 1).then_some(())
    })
    .await;
    for name in ["ch-a", "ch-b"] {
        assert_eq!(
            programs(&env.manager.cluster_dir(name)),
            BTreeSet::from(["kube-apiserver".to_string()]),
            "{name} runs no kube-controller-manager and no kwok-controller"
        );
        let info = env.manager.get(name).await.unwrap();
        assert_eq!(
            info.health,
            scale_cluster_agent::kwok::Health::Ready,
            "{name}: health follows the components kwok.yaml lists"
        );
    }
    assert_eq!(env.host.registered().await, ["ch-a", "ch-b"]);

    for (client, name) in [(&a, "ch-a"), (&b, "ch-b")] {
        assert_namespace_controllers(client, name, "apps").await;
        assert_deployment_runs(client, name, "apps").await;
        assert_node_ready_and_lease_renewed(client, name).await;
        assert_namespace_deletion_completes(client, name, "apps").await;
    }

    // kill -9 of the host: restarted, both clusters registered again and reconciled.
    let before = env.host_processes();
    assert_eq!(before.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    support::eventually(DEADLINE, "the controller host restarted", || async {
        let now = env.host_processes();
        (now.len() == 1 && now != before).then_some(())
    })
    .await;
    for (client, name) in [(&a, "ch-a"), (&b, "ch-b")] {
        assert_namespace_controllers(client, name, "after-restart").await;
        assert_namespace_deletion_completes(client, name, "after-restart").await;
    }

    // Removing A leaves B working.
    env.manager.delete("ch-a").await.unwrap();
    assert_eq!(env.host.registered().await, ["ch-b"]);
    assert_namespace_controllers(&b, "ch-b", "after-removal").await;
    assert_node_ready_and_lease_renewed(&b, "ch-b").await;

    env.manager.delete("ch-b").await.unwrap();
    env.host.shutdown().await;
    assert_eq!(
        env.host_processes(),
        Vec::<u32>::new(),
        "the host is gone after shutdown"
    );
}
