//! Host preflight checks: limits that bite when many clusters run on one machine (inotify, open
//! files, pids/threads, ports, disk for etcd), sized for a planned number of clusters, and whether
//! the kernel shares the clusters' identical memory pages (KSM).
//!
//! Readings ([`Readings`], taken by [`Readings::read`]) are separate from the pure evaluation
//! ([`evaluate`]), so the verdicts are testable with injected values; [`apply_fixes`] raises the
//! sysctls it can as root.

mod fix;
mod host;

use std::collections::BTreeSet;
use std::fmt;

pub use fix::{apply_fixes, apply_fixes_in, FixOutcome};

use crate::store::ports::{PortRange, PORTS_PER_BLOCK};

/// Default number of clusters preflight sizes its needs for.
pub const DEFAULT_CLUSTERS: u32 = 50;

/// inotify instances per cluster: kube-apiserver ~6 and kube-controller-manager ~5
/// (kwok-notes §3), plus scheduler, kwok-controller and etcd.
const INOTIFY_INSTANCES_PER_CLUSTER: u64 = 16;
/// Instances the rest of the user's processes hold (systemd, editors, the agent).
const INOTIFY_INSTANCES_BASE: u64 = 128;
/// inotify watches per cluster: apiserver 8 and KCM 7 measured; margin for cert/config watches.
const INOTIFY_WATCHES_PER_CLUSTER: u64 = 64;
const INOTIFY_WATCHES_BASE: u64 = 8192;
/// Threads per cluster: five Go processes with a few dozen OS threads each.
const THREADS_PER_CLUSTER: u64 = 150;
const THREADS_BASE: u64 = 4096;
/// Descriptors the agent process holds per cluster (kube clients, tunnel, child pipes); the
/// components inherit the agent's limit, and an apiserver with many watches needs thousands.
const NOFILE_PER_CLUSTER: u64 = 32;
const NOFILE_BASE: u64 = 4096;
/// System-wide open files per cluster (five processes with their sockets, WAL and logs).
const FILE_MAX_PER_CLUSTER: u64 = 2048;
const FILE_MAX_BASE: u64 = 65536;
/// A `lean` cluster's objects in the shared etcd (its db grew 3.4 MiB per cluster just after
/// create, measured with 5 clusters; doubled for history kept between compactions) plus its PKI,
/// kubeconfig and logs. A `full` cluster's own etcd preallocates two 61 MiB WAL files
/// (kwok-notes §3): 186 MiB each.
const DISK_PER_CLUSTER: u64 = 16 * MIB;
/// The agent's state and logs, and the shared etcd's WAL (two 64 MiB segments kept, `--max-wals
/// 2`, plus the one being preallocated) and raft snapshots.
const DISK_BASE: u64 = (1024 + 256) * MIB;
/// PSS of one `lean` cluster with the shared etcd and the controller host, shared processes
/// divided by N, measured at N = 50 with rancher-sim's watches and probes (docs/benchmarks.md,
/// "Density": 115.1). `full` clusters cost more.
const MEMORY_PER_CLUSTER: u64 = 115 * MIB;
/// Kept free for the agent, its hosts and the page cache: the agent holds new bring-ups below
/// 1 GiB available.
const MEMORY_BASE: u64 = 2048 * MIB;
/// Idle CPU of the same cluster, in millicores (same run: 12.7). Real Rancher's controllers cost
/// more (rancher-observed.md).
const CPU_PER_CLUSTER_MILLI: u64 = 13;
/// Share of the CPUs idle clusters may take: the rest is for bring-ups, heals and Rancher's bursts;
/// past it the machine saturates and the agent holds new bring-ups.
const CPU_USABLE_PERCENT: u64 = 80;
const MIB: u64 = 1024 * 1024;
/// Largest `kernel.pid_max` on 64-bit Linux.
const PID_MAX_LIMIT: u64 = 4_194_304;
/// Where `--fix` suggests persisting sysctls.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-scale-cluster-agent.conf";

