//! `preflight --fix`: raises the sysctls a failed or warning check names, by writing `/proc/sys`,
//! and turns KSM on in `/sys` (root only). Resource limits are not touched: they belong to the
//! shell or unit that starts the agent, so their checks only print the command.

use std::fmt;
use std::path::Path;

use super::host::{sysctl_path, PROC_SYS};
use super::{Check, KernelTree, Status};

/// What `--fix` did for one sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixOutcome {
    Applied {
        key: &'static str,
        from: String,
        to: String,
    },
    Failed {
        key: &'static str,
        error: String,
    },
    /// Not root: nothing was written.
    NeedsRoot {
        key: &'static str,
        command: String,
    },
}

impl fmt::Display for FixOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FixOutcome::Applied { key, from, to } => write!(f, "set {key}: {from} -> {to}"),
            FixOutcome::Failed { key, error } => write!(f, "could not set {key}: {error}"),
            FixOutcome::NeedsRoot { key, command } => {
                write!(f, "{key}: needs root; run `{command}` as root")
            }
        }
    }
}

/// Applies every kernel-setting fix of a non-OK check to the live kernel (`/proc/sys`, `/sys`).
pub fn apply_fixes(checks: &[Check], is_root: bool) -> Vec<FixOutcome> {
    apply_fixes_in(Path::new(PROC_SYS), Path::new("/sys"), checks, is_root)
}

/// [`apply_fixes`] against any `/proc/sys`- and `/sys`-like directories (tests use temporary
/// ones).
pub fn apply_fixes_in(
    proc_sys: &Path,
    sys: &Path,
    checks: &[Check],
    is_root: bool,
) -> Vec<FixOutcome> {
    checks
        .iter()
        .filter(|c| c.status != Status::Ok)
        .filter_map(|c| c.sysctl.as_ref())
        .map(|fix| {
            let path = match fix.tree {
                KernelTree::ProcSys => sysctl_path(proc_sys, fix.key),
                KernelTree::Sys => sys.join(fix.key.trim_start_matches("/sys/")),
            };
            let from = std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            // The kernel replaces the whole reserved-ports list, so keep what was reserved before.
            let to = if fix.key == "net.ipv4.ip_local_reserved_ports" && !from.is_empty() {
                format!("{from},{}", fix.value)
            } else {
                fix.value.clone()
            };
            if !is_root {
                return FixOutcome::NeedsRoot {
                    key: fix.key,
                    command: match fix.tree {
                        KernelTree::ProcSys => format!("sysctl -w {}={to}", fix.key),
                        KernelTree::Sys => format!("echo {to} > {}", fix.key),
                    },
                };
            }
            match std::fs::write(&path, format!("{to}\n")) {
                Ok(()) => FixOutcome::Applied {
                    key: fix.key,
                    from,
                    to,
                },
                Err(e) => FixOutcome::Failed {
                    key: fix.key,
                    error: format!("writing {}: {e}", path.display()),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{evaluate, Plan, Readings};
    use super::*;
    use crate::store::ports::PortRange;

    fn low_inotify_and_overlap() -> (Vec<Check>, tempfile::TempDir) {
        let r = Readings {
            inotify_max_user_instances: Some(128),
            ephemeral_ports: Some((1024, 60999)),
            ksm_run: Some(0),
            memory_merge_supported: true,
            ..Readings::default()
        };
        let checks = evaluate(
            &r,
            &Plan {
                clusters: 50,
                ports: PortRange::new(8001, 10, 10).unwrap(),
                shared_etcd_port: 7999,
            },
        );
        let dir = tempfile::tempdir().unwrap();
        for (key, value) in [
            ("proc/sys/fs/inotify/max_user_instances", "128\n"),
            ("proc/sys/net/ipv4/ip_local_reserved_ports", "5000\n"),
            ("sys/kernel/mm/ksm/run", "0\n"),
        ] {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        (checks, dir)
    }

    fn apply(checks: &[Check], dir: &tempfile::TempDir, is_root: bool) -> Vec<FixOutcome> {
        apply_fixes_in(
            &dir.path().join("proc/sys"),
            &dir.path().join("sys"),
            checks,
            is_root,
        )
    }

    #[test]
    fn root_writes_the_sysctls_and_keeps_reserved_ports() {
        let (checks, dir) = low_inotify_and_overlap();
        let out = apply(&checks, &dir, true);
        assert_eq!(
            out,
            vec![
                FixOutcome::Applied {
                    key: "fs.inotify.max_user_instances",
                    from: "128".into(),
                    to: "1024".into()
                },
                FixOutcome::Applied {
                    key: "net.ipv4.ip_local_reserved_ports",
                    from: "5000".into(),
                    to: "5000,7999-8096".into()
                },
                FixOutcome::Applied {
                    key: "/sys/kernel/mm/ksm/run",
                    from: "0".into(),
                    to: "1".into()
                },
            ]
        );
        let read = |k: &str| std::fs::read_to_string(dir.path().join(k)).unwrap();
        assert_eq!(read("proc/sys/fs/inotify/max_user_instances"), "1024\n");
        assert_eq!(
            read("proc/sys/net/ipv4/ip_local_reserved_ports"),
            "5000,7999-8096\n"
        );
        assert_eq!(read("sys/kernel/mm/ksm/run"), "1\n");
    }

    #[test]
    fn without_root_nothing_is_written() {
        let (checks, dir) = low_inotify_and_overlap();
        let out = apply(&checks, &dir, false);
        assert_eq!(out.len(), 3);
        assert!(out
            .iter()
            .all(|o| matches!(o, FixOutcome::NeedsRoot { .. })));
        assert!(out[0].to_string().contains("needs root"));
        assert!(
            out[2]
                .to_string()
                .contains("echo 1 > /sys/kernel/mm/ksm/run"),
            "{}",
            out[2]
        );
        let read = |k: &str| std::fs::read_to_string(dir.path().join(k)).unwrap();
        assert_eq!(read("proc/sys/fs/inotify/max_user_instances"), "128\n");
        assert_eq!(read("sys/kernel/mm/ksm/run"), "0\n");
    }
}
