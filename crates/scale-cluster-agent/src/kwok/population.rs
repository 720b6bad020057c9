//! Resource population through kube-rs: namespaces, service accounts, fake nodes with realistic
//! capacity, labels and node info, and pods bound to those nodes, from a per-cluster profile (YAML).
//! kwok-controller then plays kubelet: it marks the nodes Ready and the pods Running.
//!
//! Everything is applied server-side under one field manager, so populating again, or scaling to the
//! same size, is a no-op; scaling down deletes the highest-numbered nodes and their pods.

use std::collections::BTreeMap;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeStatus, NodeSystemInfo, Pod, PodSpec, ResourceRequirements,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use crate::toolchain::KUBE_VERSION;

/// Field manager for every object the agent applies.
pub const FIELD_MANAGER: &str = "scale-cluster-agent";
/// Label on every object the agent creates.
pub const MANAGED_LABEL: &str = "scale-cluster-agent.io/managed";
/// Label on a pod naming the node it was created for.
pub const NODE_LABEL: &str = "scale-cluster-agent.io/node";
/// How many API calls run at once while populating.
const CONCURRENCY: usize = 16;

/// What to put in a cluster. Every field has a default, so `{}` is a valid profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PopulationProfile {
    /// Number of fake nodes.
    pub nodes: u32,
    /// Pods created per node (spread over `namespaces`).
    pub pods_per_node: u32,
    /// Namespaces to create; pods go into them round-robin.
    pub namespaces: Vec<String>,
    /// Service accounts created in each namespace; pods run as the first one.
    pub service_accounts: Vec<String>,
    pub node: NodeTemplate,
    pub pod: PodTemplate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeTemplate {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub ephemeral_storage: String,
    /// Extra labels on every node.
    pub labels: BTreeMap<String, String>,
    pub kubelet_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodTemplate {
    pub image: String,
    pub cpu: String,
    pub memory: String,
    /// Extra labels on every pod.
    pub labels: BTreeMap<String, String>,
}

impl Default for PopulationProfile {
    fn default() -> Self {
        Self {
            nodes: 2,
            pods_per_node: 3,
            namespaces: vec!["sim-workloads".into()],
            service_accounts: vec!["sim-app".into()],
            node: NodeTemplate::default(),
            pod: PodTemplate::default(),
        }
    }
}

impl Default for NodeTemplate {
    fn default() -> Self {
        Self {
            cpu: "8".into(),
            memory: "32Gi".into(),
            pods: "110".into(),
            ephemeral_storage: "100Gi".into(),
            labels: BTreeMap::new(),
            kubelet_version: KUBE_VERSION.into(),
        }
    }
}

impl Default for PodTemplate {
    fn default() -> Self {
        Self {
            image: "registry.k8s.io/pause:3.10".into(),
            cpu: "100m".into(),
            memory: "128Mi".into(),
            labels: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PopulationError {
    #[error("cannot read population profile {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid population profile {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("cannot load kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("Kubernetes API error while {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

impl PopulationProfile {
    /// Loads a YAML profile file; unknown keys are an error so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Self, PopulationError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PopulationError::Read {
            path: shown.clone(),
            source,
        })?;
        let profile: Self = serde_yaml::from_str(&text).map_err(|e| PopulationError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        profile
            .validate()
            .map_err(|reason| PopulationError::Invalid {
                path: shown,
                reason,
            })?;
        Ok(profile)
    }

    /// Checks names and quantities before anything is sent to an apiserver.
    pub fn validate(&self) -> Result<(), String> {
        for ns in self.namespaces.iter().chain(&self.service_accounts) {
            crate::kwok::names::validate(ns)
                .map_err(|e| e.to_string().replace("cluster name", "name"))?;
        }
        if self.pods_per_node > 0
            && (self.namespaces.is_empty() || self.service_accounts.is_empty())
        {
            return Err("pods need at least one namespace and one service account".into());
        }
        for (what, q) in [
            ("node.cpu", &self.node.cpu),
            ("node.memory", &self.node.memory),
            ("node.pods", &self.node.pods),
            ("node.ephemeralStorage", &self.node.ephemeral_storage),
            ("pod.cpu", &self.pod.cpu),
            ("pod.memory", &self.pod.memory),
        ] {
            if !is_quantity(q) {
                return Err(format!(
                    "{what} = {q:?} is not a Kubernetes quantity (e.g. 8, 500m, 32Gi)"
                ));
            }
        }
        Ok(())
    }
}

/// A loose check of the Kubernetes quantity syntax: a decimal number and an optional known suffix.
fn is_quantity(q: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    SUFFIXES.iter().any(|s| {
        q.strip_suffix(s).is_some_and(|num| {
            !num.is_empty()
                && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                && num.bytes().filter(|b| *b == b'.').count() <= 1
        })
    })
}

/// Name of the `index`-th fake node of `cluster`; unique across clusters, so Rancher (and a test)
/// can tell every cluster's nodes apart.
pub fn node_name(cluster: &str, index: u32) -> String {
    format!("{cluster}-node-{index:04}")
}

/// A kube-rs client for the cluster behind `kubeconfig` (kwokctl's admin kubeconfig).
pub async fn client(kubeconfig: &Path) -> Result<Client, PopulationError> {
    let fail = |reason: String| PopulationError::Kubeconfig {
        path: kubeconfig.display().to_string(),
        reason,
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| fail(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> PopulationError {
    let action = action.into();
    move |source| PopulationError::Api { action, source }
}

fn managed_labels(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    labels.insert(MANAGED_LABEL.into(), "true".into());
    labels
}

/// Applies namespaces, service accounts, `profile.nodes` nodes and their pods; removes managed nodes
/// (and their pods) beyond that count.
pub async fn apply(
    client: &Client,
    cluster: &str,
    profile: &PopulationProfile,
) -> Result<(), PopulationError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in &profile.namespaces {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                labels: Some(managed_labels(&BTreeMap::new())),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .patch(ns, &params, &Patch::Apply(&obj))
            .await
            .map_err(api_err(format!("applying namespace {ns}")))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        for sa in &profile.service_accounts {
            let obj = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(sa.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(managed_labels(&BTreeMap::new())),
                    ..Default::default()
                },
                ..Default::default()
            };
            accounts
                .patch(sa, &params, &Patch::Apply(&obj))
                .await
                .map_err(api_err(format!("applying service account {ns}/{sa}")))?;
        }
    }
    scale_nodes(client, cluster, profile).await
}

/// Brings the managed node count (and each node's pods) to `profile.nodes`.
pub async fn scale_nodes(
    client: &Client,
    cluster: &str,
    profile: &PopulationProfile,
) -> Result<(), PopulationError> {
    futures::stream::iter(0..profile.nodes)
        .map(|i| apply_node(client, cluster, profile, i))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;

    let nodes: Api<Node> = Api::all(client.clone());
    let managed = nodes
        .list(&ListParams::default().labels(&format!("{MANAGED_LABEL}=true")))
        .await
        .map_err(api_err("listing nodes"))?;
    let wanted: Vec<String> = (0..profile.nodes).map(|i| node_name(cluster, i)).collect();
    let surplus: Vec<String> = managed
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .filter(|n| !wanted.contains(n))
        .collect();
    futures::stream::iter(surplus)
        .map(|name| remove_node(client, name))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await
}

async fn apply_node(
    client: &Client,
    cluster: &str,
    profile: &PopulationProfile,
    index: u32,
) -> Result<(), PopulationError> {
    let name = node_name(cluster, index);
    let t = &profile.node;
    let mut labels = managed_labels(&t.labels);
    for (k, v) in [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("node-role.kubernetes.io/worker", "true"),
        ("type", "kwok"),
    ] {
        labels.entry(k.into()).or_insert_with(|| v.into());
    }
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", &t.cpu),
        ("memory", &t.memory),
        ("pods", &t.pods),
        ("ephemeral-storage", &t.ephemeral_storage),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
    .collect();
    let status = NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: "Simulated by scale-cluster-agent (KWOK)".into(),
            kernel_version: "6.1.0-kwok".into(),
            container_runtime_version: "kwok://v0.8.0".into(),
            kubelet_version: t.kubelet_version.clone(),
            kube_proxy_version: t.kubelet_version.clone(),
            // Not all digits: kwok's stage templates would read such an ID back as a number.
            machine_id: format!("sim{index:029x}"),
            system_uuid: format!("00000000-0000-0000-0000-{index:012x}"),
            boot_id: format!("boot{index:028x}"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                ("kwok.x-k8s.io/node".to_string(), "fake".to_string()),
                ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
            ])),
            ..Default::default()
        },
        status: Some(status.clone()),
        ..Default::default()
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nodes
        .patch(&name, &params, &Patch::Apply(&node))
        .await
        .map_err(api_err(format!("applying node {name}")))?;
    // Status is a subresource: the main apply above ignores it.
    let status_patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "capacity": status.capacity,
            "allocatable": status.allocatable,
            "nodeInfo": status.node_info,
        }
    });
    nodes
        .patch_status(&name, &params, &Patch::Apply(&status_patch))
        .await
        .map_err(api_err(format!("applying status of node {name}")))?;

    futures::stream::iter(0..profile.pods_per_node)
        .map(|j| apply_pod(client, profile, &name, index, j))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await
}

