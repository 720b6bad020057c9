//! `scaleNodes: {clusters, to}`: sets the node count of a seeded pick of the clusters, through the
//! agent's desired state, and waits (bounded) until the agent has applied it to each.

use std::time::Duration;

use tokio::time::Instant;

use super::{millis, Only, StageContext, StageError, OBSERVE};
use crate::scenario::spec::ScaleNodes;

/// Applying a scale creates or deletes Node objects (and their pods) in a real apiserver.
const APPLY_WAIT: Duration = Duration::from_secs(600);

pub async fn run(
    context: &mut StageContext<'_>,
    scale: &ScaleNodes,
) -> Result<serde_json::Value, StageError> {
    let started = Instant::now();
    let picked = context.pick_clusters(scale.clusters, Only::Any).await?;
    for name in &picked {
        context.check_stop()?;
        context.agent.scale(name, i64::from(scale.to)).await?;
    }
    let deadline = started + APPLY_WAIT;
    loop {
        let mut pending = Vec::new();
        for name in &picked {
            if context.agent.get(name).await?.nodes != Some(scale.to) {
                pending.push(name.as_str());
            }
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(StageError::Check(format!(
                "after {}s, {} clusters did not have {} nodes yet: {}",
                APPLY_WAIT.as_secs(),
                pending.len(),
                scale.to,
                pending.join(", ")
            )));
        }
        context.sleep_until(Instant::now() + OBSERVE).await?;
    }
    Ok(serde_json::json!({
        "scaled": picked,
        "to": scale.to,
        "tookMs": millis(started.elapsed()),
    }))
}
