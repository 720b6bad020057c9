//! `nodeChurn: {clusters, nodes, every, for}`: every `every`, marks a seeded pick of the nodes of a
//! seeded pick of the clusters NotReady (the Ready condition, through the node status the
//! apiserver serves, and the node's Lease removed), as a node whose kubelet stopped reporting
//! looks; kwok-controller, which plays the kubelets, reports them Ready again and renews their
//! leases. Records how many were flapped and how soon they were Ready again.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;
use tokio::time::Instant;

use super::{millis, p50_max, Only, StageContext, StageError};
use crate::kwok::population::{FIELD_MANAGER, MANAGED_LABEL};
use crate::scenario::spec::NodeChurn;

/// How long the end of the stage waits for the last flapped nodes to be Ready again.
const RECOVER_WAIT: Duration = Duration::from_secs(120);
const RECOVER_POLL: Duration = Duration::from_millis(500);

pub async fn run(
    context: &mut StageContext<'_>,
    churn: &NodeChurn,
) -> Result<serde_json::Value, StageError> {
    let picked = context.pick_clusters(churn.clusters, Only::Any).await?;
    let mut clients = Vec::with_capacity(picked.len());
    for name in &picked {
        clients.push((name.clone(), context.agent.cluster_client(name).await?));
    }
    let started = Instant::now();
    let mut flaps = 0usize;
    let mut errors = 0usize;
    // Per flapped node: when it was marked NotReady (the latest time, if flapped twice).
    let mut marked: HashMap<(String, String), Instant> = HashMap::new();
    let mut recovered: Vec<u64> = Vec::new();
    let mut tick = 0u32;
    while started.elapsed() < churn.duration.0 {
        context.sleep_until(started + churn.every.0 * tick).await?;
        tick += 1;
        recovered.extend(ready_again(&clients, &mut marked).await);
        for (cluster, client) in &clients {
            context.check_stop()?;
            let nodes: Api<Node> = Api::all(client.clone());
            let listed = match nodes
                .list_metadata(&ListParams::default().labels(MANAGED_LABEL))
                .await
            {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(%cluster, %error, "nodeChurn: cannot list nodes");
                    errors += 1;
                    continue;
                }
            };
            let all: Vec<String> = listed
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            for node in context.pick(churn.nodes, &all) {
                match mark_not_ready(client, &node).await {
                    Ok(()) => {
                        flaps += 1;
                        marked.insert((cluster.clone(), node), Instant::now());
                    }
                    Err(error) => {
                        tracing::warn!(%cluster, %node, %error, "nodeChurn: cannot flap node");
                        errors += 1;
                    }
                }
            }
        }
    }
    let deadline = Instant::now() + RECOVER_WAIT;
    while !marked.is_empty() && Instant::now() < deadline {
        recovered.extend(ready_again(&clients, &mut marked).await);
        if !marked.is_empty() {
            context.sleep_until(Instant::now() + RECOVER_POLL).await?;
        }
    }
    Ok(serde_json::json!({
        "clusters": picked,
        "flaps": flaps,
        "errors": errors,
        "readyAgain": p50_max(recovered),
        "stillNotReady": marked.len(),
    }))
}

async fn mark_not_ready(client: &kube::Client, node: &str) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({
        "status": {"conditions": [{
            "type": "Ready",
            "status": "False",
            "reason": "NodeStatusUnknown",
            "message": "scale-cluster-agent scenario: node churn",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }]}
    });
    nodes
        .patch_status(
            node,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Strategic(patch),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    match leases.delete(node, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Removes from `marked` the nodes that are Ready again and returns how long each took.
async fn ready_again(
    clients: &[(String, kube::Client)],
    marked: &mut HashMap<(String, String), Instant>,
) -> Vec<u64> {
    let mut out = Vec::new();
    for (cluster, client) in clients {
        let nodes: Api<Node> = Api::all(client.clone());
        let keys: Vec<(String, String)> = marked
            .keys()
            .filter(|(c, _)| c == cluster)
            .cloned()
            .collect();
        for key in keys {
            let Ok(node) = nodes.get(&key.1).await else {
                continue;
            };
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                if let Some(at) = marked.remove(&key) {
                    out.push(millis(at.elapsed()));
                }
            }
        }
    }
    out
}