async fn apply_pod(
    client: &Client,
    profile: &PopulationProfile,
    node: &str,
    node_index: u32,
    pod_index: u32,
) -> Result<(), PopulationError> {
    let ns = &profile.namespaces[(pod_index as usize) % profile.namespaces.len()];
    let name = format!("sim-{node_index:04}-{pod_index:03}");
    let t = &profile.pod;
    let mut labels = managed_labels(&t.labels);
    labels.insert(NODE_LABEL.into(), node.into());
    labels.insert("app".into(), "simulated".into());
    let requests: BTreeMap<String, Quantity> = [("cpu", &t.cpu), ("memory", &t.memory)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
        .collect();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            // Bound explicitly: the lean profile runs no scheduler.
            node_name: Some(node.into()),
            service_account_name: profile.service_accounts.first().cloned(),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "app".into(),
                image: Some(t.image.clone()),
                resources: Some(ResourceRequirements {
                    requests: Some(requests.clone()),
                    limits: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&pod),
    )
    .await
    .map_err(api_err(format!("applying pod {ns}/{name}")))?;
    Ok(())
}

async fn remove_node(client: &Client, name: String) -> Result<(), PopulationError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().labels(&format!("{NODE_LABEL}={name}")))
        .await
        .map_err(api_err(format!("listing pods of node {name}")))?;
    // Fake pods have no kubelet to confirm termination: delete them at once.
    let now = DeleteParams::default().grace_period(0);
    for pod in on_node.items {
        let (Some(pod_name), Some(ns)) = (pod.metadata.name, pod.metadata.namespace) else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        ignore_not_found(api.delete(&pod_name, &now).await.map(drop))
            .map_err(api_err(format!("deleting pod {ns}/{pod_name}")))?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    ignore_not_found(
        nodes
            .delete(&name, &DeleteParams::default())
            .await
            .map(drop),
    )
    .map_err(api_err(format!("deleting node {name}")))
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_yaml_is_the_default_profile() {
        let p: PopulationProfile = serde_yaml::from_str("{}").unwrap();
        assert_eq!(p, PopulationProfile::default());
        assert!(p.validate().is_ok());
    }

    #[test]
    fn parses_a_full_profile() {
        let p: PopulationProfile = serde_yaml::from_str(
            "nodes: 5\npodsPerNode: 10\nnamespaces: [a, b]\nserviceAccounts: [x]\n\
             node: {cpu: '16', memory: 64Gi, labels: {zone: z1}}\npod: {cpu: 250m}\n",
        )
        .unwrap();
        assert_eq!(p.nodes, 5);
        assert_eq!(p.node.cpu, "16");
        assert_eq!(p.node.pods, "110", "unset fields keep their default");
        assert_eq!(p.node.labels["zone"], "z1");
        assert!(p.validate().is_ok());
    }

    #[test]
    fn rejects_typos_bad_names_and_bad_quantities() {
        assert!(serde_yaml::from_str::<PopulationProfile>("node: 3").is_err());
        assert!(serde_yaml::from_str::<PopulationProfile>("podsPerNod: 3").is_err());
        let p = PopulationProfile {
            namespaces: vec!["Bad_NS".into()],
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let mut p = PopulationProfile::default();
        p.node.memory = "lots".into();
        assert!(p.validate().unwrap_err().contains("node.memory"));
        let mut p = PopulationProfile::default();
        p.namespaces.clear();
        assert!(p.validate().is_err());
    }

    #[test]
    fn quantities() {
        for ok in ["8", "500m", "32Gi", "1.5", "110"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1..5", "-1", "8 Gi", "1x"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
