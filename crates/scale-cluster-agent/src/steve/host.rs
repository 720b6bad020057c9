//! The steve host child process: one per agent, supervised by [`crate::supervisor`] (restarted
//! after a crash, terminated and awaited on shutdown, dead with the agent).
//!
//! It is given no Rancher token: Steve authenticates Rancher's impersonation headers, and reaches
//! each cluster with that cluster's own admin kubeconfig. Its socket lives in a 0700 directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use remotedialer::Backoff;
use tokio::sync::watch;

use crate::supervisor::{self, HostSetupError, HostSpec, Supervisor};

/// How long the host gets to stop on SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);

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

/// Why the steve host could not be set up.
pub type SteveHostError = HostSetupError;

/// The running steve host.
pub struct SteveHost {
    socket: PathBuf,
    supervisor: Supervisor,
}

impl SteveHost {
    /// Prepares the private run directory and starts the supervisor, which spawns the host at
    /// once. Requests can be forwarded as soon as the socket exists; until then they get a 503.
    pub async fn start(config: SteveHostConfig) -> Result<Self, SteveHostError> {
        let socket = supervisor::prepare(
            "steve host",
            &config.run_dir,
            "steve-host.sock",
            &config.log_file,
        )
        .await?;
        let spec = HostSpec {
            label: "steve host",
            binary: config.binary,
            args: vec![
                "--socket".into(),
                socket.clone().into_os_string(),
                "--idle-timeout".into(),
                format!("{}ms", config.idle_timeout.as_millis().max(1)).into(),
            ],
            // In the environment rather than on the command line: whatever finds KWOK clusters'
            // processes by a path on their command line must not take the host for one of them.
            env: vec![(
                "STEVE_HOST_CLUSTERS_DIR",
                OsString::from(config.clusters_dir),
            )],
            log_file: config.log_file,
            backoff: config.backoff,
            term_grace: TERM_GRACE,
        };
        Ok(Self {
            socket,
            supervisor: Supervisor::start(spec, || std::future::ready(())),
        })
    }

    /// The unix socket the host serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The host's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.supervisor.pid()
    }

    /// Follows the host's pid: `None` between a crash and the restart.
    pub fn watch_pid(&self) -> watch::Receiver<Option<u32>> {
        self.supervisor.watch_pid()
    }

    /// Stops the host (SIGTERM, SIGKILL after a grace) and waits for it and its supervisor.
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }
}
