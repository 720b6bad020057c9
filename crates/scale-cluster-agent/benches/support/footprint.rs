//! Memory and CPU of processes, from `/proc`, for the benchmarks: PSS split into anonymous and
//! file-backed pages (`smaps_rollup`), and CPU as utime + stime (`stat`) over a window.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

#[derive(Debug, Default, Clone)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub pss_anon_kib: u64,
    pub pss_file_kib: u64,
}

impl Memory {
    pub fn add(&mut self, other: &Memory) {
        self.rss_kib += other.rss_kib;
        self.pss_kib += other.pss_kib;
        self.pss_anon_kib += other.pss_anon_kib;
        self.pss_file_kib += other.pss_file_kib;
    }
}

/// Memory and CPU of a set of processes.
#[derive(Debug, Default, Clone)]
pub struct Footprint {
    pub memory: Memory,
    /// CPU used during the window, in millicores.
    pub mcpu: f64,
}

impl Footprint {
    pub fn add(&mut self, other: &Footprint) {
        self.memory.add(&other.memory);
        self.mcpu += other.mcpu;
    }

    /// This footprint's share of one of `n` users (a shared process divided by N).
    #[allow(dead_code)] // Not every bench including this module shares a process this way.
    pub fn divided(&self, n: usize) -> Footprint {
        let n = n.max(1) as u64;
        Footprint {
            memory: Memory {
                rss_kib: self.memory.rss_kib / n,
                pss_kib: self.memory.pss_kib / n,
                pss_anon_kib: self.memory.pss_anon_kib / n,
                pss_file_kib: self.memory.pss_file_kib / n,
            },
            mcpu: self.mcpu / n as f64,
        }
    }
}

pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading smaps_rollup of pid {pid}"))?;
    let field = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
        pss_anon_kib: field("Pss_Anon:"),
        pss_file_kib: field("Pss_File:"),
    })
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid` in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading stat of pid {pid}"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {} in stat of pid {pid}", i + 3))
    };
    // Field 3 (state) is index 0 here, so utime (14) is index 11 and stime (15) index 12.
    Ok(field(11)? + field(12)?)
}

/// CPU ticks of many processes at the start of a window.
pub struct CpuWindow {
    started: Instant,
    ticks: Vec<(u32, u64)>,
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        let ticks = pids
            .iter()
            .map(|p| Ok((*p, cpu_ticks(*p)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            started: Instant::now(),
            ticks,
        })
    }

    /// Each process's footprint: memory now, CPU in millicores since [`Self::start`]. A process
    /// that exited meanwhile is left out, with a note on stderr.
    pub fn finish(self) -> Vec<(u32, Footprint)> {
        let seconds = self.started.elapsed().as_secs_f64();
        self.ticks
            .into_iter()
            .filter_map(|(pid, before)| {
                let measured = cpu_ticks(pid).and_then(|after| {
                    Ok(Footprint {
                        memory: memory_of(pid)?,
                        mcpu: after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SEC / seconds
                            * 1000.0,
                    })
                });
                match measured {
                    Ok(footprint) => Some((pid, footprint)),
                    Err(error) => {
                        eprintln!("left out pid {pid} ({}): {error:#}", component_of(pid));
                        None
                    }
                }
            })
            .collect()
    }
}

/// The program name of `pid` (its argv[0] file name).
pub fn component_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|raw| {
            let argv0 = raw.split(|b| *b == 0).next()?.to_vec();
            let argv0 = String::from_utf8_lossy(&argv0).into_owned();
            Path::new(&argv0)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| format!("pid {pid}"))
}

pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted.get(rank).copied().unwrap_or(f64::NAN)
}