/// A soft/hard resource limit; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Everything preflight measures; `None` where a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readings {
    pub inotify_max_user_instances: Option<u64>,
    pub inotify_max_user_watches: Option<u64>,
    /// RLIMIT_NOFILE of this process (children inherit it).
    pub nofile: Option<Rlimit>,
    pub file_max: Option<u64>,
    pub pid_max: Option<u64>,
    pub threads_max: Option<u64>,
    /// RLIMIT_NPROC of this process (counts the user's threads).
    pub nproc: Option<Rlimit>,
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral_ports: Option<(u16, u16)>,
    /// `net.ipv4.ip_local_reserved_ports`, expanded.
    pub reserved_ports: Option<BTreeSet<u16>>,
    /// TCP ports with a listening socket (IPv4 and IPv6).
    pub listening_ports: Option<BTreeSet<u16>>,
    /// Bytes available to this user where kwokctl keeps clusters.
    pub disk_available: Option<u64>,
    /// Whether this process can write `/proc/sys`.
    pub is_root: bool,
    /// CPUs this process may use (affinity and cgroup quota applied).
    pub cpus: Option<u64>,
    /// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
    pub memory_total: Option<u64>,
    pub memory_available: Option<u64>,
    /// `/sys/kernel/mm/ksm/run` (absent without KSM).
    pub ksm_run: Option<u64>,
    /// Whether the kernel marks a process tree mergeable (`PR_SET_MEMORY_MERGE`, Linux ≥ 6.4).
    pub memory_merge_supported: bool,
}

/// What preflight sizes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub clusters: u32,
    pub ports: PortRange,
    /// The shared etcd's client port (its peer port is the next one), outside the blocks.
    pub shared_etcd_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// A kernel setting `--fix` can set: a sysctl (written under `/proc/sys`) or a `/sys` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlFix {
    /// A dotted sysctl key, or for [`KernelTree::Sys`] the file's path (`/sys/...`).
    pub key: &'static str,
    pub value: String,
    pub tree: KernelTree,
}

/// Where a [`SysctlFix`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelTree {
    ProcSys,
    Sys,
}

/// KSM's switch: 1 runs the merging thread.
pub const KSM_RUN: &str = "/sys/kernel/mm/ksm/run";

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub measured: String,
    pub need: String,
    /// Exact commands that fix it (empty when OK).
    pub fix: Vec<String>,
    /// Set when `--fix` can apply the fix itself.
    pub sysctl: Option<SysctlFix>,
}

impl Check {
    fn ok(name: &'static str, measured: String, need: String) -> Self {
        Check {
            name,
            status: Status::Ok,
            measured,
            need,
            fix: Vec::new(),
            sysctl: None,
        }
    }

    fn unreadable(name: &'static str, what: &str, need: String) -> Self {
        Check {
            status: Status::Warn,
            fix: vec![format!("could not read {what}; check it by hand")],
            ..Check::ok(name, "unknown".into(), need)
        }
    }
}

/// Evaluates `readings` against what `plan` needs. Pure: no I/O.
pub fn evaluate(readings: &Readings, plan: &Plan) -> Vec<Check> {
    let n = u64::from(plan.clusters);
    let threads_need = THREADS_BASE + THREADS_PER_CLUSTER * n;
    vec![
        sysctl_min(
            "inotify instances",
            "fs.inotify.max_user_instances",
            readings.inotify_max_user_instances,
            INOTIFY_INSTANCES_BASE + INOTIFY_INSTANCES_PER_CLUSTER * n,
            u64::MAX,
        ),
        sysctl_min(
            "inotify watches",
            "fs.inotify.max_user_watches",
            readings.inotify_max_user_watches,
            INOTIFY_WATCHES_BASE + INOTIFY_WATCHES_PER_CLUSTER * n,
            u64::MAX,
        ),
        nofile(readings.nofile, NOFILE_BASE + NOFILE_PER_CLUSTER * n),
        sysctl_min(
            "open files (system)",
            "fs.file-max",
            readings.file_max,
            FILE_MAX_BASE + FILE_MAX_PER_CLUSTER * n,
            u64::MAX,
        ),
        sysctl_min(
            "pids",
            "kernel.pid_max",
            readings.pid_max,
            threads_need,
            PID_MAX_LIMIT,
        ),
        sysctl_min(
            "threads",
            "kernel.threads-max",
            readings.threads_max,
            threads_need,
            u64::MAX,
        ),
        nproc(readings.nproc, threads_need),
        ephemeral_overlap(readings, plan),
        ports_in_use(readings, plan),
        disk(readings.disk_available, DISK_BASE + DISK_PER_CLUSTER * n),
        memory(readings, n),
        cpu(readings.cpus, n),
        memory_merging(readings),
    ]
}

