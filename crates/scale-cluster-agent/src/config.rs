//! Configuration: a YAML file (`--config`, `SCA_CONFIG`), environment variables and flags, where a
//! flag or its environment variable wins over the file, and the file over the built-in defaults.
//!
//! [`GlobalArgs`] and [`Settings`] are what every command shares (where things live, the port range);
//! [`RancherArgs`] and [`AgentSettings`] are what the long-running agent (`serve`, `up`) adds: the
//! Rancher URL and token, how Rancher's TLS is verified, and the agent's own options. The Rancher
//! token is read from the environment, a token file or the config file, never from a flag (a flag
//! would show in `ps`), and is never printed. The same holds for the agent's own API token, which a
//! non-loopback `--listen` requires.
//!
//! This module also owns the rules that keep those secrets on this side: no child process
//! inherits a secret variable (the CLI moves them out of its environment at start,
//! [`take_secret_env`], and every spawn removes them again, [`scrub_secret_env`]), and the
//! directories holding state are private to the user ([`ensure_private_dir`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use crate::api::ApiToken as AgentApiToken;
use crate::kwok::ports::PortRange;
use crate::kwok::ComponentProfile;
use crate::rancher::{ApiToken, RancherConfig, TlsMode};
use crate::toolchain::ToolchainArgs;

/// Default address of the agent's HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// YAML configuration file (see the README for its keys).
    #[arg(long, env = "SCA_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Directory holding the agent's state database.
    #[arg(long, env = "SCA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// kwokctl work directory (clusters live in `<dir>/clusters/<name>`).
    #[arg(long, env = "SCA_KWOK_WORKDIR", global = true)]
    pub kwok_workdir: Option<PathBuf>,

    /// Versioned binary cache (`<dir>/<component>/<version>/<binary>`).
    #[arg(long, env = "SCA_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// First port of the first cluster's port block [default: 8001].
    #[arg(long, env = "SCA_PORT_BASE", global = true)]
    pub port_base: Option<u16>,

    /// Distance between two clusters' port blocks, at least 6 [default: 10].
    #[arg(long, env = "SCA_PORT_STRIDE", global = true)]
    pub port_stride: Option<u16>,

    /// Maximum number of port blocks (clusters) in the range [default: 1000].
    #[arg(long, env = "SCA_PORT_BLOCKS", global = true)]
    pub port_blocks: Option<u16>,

    #[command(flatten)]
    pub toolchain: ToolchainArgs,
}

/// The YAML configuration file. Every key is optional; unknown keys are an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub kwok_workdir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub ports: PortsFile,
    #[serde(default)]
    pub rancher: RancherFile,
    #[serde(default)]
    pub agent: AgentFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortsFile {
    pub base: Option<u16>,
    pub stride: Option<u16>,
    pub blocks: Option<u16>,
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RancherFile {
    pub url: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub ca_checksum: Option<String>,
    pub insecure_skip_tls_verify: Option<bool>,
}

impl std::fmt::Debug for RancherFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RancherFile")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("ca_checksum", &self.ca_checksum)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentFile {
    pub listen: Option<SocketAddr>,
    pub profile: Option<ComponentProfile>,
    pub concurrency: Option<usize>,
    /// See `--instance-id`.
    pub instance_id: Option<String>,
    /// File holding the agent API's bearer token.
    pub api_token_file: Option<PathBuf>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kwok_workdir: PathBuf,
    pub cache_dir: PathBuf,
    pub ports: PortRange,
    pub toolchain: ToolchainArgs,
    /// The configuration file as read (empty without `--config`).
    pub file: ConfigFile,
}

impl Settings {
    pub fn from_args(args: &GlobalArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => ConfigFile::default(),
        };
        let home = home_dir()?;
        let ports = PortRange::new(
            args.port_base
                .or(file.ports.base)
                .unwrap_or(PortRange::DEFAULT.base),
            args.port_stride
                .or(file.ports.stride)
                .unwrap_or(PortRange::DEFAULT.stride),
            args.port_blocks
                .or(file.ports.blocks)
                .unwrap_or(PortRange::DEFAULT.blocks),
        )?;
        Ok(Self {
            data_dir: args
                .data_dir
                .clone()
                .or_else(|| file.data_dir.clone())
                .unwrap_or_else(|| home.join(".local/share/scale-cluster-agent")),
            kwok_workdir: args
                .kwok_workdir
                .clone()
                .or_else(|| file.kwok_workdir.clone())
                .unwrap_or_else(|| home.join(".kwok")),
            cache_dir: args
                .cache_dir
                .clone()
                .or_else(|| file.cache_dir.clone())
                .unwrap_or_else(|| default_cache_dir(&home)),
            ports,
            toolchain: args.toolchain.clone(),
            file,
        })
    }

    /// Path of the state database.
    pub fn state_db(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }

    /// Creates the data directory and the kwok work directory, or tightens them, to mode 0700
    /// ([`ensure_private_dir`]): the first holds the state database and the API token, the second
    /// every cluster's PKI and admin kubeconfig.
    pub fn ensure_private_dirs(&self) -> anyhow::Result<()> {
        for dir in [&self.data_dir, &self.kwok_workdir] {
            ensure_private_dir(dir).with_context(|| format!("preparing {}", dir.display()))?;
        }
        Ok(())
    }
}

