//! The controller host child process, its supervisor and its control API client. One per agent:
//! started with the agent, restarted after a crash (full-jitter backoff, reset once it has run
//! for a while), terminated (SIGTERM, then SIGKILL after a grace) and awaited on shutdown; it dies
//! with the agent too (`PR_SET_PDEATHSIG`). The host keeps no state across restarts, so the
//! supervisor registers every cluster again each time it starts one.
//!
//! The host inherits no secret: its environment is scrubbed like every child's
//! ([`crate::secrets::scrub_secret_env`]) and it is given no Rancher token; it reaches each
//! cluster with the files kwokctl gives that cluster's controllers. Its socket lives in a 0700
//! directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use remotedialer::Backoff;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A host that ran this long before exiting was healthy: the next restart starts the backoff
/// over.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long the host gets to stop on SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// A log larger than this is moved to `<name>.previous.log` when the host (re)starts.
const LOG_ROTATE_BYTES: u64 = 16 << 20;
/// How long a started host gets to open its socket before the supervisor gives up on it.
const SOCKET_WAIT: Duration = Duration::from_secs(30);
/// Bounds one control request (a removal waits for the cluster's goroutines, up to 30 s there).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// How to run the controller host.
#[derive(Debug, Clone)]
pub struct ControllerHostConfig {
    /// The `controller-host` binary (from the toolchain).
    pub binary: PathBuf,
    /// Private directory holding the socket; created 0700.
    pub run_dir: PathBuf,
    /// kwokctl's clusters directory (`<workdir>/clusters`).
    pub clusters_dir: PathBuf,
    /// kube-controller-manager controllers to run per cluster (kcm's `--controllers`).
    pub controllers: String,
    /// Where the host's stderr goes (appended; rotated once large).
    pub log_file: PathBuf,
    /// Delay between restarts after crashes.
    pub backoff: Backoff,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerHostError {
    #[error("preparing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller host's socket path {} is too long for a unix socket (at most 107 bytes); use a shorter --data-dir", .0.display())]
    SocketPathTooLong(PathBuf),
    #[error("the controller host refused {action} of cluster {name:?}: {status} {message}")]
    Refused {
        action: &'static str,
        name: String,
        status: u16,
        message: String,
    },
    #[error("the controller host did not answer {action} of cluster {name:?}: {reason}")]
    Unreachable {
        action: &'static str,
        name: String,
        reason: String,
    },
}

/// The running controller host.
pub struct ControllerHost {
    socket: PathBuf,
    pid: watch::Receiver<Option<u32>>,
    /// The clusters the host should run; held (async) across the supervisor's re-registration
    /// and each add/remove, so a removal never races a re-registration of the same cluster.
    registered: Arc<tokio::sync::Mutex<BTreeSet<String>>>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ControllerHost {
    /// Prepares the private run directory and starts the supervisor, which spawns the host at
    /// once.
    pub async fn start(config: ControllerHostConfig) -> Result<Self, ControllerHostError> {
        let socket = config.run_dir.join("controller-host.sock");
        // sun_path holds 108 bytes, the terminating NUL included.
        if socket.as_os_str().len() > 107 {
            return Err(ControllerHostError::SocketPathTooLong(socket));
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
                crate::secrets::ensure_private_dir(dir).map_err(|source| {
                    ControllerHostError::Io {
                        path: dir.clone(),
                        source,
                    }
                })?;
            }
            Ok::<_, ControllerHostError>(())
        })
        .await
        .map_err(|e| ControllerHostError::Io {
            path: config.run_dir.clone(),
            source: std::io::Error::other(e),
        })??;