/// PSS per cluster KSM saved at N = 50 with rancher-sim (docs/benchmarks.md, 101.3 → 92.0 MiB
/// per apiserver); `ksmd` then used 1.2 mCPU per cluster.
const KSM_SAVING_PER_CLUSTER_MIB: u64 = 9;

/// KSM is a saving, not a limit: off or missing, the clusters still run, each with ~9 MiB more.
fn memory_merging(readings: &Readings) -> Check {
    const NAME: &str = "memory merging (KSM)";
    let need =
        format!("on: ~{KSM_SAVING_PER_CLUSTER_MIB} MiB less per cluster, ksmd ~60 mCPU (optional)");
    let unavailable = |measured: &str, why: String| Check {
        status: Status::Warn,
        fix: vec![why],
        ..Check::ok(NAME, measured.to_string(), need.clone())
    };
    let Some(run) = readings.ksm_run else {
        return unavailable(
            "unknown",
            format!(
                "cannot read {KSM_RUN} (a kernel without KSM, or no /sys): clusters run \
                 without it"
            ),
        );
    };
    if !readings.memory_merge_supported {
        return unavailable(
            "no per-process merging",
            "needs Linux >= 6.4 (PR_SET_MEMORY_MERGE): clusters run without it".into(),
        );
    }
    let measured = format!("{KSM_RUN} = {run}");
    if run == 1 {
        return Check::ok(NAME, measured, need);
    }
    Check {
        status: Status::Warn,
        fix: vec![
            format!("echo 1 > {KSM_RUN}"),
            format!(
                "persistently: `w {KSM_RUN} - - - - 1` in /etc/tmpfiles.d/scale-cluster-agent.conf"
            ),
        ],
        sysctl: Some(SysctlFix {
            key: KSM_RUN,
            value: "1".into(),
            tree: KernelTree::Sys,
        }),
        ..Check::ok(NAME, measured, need)
    }
}

/// How many clusters fit in `capacity` beyond `base` at `per_cluster` each.
fn clusters_fitting(capacity: u64, base: u64, per_cluster: u64) -> u64 {
    capacity.saturating_sub(base) / per_cluster
}

fn memory(readings: &Readings, n: u64) -> Check {
    const NAME: &str = "memory";
    let need = MEMORY_BASE + MEMORY_PER_CLUSTER * n;
    let need_text = format!(
        "{} MiB available ({} MiB per lean cluster)",
        need / MIB,
        MEMORY_PER_CLUSTER / MIB
    );
    let (Some(total), Some(available)) = (readings.memory_total, readings.memory_available) else {
        return Check::unreadable(NAME, "/proc/meminfo", need_text);
    };
    let measured = format!("{} of {} MiB available", available / MIB, total / MIB);
    if available >= need {
        return Check::ok(NAME, measured, need_text);
    }
    let fits = clusters_fitting(available, MEMORY_BASE, MEMORY_PER_CLUSTER);
    Check {
        // Memory others hold may be freed; more than the machine has cannot be.
        status: if total >= need {
            Status::Warn
        } else {
            Status::Fail
        },
        fix: vec![format!(
            "about {fits} clusters fit in the memory available now: run fewer per machine, free \
             memory, or shard across machines (docs/scale-out.md)"
        )],
        ..Check::ok(NAME, measured, need_text)
    }
}

