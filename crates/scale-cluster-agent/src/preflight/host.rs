//! Reading the host: `/proc/sys`, `/proc/self/limits`, `/proc/net/tcp{,6}`, `/proc/meminfo`,
//! the CPUs this process may use, `statvfs` and KSM's switch in `/sys`.

use std::collections::BTreeSet;
use std::path::Path;

use super::{Readings, Rlimit};
use crate::agent::pressure::meminfo_bytes;

pub(super) const PROC_SYS: &str = "/proc/sys";

impl Readings {
    /// Measures this host; `workdir` is where kwokctl keeps clusters (it need not exist yet).
    pub fn read(workdir: &Path) -> Readings {
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let limit = |name: &str| limits.as_deref().and_then(|l| parse_limit(l, name));
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        Readings {
            inotify_max_user_instances: sysctl_u64("fs.inotify.max_user_instances"),
            inotify_max_user_watches: sysctl_u64("fs.inotify.max_user_watches"),
            nofile: limit("Max open files"),
            file_max: sysctl_u64("fs.file-max"),
            pid_max: sysctl_u64("kernel.pid_max"),
            threads_max: sysctl_u64("kernel.threads-max"),
            nproc: limit("Max processes"),
            ephemeral_ports: sysctl("net.ipv4.ip_local_port_range").and_then(|s| {
                let mut it = s.split_whitespace().map(str::parse::<u16>);
                match (it.next(), it.next()) {
                    (Some(Ok(lo)), Some(Ok(hi))) => Some((lo, hi)),
                    _ => None,
                }
            }),
            reserved_ports: sysctl("net.ipv4.ip_local_reserved_ports")
                .and_then(|s| parse_port_list(&s)),
            listening_ports: crate::sockets::listening_ports(),
            disk_available: available_space(workdir),
            is_root: effective_uid() == Some(0),
            cpus: std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u64),
            memory_total: meminfo
                .as_deref()
                .and_then(|m| meminfo_bytes(m, "MemTotal")),
            memory_available: meminfo
                .as_deref()
                .and_then(|m| meminfo_bytes(m, "MemAvailable")),
            ksm_run: std::fs::read_to_string(super::KSM_RUN)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            memory_merge_supported: crate::kwok::memory_merge::supported(),
        }
    }
}

/// Path of a dotted sysctl key under a `/proc/sys`-like root.
pub(super) fn sysctl_path(root: &Path, key: &str) -> std::path::PathBuf {
    root.join(key.replace('.', "/"))
}

fn sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(Path::new(PROC_SYS), key))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_u64(key: &str) -> Option<u64> {
    sysctl(key)?.parse().ok()
}

/// Soft and hard limit of one `/proc/self/limits` row (`unlimited` becomes `None`).
fn parse_limit(limits: &str, name: &str) -> Option<Rlimit> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let mut fields = line[name.len()..].split_whitespace();
    let value = |v: &str| -> Option<Option<u64>> {
        if v == "unlimited" {
            Some(None)
        } else {
            v.parse().ok().map(Some)
        }
    };
    Some(Rlimit {
        soft: value(fields.next()?)?,
        hard: value(fields.next()?)?,
    })
}

/// `8001-8100,9000` → the set of ports; empty input → empty set.
fn parse_port_list(text: &str) -> Option<BTreeSet<u16>> {
    let mut ports = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => ports.extend(lo.parse::<u16>().ok()?..=hi.parse::<u16>().ok()?),
            None => {
                ports.insert(part.parse().ok()?);
            }
        }
    }
    Some(ports)
}

/// Space available to unprivileged users on the filesystem that holds (or will hold) `dir`.
fn available_space(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    fs4::available_space(existing).ok()
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_self_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             96365                96365                processes \n\
                    Max open files            1024                 unlimited            files     \n";
        assert_eq!(
            parse_limit(text, "Max open files"),
            Some(Rlimit {
                soft: Some(1024),
                hard: None
            })
        );
        assert_eq!(
            parse_limit(text, "Max processes"),
            Some(Rlimit {
                soft: Some(96365),
                hard: Some(96365)
            })
        );
        assert_eq!(parse_limit(text, "Max locked memory"), None);
    }

    #[test]
    fn parses_reserved_port_lists() {
        assert_eq!(parse_port_list(""), Some(BTreeSet::new()));
        assert_eq!(
            parse_port_list("8001-8003,9000"),
            Some(BTreeSet::from([8001, 8002, 8003, 9000]))
        );
        assert_eq!(parse_port_list("x"), None);
    }
}
