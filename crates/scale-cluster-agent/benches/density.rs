//! Density benchmark: N simulated clusters active against rancher-sim (Rancher's probes every 15 s
//! and its downstream watch set, `--watch-set rancher`), held, and measured per cluster with every
//! process a cluster needs:
//!
//! ```text
//! cargo bench -p scale-cluster-agent --bench density -- [--clusters 50] [--profile lean] [--hold 600]
//! ```
//!
//! Starts rancher-sim and `scale-cluster-agent serve`, bulk-creates N clusters of one profile through
//! the agent's API and waits until all are `active`. After `--settle` seconds it measures, over
//! `--cpu-window` seconds, the CPU (utime + stime) and then the PSS (anonymous and file-backed apart)
//! of every process of every cluster, per component, plus the agent's own process divided by N
//! (rancher-sim stands in for Rancher and is reported apart, not counted), and the agent's steve
//! host, shared by all clusters, likewise divided by N. With `--browse-clusters K`, rancher-sim
//! browses K clusters as Cluster Explorer does (schemas, counts, node and pod lists through the
//! steve tunnel every `--browse-interval` seconds) and the report adds its request latencies.
//! It prints the measurement as Markdown for `docs/benchmarks.md` at once (an interrupted hold
//! keeps it), then holds the clusters for `--hold` seconds, checking every 10 s that all are still
//! `active`, prints how many stayed so and rancher-sim's counts, and deletes them. Needs the
//! toolchain installed and the host limits `preflight --fix --clusters N` sets.