fn cpu(cpus: Option<u64>, n: u64) -> Check {
    const NAME: &str = "CPU (idle clusters)";
    let need = CPU_PER_CLUSTER_MILLI * n;
    let need_text = format!(
        "{need} mCPU idle ({CPU_PER_CLUSTER_MILLI} per lean cluster) in {CPU_USABLE_PERCENT}% of \
         the CPUs"
    );
    let Some(cpus) = cpus else {
        return Check::unreadable(NAME, "the CPUs this process may use", need_text);
    };
    let usable = cpus * 1000 * CPU_USABLE_PERCENT / 100;
    let measured = format!("{cpus} CPUs");
    if need <= usable {
        return Check::ok(NAME, measured, need_text);
    }
    let fits = clusters_fitting(usable, 0, CPU_PER_CLUSTER_MILLI);
    Check {
        // Not a failure: past it the agent holds new bring-ups and tells why, but the clusters
        // beyond about `fits` are unlikely to become active.
        status: Status::Warn,
        fix: vec![format!(
            "about {fits} clusters fit in {cpus} CPUs idle: beyond that the CPU saturates, \
             apiservers turn slow and the agent holds new bring-ups; run fewer per machine or \
             shard across machines (docs/scale-out.md)"
        )],
        ..Check::ok(NAME, measured, need_text)
    }
}

/// Worst status among `checks`.
pub fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}

/// A value to set that covers `need` with headroom: the next power of two, capped at `max`.
fn recommend(need: u64, max: u64) -> u64 {
    need.checked_next_power_of_two().unwrap_or(need).min(max)
}

fn sysctl_min(
    name: &'static str,
    key: &'static str,
    value: Option<u64>,
    need: u64,
    max: u64,
) -> Check {
    let need_text = format!(">= {need}");
    let Some(value) = value else {
        return Check::unreadable(name, key, need_text);
    };
    if value >= need {
        return Check::ok(name, format!("{key} = {value}"), need_text);
    }
    let set = recommend(need, max);
    Check {
        status: Status::Fail,
        fix: vec![
            format!("sysctl -w {key}={set}"),
            format!("echo '{key} = {set}' >> {SYSCTL_FILE}"),
        ],
        sysctl: Some(SysctlFix {
            key,
            value: set.to_string(),
            tree: KernelTree::ProcSys,
        }),
        ..Check::ok(name, format!("{key} = {value}"), need_text)
    }
}

fn limit_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

fn meets(limit: Option<u64>, need: u64) -> bool {
    limit.is_none_or(|v| v >= need)
}

fn nofile(limit: Option<Rlimit>, need: u64) -> Check {
    const NAME: &str = "open files (process)";
    let need_text = format!("soft >= {need}");
    let Some(limit) = limit else {
        return Check::unreadable(NAME, "RLIMIT_NOFILE (/proc/self/limits)", need_text);
    };
    let measured = format!(
        "soft {} / hard {}",
        limit_text(limit.soft),
        limit_text(limit.hard)
    );
    if meets(limit.soft, need) {
        return Check::ok(NAME, measured, need_text);
    }
    let persistent = format!(
        "persistently: `* - nofile {need}` in /etc/security/limits.d/scale-cluster-agent.conf, or LimitNOFILE={need} in the systemd unit"
    );
    if meets(limit.hard, need) {
        // The soft limit can be raised without privileges; it must happen in the shell (or unit)
        // that starts the agent, because the components inherit the agent's limit.
        Check {
            status: Status::Warn,
            fix: vec![
                format!(
                    "ulimit -n {}   # in the shell that starts the agent",
                    limit_text(limit.hard)
                ),
                persistent,
            ],
            ..Check::ok(NAME, measured, need_text)
        }
    } else {
        Check {
            status: Status::Fail,
            fix: vec![
                format!("ulimit -Hn {need} && ulimit -n {need}   # as root, in the shell that starts the agent"),
                persistent,
            ],
            ..Check::ok(NAME, measured, need_text)
        }
    }
}

