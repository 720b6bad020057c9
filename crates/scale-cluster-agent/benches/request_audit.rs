//! What `--request-audit` costs, and what sampling per-cluster memory costs:
//!
//! ```text
//! cargo bench -p scale-cluster-agent --bench request_audit -- [--clusters 5] [--settle 60] [--cpu-window 120]
//! ```
//!
//! One run, so both halves share the machine's state: rancher-sim (probing every 15 s, Rancher
//! v2.15's watch set) and the real agent, first without the option (N `plain-*` clusters), then,
//! restarted with `SCA_REQUEST_AUDIT=true`, N `aud-*` clusters more (audited; the agent now tails
//! their logs). After `--settle` seconds the idle CPU of every `lean` cluster's kube-apiserver
//! is measured over `--cpu-window` seconds, then its PSS; the report gives both groups and their
//! ratio, the agent's CPU (the tailer included), and how fast the audit logs grow. Then the
//! agent's per-cluster memory sampler (`observe::memory`) is timed over all 2N clusters, and
//! `statm` against `smaps_rollup` of one apiserver, to extrapolate a sample at N = 1,000.

#[path = "support/footprint.rs"]
mod footprint;
#[path = "../tests/support/go_build.rs"]
mod go_build;
#[path = "support/rancher_run.rs"]
mod rancher_run;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use footprint::{component_of, CpuWindow, Footprint};
use scale_cluster_agent::kwok::status::processes_in;
use scale_cluster_agent::observe::memory::{pss_bytes, rss_bytes, MemorySampler};

