//! Benchmark of simulated-cluster creation and footprint, `lean` against `full` (kwokctl's default
//! component set) in the same run:
//!
//! ```text
//! cargo bench -p scale-cluster-agent --bench kwok_clusters -- [--clusters N] [--parallel P] [--settle SECS]
//! ```
//!
//! For each profile it creates N clusters one by one, deletes them, creates N again in bulk (P at a
//! time), lets them idle, then sums RSS and PSS (`/proc/<pid>/smaps_rollup`, anonymous and file-backed
//! apart) and idle CPU (utime + stime from `/proc/<pid>/stat` over `--cpu-window` seconds) over every
//! process of each cluster, plus, for `lean`, the shared etcd divided by N (it serves them all).
//! Prints a Markdown report for `docs/benchmarks.md`. Needs the toolchain installed
//! (`scale-cluster-agent toolchain install`) and enough inotify instances (`preflight --fix`).

#[path = "support/footprint.rs"]
mod footprint;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use footprint::{component_of, percentile, CpuWindow, Footprint, Memory};
use futures::StreamExt;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::status::processes_in;
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::Store;
use scale_cluster_agent::toolchain;

#[derive(Debug, Parser)]
struct Args {
    /// Clusters per profile and phase.
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    /// Concurrent creations in the bulk phase.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Idle seconds before memory is sampled.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Seconds over which idle CPU (utime + stime) is measured, after the settle time.
    #[arg(long, default_value_t = 120)]
    cpu_window: u64,
    /// First port of the benchmark's port range.
    #[arg(long, default_value_t = 24000)]
    port_base: u16,
    // `cargo bench` passes `--bench`; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

struct ProfileResult {
    profile: ComponentProfile,
    serial_ready: Vec<f64>,
    serial_total: f64,
    bulk_ready: Vec<f64>,
    bulk_total: f64,
    per_cluster: Vec<Footprint>,
    per_component: Vec<(String, Footprint)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = scale_cluster_agent::config::home_dir()?;
    let settings = Settings {
        data_dir: dir.path().join("data"),
        kwok_workdir: dir.path().join("kwok"),
        cache_dir: scale_cluster_agent::config::default_cache_dir(&home),
        // Just below the range, like the default.
        shared_etcd_port: None,
        ports: PortRange::new(args.port_base, 10, args.clusters as u16)?,
        toolchain: Default::default(),
        file: Default::default(),
    };
    let toolchain = toolchain::locate(&settings.toolchain_options())
        .await
        .context("run `scale-cluster-agent toolchain install` first")?;
    let manager = ClusterManager::new(
        &settings.kwok(),
        toolchain,
        Store::open(&settings.state_db())?,
    );

