//! The agent's one shared etcd: the store of every cluster recorded with `etcd = shared` (the
//! `lean` profile), each under its own key prefix ([`etcd_prefix`]). This module owns that
//! process: its directory (`<data dir>/etcd`, mode 0700: pid file, data, log), its command line
//! (tuned for simulation), starting it as a daemon in its own session so it outlives a CLI
//! invocation and an agent crash, adopting a running one (pid file checked against `/proc`)
//! instead of starting it twice, and removing a deleted cluster's prefix through etcd's v3 JSON
//! gateway on loopback (no gRPC client needed).
//!
//! kwokctl still runs every other component of those clusters; their apiservers are pointed here
//! by their kwokctl configuration (`kwok::profile`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::process::Command;
use tokio::time::Instant;

use super::manager::port_is_free;
use super::status;
use crate::sockets::{port_holder, PortHolder};

/// Every shared cluster's keys live under `/clusters/<name>/` (the apiserver's `--etcd-prefix`
/// plus the `/` it puts before each resource). Names cannot contain `/`, so no prefix is another's.
pub fn etcd_prefix(name: &str) -> String {
    format!("/clusters/{name}")
}

/// How long a freshly started etcd may take to answer `/health`.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// Kamaji's and the research note's choice: near-empty clusters hold a few hundred KiB each, so
/// 150 clusters with Rancher's objects stay far below it, and the 2 GiB default is not a wall.
const QUOTA_BACKEND_BYTES: u64 = 8 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SharedEtcdError {
    #[error(
        "port {port} needed by the shared etcd is in use ({holder}); stop it or choose another \
         client port with --shared-etcd-port (the peer port is the next one)"
    )]
    PortBusy { port: u16, holder: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the shared etcd {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shared etcd did not answer /health on port {port} within {timeout:?}; see {log}")]
    NotHealthy {
        port: u16,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("the shared etcd on port {port} refused {what}: {reason}")]
    Request {
        port: u16,
        what: &'static str,
        reason: String,
    },
}

/// Handle to the shared etcd of one data dir; cheap to clone. Starts are serialised within the
/// process, so many clusters healing at once start it once.
#[derive(Clone)]
pub struct SharedEtcd {
    inner: Arc<Inner>,
}

struct Inner {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    start: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl SharedEtcd {
    /// `binary` is the toolchain's etcd, `dir` its private directory, `port` its client port
    /// (`port + 1` is its peer port).
    pub fn new(binary: &Path, dir: &Path, port: u16) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                binary: binary.to_path_buf(),
                dir: dir.to_path_buf(),
                port,
                start: tokio::sync::Mutex::new(()),
                http,
            }),
        }
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `http://127.0.0.1:<port>`, what the apiservers' `--etcd-servers` names.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn pid_file(&self) -> PathBuf {
        self.inner.dir.join("etcd.pid")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.inner.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.inner.dir.join("etcd.log")
    }

    /// The running shared etcd's pid: the pid file names a live process whose program is etcd
    /// and whose `--data-dir` is ours (a recycled pid, or another data dir's etcd, is not).
    pub async fn running_pid(&self) -> Option<u32> {
        let pid_file = self.pid_file();
        let data_arg = self.data_dir_arg();
        tokio::task::spawn_blocking(move || {
            let pid: u32 = std::fs::read_to_string(&pid_file)
                .ok()?
                .trim()
                .parse()
                .ok()?;
            is_shared_etcd(pid, &data_arg).then_some(pid)
        })
        .await
        .ok()
        .flatten()
    }

    /// Makes sure the shared etcd runs: adopts a running one (started by an earlier agent or CLI
    /// run), or starts it and waits until it answers `/health`. Idempotent and cheap when it
    /// runs (a pid file and a `/proc` read); call it before creating, starting or healing a
    /// cluster that uses it. Returns its pid.
    pub async fn ensure_running(&self) -> Result<u32, SharedEtcdError> {
        self.ensure_running_and_tell().await.map(|(pid, _)| pid)
    }

    /// [`Self::ensure_running`], also telling whether this call started it (false: it ran, or
    /// another caller, e.g. another cluster's heal, started it meanwhile).
    pub async fn ensure_running_and_tell(&self) -> Result<(u32, bool), SharedEtcdError> {
        // In a task of its own, which a cancelled caller (a delete abandoning a bring-up) does
        // not cut short: a start stopped between the spawn and the pid file would leave an etcd
        // nobody adopts, holding the port every later start needs.
        let this = self.clone();
        tokio::spawn(async move {
            let _one_start = this.inner.start.lock().await;
            if let Some(pid) = this.running_pid().await {
                return Ok((pid, false));
            }
            this.start().await.map(|pid| (pid, true))
        })
        .await
        .map_err(|e| SharedEtcdError::Io {
            path: self.inner.dir.clone(),
            source: std::io::Error::other(e),
        })?
    }

    async fn start(&self) -> Result<u32, SharedEtcdError> {
        let inner = &self.inner;
        let dir = inner.dir.clone();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SharedEtcdError::Io { path, source }
        };
        tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || crate::secrets::ensure_private_dir(&dir)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(io(&dir))?;
        for port in [inner.port, inner.port.saturating_add(1)] {
            wait_port_free(port).await?;
        }
        // Keep the dead process's last words (an OOM kill, a panic) next to the new log.
        let log_path = self.log_path();
        match tokio::fs::rename(&log_path, dir.join("etcd.previous.log")).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&log_path)(e)),
            _ => {}
        }
        let log = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .await
            .map_err(io(&log_path))?
            .into_std()
            .await;
        let log_err = log.try_clone().map_err(io(&log_path))?;
        let mut cmd = Command::new(&inner.binary);
        crate::secrets::scrub_secret_env(cmd.as_std_mut());
        cmd.args(self.args())
            // The GC target of the other components: a smaller heap for a little more GC CPU.
            .env("GOGC", "25")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // Its own session: no terminal's Ctrl-C or hang-up and no agent death reaches it, like
        // the components kwokctl starts; the agent adopts it again by its pid file.
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| SharedEtcdError::Spawn {
            binary: inner.binary.clone(),
            source,
        })?;
        let Some(pid) = child.id() else {
            return Err(SharedEtcdError::NotHealthy {
                port: inner.port,
                timeout: Duration::ZERO,
                log: log_path,
            });
        };
        let pid_file = self.pid_file();
        let tmp = dir.join("etcd.pid.tmp");
        tokio::fs::write(&tmp, format!("{pid}\n"))
            .await
            .map_err(io(&tmp))?;
        tokio::fs::rename(&tmp, &pid_file)
            .await
            .map_err(io(&pid_file))?;
        // Reap it if it dies while this process runs (no zombie); if this process exits first,
        // the daemon lives on and is adopted by the next run.
        let (exited_tx, mut exited) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exited_tx.send(status);
        });
        tracing::info!(pid, port = inner.port, dir = %dir.display(), "started the shared etcd");
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            if self.healthy().await {
                return Ok(pid);
            }
            let gone = !matches!(
                exited.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            );
            if gone || Instant::now() >= deadline {
                return Err(SharedEtcdError::NotHealthy {
                    port: inner.port,
                    timeout: HEALTHY_TIMEOUT,
                    log: log_path,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// True if etcd answers `GET /health` with `"health":"true"`.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/health", self.client_url());
        match self.inner.http.get(url).send().await {
            Ok(resp) if resp.status().is_success() => resp
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|v| v["health"] == "true"),
            _ => false,
        }
    }

    /// Deletes every key of the cluster whose apiserver used `prefix` (`/clusters/<name>`):
    /// the range `<prefix>/` … `<prefix>0` (`/` + 1). Idempotent.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, SharedEtcdError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key = format!("{prefix}/");
        let end = format!("{prefix}0");
        let request = |reason: String| SharedEtcdError::Request {
            port: self.inner.port,
            what: "a delete of a cluster's keys",
            reason,
        };
        let resp = self
            .inner
            .http
            .post(format!("{}/v3/kv/deleterange", self.client_url()))
            .json(&serde_json::json!({ "key": b64(&key), "range_end": b64(&end) }))
            .send()
            .await
            .map_err(|e| request(e.to_string()))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| request(e.to_string()))?;
        if !status.is_success() {
            return Err(request(format!("{status}: {body}")));
        }
        // The gateway writes int64 as a JSON string, and leaves out a zero.
        Ok(body["deleted"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0))
    }

    fn data_dir_arg(&self) -> String {
        format!("--data-dir={}", self.data_dir().display())
    }

    /// The command line. Loopback only, one member. Tuned for a simulation on a small machine:
    /// - `--quota-backend-bytes` 8 GiB ([`QUOTA_BACKEND_BYTES`]);
    /// - periodic compaction every 5 minutes by etcd itself, while the shared apiservers run no
    ///   compactor (`--etcd-compaction-interval=0`, `kwok::profile`): compaction is global to the
    ///   keyspace, so one compactor does for all instead of one timer and CAS per apiserver;
    /// - `--snapshot-count` 5000 and `--snapshot-catchup-entries` 1000 (defaults 10000 and 5000):
    ///   the raft log kept in memory is bounded by their sum, and a single member has no follower
    ///   to catch up;
    /// - `--max-wals` 2 (default 5): each WAL file is 64 MiB preallocated, and the disk is small;
    /// - warnings only in its log, and slow-request warnings from 1 s (default 100 ms / 300 ms):
    ///   on a loaded 2-core machine shared by many clusters the defaults log most requests;
    /// - Go's profiler at `/debug/pprof` on the loopback client URL, which already serves the
    ///   whole keyspace to any local process without auth: the one process whose CPU grows with
    ///   N can be profiled in a running density benchmark (docs/benchmarks.md).
    fn args(&self) -> Vec<String> {
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.inner.port.saturating_add(1));
        vec![
            "--name=shared".into(),
            self.data_dir_arg(),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=shared={peer}"),
            format!("--quota-backend-bytes={QUOTA_BACKEND_BYTES}"),
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=5m".into(),
            "--snapshot-count=5000".into(),
            "--snapshot-catchup-entries=1000".into(),
            "--max-wals=2".into(),
            "--log-level=warn".into(),
            "--warning-apply-duration=1s".into(),
            "--warning-unary-request-duration=1s".into(),
            "--enable-pprof".into(),
        ]
    }
}

