//! Per-cluster memory: the resident memory of each cluster's own processes (those kwokctl
//! started for it, found by their pid files and checked against `/proc` so a recycled pid is not
//! counted), and apart from them the processes all clusters share (the shared etcd, the
//! controller host), sampled at the agent's sampling cadence into the store for the run report.
//!
//! RSS comes from `/proc/<pid>/statm` for every process at every sample (one small read, about
//! 12 µs of CPU). PSS, which splits shared pages fairly, makes the kernel walk the process's
//! page tables (`smaps_rollup`: about 8 ms of CPU for an idle 110 MiB kube-apiserver, more for
//! the controller host at scale), so it is read for at most [`PSS_PER_SAMPLE`] processes per
//! sample, in turn (shared ones included), and remembered per process: a sample's cost is
//! bounded whatever N, and at N = 1,000 a process's PSS is refreshed every 200 samples
//! (50 minutes) while its RSS is always fresh (docs/benchmarks.md).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::kwok::status;
pub use crate::store::memory::{ClusterMemory, MemorySummary, SharedProcess};

/// Processes whose PSS is read per sample (about 40 ms of CPU per 15 s sample for apiservers).
pub const PSS_PER_SAMPLE: usize = 5;

/// One sample: every cluster, and the shared processes apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub at_ms: i64,
    pub clusters: Vec<ClusterMemory>,
    pub shared: Vec<SharedProcess>,
}

impl MemorySample {
    /// The stored summary: per-cluster p50 (nearest rank), max and total.
    pub fn summary(&self) -> MemorySummary {
        let rank = |mut values: Vec<u64>| -> (Option<u64>, Option<u64>) {
            values.sort_unstable();
            let p50 = values
                .get((values.len().div_ceil(2)).saturating_sub(1))
                .copied();
            (p50, values.last().copied())
        };
        let (rss_p50, rss_max) = rank(self.clusters.iter().map(|c| c.rss_bytes).collect());
        let (pss_p50, pss_max) = rank(self.clusters.iter().filter_map(|c| c.pss_bytes).collect());
        MemorySummary {
            at_ms: self.at_ms,
            clusters: u32::try_from(self.clusters.len()).unwrap_or(u32::MAX),
            rss_p50: rss_p50.unwrap_or(0),
            rss_max: rss_max.unwrap_or(0),
            rss_total: self.clusters.iter().map(|c| c.rss_bytes).sum(),
            pss_p50,
            pss_max,
            shared: self.shared.clone(),
        }
    }
}

/// A process: pid and start time (a recycled pid is another process).
type ProcessKey = (u32, u64);

/// Reads samples; remembers each process's last PSS and whose turn it is.
#[derive(Debug)]
pub struct MemorySampler {
    clusters_dir: PathBuf,
    /// PSS by (pid, start time): a recycled pid is another key.
    pss: HashMap<(u32, u64), u64>,
    next: usize,
}

impl MemorySampler {
    pub fn new(clusters_dir: PathBuf) -> Self {
        Self {
            clusters_dir,
            pss: HashMap::new(),
            next: 0,
        }
    }

