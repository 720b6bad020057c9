//! The steve host child process and its supervisor. One per agent: started with the agent,
//! restarted after a crash (full-jitter backoff, reset once it has run for a while), terminated
//! (SIGTERM, then SIGKILL after a grace) and awaited on shutdown. It dies with the agent too
//! (`PR_SET_PDEATHSIG`), so an agent killed with -9 leaves no host behind.
//!
//! The host inherits no secret: its environment is scrubbed like every child's
//! ([`crate::secrets::scrub_secret_env`]), it is given no Rancher token (Steve authenticates
//! Rancher's impersonation headers, and reaches each cluster with that cluster's own admin
//! kubeconfig), and its socket lives in a 0700 directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use remotedialer::Backoff;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A host that ran this long before exiting was healthy: the next restart starts the backoff
/// over.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long the host gets to stop on SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// A log larger than this is moved to `<name>.previous.log` when the host (re)starts.
const LOG_ROTATE_BYTES: u64 = 16 << 20;

/// How to run the steve host.
#[derive(Debug, Clone)]
pub struct SteveHostConfig {
    /// The `steve-host` binary (from the toolchain).
    pub binary: PathBuf,
    /// Private directory holding the socket; created 0700.
    pub run_dir: PathBuf,
    /// kwokctl's clusters directory ([`super::clusters_dir`]).
    pub clusters_dir: PathBuf,
    /// How long a cluster's Steve server lives without requests.
    pub idle_timeout: Duration,
    /// Where the host's stderr goes (appended; rotated once large).
    pub log_file: PathBuf,
    /// Delay between restarts after crashes.
    pub backoff: Backoff,
}

#[derive(Debug, thiserror::Error)]
pub enum SteveHostError {
    #[error("preparing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the steve host's socket path {} is too long for a unix socket (at most 107 bytes); use a shorter --data-dir", .0.display())]
    SocketPathTooLong(PathBuf),
}

/// The running steve host.
pub struct SteveHost {
    socket: PathBuf,
    pid: watch::Receiver<Option<u32>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SteveHost {
    /// Prepares the private run directory and starts the supervisor, which spawns the host at
    /// once. Requests can be forwarded as soon as the socket exists; until then they get a 503.
    pub async fn start(config: SteveHostConfig) -> Result<Self, SteveHostError> {
        let socket = config.run_dir.join("steve-host.sock");
        // sun_path holds 108 bytes, the terminating NUL included.
        if socket.as_os_str().len() > 107 {
            return Err(SteveHostError::SocketPathTooLong(socket));
        }
        let dirs = [
            config.run_dir.clone(),
            config
                .log_file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        ];
        tokio::task::spawn_blocking(move || {
            for dir in dirs.iter().filter(|d| !d.as_os_str().is_empty()) {
                crate::secrets::ensure_private_dir(dir).map_err(|source| SteveHostError::Io {
                    path: dir.clone(),
                    source,
                })?;
            }
            Ok::<_, SteveHostError>(())
        })
        .await
        .map_err(|e| SteveHostError::Io {
            path: config.run_dir.clone(),
            source: std::io::Error::other(e),
        })??;

        let (pid_tx, pid) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(config, socket.clone(), pid_tx, stop.clone()));
        Ok(Self {
            socket,
            pid,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The unix socket the host serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The host's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// Follows the host's pid: `None` between a crash and the restart.
    pub fn watch_pid(&self) -> watch::Receiver<Option<u32>> {
        self.pid.clone()
    }

    /// Stops the host (SIGTERM, SIGKILL after a grace) and waits for it and its supervisor.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if let Err(error) = task.await {
                tracing::warn!(%error, "steve host supervisor ended abnormally");
            }
        }
    }
}

impl Drop for SteveHost {
    /// A host dropped without [`SteveHost::shutdown`] (a failed start) is still stopped: the
    /// supervisor sees the cancellation and terminates it.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn supervise(
    config: SteveHostConfig,
    socket: PathBuf,
    pid: watch::Sender<Option<u32>>,
    stop: CancellationToken,
) {
    let mut attempt = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        match spawn(&config, &socket).await {
            Ok(mut child) => {
                let id = child.id();
                pid.send_replace(id);
                tracing::info!(pid = ?id, socket = %socket.display(), "steve host started");
                tokio::select! {
                    status = child.wait() => {
                        pid.send_replace(None);
                        match status {
                            Ok(status) => tracing::warn!(%status, log = %config.log_file.display(), "steve host exited; restarting it"),
                            Err(error) => tracing::warn!(%error, "waiting for the steve host failed; restarting it"),
                        }
                    }
                    () = stop.cancelled() => {
                        terminate(&mut child).await;
                        pid.send_replace(None);
                        return;
                    }
                }
                if started.elapsed() >= STABLE_AFTER {
                    attempt = 0;
                }
            }
            Err(error) => {
                tracing::warn!(%error, binary = %config.binary.display(), "cannot start the steve host; retrying");
            }
        }
        let delay = config.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn spawn(config: &SteveHostConfig, socket: &Path) -> std::io::Result<Child> {
    let log = open_log(&config.log_file).await?;
    let log_err = log.try_clone()?;
    let mut command = Command::new(&config.binary);
    // The host runs upstream code that needs no secret of ours.
    crate::secrets::scrub_secret_env(command.as_std_mut());
    command
        .arg("--socket")
        .arg(socket)
        // In the environment rather than on the command line: whatever finds KWOK clusters'
        // processes by a path on their command line must not take the host for one of them.
        .env("STEVE_HOST_CLUSTERS_DIR", &config.clusters_dir)
        .arg("--idle-timeout")
        .arg(format!("{}ms", config.idle_timeout.as_millis().max(1)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It ties the host's
    // life to the thread that spawned it, a runtime worker that lives as long as the agent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
                .map_err(std::io::Error::from)
        });
    }
    command.spawn()
}

/// Opens the host's log for appending (0600), first moving a large one aside.
async fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Ok(meta) = tokio::fs::metadata(path).await {
        if meta.len() > LOG_ROTATE_BYTES {
            tokio::fs::rename(path, path.with_extension("previous.log")).await?;
        }
    }
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .await?;
    Ok(file.into_std().await)
}

/// SIGTERM, then SIGKILL if the host has not exited within [`TERM_GRACE`]; always reaped.
async fn terminate(child: &mut Child) {
    if let Some(id) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(id),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid = id, "steve host ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}
