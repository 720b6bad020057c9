//! What recording and reading the event log costs (docs/observability.md):
//!
//! ```text
//! cargo bench -p scale-cluster-agent --bench observe -- [CLUSTERS]
//! ```
//!
//! Brings CLUSTERS (default 1000) store rows through the four bring-up phase writes (each writes
//! its event in the same transaction) and compares them with a plain one-row update; then times
//! an [`Observer`] folding all those events (the first scrape after a burst) and a scrape with
//! nothing new (the steady state: one query on the primary key). Prints a Markdown table.

use std::time::{Duration, Instant};

use scale_cluster_agent::observe::Observer;
use scale_cluster_agent::store::{AgentPhase, Store};

fn per(total: Duration, n: usize) -> String {
    format!("{:.1} µs", total.as_secs_f64() * 1e6 / n as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let clusters: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("state.db"))?;
    let observer = Observer::start(store.clone()).await?;
    let names: Vec<String> = (0..clusters).map(|i| format!("c{i:05}")).collect();
    store
        .insert_agent_clusters(names.clone(), "lean".into())
        .await?;

    let started = Instant::now();
    for name in &names {
        store.set_observed_nodes(name, 1).await?;
    }
    let plain = started.elapsed();

    let phases = [
        AgentPhase::Provisioning,
        AgentPhase::Registering,
        AgentPhase::Connecting,
        AgentPhase::Active,
    ];
    let started = Instant::now();
    for phase in phases {
        for name in &names {
            store.set_agent_phase(name, phase, None).await?;
        }
    }
    let with_events = started.elapsed();
    let writes = clusters * phases.len();

    let started = Instant::now();
    let folded = observer.refresh().await?;
    let folded_count = folded.create_to_active_seconds.count();
    drop(folded);
    let burst = started.elapsed();

    let rounds = 1000;
    let started = Instant::now();
    for _ in 0..rounds {
        drop(observer.refresh().await?);
    }
    let steady = started.elapsed();

    println!("| {clusters} clusters | per operation |");
    println!("|---|---:|");
    println!(
        "| plain one-row update (baseline) | {} |",
        per(plain, clusters)
    );
    println!(
        "| phase write with its event ({writes} writes) | {} |",
        per(with_events, writes)
    );
    println!(
        "| first refresh after the burst ({} events, {folded_count} create→active) | {:.1} ms total |",
        writes + clusters,
        burst.as_secs_f64() * 1e3
    );
    println!(
        "| refresh with nothing new (steady scrape) | {} |",
        per(steady, rounds)
    );
    Ok(())
}