fn nproc(limit: Option<Rlimit>, need: u64) -> Check {
    const NAME: &str = "processes/threads (user)";
    let need_text = format!("soft >= {need}");
    let Some(limit) = limit else {
        return Check::unreadable(NAME, "RLIMIT_NPROC (/proc/self/limits)", need_text);
    };
    let measured = format!(
        "soft {} / hard {}",
        limit_text(limit.soft),
        limit_text(limit.hard)
    );
    if meets(limit.soft, need) {
        return Check::ok(NAME, measured, need_text);
    }
    Check {
        status: Status::Fail,
        fix: vec![
            format!("ulimit -u {need}   # in the shell that starts the agent (as root if above the hard limit)"),
            format!("persistently: `* - nproc {need}` in /etc/security/limits.d/scale-cluster-agent.conf, or LimitNPROC={need} in the systemd unit"),
        ],
        ..Check::ok(NAME, measured, need_text)
    }
}

/// The ports of every block in the configured range.
fn range_ports(
    ports: &PortRange,
) -> impl Iterator<Item = (u16, [u16; PORTS_PER_BLOCK as usize])> + '_ {
    (0..ports.blocks).filter_map(move |i| ports.block(i).map(|b| (i, b.all())))
}

fn ephemeral_overlap(readings: &Readings, plan: &Plan) -> Check {
    const NAME: &str = "ephemeral port range";
    let spans = fixed_port_spans(plan);
    let listed = |spans: &[(u16, u16)]| {
        spans
            .iter()
            .map(|(lo, hi)| format!("{lo}-{hi}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let need = format!(
        "no overlap with the cluster and shared etcd ports {}",
        listed(&spans)
    );
    let Some((elo, ehi)) = readings.ephemeral_ports else {
        return Check::unreadable(NAME, "net.ipv4.ip_local_port_range", need);
    };
    let measured = format!("{elo}-{ehi}");
    let overlaps: Vec<(u16, u16)> = spans
        .iter()
        .filter(|(lo, hi)| *hi >= elo && *lo <= ehi)
        .map(|(lo, hi)| ((*lo).max(elo), (*hi).min(ehi)))
        .collect();
    if overlaps.is_empty() {
        return Check::ok(NAME, measured, need);
    }
    // Outgoing connections may take any ephemeral port that is not reserved, including a cluster's.
    let reserved = readings.reserved_ports.clone().unwrap_or_default();
    let exposed = overlaps
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).any(|p| !reserved.contains(&p)));
    if !exposed {
        return Check::ok(NAME, format!("{measured} (cluster ports reserved)"), need);
    }
    let reserve = listed(&spans);
    Check {
        status: Status::Warn,
        fix: vec![
            format!("sysctl -w net.ipv4.ip_local_reserved_ports={reserve}"),
            format!("echo 'net.ipv4.ip_local_reserved_ports = {reserve}' >> {SYSCTL_FILE}"),
            "or move the clusters below the ephemeral range with --port-base".to_string(),
        ],
        sysctl: Some(SysctlFix {
            key: "net.ipv4.ip_local_reserved_ports",
            value: reserve,
            tree: KernelTree::ProcSys,
        }),
        ..Check::ok(
            NAME,
            format!("{measured} (overlaps {})", listed(&overlaps)),
            need,
        )
    }
}

/// The fixed ports the agent's processes listen on: the blocks' span and the shared etcd's two
/// ports, merged when adjacent (the default puts the etcd just below the blocks).
fn fixed_port_spans(plan: &Plan) -> Vec<(u16, u16)> {
    let blocks = plan.ports.span();
    let etcd = (
        plan.shared_etcd_port,
        plan.shared_etcd_port.saturating_add(1),
    );
    let (first, second) = if etcd.0 < blocks.0 {
        (etcd, blocks)
    } else {
        (blocks, etcd)
    };
    if second.0 <= first.1.saturating_add(1) {
        vec![(first.0, first.1.max(second.1))]
    } else {
        vec![first, second]
    }
}

