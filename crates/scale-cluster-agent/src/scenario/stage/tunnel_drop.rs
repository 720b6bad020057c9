//! `tunnelDrop: {clusters, spread}`: cuts both tunnels of a seeded pick of the clusters that are
//! up, as a dead network path would (no close frame), spread evenly over `spread` (`0s`: all at
//! once, a reconnect storm). Then watches them reconnect by themselves and records when: the
//! time from each cut to both tunnels being back, the spread of the reconnects and the most of
//! them in any one second, which show whether the clients' jitter spread a storm out, and the
//! recovery: from the first cut until every scenario cluster is up again as Rancher sees it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{max_in_one_second, millis, p50_max, Only, StageContext, StageError};
use crate::scenario::spec::TunnelDrop;

/// How long the stage watches for reconnects before it reports the clusters still down (a
/// following `waitActive` decides whether that is a failure).
const RECONNECT_WATCH: Duration = Duration::from_secs(300);
/// Tunnel states are read from memory, so they can be watched closely.
const WATCH_EVERY: Duration = Duration::from_millis(20);

pub async fn run(
    context: &mut StageContext<'_>,
    drop: &TunnelDrop,
) -> Result<serde_json::Value, StageError> {
    let picked = context.pick_clusters(drop.clusters, Only::Up).await?;
    let started = Instant::now();
    let step = if picked.len() > 1 {
        drop.spread.0 / (picked.len() as u32 - 1)
    } else {
        Duration::ZERO
    };
    // Per dropped cluster: when it was cut and the session count it had.
    let mut cut: HashMap<String, (Instant, u64)> = HashMap::new();
    for (i, name) in picked.iter().enumerate() {
        context.sleep_until(started + step * i as u32).await?;
        let Some(sessions) = context.agent.tunnel_sessions(name) else {
            continue; // went down by itself meanwhile: nothing to cut
        };
        context.agent.drop_tunnels(name)?;
        cut.insert(name.clone(), (Instant::now(), sessions));
    }
    let mut back: HashMap<String, Instant> = HashMap::new();
    let deadline = Instant::now() + RECONNECT_WATCH;
    while back.len() < cut.len() && Instant::now() < deadline {
        for (name, (_, before)) in &cut {
            if !back.contains_key(name)
                && context
                    .agent
                    .tunnel_sessions(name)
                    .is_some_and(|now| now >= before + 2)
            {
                back.insert(name.clone(), Instant::now());
            }
        }
        context.sleep_until(Instant::now() + WATCH_EVERY).await?;
    }
    let reconnect: Vec<u64> = back
        .iter()
        .map(|(name, at)| millis(at.duration_since(cut[name].0)))
        .collect();
    let spread = match (back.values().min(), back.values().max()) {
        (Some(first), Some(last)) => millis(last.duration_since(*first)),
        _ => 0,
    };
    let since_start: Vec<u64> = back
        .values()
        .map(|at| millis(at.duration_since(started)))
        .collect();
    // Only once every cut cluster reconnected: until then the clusters are not back by
    // definition (and a list would still show some as connected before they noticed the cut).
    let recovered = if back.len() == cut.len() && !cut.is_empty() {
        context
            .all_up_by(deadline)
            .await?
            .map(|at| millis(at.duration_since(started)))
    } else {
        None
    };
    Ok(serde_json::json!({
        "dropped": cut.len(),
        "reconnected": back.len(),
        "notReconnected": cut.len() - back.len(),
        "reconnect": p50_max(reconnect),
        "reconnectSpreadMs": spread,
        "reconnectsMaxIn1s": max_in_one_second(&since_start),
        "recoveredMs": recovered,
    }))
}
