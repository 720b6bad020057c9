//! Version verification: runs a binary's own version command, parses what it prints and matches it
//! against the pin. Results are memoised per (path, size, mtime) so repeated lookups in one process
//! do not re-run seven binaries.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use wait_timeout::ChildExt;

use super::{Component, ToolchainError};

/// A version command that takes longer than this is treated as broken (e.g. a server binary that
/// ignores `--version` and starts serving).
const VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// Arguments that make the component print its version.
fn version_args(component: Component) -> &'static [&'static str] {
    match component {
        // `kubectl --version` is not a kubectl flag; `version --client` avoids contacting a server.
        Component::Kubectl => &["version", "--client"],
        _ => &["--version"],
    }
}

/// Extracts the version from a component's version output, normalised to the pin's `v` prefix:
/// - kube-apiserver / kube-controller-manager / kube-scheduler: `Kubernetes v1.36.1`
/// - kubectl: `Client Version: v1.36.1`
/// - etcd: `etcd Version: 3.6.16`
/// - kwok / kwokctl: `kwok version v0.8.0 go1.26.8 (linux/amd64)`
pub fn parse_version(component: Component, output: &str) -> Option<String> {
    let marker = match component {
        Component::KubeApiserver | Component::KubeControllerManager | Component::KubeScheduler => {
            "Kubernetes "
        }
        Component::Kubectl => "Client Version: ",
        Component::Etcd => "etcd Version: ",
        Component::Kwok => "kwok version ",
        Component::Kwokctl => "kwokctl version ",
    };
    let version = output
        .lines()
        .find_map(|line| line.trim().strip_prefix(marker))?
        .split_whitespace()
        .next()?;
    Some(if version.starts_with('v') {
        version.to_string()
    } else {
        format!("v{version}")
    })
}

type Fingerprint = (u64, Option<SystemTime>);

fn memo() -> &'static Mutex<HashMap<PathBuf, (Fingerprint, String)>> {
    static MEMO: OnceLock<Mutex<HashMap<PathBuf, (Fingerprint, String)>>> = OnceLock::new();
    MEMO.get_or_init(Default::default)
}

/// Runs `path`'s version command and returns the version it reports (memoised while the file is
/// unchanged).
pub fn probe(component: Component, path: &Path) -> Result<String, ToolchainError> {
    let check_err = |detail: String| ToolchainError::VersionCheck {
        component,
        path: path.to_path_buf(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| check_err(e.to_string()))?;
    let fingerprint = (meta.len(), meta.modified().ok());
    if let Ok(memo) = memo().lock() {
        if let Some((fp, version)) = memo.get(path) {
            if *fp == fingerprint {
                return Ok(version.clone());
            }
        }
    }

    let output = run_with_timeout(path, version_args(component)).map_err(check_err)?;
    let version = parse_version(component, &output).ok_or_else(|| {
        let first = output.lines().next().unwrap_or("").trim();
        check_err(format!(
            "`{} {}` printed no recognisable version (first line: {first:?})",
            component,
            version_args(component).join(" ")
        ))
    })?;
    if let Ok(mut memo) = memo().lock() {
        memo.insert(path.to_path_buf(), (fingerprint, version.clone()));
    }
    Ok(version)
}

/// Checks that `path` reports the pinned version of `component`.
pub fn verify(component: Component, path: &Path) -> Result<(), ToolchainError> {
    let found = probe(component, path)?;
    if found == component.pinned_version() {
        Ok(())
    } else {
        Err(ToolchainError::WrongVersion {
            component,
            path: path.to_path_buf(),
            found,
            expected: component.pinned_version(),
        })
    }
}

/// Runs `path args...`, returning stdout and stderr together (some tools print versions to stderr).
fn run_with_timeout(path: &Path, args: &[&str]) -> Result<String, String> {
    let mut child = spawn_retrying_busy(path, args).map_err(|e| format!("cannot run it: {e}"))?;
    // Read both pipes on threads so a chatty binary cannot block on a full pipe while we wait.
    let readers = [
        child.stdout.take().map(spawn_reader),
        child.stderr.take().map(spawn_reader),
    ];
    let status = match child.wait_timeout(VERSION_TIMEOUT) {
        Ok(Some(status)) => status,
        Ok(None) => {
            // Best effort: the binary hung; the error below is what matters.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`{}` did not finish within {}s",
                args.join(" "),
                VERSION_TIMEOUT.as_secs()
            ));
        }
        Err(e) => return Err(format!("waiting for it failed: {e}")),
    };
    let mut text = String::new();
    for reader in readers.into_iter().flatten() {
        if let Ok(part) = reader.join() {
            text.push_str(&part);
        }
    }
    if !status.success() {
        let first = text.lines().next().unwrap_or("").trim();
        return Err(format!(
            "`{}` exited with {status} ({first:?})",
            args.join(" ")
        ));
    }
    Ok(text)
}

/// Spawns `path args...`. A freshly written binary can briefly fail with ETXTBSY when another
/// thread forked while its write handle was open (the child holds a copy until it execs), so that
/// one error is retried for a short while.
fn spawn_retrying_busy(path: &Path, args: &[&str]) -> std::io::Result<std::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        let mut command = Command::new(path);
        // The probed binary may be any file on PATH; it gets no token.
        crate::secrets::scrub_secret_env(&mut command);
        let spawned = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn spawn_reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error just truncates the output; parsing then reports what is missing.
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_outputs() {
        assert_eq!(
            parse_version(Component::KubeApiserver, "Kubernetes v1.36.1\n").as_deref(),
            Some("v1.36.1")
        );
        assert_eq!(
            parse_version(
                Component::Kubectl,
                "Client Version: v1.32.4-dispatcher\nKustomize Version: v5.5.0\n"
            )
            .as_deref(),
            Some("v1.32.4-dispatcher")
        );
        assert_eq!(
            parse_version(
                Component::Etcd,
                "etcd Version: 3.6.16\nGit SHA: Not provided (use ./build instead of go build)\nGo Version: go1.26.8\n"
            )
            .as_deref(),
            Some("v3.6.16")
        );
        assert_eq!(
            parse_version(
                Component::Kwok,
                "kwok version v0.8.0 go1.26.8 (linux/amd64)\n"
            )
            .as_deref(),
            Some("v0.8.0")
        );
        assert_eq!(
            parse_version(
                Component::Kwokctl,
                "kwokctl version v0.8.0 go1.26.8 (linux/amd64)\n"
            )
            .as_deref(),
            Some("v0.8.0")
        );
    }

    #[test]
    fn unbuilt_kube_version_is_not_the_pin() {
        let v = parse_version(
            Component::KubeScheduler,
            "Kubernetes v0.0.0-master+$Format:%H$\n",
        );
        assert_eq!(v.as_deref(), Some("v0.0.0-master+$Format:%H$"));
        assert_ne!(
            v.as_deref(),
            Some(Component::KubeScheduler.pinned_version())
        );
        assert_eq!(parse_version(Component::Etcd, "Kubernetes v1.36.1"), None);
    }
}