fn read_config_file(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Options of the long-running agent (`serve`, `up`).
#[derive(Debug, Clone, Default, Args)]
pub struct RancherArgs {
    /// Rancher server URL, e.g. https://rancher.example.com (token: env SCA_RANCHER_TOKEN, a token
    /// file, or the config file).
    #[arg(long, env = "SCA_RANCHER_URL")]
    pub rancher_url: Option<String>,

    /// File holding the Rancher API token (`token-xxxxx:secret`).
    #[arg(long, env = "SCA_RANCHER_TOKEN_FILE")]
    pub rancher_token_file: Option<PathBuf>,

    /// Trust only the CA certificate(s) in this PEM file for Rancher.
    #[arg(long, env = "SCA_RANCHER_CA_FILE")]
    pub rancher_ca_file: Option<PathBuf>,

    /// Trust Rancher's own CA after checking its SHA-256 checksum (as CATTLE_CA_CHECKSUM).
    #[arg(long, env = "SCA_RANCHER_CA_CHECKSUM")]
    pub rancher_ca_checksum: Option<String>,

    /// Do not verify Rancher's certificate at all (throwaway test setups only).
    #[arg(long, env = "SCA_RANCHER_INSECURE_SKIP_TLS_VERIFY")]
    pub rancher_insecure_skip_tls_verify: bool,

    /// Address of the agent's HTTP API [default: 127.0.0.1:8089]. A non-loopback address
    /// requires an API token (env SCA_API_TOKEN or --api-token-file).
    #[arg(long, env = "SCA_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// File holding the bearer token the agent's HTTP API requires (at least 16 visible ASCII
    /// characters; or env SCA_API_TOKEN, or agent.apiTokenFile in the config file).
    #[arg(long, env = "SCA_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Component profile of new clusters: lean or full [default: lean].
    #[arg(long, env = "SCA_PROFILE")]
    pub profile: Option<ComponentProfile>,

    /// Clusters brought up at once [default: 3].
    #[arg(long, env = "SCA_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Seconds between two lists of this agent's clusters in Rancher (one request for all of
    /// them: states, and deletions made in Rancher) [default: 30].
    #[arg(long, env = "SCA_RANCHER_POLL_SECONDS")]
    pub rancher_poll_seconds: Option<u64>,

    /// Seconds a cluster must be missing from Rancher's list, and then answer 404 by id, before
    /// the agent believes it was deleted in Rancher and removes it locally [default: 60].
    #[arg(long, env = "SCA_RANCHER_GONE_SECONDS")]
    pub rancher_gone_seconds: Option<u64>,

    /// This agent's instance id, which marks the clusters it creates in Rancher (label
    /// scale-cluster-agent.io/instance). Created once and kept in the data dir; set it only to
    /// let a replacement agent (new data dir) take over the clusters of an instance on purpose.
    #[arg(long, env = "SCA_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Longest wait, in seconds, between two tunnel reconnect attempts (full jitter below it)
    /// [default: 30].
    #[arg(long, env = "SCA_RECONNECT_MAX_SECONDS")]
    pub reconnect_max_seconds: Option<u64>,
}

/// Resolved agent options.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub rancher: RancherConfig,
    pub listen: SocketAddr,
    /// Bearer token every API request but `GET /health` must carry (required off loopback).
    pub api_token: Option<AgentApiToken>,
    pub profile: ComponentProfile,
    pub concurrency: usize,
    pub rancher_poll: std::time::Duration,
    pub rancher_gone_after: std::time::Duration,
    pub instance_id: Option<String>,
    pub reconnect_max: std::time::Duration,
}

impl RancherArgs {
    /// True when a Rancher URL is configured (by flag, env or file).
    pub fn has_rancher(&self, settings: &Settings) -> bool {
        self.rancher_url.is_some() || settings.file.rancher.url.is_some()
    }

