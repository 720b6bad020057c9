//! `podChurn: {clusters, rate, for}`: at `rate` per second over a seeded pick of the clusters,
//! deletes one of the agent's pods at random and creates it again with the same name and spec,
//! as a pod restarted by its controller would come back; kwok-controller runs it again on its
//! node. Records the counts.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Api;
use rand::seq::IndexedRandom;
use tokio::time::Instant;

use super::{millis, Only, StageContext, StageError};
use crate::kwok::population::MANAGED_LABEL;
use crate::scenario::spec::PodChurn;

pub async fn run(
    context: &mut StageContext<'_>,
    churn: &PodChurn,
) -> Result<serde_json::Value, StageError> {
    let picked = context.pick_clusters(churn.clusters, Only::Any).await?;
    // Per cluster: a client and its pods (namespace, name), listed once: churned pods keep their
    // names.
    let mut targets = Vec::new();
    for name in &picked {
        let client = context.agent.cluster_client(name).await?;
        let pods: Api<Pod> = Api::all(client.clone());
        let listed = pods
            .list_metadata(&ListParams::default().labels(MANAGED_LABEL))
            .await
            .map_err(|e| StageError::Check(format!("cluster {name}: cannot list pods: {e}")))?;
        let pods: Vec<(String, String)> = listed
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.namespace?, p.metadata.name?)))
            .collect();
        if !pods.is_empty() {
            targets.push((name.clone(), client, pods));
        }
    }
    if targets.is_empty() {
        return Err(StageError::Check(
            "none of the picked clusters has pods of the agent to churn".into(),
        ));
    }
    let started = Instant::now();
    let step = churn.rate.time_for(1);
    let (mut recreated, mut errors) = (0usize, 0usize);
    // Every pod made again, to check once the churn is over.
    let mut made: Vec<(kube::Client, Pod)> = Vec::new();
    let mut i = 0u32;
    while step * i < churn.duration.0 {
        context.sleep_until(started + step * i).await?;
        i += 1;
        let Some((cluster, client, pods)) = targets.choose(context.rng) else {
            break;
        };
        let Some((namespace, pod)) = pods.choose(context.rng) else {
            continue;
        };
        match restart(client, namespace, pod).await {
            Ok(again) => {
                recreated += 1;
                made.push((client.clone(), again));
            }
            Err(error) => {
                tracing::warn!(%cluster, %namespace, %pod, %error, "podChurn: cannot restart pod");
                errors += 1;
            }
        }
    }
    // kwok deletes a terminating pod by name, with no uid precondition, after its 1 s `pod-delete`
    // stage: a delete it queued for the old pod can land on the new one. Such pods are made again.
    tokio::time::sleep(LATE_DELETE_WAIT).await;
    let mut made_again = 0usize;
    for (client, pod) in &made {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        match pods.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => match create_when_gone(&pods, pod).await {
                Ok(()) => made_again += 1,
                Err(error) => {
                    tracing::warn!(%namespace, pod = %name, %error, "podChurn: cannot make a pod again");
                    errors += 1;
                }
            },
            Err(error) => {
                tracing::warn!(%namespace, pod = %name, %error, "podChurn: cannot check a pod");
                errors += 1;
            }
        }
    }
    Ok(serde_json::json!({
        "clusters": picked,
        "recreated": recreated,
        "madeAgainAfterLateDelete": made_again,
        "errors": errors,
        "tookMs": millis(started.elapsed()),
    }))
}

/// How long after the churn its pods are checked: kwok's `pod-delete` stage delay (1 s) and a
/// margin.
const LATE_DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a churned pod's old object may take to go before its re-creation counts as an error.
const RECREATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Deletes a pod at once (no grace: no kubelet would confirm) and creates it again from what it
/// was.
async fn restart(client: &kube::Client, namespace: &str, name: &str) -> Result<Pod, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let old = pods.get(name).await?;
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await?;
    let again = Pod {
        metadata: ObjectMeta {
            name: old.metadata.name,
            namespace: old.metadata.namespace,
            labels: old.metadata.labels,
            annotations: old.metadata.annotations,
            ..ObjectMeta::default()
        },
        spec: old.spec,
        status: None,
    };
    create_when_gone(&pods, &again).await?;
    Ok(again)
}

/// Creates `pod`, waiting up to [`RECREATE_WAIT`] while an old object of its name is still there.
async fn create_when_gone(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    // The old object goes when kwok, playing the kubelet, deletes it: its `pod-delete` stage waits
    // 1 s plus jitter, more when the controllers are busy. A conflict means it is still there.
    let deadline = tokio::time::Instant::now() + RECREATE_WAIT;
    loop {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status))
                if status.code == 409 && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error),
        }
    }
}
