//! Driver for the `kwokctl` binary (binary runtime only). It always runs kwokctl with the agent's own
//! work dir, never touches the user's `~/.kube/config`, and puts the provisioned `kubectl` first on
//! PATH, because kwokctl looks kubectl up on PATH before its config (and would otherwise download one).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::toolchain::Toolchain;

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
        self.workdir.join("clusters").join(name)
    }

    /// Runs `kwokctl <args>` and returns its combined output, or an error quoting the end of it.
    pub async fn run(&self, args: &[String], timeout: Duration) -> Result<String, KwokctlError> {
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
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
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