    pub fn resolve(&self, settings: &Settings) -> anyhow::Result<AgentSettings> {
        let file = &settings.file.rancher;
        let Some(url) = self.rancher_url.clone().or_else(|| file.url.clone()) else {
            bail!("no Rancher URL: pass --rancher-url, set SCA_RANCHER_URL, or put rancher.url in the config file");
        };
        let token = self.token(file)?;
        let ca_file = self
            .rancher_ca_file
            .clone()
            .or_else(|| file.ca_file.clone());
        let ca_checksum = self
            .rancher_ca_checksum
            .clone()
            .or_else(|| file.ca_checksum.clone());
        let insecure =
            self.rancher_insecure_skip_tls_verify || file.insecure_skip_tls_verify.unwrap_or(false);
        let tls = match (ca_file, ca_checksum, insecure) {
            (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
                bail!("choose one way to verify Rancher: a CA file, a CA checksum, or insecure")
            }
            (Some(path), None, false) => TlsMode::CaFile(path),
            (None, Some(checksum), false) => TlsMode::CaChecksum(checksum),
            (None, None, true) => TlsMode::Insecure,
            (None, None, false) => TlsMode::PublicRoots,
        };
        let agent = &settings.file.agent;
        let listen = match self.listen.or(agent.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse()?,
        };
        let api_token = self.api_token(agent)?;
        if api_token.is_none() && !listen.ip().is_loopback() {
            bail!(
                "--listen {listen} is not a loopback address, so the API needs a token: set \
                 SCA_API_TOKEN, pass --api-token-file (or SCA_API_TOKEN_FILE), or put \
                 agent.apiTokenFile in the config file"
            );
        }
        let concurrency = self.concurrency.or(agent.concurrency).unwrap_or(3);
        if concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        Ok(AgentSettings {
            rancher: RancherConfig::new(url, token, tls),
            listen,
            api_token,
            profile: self.profile.or(agent.profile).unwrap_or_default(),
            concurrency,
            rancher_poll: std::time::Duration::from_secs(
                self.rancher_poll_seconds.unwrap_or(30).max(1),
            ),
            rancher_gone_after: std::time::Duration::from_secs(
                self.rancher_gone_seconds.unwrap_or(60),
            ),
            instance_id: self.instance_id.clone().or(agent.instance_id.clone()),
            reconnect_max: std::time::Duration::from_secs(
                self.reconnect_max_seconds.unwrap_or(30).max(1),
            ),
        })
    }

    /// The token from (in order) SCA_RANCHER_TOKEN, the token file flag/env, the config file's
    /// `token`, or its `tokenFile`.
    fn token(&self, file: &RancherFile) -> anyhow::Result<ApiToken> {
        if let Some(token) = secret_var(RANCHER_TOKEN_ENV) {
            if !token.trim().is_empty() {
                return Ok(ApiToken::new(token.trim())?);
            }
        }
        if let Some(path) = self
            .rancher_token_file
            .as_ref()
            .or(file.token_file.as_ref())
        {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the Rancher token file {}", path.display()))?;
            return Ok(ApiToken::new(text.trim())?);
        }
        if let Some(token) = &file.token {
            return Ok(ApiToken::new(token.trim())?);
        }
        bail!("no Rancher API token: set SCA_RANCHER_TOKEN, pass --rancher-token-file, or put rancher.token in the config file")
    }
}

impl RancherArgs {
    /// The API token from (in order) SCA_API_TOKEN, the token file flag/env, or the config file's
    /// `agent.apiTokenFile`; `None` when none is set.
    fn api_token(&self, file: &AgentFile) -> anyhow::Result<Option<AgentApiToken>> {
        if let Some(token) = secret_var(API_TOKEN_ENV) {
            if !token.trim().is_empty() {
                return AgentApiToken::new(token.trim())
                    .map(Some)
                    .with_context(|| format!("invalid {API_TOKEN_ENV}"));
            }
        }
        let Some(path) = self
            .api_token_file
            .as_ref()
            .or(file.api_token_file.as_ref())
        else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API token file {}", path.display()))?;
        AgentApiToken::new(text.trim())
            .map(Some)
            .with_context(|| format!("invalid API token in {}", path.display()))
    }
}

/// Environment variable holding the Rancher API token.
pub const RANCHER_TOKEN_ENV: &str = "SCA_RANCHER_TOKEN";
/// Environment variable holding the agent API's bearer token.
pub const API_TOKEN_ENV: &str = "SCA_API_TOKEN";

