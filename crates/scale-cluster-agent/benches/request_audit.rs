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
use footprint::{component_of, percentile, CpuWindow, Footprint};
use scale_cluster_agent::kwok::status::processes_in;
use scale_cluster_agent::observe::memory::{pss_bytes, rss_bytes, MemorySampler, PSS_PER_SAMPLE};

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
    tokio::runtime::Runtime::new()?.block_on(rancher_run::until_interrupted(run(args)))
}

async fn bring_up(
    http: &reqwest::Client,
    api: &str,
    prefix: &str,
    count: usize,
    total: usize,
) -> anyhow::Result<()> {
    if count > 0 {
        let resp = http
            .post(format!("{api}/clusters/bulk"))
            .json(&serde_json::json!({"count": count, "prefix": prefix, "profile": "lean"}))
            .send()
            .await?;
        if resp.status() != 201 {
            bail!("bulk create: {} {}", resp.status(), resp.text().await?);
        }
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
    let dir = rancher_run::Scratch::new()?;
    let sim = rancher_run::start_sim(dir.path(), &["--watch-set".into(), "rancher".into()]).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let n = args.clusters;
    let blocks = 2 * n + 5;
    const OFF: &[(&str, &str)] = &[("SCA_REQUEST_AUDIT", "false")];
    const ON: &[(&str, &str)] = &[("SCA_REQUEST_AUDIT", "true")];
    let start = |env: &'static [(&'static str, &'static str)]| {
        rancher_run::start_agent_with_env(dir.path(), &sim, args.port_base, blocks, 3, env)
    };
    eprintln!("{n} clusters without the option");
    let (agent, api) = start(OFF).await?;
    bring_up(&http, &api, "plain", n, n).await?;
    drop(agent);
    eprintln!("{n} clusters with it (agent restarted with SCA_REQUEST_AUDIT=true)");
    let (agent, api) = start(ON).await?;
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
    let mut pss_each: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut agent_fp = Footprint::default();
    for (pid, fp) in &measured {
        if *pid == agent_pid {
            agent_fp = fp.clone();
        } else if let Some(group) = group_of.get(pid) {
            let entry = groups.entry(group).or_default();
            entry.0.add(fp);
            entry.1 += 1;
            pss_each
                .entry(group)
                .or_default()
                .push(fp.memory.pss_kib as f64 / 1024.0);
        }
    }
    let p50 = |group: &str| percentile(pss_each.get(group).map_or(&[][..], |v| v), 50.0);
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

    // The memory sampler over all 2N clusters, and the two /proc reads it is made of, in CPU
    // time of this thread (the machine is shared: wall time would count waiting for a core).
    let mut sampler = MemorySampler::new(clusters_dir.clone());
    let rounds = 20;
    let cpu_started = thread_cpu_us();
    let mut processes = 0;
    for _ in 0..rounds {
        processes = sampler
            .sample(&[], 0)
            .clusters
            .iter()
            .map(|c| c.processes as usize)
            .sum();
    }
    let per_sample_ms = (thread_cpu_us() - cpu_started) / 1000.0 / rounds as f64;
    let apiserver = *group_of.keys().next().context("no apiserver")?;
    let time = |f: &dyn Fn() -> bool| {
        let started = thread_cpu_us();
        for _ in 0..200 {
            assert!(f());
        }
        (thread_cpu_us() - started) / 200.0
    };
    let statm_us = time(&|| rss_bytes(apiserver, 4096).is_some());
    let rollup_us = time(&|| pss_bytes(apiserver).is_some());
    let per_process_us = per_sample_ms * 1000.0 / processes.max(1) as f64;

    // The agent again without the option (the audited clusters keep logging, nobody reads the
    // logs): its CPU over the same window, against the window with the tailer.
    drop(agent);
    eprintln!(
        "agent restarted without the option; settling {} s",
        args.settle
    );
    let (agent, api) = start(OFF).await?;
    bring_up(&http, &api, "none", 0, 2 * n).await?;
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let window = CpuWindow::start(&[agent.0.id()])?;
    tokio::time::sleep(Duration::from_secs(args.cpu_window)).await;
    let agent_off_mcpu = window
        .finish()
        .first()
        .map(|(_, fp)| fp.mcpu)
        .context("the agent exited")?;

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
        "\nPSS per apiserver p50: without {:.1} MiB, with {:.1} MiB.",
        p50("off"),
        p50("on")
    );
    println!(
        "\nAgent (debug build, {} clusters' tunnels): {:.2} mCPU tailing {n} audit logs every 2 s, {:.2} mCPU restarted without the option (ratio {:.2}). Audit logs: {:.0} events and {:.1} KiB per cluster per minute ({} requests counted in all since the agent started); at 1 MB per file a cluster's log rotates about every {:.0} min.",
        2 * n,
        agent_fp.mcpu,
        agent_off_mcpu,
        agent_fp.mcpu / agent_off_mcpu,
        (lines_after.saturating_sub(lines_before)) as f64 / n as f64 / minutes,
        (bytes_after.saturating_sub(bytes_before)) as f64 / 1024.0 / n as f64 / minutes,
        requests,
        1_000_000.0 / ((bytes_after.saturating_sub(bytes_before)).max(1) as f64 / n as f64 / minutes),
    );
    println!(
        "\nMemory sample over {} clusters ({processes} processes), CPU time: {per_sample_ms:.2} ms ({per_process_us:.0} µs per process: pid file, /proc stat and cmdline, statm, and its PSS: fewer than {PSS_PER_SAMPLE} processes); one apiserver's statm {statm_us:.0} µs, smaps_rollup {rollup_us:.0} µs. At N = 1,000 lean clusters (one process each): about {:.0} ms of RSS reads plus {PSS_PER_SAMPLE} × {rollup_us:.0} µs of PSS per 15 s sample.",
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

/// CPU time of this thread, in µs (`/proc/thread-self/schedstat`: nanoseconds on a CPU).
fn thread_cpu_us() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e3)
}