/// How long a port held by a connection (an outgoing connection's local end, taken from the
/// ephemeral range) may take to come free; a listener is refused at once.
const CONNECTION_PORT_WAIT: Duration = Duration::from_secs(10);

/// Waits, bounded, for a port that only a connection holds; refuses one a process listens on.
async fn wait_port_free(port: u16) -> Result<(), SharedEtcdError> {
    let deadline = Instant::now() + CONNECTION_PORT_WAIT;
    loop {
        let (free, holder) = tokio::task::spawn_blocking(move || {
            let free = port_is_free(port);
            (free, (!free).then(|| port_holder(port)).flatten())
        })
        .await
        .unwrap_or((false, None));
        if free {
            return Ok(());
        }
        let listening = holder.as_ref().is_none_or(|h| h.listening);
        if listening || Instant::now() >= deadline {
            let holder = PortHolder::describe(holder);
            return Err(SharedEtcdError::PortBusy { port, holder });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// True if `pid` is a live etcd started with `data_arg` (`--data-dir=<our data dir>`).
fn is_shared_etcd(pid: u32, data_arg: &str) -> bool {
    if !crate::process::pid_alive(pid) {
        return false;
    }
    let Some(args) = status::cmdline(pid) else {
        return false;
    };
    let program = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or_default();
    program == "etcd" && args.iter().skip(1).any(|a| a == data_arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_never_nest() {
        assert_eq!(etcd_prefix("a"), "/clusters/a");
        // The delete range of `a` is [`/clusters/a/`, `/clusters/a0`): the keys of clusters whose
        // names start with `a` sort outside it, before (`-` < `/`) or after (`b` > `0`).
        let (start, end) = ("/clusters/a/", "/clusters/a0");
        for other in [
            "/clusters/ab/pods/x",
            "/clusters/a-x/pods/x",
            "/clusters/a0/x",
        ] {
            assert!(!(other >= start && other < end), "{other}");
        }
        assert!("/clusters/a/pods/default/p" >= start && "/clusters/a/pods/default/p" < end);
    }

    #[tokio::test]
    async fn a_busy_port_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let etcd = SharedEtcd::new(Path::new("/nonexistent/etcd"), dir.path(), port);
        let err = etcd.ensure_running().await.unwrap_err();
        assert!(matches!(err, SharedEtcdError::PortBusy { port: p, .. } if p == port));
        assert!(
            err.to_string().contains("(a listening socket of pid "),
            "{err}"
        );
        assert!(err.to_string().contains("--shared-etcd-port"), "{err}");
        let mode = std::fs::metadata(dir.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
    }
}