        let (pid_tx, pid) = watch::channel(None);
        let stop = CancellationToken::new();
        let registered = Arc::new(tokio::sync::Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(supervise(
            config,
            socket.clone(),
            registered.clone(),
            pid_tx,
            stop.clone(),
        ));
        Ok(Self {
            socket,
            pid,
            registered,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The unix socket the host serves its control API on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The host's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// Has the host run the cluster's controllers, now and after every restart of the host.
    /// While the host is down (restarting), the cluster is only recorded: the supervisor
    /// registers it once the host is back. An error means the host refused the cluster (it has
    /// no kubeconfig in the clusters directory); the cluster is then not recorded.
    pub async fn register(&self, name: &str) -> Result<(), ControllerHostError> {
        let mut registered = self.registered.lock().await;
        match request(&self.socket, hyper::Method::PUT, "register", name).await {
            Ok(()) => {}
            Err(ControllerHostError::Unreachable { reason, .. }) => {
                tracing::info!(cluster = name, %reason, "controller host not reachable now; the cluster is registered when it is back");
            }
            Err(err) => return Err(err),
        }
        registered.insert(name.to_string());
        Ok(())
    }

    /// Stops the cluster's controllers (and forgets it, so a restarted host does not run it).
    pub async fn deregister(&self, name: &str) -> Result<(), ControllerHostError> {
        let mut registered = self.registered.lock().await;
        registered.remove(name);
        match request(&self.socket, hyper::Method::DELETE, "removal", name).await {
            // A host that is down runs nothing; when it is back, it is not told about the cluster.
            Ok(()) | Err(ControllerHostError::Unreachable { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The clusters registered now.
    pub async fn registered(&self) -> Vec<String> {
        self.registered.lock().await.iter().cloned().collect()
    }

    /// Stops the host (SIGTERM, SIGKILL after a grace) and waits for it and its supervisor.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            if let Err(error) = task.await {
                tracing::warn!(%error, "controller host supervisor ended abnormally");
            }
        }
    }
}

impl Drop for ControllerHost {
    /// A host dropped without [`ControllerHost::shutdown`] is still stopped: the supervisor sees
    /// the cancellation and terminates it.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn supervise(
    config: ControllerHostConfig,
    socket: PathBuf,
    registered: Arc<tokio::sync::Mutex<BTreeSet<String>>>,
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
                tracing::info!(pid = ?id, socket = %socket.display(), "controller host started");
                tokio::select! {
                    status = child.wait() => {
                        pid.send_replace(None);
                        match status {
                            Ok(status) => tracing::warn!(%status, log = %config.log_file.display(), "controller host exited; restarting it"),
                            Err(error) => tracing::warn!(%error, "waiting for the controller host failed; restarting it"),
                        }
                    }
                    () = reregister(&socket, &registered) => {
                        // Registered; now only its exit or the agent's shutdown matters.
                        tokio::select! {
                            status = child.wait() => {
                                pid.send_replace(None);
                                match status {
                                    Ok(status) => tracing::warn!(%status, log = %config.log_file.display(), "controller host exited; restarting it"),
                                    Err(error) => tracing::warn!(%error, "waiting for the controller host failed; restarting it"),
                                }
                            }
                            () = stop.cancelled() => {
                                terminate(&mut child).await;
                                pid.send_replace(None);
                                return;
                            }
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
                tracing::warn!(%error, binary = %config.binary.display(), "cannot start the controller host; retrying");
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

/// Waits for a (re)started host's socket, then registers every recorded cluster with it.
async fn reregister(socket: &Path, registered: &tokio::sync::Mutex<BTreeSet<String>>) {
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(socket = %socket.display(), "the controller host did not open its socket; its clusters stay unregistered until it restarts");
            return std::future::pending().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered = registered.lock().await;
    for name in registered.iter() {
        if let Err(error) = request(socket, hyper::Method::PUT, "register", name).await {
            tracing::warn!(cluster = %name, %error, "cannot register the cluster with the restarted controller host");
        }
    }
    if !registered.is_empty() {
        tracing::info!(
            clusters = registered.len(),
            "clusters registered with the controller host"
        );
    }
}

/// One control request: `PUT` or `DELETE /clusters/<name>`.
async fn request(
    socket: &Path,
    method: hyper::Method,
    action: &'static str,
    name: &str,
) -> Result<(), ControllerHostError> {
    let unreachable = |reason: String| ControllerHostError::Unreachable {
        action,
        name: name.to_string(),
        reason,
    };
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "controller host connection ended");
            }
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("/clusters/{name}"))
            .header(hyper::header::HOST, "controller-host")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(ControllerHostError::Refused {
                action,
                name: name.to_string(),
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).trim().to_string(),
            })
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no answer within {REQUEST_TIMEOUT:?}"))))
}

async fn spawn(config: &ControllerHostConfig, socket: &Path) -> std::io::Result<Child> {
    let log = open_log(&config.log_file).await?;
    let log_err = log.try_clone()?;
    let mut command = Command::new(&config.binary);
    // The host runs upstream code that needs no secret of ours.
    crate::secrets::scrub_secret_env(command.as_std_mut());
    command
        .arg("--socket")
        .arg(socket)
        .arg("--controllers")
        .arg(&config.controllers)
        // In the environment rather than on the command line: whatever finds KWOK clusters'
        // processes by a path on their command line must not take the host for one of them.
        .env("CONTROLLER_HOST_CLUSTERS_DIR", &config.clusters_dir)
        // The GC target the lean profile gave the kcm and kwok-controller processes it replaces.
        .env("GOGC", "25")
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
        tracing::warn!(pid = id, "controller host ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}