    /// One sample (blocking `/proc` reads: call it on the blocking pool). `shared` names the
    /// shared processes' pids.
    pub fn sample(&mut self, shared: &[(&str, u32)], at_ms: i64) -> MemorySample {
        let page = super::proc_stat::page_size();
        let mut found: BTreeMap<String, Vec<(ProcessKey, u64)>> = BTreeMap::new();
        for (cluster, dir) in cluster_dirs(&self.clusters_dir) {
            let processes = found.entry(cluster).or_default();
            for (component, pid) in pid_files(&dir) {
                if !status::is_cluster_process(pid, &component, &dir) {
                    continue;
                }
                let (Some(start), Some(rss)) = (start_time(pid), rss_bytes(pid, page)) else {
                    continue;
                };
                processes.push(((pid, start), rss));
            }
        }
        let shared: Vec<(&str, (u32, u64), u64)> = shared
            .iter()
            .filter_map(|(name, pid)| {
                Some((*name, (*pid, start_time(*pid)?), rss_bytes(*pid, page)?))
            })
            .collect();
        // PSS in turn for a bounded number of processes, the shared ones first.
        let all: Vec<(u32, u64)> = shared
            .iter()
            .map(|(_, id, _)| *id)
            .chain(found.values().flat_map(|ps| ps.iter().map(|(id, _)| *id)))
            .collect();
        let live: std::collections::HashSet<(u32, u64)> = all.iter().copied().collect();
        self.pss.retain(|id, _| live.contains(id));
        if !all.is_empty() {
            let start = self.next % all.len();
            let take = PSS_PER_SAMPLE.min(all.len());
            for id in all.iter().cycle().skip(start).take(take) {
                if let Some(pss) = pss_bytes(id.0) {
                    self.pss.insert(*id, pss);
                }
            }
            self.next = start + take;
        }
        let clusters = found
            .into_iter()
            .filter(|(_, processes)| !processes.is_empty())
            .map(|(cluster, processes)| ClusterMemory {
                cluster,
                at_ms,
                processes: processes.len() as u32,
                rss_bytes: processes.iter().map(|(_, rss)| rss).sum(),
                pss_bytes: processes
                    .iter()
                    .map(|(id, _)| self.pss.get(id).copied())
                    .sum(),
            })
            .collect();
        let shared = shared
            .into_iter()
            .map(|(name, id, rss)| SharedProcess {
                name: name.to_string(),
                rss_bytes: rss,
                pss_bytes: self.pss.get(&id).copied(),
            })
            .collect();
        MemorySample {
            at_ms,
            clusters,
            shared,
        }
    }
}

fn cluster_dirs(clusters_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(clusters_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

/// (component, pid) of each pid file kwokctl wrote for the cluster in `dir`.
fn pid_files(dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(dir.join("pids")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let component = name.strip_suffix(".pid")?.to_string();
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((component, pid))
        })
        .collect()
}

fn start_time(pid: u32) -> Option<u64> {
    crate::process::ProcessId::of(pid).map(|id| id.start_time)
}

/// Resident bytes from `/proc/<pid>/statm` (pages).
pub fn rss_bytes(pid: u32, page: u64) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page)
}

/// Proportional set size from `/proc/<pid>/smaps_rollup` (kB).
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss(&rollup)
}

fn parse_pss(rollup: &str) -> Option<u64> {
    rollup.lines().find_map(|line| {
        let kb: u64 = line
            .strip_prefix("Pss:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pss_and_summarises() {
        let rollup = "00400000-7ffd [rollup]\nRss:  2048 kB\nPss:  1500 kB\nPss_Anon: 1000 kB\n";
        assert_eq!(parse_pss(rollup), Some(1500 * 1024));
        let cluster = |name: &str, rss: u64, pss: Option<u64>| ClusterMemory {
            cluster: name.into(),
            at_ms: 1,
            processes: 1,
            rss_bytes: rss,
            pss_bytes: pss,
        };
        let sample = MemorySample {
            at_ms: 1,
            clusters: vec![
                cluster("a", 30, Some(20)),
                cluster("b", 10, None),
                cluster("c", 20, Some(5)),
            ],
            shared: vec![],
        };
        let s = sample.summary();
        assert_eq!(
            (s.clusters, s.rss_p50, s.rss_max, s.rss_total),
            (3, 20, 30, 60)
        );
        assert_eq!((s.pss_p50, s.pss_max), (Some(5), Some(20)));
        assert_eq!(MemorySample::default().summary().pss_p50, None);
    }

    #[test]
    fn a_cluster_is_its_live_processes_named_by_pid_files() {
        // This test process stands in for a component: its pid in a pid file of a cluster whose
        // directory its command line does not mention is not that cluster's process.
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("a").join("pids");
        std::fs::create_dir_all(&pids).unwrap();
        std::fs::write(
            pids.join("kube-apiserver.pid"),
            std::process::id().to_string(),
        )
        .unwrap();
        let mut sampler = MemorySampler::new(dir.path().to_path_buf());
        let me = std::process::id();
        let sample = sampler.sample(&[("etcd", me)], 5);
        assert!(sample.clusters.is_empty(), "{sample:?}");
        assert_eq!(sample.shared.len(), 1);
        assert!(sample.shared[0].rss_bytes > 1 << 20);
        assert!(sample.shared[0].pss_bytes.is_some_and(|p| p > 0));
    }
}
