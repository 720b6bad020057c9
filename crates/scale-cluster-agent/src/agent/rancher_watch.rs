//! The Rancher watcher: one cluster list per poll for the whole agent (not one request per
//! cluster), which records each cluster's Rancher state for the API view and notices clusters
//! deleted in Rancher.
//!
//! One missing answer is not a deletion: a wrong URL behind a proxy, or a token that lost rights,
//! also answers with empty lists and 404s, and believing them would wipe every simulated cluster.
//! A cluster counts as deleted in Rancher only when Rancher says it is being removed, or when it
//! has been absent from every successful list for at least `rancher_gone_after` and a direct GET
//! then answers 404. Only then is its local deletion requested; and deleting in Rancher is still
//! refused for any cluster that does not carry this agent's label.

use std::collections::HashMap;

use tokio::time::{Instant, MissedTickBehavior};

use super::Agent;
use crate::rancher::RancherCluster;

pub(super) async fn run(agent: Agent) {
    let inner = &agent.inner;
    let mut missing_since: HashMap<String, Instant> = HashMap::new();
    let mut ticks = tokio::time::interval(inner.config.rancher_poll);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = poll(&agent, &mut missing_since) => {}
            _ = inner.shutdown.cancelled() => return,
        }
    }
}

async fn poll(agent: &Agent, missing_since: &mut HashMap<String, Instant>) {
    let inner = &agent.inner;
    let instance = inner.instance_id.as_str();
    let listed = match inner.rancher.list_clusters().await {
        Ok(listed) => listed,
        Err(error) => {
            // Nothing is concluded from a failed list; the tunnels keep retrying on their own.
            tracing::warn!(%error, "listing clusters in Rancher");
            return;
        }
    };
    let ours: HashMap<String, RancherCluster> = listed
        .into_iter()
        .filter(|c| c.owner() == Some(instance))
        .map(|c| (c.id.clone(), c))
        .collect();
    let records = match inner.store.agent_clusters().await {
        Ok(records) => records,
        Err(error) => {
            tracing::error!(%error, "reading agent state");
            return;
        }
    };
    missing_since.retain(|name, _| records.iter().any(|r| &r.name == name));
    for record in records {
        let name = record.name.as_str();
        let Some(id) = record.rancher_cluster_id.as_deref() else {
            continue;
        };
        if record.deletion_requested() {
            continue;
        }
        let reason = match ours.get(id) {
            Some(cluster) if cluster.removing => Some(format!(
                "deleted in Rancher (cluster {id} is being removed)"
            )),
            Some(cluster) => {
                agent.remember_state(name, &cluster.state);
                missing_since.remove(name);
                None
            }
            None => confirm_gone(agent, name, id, missing_since).await,
        };
        if let Some(reason) = reason {
            tracing::info!(cluster = name, %reason, "removing it here too");
            missing_since.remove(name);
            match inner.store.request_deletion(name, Some(reason)).await {
                Ok(()) => agent.cancel_worker(name),
                Err(error) => tracing::error!(cluster = name, %error, "requesting deletion"),
            }
        }
    }
}

/// A cluster absent from the list: gone once it has been absent for `rancher_gone_after` and
/// Rancher answers 404 for it by id.
async fn confirm_gone(
    agent: &Agent,
    name: &str,
    id: &str,
    missing_since: &mut HashMap<String, Instant>,
) -> Option<String> {
    let gone_after = agent.inner.config.rancher_gone_after;
    let since = *missing_since
        .entry(name.to_string())
        .or_insert_with(Instant::now);
    if since.elapsed() < gone_after {
        return None;
    }
    match agent.inner.rancher.cluster(id).await {
        Ok(None) => Some(format!(
            "deleted in Rancher (cluster {id} absent from its cluster list for {}s, and 404 by id)",
            since.elapsed().as_secs()
        )),
        Ok(Some(_)) => {
            // Listed by id but not in the list: not gone, whatever the list said.
            missing_since.remove(name);
            None
        }
        Err(error) => {
            tracing::debug!(cluster = name, %error, "confirming a deletion in Rancher");
            None
        }
    }
}
