//! Following clusters on the terminal, one loop for every command that waits: `cluster create`,
//! `start`, `stop` and `scale` (through a running agent's API) and `up` (its own in-process agent).
//! A bar counts the clusters that reached the goal / failed / total; every phase change is printed
//! above it, or as plain lines when stderr is not a terminal (the bar is hidden there and logs
//! want the lines).

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
    /// Every cluster is active (`up`, `cluster start`: failed clusters are retried by the agent,
    /// so keep waiting).
    AllActive,
    /// Every cluster is stopped or gone (`cluster stop`; a failed stop is retried by the agent).
    Stopped,
    /// Every cluster is active with the node count asked for, or gone (`cluster scale`).
    Scaled,
}

impl Until {
    /// What the clusters are waited for, for messages.
    pub fn goal(self) -> &'static str {
        match self {
            Until::Settled | Until::AllActive => "active",
            Until::Stopped => "stopped",
            Until::Scaled => "scaled",
        }
    }

    /// Whether `cluster` reached the goal.
    pub fn reached(self, cluster: &ClusterView) -> bool {
        match self {
            Until::Settled | Until::AllActive => cluster.phase == AgentPhase::Active,
            Until::Stopped => cluster.phase == AgentPhase::Stopped,
            Until::Scaled => {
                cluster.phase == AgentPhase::Active && cluster.nodes == Some(cluster.desired_nodes)
            }
        }
    }

    /// Whether following `cluster` is over: the goal reached, or (creation only) failed.
    fn settled(self, cluster: &ClusterView) -> bool {
        self.reached(cluster) || (self == Until::Settled && cluster.phase == AgentPhase::Failed)
    }
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
    // What was last printed per cluster: its phase, and its node count when that is the goal.
    let mut seen: HashMap<String, (AgentPhase, Option<u32>)> = HashMap::new();
    loop {
        let mut current: HashMap<String, ClusterView> = list()
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        current.retain(|name, _| names.contains(name));
        let (mut reached, mut failed, mut settled) = (0, 0, 0);
        for name in names {
            let Some(cluster) = current.get(name) else {
                continue;
            };
            let nodes = (until == Until::Scaled).then_some(cluster.nodes).flatten();
            if seen.get(name) != Some(&(cluster.phase, nodes)) {
                let line = phase_line(cluster, until);
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                seen.insert(name.clone(), (cluster.phase, nodes));
            }
            reached += usize::from(until.reached(cluster));
            failed += usize::from(cluster.phase == AgentPhase::Failed);
            settled += usize::from(until.settled(cluster));
        }
        let gone = names.len() - current.len();
        bar.set_position(reached as u64);
        bar.set_message(format!(
            "{} {reached} / failed {failed} / total {}",
            until.goal(),
            names.len()
        ));
        let done = match until {
            Until::AllActive => reached == names.len(),
            Until::Settled | Until::Stopped | Until::Scaled => settled + gone == names.len(),
        };
        if done || deadline.is_some_and(|d| Instant::now() >= d) {
            bar.finish_and_clear();
            return Ok(current);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `sim-00001: active (Rancher c-abcde)`, `sim-00002: failed: <reason>`, `sim-00003: connecting`,
/// and while scaling `sim-00001: active (nodes 2, scaling to 3)`.
fn phase_line(cluster: &ClusterView, until: Until) -> String {
    let scaling = until == Until::Scaled && cluster.nodes != Some(cluster.desired_nodes);
    let detail = match (
        cluster.phase,
        &cluster.last_error,
        &cluster.rancher_cluster_id,
    ) {
        (AgentPhase::Failed, Some(err), _) => format!(": {err}"),
        _ if scaling => format!(
            " (nodes {}, scaling to {})",
            cluster
                .nodes
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
            cluster.desired_nodes
        ),
        (AgentPhase::Active, _, Some(id)) => format!(" (Rancher {id})"),
        _ => String::new(),
    };
    format!("{}: {}{detail}", cluster.name, cluster.phase)
}
