//! `preflight --fix`: raises the sysctls a failed or warning check names, by writing `/proc/sys`
//! (root only). Resource limits are not touched: they belong to the shell or unit that starts the
//! agent, so their checks only print the command.

use std::fmt;
use std::path::Path;

use super::host::{sysctl_path, PROC_SYS};
use super::{Check, Status};

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

/// Applies every sysctl fix of a non-OK check to the live kernel (`/proc/sys`).
pub fn apply_fixes(checks: &[Check], is_root: bool) -> Vec<FixOutcome> {
    apply_fixes_in(Path::new(PROC_SYS), checks, is_root)
}

/// [`apply_fixes`] against any `/proc/sys`-like directory (tests use a temporary one).
pub fn apply_fixes_in(proc_sys: &Path, checks: &[Check], is_root: bool) -> Vec<FixOutcome> {
    checks
        .iter()
        .filter(|c| c.status != Status::Ok)
        .filter_map(|c| c.sysctl.as_ref())
        .map(|fix| {
            let path = sysctl_path(proc_sys, fix.key);
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
                    command: format!("sysctl -w {}={to}", fix.key),
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
            ("fs/inotify/max_user_instances", "128\n"),
            ("net/ipv4/ip_local_reserved_ports", "5000\n"),
        ] {
            let path = dir.path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, value).unwrap();
        }
        (checks, dir)
    }

    #[test]
    fn root_writes_the_sysctls_and_keeps_reserved_ports() {
        let (checks, dir) = low_inotify_and_overlap();
        let out = apply_fixes_in(dir.path(), &checks, true);
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
            ]
        );
        let read = |k: &str| std::fs::read_to_string(dir.path().join(k)).unwrap();
        assert_eq!(read("fs/inotify/max_user_instances"), "1024\n");
        assert_eq!(read("net/ipv4/ip_local_reserved_ports"), "5000,7999-8096\n");
    }

    #[test]
    fn without_root_nothing_is_written() {
        let (checks, dir) = low_inotify_and_overlap();
        let out = apply_fixes_in(dir.path(), &checks, false);
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|o| matches!(o, FixOutcome::NeedsRoot { .. })));
        assert!(out[0].to_string().contains("needs root"));
        let read = |k: &str| std::fs::read_to_string(dir.path().join(k)).unwrap();
        assert_eq!(read("fs/inotify/max_user_instances"), "128\n");
    }
}