/// Whether a child process must not inherit the variable `name`: our two token variables and,
/// so a token variable added later is covered without remembering this list, any `SCA_*`
/// variable whose name mentions a token (the `*_TOKEN_FILE` paths go too; no child needs them).
pub fn is_secret_env(name: &str) -> bool {
    name == RANCHER_TOKEN_ENV
        || name == API_TOKEN_ENV
        || (name.starts_with("SCA_") && name.to_ascii_uppercase().contains("TOKEN"))
}

/// The secret variables [`take_secret_env`] moved out of the environment.
static TAKEN_SECRETS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Moves every secret variable ([`is_secret_env`]) out of this process's environment into
/// memory, where [`RancherArgs::resolve`] still finds them, so that no child process can inherit
/// one, whoever spawns it and however. The CLI calls it first thing, after parsing the command
/// line (clap reads `SCA_*_TOKEN_FILE` from the environment) and before any other thread exists:
/// changing the environment while another thread reads it is undefined behaviour in libc.
pub fn take_secret_env() {
    let taken: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| is_secret_env(name))
        .collect();
    for (name, _) in &taken {
        std::env::remove_var(name);
    }
    let _ = TAKEN_SECRETS.set(taken);
}

/// A secret variable: from [`take_secret_env`]'s copy, else (library use, tests) the environment.
fn secret_var(name: &str) -> Option<String> {
    match TAKEN_SECRETS.get() {
        Some(taken) => taken
            .iter()
            .find(|(taken, _)| taken == name)
            .map(|(_, value)| value.clone()),
        None => std::env::var(name).ok(),
    }
}

/// Removes every secret variable ([`is_secret_env`]) from what `cmd` passes to its child. Every
/// process the agent spawns goes through this: kwokctl passes its environment on to etcd,
/// kube-apiserver and the rest, whose `/proc/<pid>/environ` any process of the user can read for
/// as long as they run.
pub fn scrub_secret_env(cmd: &mut std::process::Command) {
    for name in secret_env_names(std::env::vars_os().map(|(name, _)| name)) {
        cmd.env_remove(name);
    }
}

/// The names among `names` that [`is_secret_env`] rejects, plus the fixed ones (removing an unset
/// variable is harmless, and it also undoes a `cmd.env()` set earlier by mistake).
fn secret_env_names(names: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut secret: Vec<OsString> = names
        .filter(|name| name.to_str().is_some_and(is_secret_env))
        .collect();
    secret.push(RANCHER_TOKEN_ENV.into());
    secret.push(API_TOKEN_ENV.into());
    secret
}

/// Creates `dir` (and its parents) with mode 0700, or tightens an existing `dir` to 0700 when it
/// belongs to this user. A directory of someone else's, or a shared sticky one like `/tmp`, is
/// left as it is (with a warning): changing it would break its other users.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // /proc/self belongs to this process's effective uid.
    let ours = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == meta.uid());
    let sticky = mode & 0o1000 != 0;
    if ours && !sticky {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    } else {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o7777),
            "directory holding secrets is open to other users and is not ours to tighten"
        );
        Ok(())
    }
}

/// `$XDG_CACHE_HOME/scale-cluster-agent`, else `~/.cache/scale-cluster-agent`.
pub fn default_cache_dir(home: &std::path::Path) -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("scale-cluster-agent"),
        _ => home.join(".cache/scale-cluster-agent"),
    }
}