fn ports_in_use(readings: &Readings, plan: &Plan) -> Check {
    const NAME: &str = "cluster ports free";
    let need = format!("{} free port blocks", plan.clusters);
    let Some(listening) = &readings.listening_ports else {
        return Check::unreadable(NAME, "/proc/net/tcp", need);
    };
    let mut busy_ports = Vec::new();
    let mut free_blocks: u64 = 0;
    for (_, ports) in range_ports(&plan.ports) {
        let busy: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| listening.contains(p))
            .collect();
        if busy.is_empty() {
            free_blocks += 1;
        }
        busy_ports.extend(busy);
    }
    let measured = if busy_ports.is_empty() {
        format!("{free_blocks} of {} blocks free", plan.ports.blocks)
    } else {
        let shown: Vec<String> = busy_ports.iter().take(8).map(u16::to_string).collect();
        let more = if busy_ports.len() > shown.len() {
            format!(", +{} more", busy_ports.len() - shown.len())
        } else {
            String::new()
        };
        format!(
            "{free_blocks} of {} blocks free; in use: {}{more}",
            plan.ports.blocks,
            shown.join(", ")
        )
    };
    let status = if free_blocks < u64::from(plan.clusters) {
        Status::Fail
    } else if busy_ports.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    let fix = match status {
        Status::Ok => Vec::new(),
        _ => {
            let first = busy_ports.first().copied().unwrap_or(plan.ports.base);
            vec![
                format!("ss -ltnp 'sport = :{first}'   # see who listens (clusters already running count too)"),
                "or pick another range with --port-base / --port-stride / --port-blocks".to_string(),
            ]
        }
    };
    Check {
        status,
        fix,
        ..Check::ok(NAME, measured, need)
    }
}

