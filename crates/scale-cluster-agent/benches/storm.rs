//! A reconnect storm measured where Rancher sees it: the real agent (`serve`) holds N lean KWOK
//! clusters against rancher-sim, a scenario cuts every tunnel at once (`tunnelDrop`, spread 0s),
//! and then the same cut spread over `--reference-spread` seconds as a reference in the same run.
//! For each cut, the main tunnel connect times rancher-sim recorded per cluster give the
//! reconnects' offsets from the cut (p0, p50, p90, p100), the most of them in any one second, and
//! that as a share of N (1.0: all in one second, what clients without jitter would do).
//!
//! ```text
//! cargo bench -p scale-cluster-agent --bench storm -- [--clusters 20] [--reference-spread 10]
//! ```
//!
//! Ports 29500-29900. Needs the toolchain installed and enough inotify instances
//! (`preflight --fix`); 20 lean clusters take about 2.5 GB.

#[path = "../tests/support/go_build.rs"]
mod go_build;
#[path = "support/rancher_run.rs"]
mod rancher_run;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 20)]
    clusters: usize,
    /// The reference cut's spread, in seconds.
    #[arg(long, default_value_t = 10)]
    reference_spread: u64,
    /// The agent's --concurrency.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// The first port: the agent's two ports, then its clusters' port blocks (10 ports each).
    #[arg(long, default_value_t = 29500)]
    port_base: u16,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(rancher_run::until_interrupted(run(args)))
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[(p * (sorted.len() - 1)).div_ceil(100)]
}

/// The most of sorted `times` (ms) within any one-second window.
fn max_in_one_second(sorted: &[i64]) -> usize {
    let mut first = 0;
    let mut most = 0;
    for (last, at) in sorted.iter().enumerate() {
        while at - sorted[first] >= 1000 {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Kills whatever a failed or interrupted run left, then removes the directory.
    let dir = rancher_run::Scratch::new()?;
    let sim = rancher_run::start_sim(dir.path(), &[]).await?;
    // The agent's two ports lie just below the first port block.
    let (agent, api) = rancher_run::start_agent(
        dir.path(),
        &sim,
        args.port_base + 2,
        args.clusters + 5,
        args.concurrency,
    )
    .await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let result = measure(&args, &http, &api, &sim.url, &sim.dir).await;

    // Leave nothing running: the clusters go through the agent (Rancher and KWOK), then it stops
    // (and the scratch dir kills whatever a failed run left).
    let down = "name: storm-bench-down\nclusters: {prefix: storm}\nstages:\n  - ramp: {to: 0}\n";
    if run_scenario(&http, &api, down, Duration::from_secs(300))
        .await
        .is_ok()
    {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline
            && !rancher_run::phases(&http, &api)
                .await
                .map(|p| p.is_empty())
                .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    drop(agent);
    result
}

/// Runs the storm scenario and prints the table.
async fn measure(
    args: &Args,
    http: &reqwest::Client,
    api: &str,
    sim_url: &str,
    sim_dir: &Path,
) -> anyhow::Result<()> {
    // rancher-sim serves HTTPS with its own CA.
    let ca = std::fs::read(sim_dir.join("ca.crt"))?;
    let sim_http = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let n = args.clusters;
    let spec = format!(
        "name: storm-bench\nseed: 1\nclusters: {{prefix: storm}}\nstages:\n\
         \x20 - ramp: {{to: {n}}}\n\
         \x20 - waitActive: {{timeout: 20m}}\n\
         \x20 - hold: 15s\n\
         \x20 - tunnelDrop: {{clusters: 100%, spread: 0s}}\n\
         \x20 - waitActive: {{timeout: 10m}}\n\
         \x20 - hold: 15s\n\
         \x20 - tunnelDrop: {{clusters: 100%, spread: {}s}}\n\
         \x20 - waitActive: {{timeout: 10m}}\n",
        args.reference_spread
    );
    eprintln!("running the storm scenario on {n} clusters");
    let started = Instant::now();
    let run = run_scenario(http, api, &spec, Duration::from_secs(40 * 60)).await?;
    if run["state"] != "succeeded" {
        bail!("the scenario did not succeed: {run:#}");
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());

    // Every cluster's main connect times as rancher-sim recorded them (unix ms).
    let clusters: Vec<Value> = http
        .get(format!("{api}/clusters"))
        .send()
        .await?
        .json()
        .await?;
    let mut connects: Vec<Vec<i64>> = Vec::new();
    for cluster in &clusters {
        let id = cluster["rancher_cluster_id"]
            .as_str()
            .context("a cluster without its Rancher id")?;
        let stats: Value = sim_http
            .get(format!("{sim_url}/sim/clusters/{id}/stats"))
            .send()
            .await?
            .json()
            .await?;
        connects.push(
            stats["stats"]["mainConnectTimes"]
                .as_array()
                .context("mainConnectTimes")?
                .iter()
                .filter_map(Value::as_i64)
                .collect(),
        );
    }
    let stages = run["stages"].as_array().context("stages")?;
    let drops: Vec<&Value> = stages
        .iter()
        .filter(|s| s["kind"] == "tunnelDrop")
        .collect();

    println!(
        "Command: `cargo bench -p scale-cluster-agent --bench storm -- --clusters {n} --reference-spread {}`\n",
        args.reference_spread
    );
    println!(
        "| cut | clusters | reconnects seen by rancher-sim | offsets from the cut p0 / p50 / p90 / p100 (ms) | most in any 1 s | ÷ N (1.0 = all in one second) | agent: recovery (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, drop) in drops.iter().enumerate() {
        let from = drop["startedAtMs"].as_i64().context("startedAtMs")?;
        let until = drops
            .get(i + 1)
            .and_then(|next| next["startedAtMs"].as_i64())
            .unwrap_or(i64::MAX);
        // Each cluster's first connect after the cut and before the next one.
        let mut offsets: Vec<i64> = connects
            .iter()
            .filter_map(|times| times.iter().find(|t| **t >= from && **t < until))
            .map(|t| t - from)
            .collect();
        offsets.sort_unstable();
        let most = max_in_one_second(&offsets);
        let spread = if i == 0 {
            "all at once (spread 0s)".to_string()
        } else {
            format!("reference (spread {}s)", args.reference_spread)
        };
        println!(
            "| {spread} | {n} | {} | {} / {} / {} / {} | {most} | {:.2} | {} |",
            offsets.len(),
            percentile(&offsets, 0),
            percentile(&offsets, 50),
            percentile(&offsets, 90),
            percentile(&offsets, 100),
            most as f64 / n as f64,
            drop["summary"]["recoveredMs"],
        );
    }

    Ok(())
}

/// Starts a scenario run through the API and waits for it to end; returns its record.
async fn run_scenario(
    http: &reqwest::Client,
    api: &str,
    spec: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    let response = http
        .post(format!("{api}/scenarios"))
        .json(&serde_json::json!({ "spec": spec }))
        .send()
        .await?;
    if response.status() != 201 {
        bail!(
            "starting the scenario: {} {}",
            response.status(),
            response.text().await?
        );
    }
    let started: Value = response.json().await?;
    let id = started["id"].as_str().context("run id")?.to_string();
    let deadline = Instant::now() + limit;
    loop {
        let run: Value = http
            .get(format!("{api}/scenarios/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if run["state"] != "running" {
            return Ok(run);
        }
        if Instant::now() > deadline {
            bail!("the scenario still runs after {limit:?}: {run:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
