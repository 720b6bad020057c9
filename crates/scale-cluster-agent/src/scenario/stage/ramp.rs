//! `ramp: {to, rate}`: creates the lowest-numbered missing `<prefix>-NNNNN` clusters until `to`
//! exist, or deletes the highest-numbered beyond `to`, at most `rate` per second. Creations go
//! through the agent like an API request, so its bounded bring-up applies; the stage does not wait
//! for them to go active (a `waitActive` stage does).

use std::collections::BTreeSet;

use tokio::time::Instant;

use super::{millis, StageContext, StageError};
use crate::kwok::names;
use crate::scenario::spec::Ramp;

pub async fn run(
    context: &mut StageContext<'_>,
    ramp: &Ramp,
) -> Result<serde_json::Value, StageError> {
    let started = Instant::now();
    let existing: Vec<String> = context
        .clusters()
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let prefix = &context.scenario.clusters.prefix;
    let wanted = ramp.to as usize;
    let (create, delete): (Vec<String>, Vec<String>) = if existing.len() < wanted {
        let have: BTreeSet<&str> = existing.iter().map(String::as_str).collect();
        let missing = (1..)
            .map(|i| names::numbered(prefix, i))
            .filter(|name| !have.contains(name.as_str()))
            .take(wanted - existing.len())
            .collect();
        (missing, Vec::new())
    } else {
        (
            Vec::new(),
            existing[wanted..].iter().rev().cloned().collect(),
        )
    };
    let nodes = context.scenario.clusters.population.nodes;
    let scale = nodes != context.agent.population().nodes;
    let step = ramp.rate.map(|rate| rate.time_for(1));
    for (i, name) in create.iter().chain(&delete).enumerate() {
        if let Some(step) = step {
            context.sleep_until(started + step * i as u32).await?;
        } else {
            context.check_stop()?;
        }
        if i < create.len() {
            context.agent.create(name, context.profile).await?;
            if scale {
                context.agent.scale(name, i64::from(nodes)).await?;
            }
        } else {
            context.agent.delete(name).await?;
        }
    }
    Ok(serde_json::json!({
        "created": create.len(),
        "deleted": delete.len(),
        "tookMs": millis(started.elapsed()),
    }))
}
