//! `componentKill: {component, clusters}`: SIGKILLs one control-plane process of a seeded pick of
//! the running clusters, then watches the agent's self-healing bring each back (every process
//! running, apiserver ready) and records how long that took, and the recovery: from the first
//! kill until every scenario cluster is up again as Rancher sees it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{millis, p50_max, Only, StageContext, StageError, OBSERVE};
use crate::scenario::spec::ComponentKill;

/// Healing a killed apiserver means restarting it and waiting for `/readyz`.
const HEAL_WAIT: Duration = Duration::from_secs(300);

pub async fn run(
    context: &mut StageContext<'_>,
    kill: &ComponentKill,
) -> Result<serde_json::Value, StageError> {
    let picked = context.pick_clusters(kill.clusters, Only::Up).await?;
    let component = kill.component.as_str();
    let started = Instant::now();
    let mut killed: HashMap<String, (u32, Instant)> = HashMap::new();
    for name in &picked {
        context.check_stop()?;
        let pid = context.agent.kill_component(name, component).await?;
        killed.insert(name.clone(), (pid, Instant::now()));
    }
    let mut healed: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + HEAL_WAIT;
    while healed.len() < killed.len() {
        for (name, (_, at)) in &killed {
            if !healed.contains_key(name) && context.agent.cluster_healthy(name).await? {
                healed.insert(name.clone(), millis(at.elapsed()));
            }
        }
        if healed.len() == killed.len() {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&str> = killed
                .keys()
                .filter(|name| !healed.contains_key(*name))
                .map(String::as_str)
                .collect();
            return Err(StageError::Check(format!(
                "{component} was not healed within {}s in: {}",
                HEAL_WAIT.as_secs(),
                missing.join(", ")
            )));
        }
        context.sleep_until(Instant::now() + OBSERVE).await?;
    }
    // After every kill healed: a list taken before the agent noticed a kill would show all up.
    let recovered = if killed.is_empty() {
        None
    } else {
        context
            .all_up_by(deadline)
            .await?
            .map(|at| millis(at.duration_since(started)))
    };
    let mut pids: Vec<_> = killed
        .iter()
        .map(|(name, (pid, _))| serde_json::json!({"cluster": name, "pid": pid}))
        .collect();
    pids.sort_by_key(|v| v["cluster"].as_str().map(str::to_string));
    Ok(serde_json::json!({
        "component": component,
        "killed": pids,
        "healed": p50_max(healed.into_values().collect()),
        "recoveredMs": recovered,
    }))
}
