//! Supervision of the agent's long-lived helper children, its "hosts" of upstream code (the steve
//! host, the controller host): one process each per agent, started with the agent, restarted
//! after a crash (full-jitter backoff, reset once it has run for a while), terminated (SIGTERM,
//! then SIGKILL after a grace) and awaited on shutdown. Each dies with the agent too
//! (`PR_SET_PDEATHSIG`), so an agent killed with -9 leaves no host behind.
//!
//! A host inherits no secret: its environment is scrubbed like every child's
//! ([`crate::secrets::scrub_secret_env`]), and the directories of its socket and log are private
//! (0700). What differs between hosts (arguments, environment, what to do once one is up) is
//! data in a [`HostSpec`].

use std::ffi::OsString;
use std::future::Future;
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
/// A log larger than this is moved to `<name>.previous.log` when the host (re)starts.
const LOG_ROTATE_BYTES: u64 = 16 << 20;
/// `sun_path` holds 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// How to run one host.
#[derive(Debug, Clone)]
pub struct HostSpec {
    /// Names the host in logs ("steve host").
    pub label: &'static str,
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the scrubbed environment.
    pub env: Vec<(&'static str, OsString)>,
    /// Where the host's stdout and stderr go (appended; rotated once large).
    pub log_file: PathBuf,
    /// Delay between restarts after crashes.
    pub backoff: Backoff,
    /// How long the host gets to stop on SIGTERM before it is killed.
    pub term_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HostSetupError {
    #[error("preparing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {label}'s socket path {} is too long for a unix socket (at most 107 bytes); use a shorter --data-dir", path.display())]
    SocketPathTooLong { label: &'static str, path: PathBuf },
}

/// Prepares a host's private (0700) directories, the run directory and the log's, and returns
/// its socket path `<run_dir>/<socket_file>`, refused if too long for a unix socket.
pub async fn prepare(
    label: &'static str,
    run_dir: &Path,
    socket_file: &str,
    log_file: &Path,
) -> Result<PathBuf, HostSetupError> {
    let socket = run_dir.join(socket_file);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(HostSetupError::SocketPathTooLong {
            label,
            path: socket,
        });
    }
    let dirs: Vec<PathBuf> = [Some(run_dir), log_file.parent()]
        .into_iter()
        .flatten()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect();
    tokio::task::spawn_blocking(move || {
        for dir in &dirs {
            crate::secrets::ensure_private_dir(dir).map_err(|source| HostSetupError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    })
    .await
    .map_err(|e| HostSetupError::Io {
        path: run_dir.to_path_buf(),
        source: std::io::Error::other(e),
    })??;
    Ok(socket)
}

/// A supervised host: its pid while it runs, and the supervisor task.
pub struct Supervisor {
    pid: watch::Receiver<Option<u32>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Supervisor {
    /// Spawns the host at once and keeps it running. `on_start` runs after each (re)start,
    /// alongside the wait for the host's exit (a restarted host's state is rebuilt there); a host
    /// that exits meanwhile abandons it.
    pub fn start<F, Fut>(spec: HostSpec, on_start: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (pid_tx, pid) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(spec, on_start, pid_tx, stop.clone()));
        Self {
            pid,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// The host's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// Follows the host's pid: `None` between a crash and the restart.
    pub fn watch_pid(&self) -> watch::Receiver<Option<u32>> {
        self.pid.clone()
    }

    /// Stops the host (SIGTERM, SIGKILL after its grace) and waits for it and the supervisor.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if let Err(error) = task.await {
                tracing::warn!(%error, "host supervisor ended abnormally");
            }
        }
    }
}

impl Drop for Supervisor {
    /// A host dropped without [`Supervisor::shutdown`] (a failed start) is still stopped: the
    /// supervisor sees the cancellation and terminates it.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn supervise<F, Fut>(
    spec: HostSpec,
    on_start: F,
    pid: watch::Sender<Option<u32>>,
    stop: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let label = spec.label;
    let mut attempt = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        match spawn(&spec).await {
            Ok(mut child) => {
                let id = child.id();
                pid.send_replace(id);
                tracing::info!(pid = ?id, "{label} started");
                let on_start = on_start();
                tokio::pin!(on_start);
                let mut set_up = false;
                loop {
                    tokio::select! {
                        status = child.wait() => {
                            pid.send_replace(None);
                            match status {
                                Ok(status) => tracing::warn!(%status, log = %spec.log_file.display(), "{label} exited; restarting it"),
                                Err(error) => tracing::warn!(%error, "waiting for the {label} failed; restarting it"),
                            }
                            break;
                        }
                        () = &mut on_start, if !set_up => set_up = true,
                        () = stop.cancelled() => {
                            terminate(label, &mut child, spec.term_grace).await;
                            pid.send_replace(None);
                            return;
                        }
                    }
                }
                if started.elapsed() >= STABLE_AFTER {
                    attempt = 0;
                }
            }
            Err(error) => {
                tracing::warn!(%error, binary = %spec.binary.display(), "cannot start the {label}; retrying");
            }
        }
        let delay = spec.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn spawn(spec: &HostSpec) -> std::io::Result<Child> {
    let log = open_log(&spec.log_file).await?;
    let log_err = log.try_clone()?;
    let mut command = Command::new(&spec.binary);
    // A host runs upstream code that needs no secret of ours.
    crate::secrets::scrub_secret_env(command.as_std_mut());
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
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

/// SIGTERM, then SIGKILL if the host has not exited within `grace`; always reaped.
async fn terminate(label: &str, child: &mut Child, grace: Duration) {
    if let Some(id) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(id),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid = id, "{label} ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}
