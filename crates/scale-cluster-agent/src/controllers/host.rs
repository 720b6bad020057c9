//! The controller host child process and its control API client. One per agent, supervised by
//! [`crate::supervisor`] (restarted after a crash, terminated and awaited on shutdown, dead with
//! the agent). The host keeps no state across restarts, so each time one starts, every cluster
//! registered with it is registered again.
//!
//! It is given no Rancher token: it reaches each cluster with the files kwokctl gives that
//! cluster's controllers. Its socket lives in a 0700 directory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use remotedialer::Backoff;

use crate::supervisor::{self, HostSetupError, HostSpec, Supervisor};

/// How long the host gets to stop on SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// How long a started host gets to open its socket before its clusters wait for the next start.
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
    #[error(transparent)]
    Setup(#[from] HostSetupError),
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
    /// The clusters the host should run; held (async) across the re-registration after a start
    /// and each add/remove, so a removal never races a re-registration of the same cluster.
    registered: Arc<tokio::sync::Mutex<BTreeSet<String>>>,
    supervisor: Supervisor,
}

impl ControllerHost {
    /// Prepares the private run directory and starts the supervisor, which spawns the host at
    /// once.
    pub async fn start(config: ControllerHostConfig) -> Result<Self, ControllerHostError> {
        let label = "controller host";
        let socket = supervisor::prepare(
            label,
            &config.run_dir,
            "controller-host.sock",
            &config.log_file,
        )
        .await?;
        let spec = HostSpec {
            label,
            binary: config.binary,
            args: vec![
                "--socket".into(),
                socket.clone().into_os_string(),
                "--controllers".into(),
                config.controllers.into(),
            ],
            env: vec![
                // In the environment rather than on the command line: whatever finds KWOK
                // clusters' processes by a path on their command line must not take the host for
                // one of them.
                (
                    "CONTROLLER_HOST_CLUSTERS_DIR",
                    OsString::from(config.clusters_dir),
                ),
                // The GC target the lean profile gave the kcm and kwok-controller processes it
                // replaces.
                ("GOGC", "25".into()),
            ],
            log_file: config.log_file,
            backoff: config.backoff,
            term_grace: TERM_GRACE,
        };
        let registered = Arc::new(tokio::sync::Mutex::new(BTreeSet::new()));
        let on_start = {
            let (socket, registered) = (socket.clone(), registered.clone());
            move || reregister(socket.clone(), registered.clone())
        };
        Ok(Self {
            socket,
            registered,
            supervisor: Supervisor::start(spec, on_start),
        })
    }

    /// The unix socket the host serves its control API on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The host's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.supervisor.pid()
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
        self.supervisor.shutdown().await;
    }
}

/// Waits for a (re)started host's socket, then registers every recorded cluster with it.
async fn reregister(socket: PathBuf, registered: Arc<tokio::sync::Mutex<BTreeSet<String>>>) {
    let socket = socket.as_path();
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