pub fn home_dir() -> anyhow::Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow::anyhow!("HOME is not set; pass --data-dir, --kwok-workdir and --cache-dir")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(flatten)]
        rancher: RancherArgs,
    }

    fn parse(args: &[&str]) -> (Settings, RancherArgs) {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        (Settings::from_args(&cli.global).unwrap(), cli.rancher)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "ports: {base: 30000, blocks: 5}\nrancher: {url: 'https://r.example', token: token-abc:secret}\n\
             agent: {concurrency: 7, profile: full}\n",
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let (settings, rancher) = parse(&["--config", config, "--port-blocks", "9"]);
        assert_eq!(settings.ports.base, 30000);
        assert_eq!(settings.ports.stride, 10);
        assert_eq!(settings.ports.blocks, 9, "the flag wins");
        let agent = rancher.resolve(&settings).unwrap();
        assert_eq!(agent.rancher.url, "https://r.example");
        assert_eq!(agent.concurrency, 7);
        assert_eq!(agent.profile, ComponentProfile::Full);
        assert_eq!(agent.listen.to_string(), DEFAULT_LISTEN);
        assert!(matches!(agent.rancher.tls, TlsMode::PublicRoots));
        assert!(
            !format!("{:?} {:?}", settings.file, agent).contains("secret"),
            "the token is never shown"
        );
    }

    #[test]
    fn a_non_loopback_listen_needs_an_api_token_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "rancher: {url: 'https://r', token: 'token-a:b'}\n").unwrap();
        let config = config.to_str().unwrap();

        let (settings, rancher) = parse(&["--config", config, "--listen", "0.0.0.0:8089"]);
        let err = format!("{:#}", rancher.resolve(&settings).unwrap_err());
        assert!(
            err.contains("not a loopback address") && err.contains("SCA_API_TOKEN"),
            "{err}"
        );

        let token_file = dir.path().join("api-token");
        std::fs::write(&token_file, "s3cr3t-api-token-0123\n").unwrap();
        let (settings, rancher) = parse(&[
            "--config",
            config,
            "--listen",
            "0.0.0.0:8089",
            "--api-token-file",
            token_file.to_str().unwrap(),
        ]);
        let agent = rancher.resolve(&settings).unwrap();
        assert_eq!(
            agent.api_token.as_ref().map(|t| t.expose()),
            Some("s3cr3t-api-token-0123")
        );
        assert!(!format!("{agent:?}").contains("s3cr3t"), "never shown");

        // Loopback needs none, but takes one from the config file.
        let (settings, rancher) = parse(&["--config", config]);
        assert!(rancher.resolve(&settings).unwrap().api_token.is_none());
        let with_file = dir.path().join("with-file.yaml");
        std::fs::write(
            &with_file,
            format!(
                "rancher: {{url: 'https://r', token: 'token-a:b'}}\nagent: {{apiTokenFile: {}}}\n",
                token_file.display()
            ),
        )
        .unwrap();
        let (settings, rancher) = parse(&["--config", with_file.to_str().unwrap()]);
        assert!(rancher.resolve(&settings).unwrap().api_token.is_some());

        std::fs::write(&token_file, "short\n").unwrap();
        let (settings, rancher) = parse(&[
            "--config",
            config,
            "--api-token-file",
            token_file.to_str().unwrap(),
        ]);
        let err = format!("{:#}", rancher.resolve(&settings).unwrap_err());
        assert!(err.contains("shorter than 16"), "{err}");
    }

    #[test]
    fn secret_variables_are_recognised() {
        for name in [
            "SCA_RANCHER_TOKEN",
            "SCA_API_TOKEN",
            "SCA_API_TOKEN_FILE",
            "SCA_SOME_NEW_token",
        ] {
            assert!(is_secret_env(name), "{name}");
        }
        for name in ["PATH", "HOME", "SCA_DATA_DIR", "KUBE_TOKEN", "GOFLAGS"] {
            assert!(!is_secret_env(name), "{name}");
        }
        let names = secret_env_names(
            ["PATH", "SCA_X_TOKEN", "SCA_LOG"]
                .into_iter()
                .map(OsString::from),
        );
        assert_eq!(
            names,
            ["SCA_X_TOKEN", RANCHER_TOKEN_ENV, API_TOKEN_ENV].map(OsString::from)
        );
        // What a child really sees.
        let mut cmd = std::process::Command::new("env");
        cmd.env(RANCHER_TOKEN_ENV, "leaked-value")
            .env("SCA_KEEP", "kept");
        scrub_secret_env(&mut cmd);
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert!(
            !out.contains("leaked-value") && out.contains("SCA_KEEP=kept"),
            "{out}"
        );
    }

    #[test]
    fn private_dirs_are_created_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = dir.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        // A shared sticky directory is not ours to change.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o1777);
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "rancher: {urll: x}\n").unwrap();
        let cli = Cli::try_parse_from(["x", "--config", file.to_str().unwrap()]).unwrap();
        let err = Settings::from_args(&cli.global).unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");

        std::fs::write(&file, "rancher: {url: 'https://r', token: 'token-a:b', caFile: /x, insecureSkipTlsVerify: true}\n").unwrap();
        let (settings, rancher) = parse(&["--config", file.to_str().unwrap()]);
        let err = rancher.resolve(&settings).unwrap_err();
        assert!(err.to_string().contains("choose one way"), "{err}");

        let (settings, rancher) = parse(&[]);
        assert!(rancher
            .resolve(&settings)
            .unwrap_err()
            .to_string()
            .contains("no Rancher URL"));
    }
}
