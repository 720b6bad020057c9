//! rancher-sim and the real agent (`serve`, this build) as the benchmarks run them: in a scratch
//! directory, rancher-sim probing every 15 s, the agent pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::go_build;

/// The API token the agent uses against rancher-sim.
const TOKEN: &str = "token-bench:0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghij";

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A benchmark's scratch directory. Dropping it, also when the benchmark fails or is
/// interrupted ([`until_interrupted`]), kills every process whose command line points into it
/// (the KWOK clusters' apiservers and the shared etcd outlive a killed agent by design) and then
/// removes it.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new() -> anyhow::Result<Scratch> {
        Ok(Scratch(tempfile::tempdir()?))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for pid in scale_cluster_agent::kwok::status::processes_in(self.0.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `bench` until it ends or the process gets SIGINT (Ctrl-C) or SIGTERM; an interrupted
/// bench is dropped, so its guards stop what it started.
pub async fn until_interrupted(
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = bench => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT); everything it started is stopped"),
        _ = terminate.recv() => bail!("terminated (SIGTERM); everything it started is stopped"),
    }
}

/// rancher-sim running in `<dir>/sim`.
pub struct Sim {
    // Held for its Drop, which ends rancher-sim; only some benchmarks read its pid.
    #[allow(dead_code)]
    pub process: Killed,
    pub url: String,
    pub dir: PathBuf,
}

/// Starts rancher-sim (probing every 15 s) with `extra_args`.
pub async fn start_sim(dir: &Path, extra_args: &[String]) -> anyhow::Result<Sim> {
    let bin = go_build::build(&go_build::module("rancher-sim"), ".", "rancher-sim");
    let sim_dir = dir.join("sim");
    let process = Killed(
        Command::new(bin)
            .args(["--state-dir"])
            .arg(&sim_dir)
            .args(["--token", TOKEN, "--probe-interval", "15s"])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = wait_for_file(&sim_dir.join("address"))
        .await?
        .trim()
        .to_string();
    Ok(Sim {
        process,
        url,
        dir: sim_dir,
    })
}

/// Starts `scale-cluster-agent serve` against `sim` with its data and KWOK work dir under `dir`
/// (`<dir>/data`, `<dir>/kwok`); returns the process and its API URL.
// Not every benchmark starts an agent with extra settings.
#[allow(dead_code)]
pub async fn start_agent(
    dir: &Path,
    sim: &Sim,
    port_base: u16,
    port_blocks: usize,
    concurrency: usize,
) -> anyhow::Result<(Killed, String)> {
    start_agent_with_env(dir, sim, port_base, port_blocks, concurrency, &[]).await
}

/// [`start_agent`] with more environment (`SCA_*` settings).
pub async fn start_agent_with_env(
    dir: &Path,
    sim: &Sim,
    port_base: u16,
    port_blocks: usize,
    concurrency: usize,
    env: &[(&str, &str)],
) -> anyhow::Result<(Killed, String)> {
    // A discovery file left by an agent killed before: wait for this agent's own.
    let _ = std::fs::remove_file(dir.join("data/agent.json"));
    let agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
            .envs(env.iter().copied())
            .arg("serve")
            .env("SCA_DATA_DIR", dir.join("data"))
            .env("SCA_KWOK_WORKDIR", dir.join("kwok"))
            .env("SCA_PORT_BASE", port_base.to_string())
            .env("SCA_PORT_BLOCKS", port_blocks.to_string())
            .env("SCA_RANCHER_URL", &sim.url)
            .env("SCA_RANCHER_TOKEN", TOKEN)
            .env("SCA_RANCHER_CA_FILE", sim.dir.join("ca.crt"))
            .env("SCA_LISTEN", "127.0.0.1:0")
            .env("SCA_CONCURRENCY", concurrency.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let discovery: Value =
        serde_json::from_str(&wait_for_file(&dir.join("data/agent.json")).await?)?;
    let api = discovery["url"].as_str().context("agent url")?.to_string();
    Ok((agent, api))
}

/// Every cluster's name and phase, from the agent's API.
pub async fn phases(http: &reqwest::Client, api: &str) -> anyhow::Result<Vec<(String, String)>> {
    let list: Vec<Value> = http
        .get(format!("{api}/clusters"))
        .send()
        .await?
        .json()
        .await?;
    Ok(list
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

async fn wait_for_file(path: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text);
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear", path.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