#[derive(Debug, Parser)]
struct Args {
    /// Clusters per group (without, with the option).
    #[arg(long, default_value_t = 5)]
    clusters: usize,
    #[arg(long, default_value_t = 60)]
    settle: u64,
    #[arg(long, default_value_t = 120)]
    cpu_window: u64,
    #[arg(long, default_value_t = 29400)]
    port_base: u16,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn bring_up(
    http: &reqwest::Client,
    api: &str,
    prefix: &str,
    count: usize,
    total: usize,
) -> anyhow::Result<()> {
    let resp = http
        .post(format!("{api}/clusters/bulk"))
        .json(&serde_json::json!({"count": count, "prefix": prefix, "profile": "lean"}))
        .send()
        .await?;
    if resp.status() != 201 {
        bail!("bulk create: {} {}", resp.status(), resp.text().await?);
    }
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let phases = rancher_run::phases(http, api).await?;
        if phases.iter().filter(|(_, p)| p == "active").count() == total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not all active: {phases:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = rancher_run::start_sim(dir.path(), &["--watch-set".into(), "rancher".into()]).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let n = args.clusters;
    let blocks = 2 * n + 5;
    let start = |audit: &'static str| {
        rancher_run::start_agent_with_env(
            dir.path(),
            &sim,
            args.port_base,
            blocks,
            3,
            &[("SCA_REQUEST_AUDIT", audit)],
        )
    };
    eprintln!("{n} clusters without the option");
    let (agent, api) = start("false").await?;
    bring_up(&http, &api, "plain", n, n).await?;
    drop(agent);
    eprintln!("{n} clusters with it (agent restarted with SCA_REQUEST_AUDIT=true)");
    let (agent, api) = start("true").await?;
    bring_up(&http, &api, "aud", n, 2 * n).await?;
    eprintln!("settling {} s", args.settle);
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    let clusters_dir = dir.path().join("kwok").join("clusters");
    let mut group_of: BTreeMap<u32, &str> = BTreeMap::new();
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(&clusters_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let group = if name.starts_with("aud") { "on" } else { "off" };
        if group == "on" {
            logs.push(entry.path().join("logs").join("audit.log"));
        }
        for pid in processes_in(&entry.path().join("")) {
            if component_of(pid) == "kube-apiserver" {
                group_of.insert(pid, group);
            }
        }
    }
    let log_bytes = |logs: &[std::path::PathBuf]| -> u64 {
        logs.iter()
            .filter_map(|l| std::fs::metadata(l).ok())
            .map(|m| m.len())
            .sum()
    };
    let log_lines = |logs: &[std::path::PathBuf]| -> usize {
        logs.iter()
            .filter_map(|l| std::fs::read_to_string(l).ok())
            .map(|t| t.lines().count())
            .sum()
    };
    let agent_pid = agent.0.id();
    let mut pids: Vec<u32> = group_of.keys().copied().collect();
    pids.push(agent_pid);
    let (bytes_before, lines_before) = (log_bytes(&logs), log_lines(&logs));
    eprintln!("measuring CPU over {} s", args.cpu_window);
    let window = CpuWindow::start(&pids)?;
    tokio::time::sleep(Duration::from_secs(args.cpu_window)).await;
    let measured = window.finish();
    let minutes = args.cpu_window as f64 / 60.0;
    let (bytes_after, lines_after) = (log_bytes(&logs), log_lines(&logs));

    let mut groups: BTreeMap<&str, (Footprint, usize)> = BTreeMap::new();
    let mut agent_fp = Footprint::default();
    for (pid, fp) in &measured {
        if *pid == agent_pid {
            agent_fp = fp.clone();
        } else if let Some(group) = group_of.get(pid) {
            let entry = groups.entry(group).or_default();
            entry.0.add(fp);
            entry.1 += 1;
        }
    }
    let mean = |group: &str| -> anyhow::Result<(f64, f64)> {
        let (fp, count) = groups.get(group).context("a group without apiservers")?;
        let count = *count as f64;
        Ok((fp.memory.pss_kib as f64 / 1024.0 / count, fp.mcpu / count))
    };
    let (off_pss, off_cpu) = mean("off")?;
    let (on_pss, on_cpu) = mean("on")?;
    let requests: u64 = http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?
        .lines()
        .filter(|l| l.starts_with("sca_rancher_apiserver_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();

    // The memory sampler over all 2N clusters, and the two /proc reads it is made of.
    let mut sampler = MemorySampler::new(clusters_dir.clone());
    let rounds = 20;
    let started = Instant::now();
    let mut processes = 0;
    for _ in 0..rounds {
        processes = sampler
            .sample(&[], 0)
            .clusters
            .iter()
            .map(|c| c.processes as usize)
            .sum();
    }
    let per_sample_ms = started.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
    let apiserver = *group_of.keys().next().context("no apiserver")?;
    let time = |f: &dyn Fn() -> bool| {
        let started = Instant::now();
        for _ in 0..200 {
            assert!(f());
        }
        started.elapsed().as_secs_f64() * 1e6 / 200.0
    };
    let statm_us = time(&|| rss_bytes(apiserver, 4096).is_some());
    let rollup_us = time(&|| pss_bytes(apiserver).is_some());
    let per_process_us = per_sample_ms * 1000.0 / processes.max(1) as f64;

    println!(
        "Command: `cargo bench -p scale-cluster-agent --bench request_audit -- --clusters {} --settle {} --cpu-window {}`\n",
        args.clusters, args.settle, args.cpu_window
    );
    println!("| kube-apiserver (lean, idle, rancher-sim probing) | clusters | PSS (MiB) | idle CPU (mCPU) |");
    println!("|---|---:|---:|---:|");
    println!("| without `--request-audit` | {n} | {off_pss:.1} | {off_cpu:.2} |");
    println!("| with it | {n} | {on_pss:.1} | {on_cpu:.2} |");
    println!(
        "| ratio with / without | | {:.3} | {:.3} |",
        on_pss / off_pss,
        on_cpu / off_cpu
    );
    println!(
        "\nAgent (tailing {n} logs every 2 s, 2N clusters' tunnels): {:.2} mCPU. Audit logs: {:.0} events and {:.1} KiB per cluster per minute ({} requests counted in all since the agent started); at 1 MB per file a cluster's log rotates about every {:.0} min.",
        agent_fp.mcpu,
        (lines_after.saturating_sub(lines_before)) as f64 / n as f64 / minutes,
        (bytes_after.saturating_sub(bytes_before)) as f64 / 1024.0 / n as f64 / minutes,
        requests,
        1_000_000.0 / ((bytes_after.saturating_sub(bytes_before)).max(1) as f64 / n as f64 / minutes),
    );
    println!(
        "\nMemory sample over {} clusters ({processes} processes): {per_sample_ms:.2} ms ({per_process_us:.0} µs per process: pid file, /proc stat and cmdline, statm; the PSS of all of them, fewer than 50); one apiserver's statm {statm_us:.0} µs, smaps_rollup {rollup_us:.0} µs. At N = 1,000 lean clusters (one process each): about {:.0} ms of RSS reads plus 50 × {rollup_us:.0} µs of PSS per 15 s sample.",
        2 * n,
        // 1,000 processes × µs each = ms.
        (per_process_us - rollup_us).max(statm_us),
    );

    for (name, _) in rancher_run::phases(&http, &api).await? {
        http.delete(format!("{api}/clusters/{name}")).send().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while !rancher_run::phases(&http, &api).await?.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(agent);
    drop(sim);
    // The shared etcd is a daemon that outlives the agent: this run's goes with it.
    if let Some(pid) = std::fs::read_to_string(dir.path().join("data/etcd/etcd.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|pid| component_of(*pid as u32) == "etcd")
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    Ok(())
}
