//! Shared helpers for integration tests. Include with `mod support;`.
//!
//! [`toolchain`] gives a complete, verified toolchain, building or downloading whatever is missing
//! (once per test binary). It honours the same `SCA_*` variables as the CLI (`SCA_CACHE_DIR`,
//! `SCA_KUBE_APISERVER_BINARY`, `SCA_DOWNLOAD_BASE_URL`, ...); the cache defaults to
//! `~/.cache/scale-cluster-agent`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod agent_home;
pub mod chart;
pub mod go_build;
pub mod rancher_sim;

use std::sync::OnceLock;

use clap::Parser;
use scale_cluster_agent::cli::Cli;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::toolchain::{self, Progress, Toolchain};

/// Processes of one `lean` cluster created by a `serve` agent: its kube-apiserver alone. Its
/// objects live in the one shared etcd, and its controllers run in the agent's controller host.
pub const LEAN_AGENT_PROCESSES: usize = 1;

/// Settings as the CLI would resolve them from the environment.
pub fn settings() -> Settings {
    let cli = Cli::try_parse_from(["scale-cluster-agent", "toolchain", "status"])
        .unwrap_or_else(|e| panic!("parsing the SCA_* environment: {e}"));
    Settings::from_args(&cli.global).unwrap_or_else(|e| panic!("resolving settings: {e:#}"))
}

/// The full toolchain, installed (with plain progress lines) on first use.
pub fn toolchain() -> Toolchain {
    static TOOLCHAIN: OnceLock<Toolchain> = OnceLock::new();
    TOOLCHAIN
        .get_or_init(|| {
            let opts = settings().toolchain_options();
            // A private runtime on its own thread: callers may be inside another runtime, where a
            // runtime can be neither driven nor dropped.
            std::thread::scope(|s| {
                s.spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| {
                            panic!("starting a runtime for the toolchain install: {e}")
                        })
                        .block_on(toolchain::install(&opts, Progress::Plain))
                })
                .join()
                .unwrap_or_else(|_| panic!("toolchain install panicked"))
            })
            .unwrap_or_else(|e| panic!("toolchain install failed: {e}"))
        })
        .clone()
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Live (non-zombie) processes whose command line contains `path`. Deliberately independent of
/// the product's own process lookup, so a broken lookup cannot make a leak test pass.
pub fn processes_mentioning(path: &std::path::Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    live_processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect()
}

/// Every live (non-zombie) process with its parent, from `/proc/<pid>/stat` (fields 3 and 4).
fn live_processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?.parse::<u32>().ok()?;
            (state != "Z").then_some((pid, ppid))
        })
        .collect()
}

/// SIGKILLs every process whose command line contains `path`: a panicking test never reaches its
/// clean-up, and KWOK components outlive the test process.
pub fn kill_processes_mentioning(path: &std::path::Path) {
    for pid in processes_mentioning(path) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Local TCP ports in `range` that some process listens on (IPv4 and IPv6), read from
/// `/proc/net/tcp{,6}`: the kernel's word, whoever holds them.
pub fn listening_ports(range: std::ops::Range<u16>) -> Vec<u16> {
    const LISTEN: &str = "0A";
    let mut ports: Vec<u16> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let port = fields.get(1)?.rsplit_once(':')?.1;
                    let port = u16::from_str_radix(port, 16).ok()?;
                    (fields.get(3) == Some(&LISTEN)).then_some(port)
                })
                .collect::<Vec<_>>()
        })
        .filter(|port| range.contains(port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// `(pid, start time)` of a process, read from `/proc/<pid>/stat` here rather than through the
/// product's process module: a restarted component has a new identity even if its pid recurs.
pub fn process_identity(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some((pid, start))
}

/// Live processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|(_, ppid)| *ppid == parent)
        .map(|(pid, _)| pid)
        .collect()
}

/// The program a process runs (base name of `argv[0]`).
pub fn program_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    let name = String::from_utf8_lossy(first);
    Some(name.rsplit('/').next()?.to_string())
}

/// A cluster's live processes by program name, with their identities.
pub fn cluster_processes(
    cluster_dir: &std::path::Path,
) -> std::collections::BTreeMap<String, (u32, u64)> {
    processes_mentioning(&cluster_dir.join(""))
        .into_iter()
        .filter_map(|pid| Some((program_name(pid)?, process_identity(pid)?)))
        .collect()
}

/// Runs `scale-cluster-agent report --format <format> -o <out>` on a data dir (no agent needed,
/// no API token in its environment) and asserts it succeeded.
pub async fn write_report(data_dir: &std::path::Path, format: &str, out: &std::path::Path) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["report", "--format", format, "-o"])
        .arg(out)
        .env_remove("SCA_API_TOKEN")
        .output()
        .await
        .expect("report runs");
    assert!(
        output.status.success(),
        "report: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