#[path = "support/footprint.rs"]
mod footprint;
#[path = "../tests/support/go_build.rs"]
mod go_build;
#[path = "support/rancher_run.rs"]
mod rancher_run;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use footprint::{component_of, cpu_ticks, percentile, CpuWindow, Footprint};
use scale_cluster_agent::kwok::status::processes_in;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 50)]
    clusters: usize,
    /// `lean` or `full`.
    #[arg(long, default_value = "lean")]
    profile: String,
    /// The agent's --concurrency.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Idle seconds after the last cluster went active, before measuring.
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Seconds over which CPU is measured.
    #[arg(long, default_value_t = 120)]
    cpu_window: u64,
    /// Seconds the clusters are held (all must stay active) after the measurement.
    #[arg(long, default_value_t = 600)]
    hold: u64,
    /// Clusters rancher-sim browses through Steve during the whole run.
    #[arg(long, default_value_t = 0)]
    browse_clusters: usize,
    /// Seconds between two browse rounds of a cluster.
    #[arg(long, default_value_t = 15)]
    browse_interval: u64,
    /// Seconds the bring-up may take; past them the clusters active by then are measured and
    /// held, and the report says how many of N went active and what the machine had left.
    #[arg(long, default_value_t = 1800)]
    bring_up_limit: u64,
    #[arg(long, default_value_t = 27000)]
    port_base: u16,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(rancher_run::until_interrupted(run(args)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = rancher_run::Scratch::new()?;
    let sim_args: Vec<String> = [
        "--watch-set".to_string(),
        "rancher".to_string(),
        "--browse-clusters".to_string(),
        args.browse_clusters.to_string(),
        "--browse-interval".to_string(),
        format!("{}s", args.browse_interval),
    ]
    .into();
    let sim = rancher_run::start_sim(dir.path(), &sim_args).await?;
    let kwok_workdir = dir.path().join("kwok");
    let (agent, api) = rancher_run::start_agent(
        dir.path(),
        &sim,
        args.port_base,
        args.clusters + 10,
        args.concurrency,
    )
    .await?;
    let http = reqwest::Client::builder().no_proxy().build()?;

    eprintln!("bulk-creating {} {} clusters", args.clusters, args.profile);
    let started = Instant::now();
    let resp = http
        .post(format!("{api}/clusters/bulk"))
        .json(&serde_json::json!({"count": args.clusters, "prefix": "dense", "profile": args.profile}))
        .send()
        .await?;
    if resp.status() != 201 {
        bail!("bulk create: {} {}", resp.status(), resp.text().await?);
    }
    let mut active_after: HashMap<String, f64> = HashMap::new();
    while active_after.len() < args.clusters {
        if started.elapsed() > Duration::from_secs(args.bring_up_limit) {
            eprintln!(
                "only {} of {} clusters active after {} s; measuring those ({})",
                active_after.len(),
                args.clusters,
                args.bring_up_limit,
                machine_state()
            );
            break;
        }
        for (name, phase) in rancher_run::phases(&http, &api).await? {
            if phase == "active" {
                active_after
                    .entry(name)
                    .or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_active = active_after.values().copied().fold(0.0, f64::max);
    eprintln!(
        "all active after {all_active:.1} s; settling {} s",
        args.settle
    );
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

    // Every process of every cluster, the agent, and rancher-sim (reported apart).
    let names: Vec<String> = active_after.keys().cloned().collect();
    let mut cluster_of: HashMap<u32, String> = HashMap::new();
    for name in &names {
        for pid in processes_in(&kwok_workdir.join("clusters").join(name).join("")) {
            cluster_of.insert(pid, name.clone());
        }
    }
    let (agent_pid, sim_pid) = (agent.0.id(), sim.process.0.id());
    let mut pids: Vec<u32> = cluster_of.keys().copied().collect();
    pids.extend([agent_pid, sim_pid]);
    // The agent's own helpers (the steve host) serve every cluster: shared, divided by N. So does
    // the shared etcd of `lean` clusters, a daemon found by its pid file (it is the agent's child
    // only if this agent started it).
    let mut helpers: Vec<u32> = children_of(agent_pid)
        .into_iter()
        .filter(|p| !cluster_of.contains_key(p))
        .collect();
    let shared_etcd = std::fs::read_to_string(dir.path().join("data/etcd/etcd.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .filter(|pid| component_of(*pid) == "etcd");
    if let Some(pid) = shared_etcd.filter(|pid| !helpers.contains(pid)) {
        helpers.push(pid);
    }
    pids.extend(&helpers);
    eprintln!("measuring CPU over {} s", args.cpu_window);
    // The kernel's KSM thread merges the clusters' pages when KSM is on: its CPU is theirs too,
    // shared by all (a kernel thread has no memory of its own to measure).
    let ksmd = ksmd_pid();
    let ksmd_before = ksmd.map(cpu_ticks).transpose()?;
    let window = CpuWindow::start(&pids)?;
    let window_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.cpu_window)).await;
    let measured = window.finish();
    let ksmd_mcpu = match (ksmd, ksmd_before) {
        (Some(pid), Some(before)) => {
            (cpu_ticks(pid)? - before) as f64 * 10.0 / window_started.elapsed().as_secs_f64()
        }
        _ => 0.0,
    };

    // Per cluster that went active: a cluster still coming up is not one the machine holds.
    let n = names.len() as f64;
    let machine = machine_state();
    let mut per_component: BTreeMap<String, Footprint> = BTreeMap::new();
    let mut per_cluster: BTreeMap<String, Footprint> = BTreeMap::new();
    let (mut agent_fp, mut sim_fp) = (Footprint::default(), Footprint::default());
    for (pid, fp) in &measured {
        if *pid == agent_pid {
            agent_fp = fp.clone();
        } else if *pid == sim_pid {
            sim_fp = fp.clone();
        } else {
            per_component.entry(component_of(*pid)).or_default().add(fp);
            if let Some(name) = cluster_of.get(pid) {
                per_cluster.entry(name.clone()).or_default().add(fp);
            }
        }
    }
    per_component.insert("scale-cluster-agent (÷ N)".into(), agent_fp.clone());
    let ksm_run = ksm_value("run");
    if ksm_run == Some(1) {
        per_component.insert(
            "ksmd (÷ N)".into(),
            Footprint {
                mcpu: ksmd_mcpu,
                ..Footprint::default()
            },
        );
    }
    let mut total = Footprint::default();
    for fp in per_component.values() {
        total.add(fp);
    }

    let times: Vec<f64> = active_after.values().copied().collect();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "Command: `cargo bench -p scale-cluster-agent --bench density -- --clusters {} --profile {} --concurrency {} --settle {} --cpu-window {} --hold {} --browse-clusters {} --browse-interval {} --bring-up-limit {}`\n",
        args.clusters,
        args.profile,
        args.concurrency,
        args.settle,
        args.cpu_window,
        args.hold,
        args.browse_clusters,
        args.browse_interval,
        args.bring_up_limit
    );
    println!("| profile | clusters | all active (s) | throughput (clusters/s) | create→active p50 / p95 (s) | PSS / cluster (MiB) | PSS anon / file (MiB) | idle CPU / cluster (mCPU) |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.1} | {:.2} | {:.1} / {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |",
        args.profile,
        if names.len() == args.clusters {
            args.clusters.to_string()
        } else {
            format!("{} of {}", names.len(), args.clusters)
        },
        all_active,
        n / all_active,
        percentile(&times, 50.0),
        percentile(&times, 95.0),
        mib(total.memory.pss_kib) / n,
        mib(total.memory.pss_anon_kib) / n,
        mib(total.memory.pss_file_kib) / n,
        total.mcpu / n,
    );
    println!("\nMachine while measured: {machine}.");
    match (ksm_run, ksm_value("pages_sharing")) {
        (Some(1), Some(sharing)) => println!(
            "\nKSM on: {:.1} MiB of pages shared, {:.1} MiB per cluster (already out of the PSS \
             figures); ksmd {:.0} mCPU.",
            mib(sharing * 4),
            mib(sharing * 4) / n,
            ksmd_mcpu,
        ),
        (Some(run), _) => println!("\nKSM off (/sys/kernel/mm/ksm/run = {run})."),
        (None, _) => println!("\nKSM not available (no /sys/kernel/mm/ksm/run)."),
    }
    println!("\nPer component, per cluster (shared processes divided by N):\n");
    println!("| component | PSS (MiB) | PSS anon (MiB) | PSS file (MiB) | idle mCPU |");
    println!("|---|---|---|---|---|");
    for (component, fp) in &per_component {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} |",
            component,
            mib(fp.memory.pss_kib) / n,
            mib(fp.memory.pss_anon_kib) / n,
            mib(fp.memory.pss_file_kib) / n,
            fp.mcpu / n,
        );
    }
    let spread: Vec<f64> = per_cluster
        .values()
        .map(|f| mib(f.memory.pss_kib))
        .collect();
    println!(
        "\nPSS per cluster min / p50 / max: {:.1} / {:.1} / {:.1} MiB. rancher-sim (standing in for Rancher, not counted): {:.0} MiB PSS, {:.0} mCPU.",
        percentile(&spread, 0.0),
        percentile(&spread, 50.0),
        percentile(&spread, 100.0),
        mib(sim_fp.memory.pss_kib),
        sim_fp.mcpu,
    );

    eprintln!("holding {} s", args.hold);
    let hold_started = Instant::now();
    let mut fewest_active = names.len();
    while hold_started.elapsed() < Duration::from_secs(args.hold) {
        let active = rancher_run::phases(&http, &api)
            .await?
            .iter()
            .filter(|(_, p)| p == "active")
            .count();
        fewest_active = fewest_active.min(active.min(names.len()));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }

    let sim_stats: Value = sim_client(&sim.dir)?
        .get(format!("{}/sim/stats", sim.url))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "\nHeld {} s after the measurement: at least {} clusters active (of the {} measured) at every 10 s check.",
        args.hold,
        fewest_active,
        names.len(),
    );
    let browse = &sim_stats["browse"];
    println!(
        "\nrancher-sim: {} watches open on {} clusters (watch set `{}`); browsing {} clusters: {} rounds, {} requests, {} errors, latency p50 / p99 {} / {} ms{}.",
        sim_stats["watches"],
        sim_stats["clusters"],
        sim_stats["watchSet"].as_str().unwrap_or_default(),
        sim_stats["browsedClusters"],
        browse["rounds"],
        browse["requests"],
        browse["errors"],
        browse["p50Ms"],
        browse["p99Ms"],
        browse["lastError"]
            .as_str()
            .map(|e| format!(" (last error: {e})"))
            .unwrap_or_default(),
    );

    // Every cluster, not only those measured: past `--bring-up-limit` the others are still
    // coming up, and the wait below is for all of them to go.
    for (name, _) in rancher_run::phases(&http, &api).await? {
        http.delete(format!("{api}/clusters/{name}")).send().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while !rancher_run::phases(&http, &api).await?.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(agent);
    drop(sim);
    Ok(())
}

/// The pid of the kernel's KSM thread, if this kernel has one.
fn ksmd_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "ksmd").then_some(pid)
        })
}

/// A KSM counter or setting (`/sys/kernel/mm/ksm/<name>`).
fn ksm_value(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/kernel/mm/ksm/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What the machine has left: available memory, load, and the pids in use (what a run of many
/// clusters exhausts first).
fn machine_state() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{:.1} of {:.1} GiB available, load average {}",
        kib("MemAvailable:") as f64 / 1048576.0,
        kib("MemTotal:") as f64 / 1048576.0,
        load.join(" ")
    )
}

/// Live processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after_comm = stat.rsplit_once(')')?.1.to_string();
                    after_comm.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A client for rancher-sim's own endpoints, trusting its CA.
fn sim_client(sim_dir: &Path) -> anyhow::Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(sim_dir.join("ca.crt"))?)?;
    Ok(reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(ca)
        .build()?)
}
