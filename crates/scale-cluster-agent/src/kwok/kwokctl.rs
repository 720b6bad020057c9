//! Driver for the `kwokctl` binary (binary runtime only). It always runs kwokctl with the agent's own
//! work dir, never touches the user's `~/.kube/config`, and puts the provisioned `kubectl` first on
//! PATH, because kwokctl looks kubectl up on PATH before its config (and would otherwise download one).
//!
//! The cluster lifecycle verbs the manager uses are typed methods ([`Kwokctl::create_cluster`],
//! [`Kwokctl::start_cluster`], [`Kwokctl::stop_cluster`], [`Kwokctl::delete_cluster`]), each with its
//! own timeout; the command lines are built here and nowhere else.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::store::ports::PortBlock;
use crate::toolchain::Toolchain;

/// How long kwokctl may wait for a cluster's components to start (its own `--timeout`).
pub const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stop or delete may take.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack on top of kwokctl's own timeout before we give up on the process.
const OVERHEAD: Duration = Duration::from_secs(10);

/// `kwokctl create cluster` with the binary runtime, as data.
#[derive(Debug, Clone)]
pub struct CreateCluster<'a> {
    pub name: &'a str,
    /// The `KwokctlConfiguration` file (component binaries and their arguments).
    pub config: &'a Path,
    /// Every component's port, assigned by the agent.
    pub ports: &'a PortBlock,
    /// Flags of the component profile (e.g. `--disable kube-scheduler`).
    pub profile_flags: Vec<String>,
}

/// Most lines of kwokctl's output quoted in an error.
const ERROR_TAIL_LINES: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum KwokctlError {
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`kwokctl {args}` failed ({status}):\n{output}")]
    Failed {
        args: String,
        status: String,
        output: String,
    },
    #[error("`kwokctl {args}` did not finish within {timeout:?}")]
    TimedOut { args: String, timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct Kwokctl {
    binary: PathBuf,
    workdir: PathBuf,
    path_env: OsString,
}

impl Kwokctl {
    pub fn new(toolchain: &Toolchain, workdir: &Path) -> Self {
        let mut dirs: Vec<PathBuf> = toolchain
            .kubectl
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        Self {
            binary: toolchain.kwokctl.clone(),
            workdir: workdir.to_path_buf(),
            path_env: std::env::join_paths(dirs).unwrap_or_default(),
        }
    }

    /// The directory kwokctl keeps `name`'s files in.
    pub fn cluster_dir(&self, name: &str) -> PathBuf {
        self.clusters_dir().join(name)
    }

    /// The directory of every cluster's directory.
    pub fn clusters_dir(&self) -> PathBuf {
        self.workdir.join("clusters")
    }

    /// Creates and starts a cluster; waits (up to [`START_TIMEOUT`]) for its components.
    pub async fn create_cluster(&self, spec: &CreateCluster<'_>) -> Result<String, KwokctlError> {
        let ports = spec.ports;
        let mut args: Vec<String> = vec![
            "-c".into(),
            spec.config.display().to_string(),
            "create".into(),
            "cluster".into(),
            "--name".into(),
            spec.name.into(),
            "--runtime".into(),
            "binary".into(),
            // Never touch the user's kubeconfig (and no races between parallel creates on it).
            "--kubeconfig".into(),
            String::new(),
            "--kube-apiserver-port".into(),
            ports.kube_apiserver.to_string(),
            "--etcd-port".into(),
            ports.etcd_client.to_string(),
            "--kube-controller-manager-port".into(),
            ports.kube_controller_manager.to_string(),
            "--kube-scheduler-port".into(),
            ports.kube_scheduler.to_string(),
            "--controller-port".into(),
            ports.kwok_controller.to_string(),
            "--timeout".into(),
            format!("{}s", START_TIMEOUT.as_secs()),
        ];
        args.extend(spec.profile_flags.iter().cloned());
        self.run(&args, START_TIMEOUT + OVERHEAD).await
    }

    /// Starts every component of `name` whose pid file names no live process.
    pub async fn start_cluster(&self, name: &str) -> Result<String, KwokctlError> {
        let timeout = format!("{}s", START_TIMEOUT.as_secs());
        let args = ["start", "cluster", "--name", name, "--timeout", &timeout].map(String::from);
        self.run(&args, START_TIMEOUT + OVERHEAD).await
    }

    /// Stops every component of `name`; its data stays.
    pub async fn stop_cluster(&self, name: &str) -> Result<String, KwokctlError> {
        let args = ["stop", "cluster", "--name", name].map(String::from);
        self.run(&args, STOP_TIMEOUT).await
    }

    /// Deletes `name` (processes and files kwokctl knows of). kwokctl rejects an empty
    /// `--kubeconfig` here, so `unused_kubeconfig` must be a path that never exists: that keeps it
    /// away from the user's `~/.kube/config`.
    pub async fn delete_cluster(
        &self,
        name: &str,
        unused_kubeconfig: &Path,
    ) -> Result<String, KwokctlError> {
        let args = [
            "delete".to_string(),
            "cluster".into(),
            "--name".into(),
            name.into(),
            "--kubeconfig".into(),
            unused_kubeconfig.display().to_string(),
        ];
        self.run(&args, STOP_TIMEOUT).await
    }

    /// Runs `kwokctl <args>` and returns its combined output, or an error quoting the end of it.
    async fn run(&self, args: &[String], timeout: Duration) -> Result<String, KwokctlError> {
        let mut cmd = Command::new(&self.binary);
        // kwokctl hands its environment to every component it starts; no token may reach them.
        crate::secrets::scrub_secret_env(cmd.as_std_mut());
        cmd.args(args)
            .env("KWOK_WORKDIR", &self.workdir)
            .env("PATH", &self.path_env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // If the agent dies (even by SIGKILL) kwokctl dies with it instead of finishing a create
        // behind the back of the recovery that the next agent start runs. The signal fires when the
        // spawning thread exits: that is a runtime worker thread, which lives as long as the runtime.
        // Every component kwokctl starts inherits the KSM mark (see `memory_merge`).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                crate::kwok::memory_merge::mark_mergeable();
                nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
                    .map_err(std::io::Error::from)
            });
        }
        let joined = args.join(" ");
        tracing::debug!(args = %joined, "running kwokctl");
        let child = cmd.spawn().map_err(|source| KwokctlError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| KwokctlError::TimedOut {
                args: joined.clone(),
                timeout,
            })?
            .map_err(|source| KwokctlError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        if output.status.success() {
            Ok(text)
        } else {
            Err(KwokctlError::Failed {
                args: joined,
                status: output.status.to_string(),
                output: tail(&text, ERROR_TAIL_LINES),
            })
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
