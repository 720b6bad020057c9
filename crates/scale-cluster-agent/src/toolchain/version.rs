//! Version verification: runs a binary's own version command, parses what it prints and matches it
//! against the pin. Results are memoised per (path, size, mtime) so repeated lookups in one process
//! do not re-run seven binaries. The probes are async (tokio processes with a timeout): they run
//! from the agent's and the CLI's runtime and must not hold a worker thread while a binary starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::process::Command;

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
/// - steve-host: `steve-host version v0.9.18-<source hash>`
pub fn parse_version(component: Component, output: &str) -> Option<String> {
    let marker = match component {
        Component::KubeApiserver | Component::KubeControllerManager | Component::KubeScheduler => {
            "Kubernetes "
        }
        Component::Kubectl => "Client Version: ",
        Component::Etcd => "etcd Version: ",
        Component::Kwok => "kwok version ",
        Component::Kwokctl => "kwokctl version ",
        Component::SteveHost => "steve-host version ",
        Component::ControllerHost => "controller-host version ",
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
pub async fn probe(component: Component, path: &Path) -> Result<String, ToolchainError> {
    let check_err = |detail: String| ToolchainError::VersionCheck {
        component,
        path: path.to_path_buf(),
        detail,
    };
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| check_err(e.to_string()))?;
    let fingerprint = (meta.len(), meta.modified().ok());
    if let Ok(memo) = memo().lock() {
        if let Some((fp, version)) = memo.get(path) {
            if *fp == fingerprint {
                return Ok(version.clone());
            }
        }
    }

    let output = run_with_timeout(path, version_args(component), VERSION_TIMEOUT)
        .await
        .map_err(check_err)?;
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
pub async fn verify(component: Component, path: &Path) -> Result<(), ToolchainError> {
    let found = probe(component, path).await?;
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
async fn run_with_timeout(path: &Path, args: &[&str], limit: Duration) -> Result<String, String> {
    let child = spawn_retrying_busy(path, args)
        .await
        .map_err(|e| format!("cannot run it: {e}"))?;
    // `wait_with_output` reads both pipes while it waits, so a chatty binary cannot block on a
    // full pipe. On timeout the future is dropped, and with it the child, which `kill_on_drop`
    // kills (tokio reaps it in the background).
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for it failed: {e}")),
        Err(_) => {
            return Err(format!(
                "`{}` did not finish within {}s",
                args.join(" "),
                limit.as_secs_f64()
            ))
        }
    };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    check_status(output.status, args, &text)?;
    Ok(text)
}

fn check_status(status: ExitStatus, args: &[&str], text: &str) -> Result<(), String> {
    if status.success() {
        return Ok(());
    }
    let first = text.lines().next().unwrap_or("").trim();
    Err(format!(
        "`{}` exited with {status} ({first:?})",
        args.join(" ")
    ))
}

/// Spawns `path args...`. A freshly written binary can briefly fail with ETXTBSY when another
/// thread forked while its write handle was open (the child holds a copy until it execs), so that
/// one error is retried for a short while.
async fn spawn_retrying_busy(path: &Path, args: &[&str]) -> std::io::Result<tokio::process::Child> {
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        let mut command = Command::new(path);
        // The probed binary may be any file on PATH; it gets no token.
        crate::secrets::scrub_secret_env(command.as_std_mut());
        let spawned = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A slow `--version` does not hold the runtime: on a single-threaded runtime another task
    /// keeps running while the probe waits (a blocking wait would starve it).
    #[tokio::test(flavor = "current_thread")]
    async fn probing_leaves_the_runtime_free() {
        let tmp = tempfile::tempdir().unwrap();
        let slow = script(tmp.path(), "etcd", "sleep 1\necho 'etcd Version: 3.6.16'");
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let version = probe(Component::Etcd, &slow).await.unwrap();
        ticker.abort();
        assert_eq!(version, "v3.6.16");
        // One second of 10 ms sleeps: a blocked runtime would show none at all.
        let ticks = ticks.load(std::sync::atomic::Ordering::Relaxed);
        assert!(ticks >= 10, "only {ticks} ticks while the probe ran");
    }

    /// A binary that never answers is an error after the timeout, and is killed.
    #[tokio::test]
    async fn a_hanging_version_command_times_out_and_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("pid");
        let hang = script(
            tmp.path(),
            "hang",
            &format!("echo $$ > {}\nexec sleep 600", pid_file.display()),
        );
        let err = run_with_timeout(&hang, &["--version"], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.contains("did not finish within 1s"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie until tokio reaps it in the background.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                    Some(state != "Z")
                })
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while running() {
            assert!(
                std::time::Instant::now() < deadline,
                "the hanging probe (pid {pid}) still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The probed binary may be anything on PATH: it must not see a token variable.
    #[tokio::test]
    async fn the_probed_binary_gets_no_token() {
        // A name of its own, so no other test reads it.
        const SECRET: &str = "SCA_VERSION_PROBE_TEST_TOKEN";
        // std serialises its own environment reads and writes (spawning included), and no other
        // test uses this name.
        std::env::set_var(SECRET, "token-xxxxx:secret");
        let tmp = tempfile::tempdir().unwrap();
        let spy = script(
            tmp.path(),
            "etcd",
            &format!("[ -z \"${SECRET}\" ] || exit 9\necho 'etcd Version: 3.6.16'"),
        );
        let probed = run_with_timeout(&spy, &["--version"], VERSION_TIMEOUT).await;
        std::env::remove_var(SECRET);
        assert_eq!(probed.unwrap().trim(), "etcd Version: 3.6.16");
    }

    #[tokio::test]
    async fn a_failing_version_command_reports_its_status_and_first_line() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = script(tmp.path(), "bad", "echo 'unknown flag' >&2\nexit 3");
        let err = run_with_timeout(&bad, &["--version"], Duration::from_secs(20))
            .await
            .unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("unknown flag"),
            "{err}"
        );
    }

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
    fn parses_the_steve_host_version() {
        assert_eq!(
            parse_version(
                Component::SteveHost,
                "steve-host version v0.9.18-0123456789abcdef\n"
            )
            .as_deref(),
            Some("v0.9.18-0123456789abcdef")
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