fn disk(available: Option<u64>, need: u64) -> Check {
    const NAME: &str = "disk for etcd";
    let need_text = format!(
        "{} MiB available ({} MiB per lean cluster; full: 186)",
        need / MIB,
        DISK_PER_CLUSTER / MIB
    );
    let Some(available) = available else {
        return Check::unreadable(NAME, "free space of the kwok work directory", need_text);
    };
    let measured = format!("{} MiB available", available / MIB);
    if available >= need {
        return Check::ok(NAME, measured, need_text);
    }
    Check {
        status: Status::Fail,
        fix: vec![
            "free space there, or point --kwok-workdir at a larger filesystem (not tmpfs)"
                .to_string(),
        ],
        ..Check::ok(NAME, measured, need_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Readings {
        Readings {
            inotify_max_user_instances: Some(8192),
            inotify_max_user_watches: Some(524288),
            nofile: Some(Rlimit {
                soft: Some(1 << 20),
                hard: Some(1 << 20),
            }),
            file_max: Some(9_223_372_036_854_775_807),
            pid_max: Some(4_194_304),
            threads_max: Some(192_730),
            nproc: Some(Rlimit {
                soft: None,
                hard: None,
            }),
            ephemeral_ports: Some((32768, 60999)),
            reserved_ports: Some(BTreeSet::new()),
            listening_ports: Some(BTreeSet::from([22, 6443])),
            disk_available: Some(100 * 1024 * MIB),
            is_root: false,
            cpus: Some(8),
            memory_total: Some(64 * 1024 * MIB),
            memory_available: Some(60 * 1024 * MIB),
            ksm_run: Some(1),
            memory_merge_supported: true,
        }
    }

    #[test]
    fn memory_merging_off_is_a_warning_fix_writes_sys() {
        const NAME: &str = "memory merging (KSM)";
        let off = Readings {
            ksm_run: Some(0),
            ..good()
        };
        let c = check(&evaluate(&off, &plan(50)), NAME).clone();
        assert_eq!(c.status, Status::Warn);
        assert_eq!(c.fix[0], "echo 1 > /sys/kernel/mm/ksm/run");
        assert_eq!(
            c.sysctl,
            Some(SysctlFix {
                key: KSM_RUN,
                value: "1".into(),
                tree: KernelTree::Sys,
            })
        );
        // Without KSM, or without per-process merging, nothing can be fixed: a warning that says
        // why, and no fix to apply.
        for readings in [
            Readings {
                ksm_run: None,
                ..good()
            },
            Readings {
                memory_merge_supported: false,
                ..good()
            },
        ] {
            let c = check(&evaluate(&readings, &plan(50)), NAME).clone();
            assert_eq!(c.status, Status::Warn, "{c:?}");
            assert_eq!(c.sysctl, None);
            assert!(c.fix[0].contains("clusters run without it"), "{c:?}");
        }
    }

    #[test]
    fn memory_and_cpu_say_how_many_clusters_fit() {
        let small = Readings {
            cpus: Some(2),
            memory_total: Some(24 * 1024 * MIB),
            memory_available: Some(20 * 1024 * MIB),
            ..good()
        };
        let checks = evaluate(&small, &plan(50));
        assert_eq!(check(&checks, "memory").status, Status::Ok);
        assert_eq!(check(&checks, "CPU (idle clusters)").status, Status::Ok);

        let checks = evaluate(&small, &plan(150));
        let memory = check(&checks, "memory");
        assert_eq!(memory.status, Status::Ok, "{memory:?}");
        let cpu = check(&checks, "CPU (idle clusters)");
        assert_eq!(cpu.status, Status::Warn);
        assert!(
            cpu.fix[0].starts_with("about 123 clusters fit in 2 CPUs"),
            "{cpu:?}"
        );

        let checks = evaluate(&small, &plan(180));
        let memory = check(&checks, "memory");
        assert_eq!(
            memory.status,
            Status::Warn,
            "others hold memory: {memory:?}"
        );
        assert!(
            memory.fix[0].starts_with("about 160 clusters fit"),
            "{memory:?}"
        );
        let checks = evaluate(&small, &plan(300));
        assert_eq!(check(&checks, "memory").status, Status::Fail);
    }

    fn plan(clusters: u32) -> Plan {
        Plan {
            clusters,
            ports: PortRange::DEFAULT,
            shared_etcd_port: PortRange::DEFAULT.base - 2,
        }
    }

    fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_roomy_host_passes() {
        let checks = evaluate(&good(), &plan(50));
        assert_eq!(checks.len(), 13);
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:#?}");
        assert!(checks.iter().all(|c| c.fix.is_empty()));
        assert_eq!(worst(&checks), Status::Ok);
    }

    #[test]
    fn inotify_instances_scale_with_clusters() {
        let r = Readings {
            inotify_max_user_instances: Some(128),
            ..good()
        };
        // 128 instances are not even enough for one cluster plus the base.
        let c = check(&evaluate(&r, &plan(1)), "inotify instances").clone();
        assert_eq!(c.status, Status::Fail);
        let c = check(&evaluate(&r, &plan(50)), "inotify instances").clone();
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.need, ">= 928");
        assert_eq!(c.fix[0], "sysctl -w fs.inotify.max_user_instances=1024");
        assert!(c.fix[1].contains("fs.inotify.max_user_instances = 1024"));
        assert!(c.fix[1].contains(SYSCTL_FILE));
        assert_eq!(
            c.sysctl,
            Some(SysctlFix {
                key: "fs.inotify.max_user_instances",
                value: "1024".into(),
                tree: KernelTree::ProcSys,
            })
        );
        let r = Readings {
            inotify_max_user_instances: Some(928),
            ..good()
        };
        assert_eq!(
            check(&evaluate(&r, &plan(50)), "inotify instances").status,
            Status::Ok
        );
    }

    #[test]
    fn pid_max_fix_is_capped_at_the_kernel_limit() {
        let r = Readings {
            pid_max: Some(32768),
            ..good()
        };
        assert_eq!(check(&evaluate(&r, &plan(50)), "pids").status, Status::Ok);
        let c = check(&evaluate(&r, &plan(30_000)), "pids").clone();
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.sysctl.unwrap().value, PID_MAX_LIMIT.to_string());
    }

    #[test]
    fn nofile_soft_below_hard_warns_and_hard_below_need_fails() {
        let r = Readings {
            nofile: Some(Rlimit {
                soft: Some(1024),
                hard: Some(524288),
            }),
            ..good()
        };
        let c = check(&evaluate(&r, &plan(50)), "open files (process)").clone();
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix[0].starts_with("ulimit -n 524288"), "{:?}", c.fix);
        assert_eq!(c.sysctl, None);

        let r = Readings {
            nofile: Some(Rlimit {
                soft: Some(1024),
                hard: Some(4096),
            }),
            ..good()
        };
        let c = check(&evaluate(&r, &plan(50)), "open files (process)").clone();
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.need, "soft >= 5696");
        assert!(c.fix[0].contains("ulimit -Hn 5696"), "{:?}", c.fix);
    }

    #[test]
    fn unlimited_nproc_passes_and_low_nproc_fails() {
        let r = Readings {
            nproc: Some(Rlimit {
                soft: Some(4096),
                hard: Some(4096),
            }),
            ..good()
        };
        let checks = evaluate(&r, &plan(50));
        assert_eq!(
            check(&checks, "processes/threads (user)").status,
            Status::Fail
        );
        assert_eq!(worst(&checks), Status::Fail);
    }

    #[test]
    fn ephemeral_overlap_warns_unless_reserved() {
        let plan = Plan {
            clusters: 10,
            ports: PortRange::new(40000, 10, 100).unwrap(),
            shared_etcd_port: 39998,
        };
        let r = Readings {
            ephemeral_ports: Some((32768, 60999)),
            ..good()
        };
        let c = check(&evaluate(&r, &plan), "ephemeral port range").clone();
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix[0],
            "sysctl -w net.ipv4.ip_local_reserved_ports=39998-40995"
        );
        let r = Readings {
            reserved_ports: Some((40000..=40995).collect()),
            ..r.clone()
        };
        assert_eq!(
            check(&evaluate(&r, &plan), "ephemeral port range").status,
            Status::Warn,
            "the shared etcd's ports are exposed"
        );

        let r = Readings {
            reserved_ports: Some((39998..=40995).collect()),
            ..r
        };
        assert_eq!(
            check(&evaluate(&r, &plan), "ephemeral port range").status,
            Status::Ok
        );
    }

    #[test]
    fn busy_ports_warn_and_too_few_free_blocks_fail() {
        let range = PortRange::new(9000, 10, 3).unwrap();
        let r = Readings {
            listening_ports: Some(BTreeSet::from([9000, 9013])),
            ..good()
        };
        let c = check(
            &evaluate(
                &r,
                &Plan {
                    clusters: 1,
                    ports: range,
                    shared_etcd_port: range.base - 2,
                },
            ),
            "cluster ports free",
        )
        .clone();
        assert_eq!(c.status, Status::Warn);
        assert!(c.measured.contains("1 of 3 blocks free"), "{}", c.measured);
        assert!(c.measured.contains("9000, 9013"), "{}", c.measured);
        let c = check(
            &evaluate(
                &r,
                &Plan {
                    clusters: 2,
                    ports: range,
                    shared_etcd_port: range.base - 2,
                },
            ),
            "cluster ports free",
        )
        .clone();
        assert_eq!(c.status, Status::Fail);
        // Ports between blocks (the stride gap) do not count.
        let r = Readings {
            listening_ports: Some(BTreeSet::from([9006, 9007])),
            ..good()
        };
        assert_eq!(
            check(
                &evaluate(
                    &r,
                    &Plan {
                        clusters: 3,
                        ports: range,
                        shared_etcd_port: range.base - 2,
                    }
                ),
                "cluster ports free"
            )
            .status,
            Status::Ok
        );
    }

    #[test]
    fn disk_need_follows_the_etcd_wal_size() {
        let r = Readings {
            disk_available: Some(2 * 1024 * MIB),
            ..good()
        };
        assert_eq!(
            check(&evaluate(&r, &plan(5)), "disk for etcd").status,
            Status::Ok
        );
        let c = check(&evaluate(&r, &plan(50)), "disk for etcd").clone();
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.need,
            format!(
                "{} MiB available (16 MiB per lean cluster; full: 186)",
                1280 + 50 * 16
            )
        );
    }

    #[test]
    fn unreadable_values_warn() {
        let checks = evaluate(&Readings::default(), &plan(50));
        assert!(
            checks.iter().all(|c| c.status == Status::Warn),
            "{checks:#?}"
        );
        assert!(checks.iter().all(|c| c.measured == "unknown"));
    }
}