    let mut results = Vec::new();
    for profile in [ComponentProfile::Lean, ComponentProfile::Full] {
        eprintln!("== {profile}: {} clusters one by one", args.clusters);
        let names: Vec<String> = (0..args.clusters)
            .map(|i| format!("bench-{profile}-{i:03}"))
            .collect();
        let started = Instant::now();
        let mut serial_ready = Vec::new();
        for name in &names {
            let (_, timings) = manager.create_timed(request(name, profile)).await?;
            eprintln!("{name}: ready after {:.2} s", timings.ready.as_secs_f64());
            serial_ready.push(timings.ready.as_secs_f64());
        }
        let serial_total = started.elapsed().as_secs_f64();
        delete_all(&manager, &names).await?;

        eprintln!(
            "== {profile}: {} clusters in bulk, {} at a time",
            args.clusters, args.parallel
        );
        let started = Instant::now();
        let outcomes: Vec<_> = futures::stream::iter(names.iter())
            .map(|name| manager.create_timed(request(name, profile)))
            .buffer_unordered(args.parallel)
            .collect()
            .await;
        let bulk_total = started.elapsed().as_secs_f64();
        let mut bulk_ready = Vec::new();
        for outcome in outcomes {
            bulk_ready.push(outcome?.1.ready.as_secs_f64());
        }

        eprintln!(
            "== {profile}: idle {} s, then CPU over {} s and memory",
            args.settle, args.cpu_window
        );
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let pids: Vec<Vec<u32>> = names
            .iter()
            .map(|name| processes_in(&manager.cluster_dir(name).join("")))
            .collect();
        // The shared etcd serves every `lean` cluster: a share of it is each one's cost.
        let shared = if profile.uses_shared_etcd() {
            manager.shared_etcd().running_pid().await
        } else {
            None
        };
        let mut all = pids.concat();
        all.extend(shared);
        let window = CpuWindow::start(&all)?;
        tokio::time::sleep(Duration::from_secs(args.cpu_window)).await;
        let measured: std::collections::HashMap<u32, Footprint> =
            window.finish().into_iter().collect();
        let mut per_cluster = Vec::new();
        let mut per_component: Vec<(String, Footprint)> = Vec::new();
        let shared_share = match shared {
            Some(pid) => {
                let Some(whole) = measured.get(&pid) else {
                    bail!("the shared etcd (pid {pid}) exited during the measurement");
                };
                per_component.push(("etcd (shared)".into(), whole.clone()));
                whole.divided(names.len())
            }
            None => Footprint::default(),
        };
        for (name, ps) in names.iter().zip(&pids) {
            let mut total = shared_share.clone();
            for pid in ps {
                let Some(one) = measured.get(pid) else {
                    continue;
                };
                let component = component_of(*pid);
                total.add(one);
                match per_component.iter_mut().find(|(c, _)| *c == component) {
                    Some((_, f)) => f.add(one),
                    None => per_component.push((component, one.clone())),
                }
            }
            if total.memory.rss_kib == shared_share.memory.rss_kib {
                bail!("no processes found for {name}");
            }
            per_cluster.push(total);
        }
        per_component.sort_by(|a, b| a.0.cmp(&b.0));
        delete_all(&manager, &names).await?;
        results.push(ProfileResult {
            profile,
            serial_ready,
            serial_total,
            bulk_ready,
            bulk_total,
            per_cluster,
            per_component,
        });
    }
    print_report(&args, &results);
    // The shared etcd is a daemon that outlives its creator; this run's goes with its temp dir.
    if let Some(pid) = manager.shared_etcd().running_pid().await {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    Ok(())
}

fn request(name: &str, profile: ComponentProfile) -> CreateRequest {
    CreateRequest {
        name: name.to_string(),
        profile,
        population: PopulationProfile::default(),
    }
}

async fn delete_all(manager: &ClusterManager, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        manager.delete(name).await?;
    }
    Ok(())
}

fn mean_mib(values: &[Footprint], f: impl Fn(&Memory) -> u64) -> f64 {
    values.iter().map(|v| f(&v.memory)).sum::<u64>() as f64 / values.len().max(1) as f64 / 1024.0
}

fn mean_mcpu(values: &[Footprint]) -> f64 {
    values.iter().map(|v| v.mcpu).sum::<f64>() / values.len().max(1) as f64
}

fn print_report(args: &Args, results: &[ProfileResult]) {
    println!(
        "Command: `cargo bench -p scale-cluster-agent --bench kwok_clusters -- --clusters {} --parallel {} --settle {} --cpu-window {}`\n",
        args.clusters, args.parallel, args.settle, args.cpu_window
    );
    println!("| profile | one by one: ready p50 / p95 (s) | one by one: total (s) | bulk ×{}: ready p50 / p95 (s) | bulk: total (s) | RSS / cluster (MiB) | PSS / cluster (MiB) | PSS anon / file (MiB) | idle CPU / cluster (mCPU) |", args.parallel);
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {:.2} / {:.2} | {:.1} | {:.2} / {:.2} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |",
            r.profile,
            percentile(&r.serial_ready, 50.0),
            percentile(&r.serial_ready, 95.0),
            r.serial_total,
            percentile(&r.bulk_ready, 50.0),
            percentile(&r.bulk_ready, 95.0),
            r.bulk_total,
            mean_mib(&r.per_cluster, |m| m.rss_kib),
            mean_mib(&r.per_cluster, |m| m.pss_kib),
            mean_mib(&r.per_cluster, |m| m.pss_anon_kib),
            mean_mib(&r.per_cluster, |m| m.pss_file_kib),
            mean_mcpu(&r.per_cluster),
        );
    }
    if let [lean, full] = results {
        println!(
            "\nlean / full: PSS {:.2}×, RSS {:.2}×, idle CPU {:.2}×, one-by-one ready p50 {:.2}×\n",
            mean_mib(&lean.per_cluster, |m| m.pss_kib) / mean_mib(&full.per_cluster, |m| m.pss_kib),
            mean_mib(&lean.per_cluster, |m| m.rss_kib) / mean_mib(&full.per_cluster, |m| m.rss_kib),
            mean_mcpu(&lean.per_cluster) / mean_mcpu(&full.per_cluster),
            percentile(&lean.serial_ready, 50.0) / percentile(&full.serial_ready, 50.0),
        );
    }
    println!("Per component, mean per cluster (MiB, mCPU):\n");
    println!("| profile | component | RSS | PSS | PSS anon | PSS file | idle mCPU |");
    println!("|---|---|---|---|---|---|---|");
    for r in results {
        let n = r.per_cluster.len().max(1) as f64;
        for (component, f) in &r.per_component {
            let mib = |kib: u64| kib as f64 / n / 1024.0;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                r.profile,
                component,
                mib(f.memory.rss_kib),
                mib(f.memory.pss_kib),
                mib(f.memory.pss_anon_kib),
                mib(f.memory.pss_file_kib),
                f.mcpu / n,
            );
        }
    }
}
