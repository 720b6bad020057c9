//! Benchmark of the whole agent against the rancher-sim peer (Rancher's probes every 15 s, as the
//! real one does) and real KWOK clusters:
//!
//! ```text
//! cargo bench -p scale-cluster-agent --bench agent_rancher -- [--clusters 20] [--concurrency 3]
//! ```
//!
//! Starts `scale-cluster-agent serve`, bulk-creates N clusters through its API, and reports the time
//! until all are `active`, per-cluster create→active p50/p95 (from the bulk request), and the agent
//! process's own memory per connected cluster (its two tunnels; the KWOK processes are not counted):
//! RSS and PSS after the clusters idled, minus the same agent's idle figures before the bulk.
//! Needs the toolchain installed and enough inotify instances (`preflight --fix`).

#[path = "../tests/support/go_build.rs"]
mod go_build;
#[path = "support/rancher_run.rs"]
mod rancher_run;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    clusters: usize,
    /// The agent's --concurrency.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Idle seconds before the memory sample.
    #[arg(long, default_value_t = 20)]
    settle: u64,
    #[arg(long, default_value_t = 25000)]
    port_base: u16,
    #[arg(long, hide = true)]
    bench: bool,
}

/// (RSS, PSS) of a process in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0u64)
    };
    Ok((field("Rss:"), field("Pss:")))
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}

/// The agent's `sca_rancher_requests_total`, summed over methods.
async fn rancher_requests(http: &reqwest::Client, api: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("sca_rancher_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(rancher_run::until_interrupted(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = rancher_run::Scratch::new()?;
    let sim = rancher_run::start_sim(dir.path(), &[]).await?;
    let (agent, api) = rancher_run::start_agent(
        dir.path(),
        &sim,
        args.port_base,
        args.clusters * 2,
        args.concurrency,
    )
    .await?;
    let pid = agent.0.id();
    let http = reqwest::Client::builder().no_proxy().build()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = memory(pid)?;

    eprintln!("bulk-creating {} clusters", args.clusters);
    let (active_after, all_active) = bulk_until_active(&http, &api, args.clusters, "bench").await?;
    eprintln!(
        "all active after {all_active:.1} s; idling {} s",
        args.settle
    );
    let requests_before = rancher_requests(&http, &api).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let loaded = memory(pid)?;
    // What the agent itself asks of Rancher while its clusters idle (Rancher's own traffic
    // through the tunnels is not counted): one cluster list per poll, whatever N.
    let idle_requests_per_min =
        (rancher_requests(&http, &api).await? - requests_before) * 60.0 / args.settle as f64;
    // One-time costs (runtime threads, TLS setup, first allocations) make the figure from idle
    // overstate what one more cluster costs: also measure the margin of N/2 more clusters.
    let extra = (args.clusters / 2).max(1);
    eprintln!("adding {extra} more clusters for the marginal cost");
    let (extra_active, _) = bulk_until_active(&http, &api, extra, "extra").await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let more = memory(pid)?;
    let health: Value = http
        .get(format!("{api}/health"))
        .send()
        .await?
        .json()
        .await?;

    let times: Vec<f64> = active_after.values().copied().collect();
    let n = args.clusters as f64;
    println!(
        "Command: `cargo bench -p scale-cluster-agent --bench agent_rancher -- --clusters {} --concurrency {} --settle {}`\n",
        args.clusters, args.concurrency, args.settle
    );
    println!(
        "| clusters | concurrency | all active (s) | create→active p50 / p95 (s) | agent RSS idle → {} → {} clusters (MiB) | RSS / cluster from idle (KiB) | marginal RSS / PSS per cluster (KiB) | tunnels connected | agent requests to Rancher while idle (per min) |",
        args.clusters,
        args.clusters + extra
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.1} | {:.1} / {:.1} | {:.1} → {:.1} → {:.1} | {:.0} | {:.0} / {:.0} | {} | {:.1} |",
        args.clusters,
        args.concurrency,
        all_active,
        percentile(&times, 50.0),
        percentile(&times, 95.0),
        idle.0 as f64 / 1024.0,
        loaded.0 as f64 / 1024.0,
        more.0 as f64 / 1024.0,
        (loaded.0.saturating_sub(idle.0)) as f64 / n,
        (more.0.saturating_sub(loaded.0)) as f64 / extra as f64,
        (more.1.saturating_sub(loaded.1)) as f64 / extra as f64,
        health["tunnels_connected"],
        idle_requests_per_min,
    );

    // Leave nothing running: delete through the agent (Rancher and KWOK), then stop it.
    for name in active_after.keys().chain(extra_active.keys()) {
        http.delete(format!("{api}/clusters/{name}")).send().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if rancher_run::phases(&http, &api).await?.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(agent);
    Ok(())
}

/// Bulk-creates `count` clusters and waits until all are active; returns the seconds from the
/// request to each cluster's first `active`, and to the last one.
async fn bulk_until_active(
    http: &reqwest::Client,
    api: &str,
    count: usize,
    prefix: &str,
) -> anyhow::Result<(HashMap<String, f64>, f64)> {
    let started = Instant::now();
    let resp = http
        .post(format!("{api}/clusters/bulk"))
        .json(&serde_json::json!({"count": count, "prefix": prefix}))
        .send()
        .await?;
    if resp.status() != 201 {
        bail!("bulk create: {} {}", resp.status(), resp.text().await?);
    }
    let mut active_after: HashMap<String, f64> = HashMap::new();
    while active_after.len() < count {
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "only {} of {count} clusters active after 15 minutes",
                active_after.len()
            );
        }
        for (name, phase) in rancher_run::phases(http, api).await? {
            if phase == "active" && name.starts_with(prefix) {
                active_after
                    .entry(name)
                    .or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok((active_after, started.elapsed().as_secs_f64()))
}
