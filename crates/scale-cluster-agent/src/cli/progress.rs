//! Following clusters on the terminal, one loop for every command that waits: `cluster create`
//! (through a running agent's API) and `up` (its own in-process agent). A bar counts active /
//! failed / total; every phase change is printed above it, or as plain lines when stderr is not a
//! terminal (the bar is hidden there and logs want the lines).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::agent::ClusterView;
use crate::store::AgentPhase;

/// How often the clusters are listed while following them.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// When following stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Every cluster is active, failed or gone (`cluster create`: report and return).
    Settled,
    /// Every cluster is active (`up`: failed clusters are retried by the agent, so keep waiting).
    AllActive,
}

/// A progress bar on stderr with the project's style, ticking on its own.
pub fn bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Lists the clusters with `list` every second until `until` holds for all of `names`, or
/// `deadline` passes; returns the last view of each cluster still there.
pub async fn follow<F, Fut>(
    mut list: F,
    names: &[String],
    until: Until,
    deadline: Option<Instant>,
) -> anyhow::Result<HashMap<String, ClusterView>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<ClusterView>>>,
{
    let bar = bar(names.len() as u64);
    let mut seen: HashMap<String, AgentPhase> = HashMap::new();
    loop {
        let mut current: HashMap<String, ClusterView> = list()
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        current.retain(|name, _| names.contains(name));
        let (mut active, mut failed) = (0, 0);
        for name in names {
            let Some(cluster) = current.get(name) else {
                continue;
            };
            if seen.get(name) != Some(&cluster.phase) {
                let line = phase_line(cluster);
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                seen.insert(name.clone(), cluster.phase);
            }
            match cluster.phase {
                AgentPhase::Active => active += 1,
                AgentPhase::Failed => failed += 1,
                _ => {}
            }
        }
        let gone = names.len() - current.len();
        bar.set_position(active as u64);
        bar.set_message(format!(
            "active {active} / failed {failed} / total {}",
            names.len()
        ));
        let done = match until {
            Until::Settled => active + failed + gone == names.len(),
            Until::AllActive => active == names.len(),
        };
        if done || deadline.is_some_and(|d| Instant::now() >= d) {
            bar.finish_and_clear();
            return Ok(current);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `sim-00001: active (Rancher c-abcde)`, `sim-00002: failed: <reason>`, `sim-00003: connecting`.
fn phase_line(cluster: &ClusterView) -> String {
    let detail = match (
        cluster.phase,
        &cluster.last_error,
        &cluster.rancher_cluster_id,
    ) {
        (AgentPhase::Failed, Some(err), _) => format!(": {err}"),
        (AgentPhase::Active, _, Some(id)) => format!(" (Rancher {id})"),
        _ => String::new(),
    };
    format!("{}: {}{detail}", cluster.name, cluster.phase)
}
