//! Binding pods that name no node, for profiles without kube-scheduler (`lean`).
//!
//! The agent's own population names its nodes at create, but objects others apply do not: the
//! `cattle-system/cattle-cluster-agent` Deployment Rancher applies through the main tunnel gets its
//! pod from the replicaset controller with no node, and without a scheduler it would stay Pending
//! (the Deployment 0/1 where a real cluster shows 1/1). This binds each such pod to one of the
//! cluster's Ready nodes through the `pods/binding` subresource, as kube-scheduler does; kwok then
//! runs it like any pod on its nodes. One watch per cluster (pods with an empty `spec.nodeName`),
//! which costs far less than a scheduler process per cluster.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

/// Binds every pod of the cluster behind `client` that names no node, for as long as it runs; the
/// watch re-establishes itself (with backoff) across apiserver restarts, so it only returns when
/// dropped. Errors binding one pod are logged and retried when the pod is next seen.
pub async fn bind_unscheduled_pods(client: Client, cluster: &str) {
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut unscheduled = watcher(pods.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        match unscheduled.try_next().await {
            Ok(Some(pod)) => {
                if let Err(error) = bind(&pods, &nodes, &pod).await {
                    tracing::warn!(cluster, pod = %pod.name_any(), %error, "could not bind pod");
                }
            }
            Ok(None) => return,
            Err(error) => tracing::debug!(cluster, %error, "pod watch interrupted; retrying"),
        }
    }
}

async fn bind(pods: &Api<Pod>, nodes: &Api<Node>, pod: &Pod) -> Result<(), kube::Error> {
    if pod.metadata.deletion_timestamp.is_some()
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some()
    {
        return Ok(());
    }
    let mut ready: Vec<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(is_ready)
        .map(|n| n.name_any())
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    ready.sort();
    // Spread by pod name: stable for one pod, even across pods.
    let mut hasher = DefaultHasher::new();
    pod.name_any().hash(&mut hasher);
    let node = &ready[(hasher.finish() % ready.len() as u64) as usize];
    let namespace = pod.namespace().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name_any()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..Default::default()
        },
    };
    let namespaced: Api<Pod> = Api::namespaced(pods.clone().into_client(), &namespace);
    namespaced
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await?;
    tracing::info!(pod = %pod.name_any(), namespace, node, "bound pod");
    Ok(())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
