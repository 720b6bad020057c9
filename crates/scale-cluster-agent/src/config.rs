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
//! It is the top layer with the CLI: it turns what the user gave into the small settings structs
//! of the layers below ([`Settings::kwok`], [`Settings::toolchain_options`]), which know nothing of
//! it. Secret variables are read through [`crate::secrets`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

use crate::agent::desired::{shard_instance_id, ShardSpec};
use crate::api::ApiToken as AgentApiToken;
use crate::kwok::{ComponentProfile, KwokSettings};
use crate::rancher::{ApiToken, RancherConfig, TlsMode};
use crate::secrets::{ensure_private_dir, secret_var, API_TOKEN_ENV, RANCHER_TOKEN_ENV};
use crate::store::ports::PortRange;
use crate::toolchain::{Component, SourcePreference, ToolchainOptions};

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

    /// Client port of the shared etcd of `lean` clusters; the next port is its peer port. Must
    /// lie outside the port blocks [default: the two ports below --port-base: 7999, 8000].
    #[arg(long, env = "SCA_SHARED_ETCD_PORT", global = true)]
    pub shared_etcd_port: Option<u16>,

    #[command(flatten)]
    pub toolchain: ToolchainArgs,
}

/// Toolchain options every command accepts (explicit binary paths, download mirror, ...).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ToolchainArgs {
    /// kwokctl binary to use instead of PATH/cache (must report the pinned version).
    #[arg(long, env = "SCA_KWOKCTL_BINARY", global = true)]
    pub kwokctl_binary: Option<PathBuf>,

    /// kwok controller binary to use instead of PATH/cache.
    #[arg(long, env = "SCA_KWOK_BINARY", global = true)]
    pub kwok_binary: Option<PathBuf>,

    /// kube-apiserver binary to use instead of PATH/cache.
    #[arg(long, env = "SCA_KUBE_APISERVER_BINARY", global = true)]
    pub kube_apiserver_binary: Option<PathBuf>,

    /// kube-controller-manager binary to use instead of PATH/cache.
    #[arg(long, env = "SCA_KUBE_CONTROLLER_MANAGER_BINARY", global = true)]
    pub kube_controller_manager_binary: Option<PathBuf>,

    /// kube-scheduler binary to use instead of PATH/cache.
    #[arg(long, env = "SCA_KUBE_SCHEDULER_BINARY", global = true)]
    pub kube_scheduler_binary: Option<PathBuf>,

    /// kubectl binary to use instead of PATH/cache.
    #[arg(long, env = "SCA_KUBECTL_BINARY", global = true)]
    pub kubectl_binary: Option<PathBuf>,

    /// etcd binary to use instead of PATH/cache.
    #[arg(long, env = "SCA_ETCD_BINARY", global = true)]
    pub etcd_binary: Option<PathBuf>,

    /// steve-host binary (the agent's Steve server) to use instead of PATH/cache.
    #[arg(long, env = "SCA_STEVE_HOST_BINARY", global = true)]
    pub steve_host_binary: Option<PathBuf>,

    /// controller-host binary (the agent's clusters' controllers) to use instead of PATH/cache.
    #[arg(long, env = "SCA_CONTROLLER_HOST_BINARY", global = true)]
    pub controller_host_binary: Option<PathBuf>,

    /// Mirror serving the official release paths (see `toolchain install --help` for the layout);
    /// setting it makes `install` download rather than build.
    #[arg(long, env = "SCA_DOWNLOAD_BASE_URL", global = true)]
    pub download_base_url: Option<String>,

    /// `go` binary used to build missing components (default: `go` on PATH).
    #[arg(long, env = "SCA_GO_BINARY", global = true)]
    pub go_binary: Option<PathBuf>,

    /// How to provision missing components.
    #[arg(
        long,
        env = "SCA_TOOLCHAIN_SOURCE",
        value_enum,
        default_value_t,
        global = true
    )]
    pub toolchain_source: SourcePreference,
}

/// `--toolchain-source`: the CLI's names for [`SourcePreference`], kept here so that the toolchain
/// layer knows nothing of clap.
impl clap::ValueEnum for SourcePreference {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Auto, Self::Build, Self::Download]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let (name, help) = match self {
            Self::Auto => (
                "auto",
                "Download when a mirror is configured, else build when `go` is available, else \
                 download the official release",
            ),
            Self::Build => (
                "build",
                "Always build from the pinned Go modules (needs `go`)",
            ),
            Self::Download => (
                "download",
                "Always download release binaries (official locations or `--download-base-url`)",
            ),
        };
        Some(clap::builder::PossibleValue::new(name).help(help))
    }
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
    #[serde(default)]
    pub steve: SteveFile,
}

/// `steve:` in the config file: Rancher's Steve API behind the steve tunnels.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SteveFile {
    pub enabled: Option<bool>,
    /// How long a cluster's Steve server lives without requests: `90s`, `10m`, `1h` or seconds.
    pub idle_timeout: Option<DurationText>,
}

/// A duration written `<n>`, `<n>s`, `<n>m` or `<n>h` (whole numbers; a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub std::time::Duration);

impl std::str::FromStr for DurationText {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => text.split_at(at),
            None => (text, "s"),
        };
        let seconds_per = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: expected e.g. 90s, 10m or 1h"
                ))
            }
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 10m or 1h"))?;
        if n == 0 {
            return Err(format!("invalid duration {text:?}: must be positive"));
        }
        Ok(Self(std::time::Duration::from_secs(
            n.saturating_mul(seconds_per),
        )))
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Seconds(n) => n.to_string(),
            Raw::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortsFile {
    pub base: Option<u16>,
    pub stride: Option<u16>,
    pub blocks: Option<u16>,
    /// See `--shared-etcd-port`.
    pub shared_etcd: Option<u16>,
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
    /// See `serve --desired-clusters`.
    pub desired_clusters: Option<usize>,
    /// See `serve --shard`.
    pub shard: Option<u32>,
    /// See `serve --cluster-prefix`.
    pub cluster_prefix: Option<String>,
    /// See `serve --request-audit`.
    pub request_audit: Option<bool>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kwok_workdir: PathBuf,
    pub cache_dir: PathBuf,
    pub ports: PortRange,
    /// `--shared-etcd-port`; `None`: just below the port range ([`Settings::shared_etcd_port`]).
    pub shared_etcd_port: Option<u16>,
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
        let shared_etcd_port = args.shared_etcd_port.or(file.ports.shared_etcd);
        if let Some(port) = shared_etcd_port {
            let (first, last) = ports.span();
            if port < 1024 || port == u16::MAX || (port < last && port + 1 >= first) {
                anyhow::bail!(
                    "--shared-etcd-port {port}: the shared etcd needs ports {port} and {} outside \
                     the cluster port blocks ({first}-{last}) and above 1023",
                    port.saturating_add(1)
                );
            }
        }
        Ok(Self {
            shared_etcd_port,
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

    /// What the toolchain layer needs: the cache and the `--*-binary`, source and mirror options.
    pub fn toolchain_options(&self) -> ToolchainOptions {
        let args = &self.toolchain;
        let explicit = [
            (Component::Kwokctl, &args.kwokctl_binary),
            (Component::Kwok, &args.kwok_binary),
            (Component::KubeApiserver, &args.kube_apiserver_binary),
            (
                Component::KubeControllerManager,
                &args.kube_controller_manager_binary,
            ),
            (Component::KubeScheduler, &args.kube_scheduler_binary),
            (Component::Kubectl, &args.kubectl_binary),
            (Component::Etcd, &args.etcd_binary),
            (Component::SteveHost, &args.steve_host_binary),
            (Component::ControllerHost, &args.controller_host_binary),
        ]
        .into_iter()
        .filter_map(|(c, p)| p.clone().map(|p| (c, p)))
        .collect();
        ToolchainOptions {
            cache_dir: self.cache_dir.clone(),
            explicit,
            source: args.toolchain_source,
            download_base_url: args
                .download_base_url
                .clone()
                .filter(|url| !url.trim().is_empty()),
            go: args.go_binary.clone(),
            search_path: None,
        }
    }

    /// What the KWOK layer needs: kwokctl's work dir, where cluster configs are written, the ports,
    /// and where the shared etcd lives.
    pub fn kwok(&self) -> KwokSettings {
        KwokSettings {
            workdir: self.kwok_workdir.clone(),
            config_dir: self.data_dir.join("kwokctl"),
            ports: self.ports,
            shared_etcd_dir: self.data_dir.join("etcd"),
            shared_etcd_port: self.shared_etcd_port(),
            request_audit: self.file.agent.request_audit.unwrap_or(false),
        }
    }

    /// The shared etcd's client port: as configured, or the two ports just below the port range
    /// (just above it if the range starts too low), so every port range has its own.
    pub fn shared_etcd_port(&self) -> u16 {
        self.shared_etcd_port.unwrap_or_else(|| {
            if self.ports.base >= 1026 {
                self.ports.base - 2
            } else {
                self.ports.span().1.saturating_add(1)
            }
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

    /// Serve Rancher's Steve API (Cluster Explorer) through the steve tunnels with a steve host
    /// process; `--steve=false` answers only Rancher's /ping [default: true].
    #[arg(long, env = "SCA_STEVE", num_args = 0..=1, default_missing_value = "true")]
    pub steve: Option<bool>,

    /// How long a cluster's Steve server lives without requests (90s, 10m, 1h) [default: 10m].
    #[arg(long, env = "SCA_STEVE_IDLE_TIMEOUT")]
    pub steve_idle_timeout: Option<DurationText>,

    /// Run the kube-controller-manager and kwok controllers of the `lean` clusters the agent
    /// creates in one controller host process instead of two processes per cluster; `false`
    /// keeps kwokctl's processes [default: true].
    #[arg(long, env = "SCA_CONTROLLER_HOST", num_args = 0..=1, default_missing_value = "true")]
    pub controller_host: Option<bool>,

    /// Count Rancher's requests to each cluster by verb and resource
    /// (`sca_rancher_apiserver_requests_total`): clusters created while it is on run their
    /// kube-apiserver with an audit log of Rancher's service account alone, which the agent
    /// tails [default: false].
    #[arg(long, env = "SCA_REQUEST_AUDIT", num_args = 0..=1, default_missing_value = "true")]
    pub request_audit: Option<bool>,
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
    pub steve: SteveSettings,
    /// Shard mode (`serve --desired-clusters`); set by [`ShardArgs::apply`].
    pub shard: Option<ShardSpec>,
    /// Whether `lean` clusters the agent creates run their controllers in the controller host.
    pub controller_host: bool,
    /// Whether clusters get the audit log of Rancher's requests and the agent counts them.
    pub request_audit: bool,
}

/// Whether and how the agent serves Steve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteveSettings {
    pub enabled: bool,
    pub idle_timeout: std::time::Duration,
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
            steve: SteveSettings {
                enabled: self.steve.or(settings.file.steve.enabled).unwrap_or(true),
                idle_timeout: self
                    .steve_idle_timeout
                    .or(settings.file.steve.idle_timeout)
                    .map_or(crate::steve::DEFAULT_IDLE_TIMEOUT, |d| d.0),
            },
            shard: None,
            controller_host: self.controller_host.unwrap_or(true),
            request_audit: self.request_audit.or(agent.request_audit).unwrap_or(false),
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

/// Default prefix of a shard's cluster names.
pub const DEFAULT_CLUSTER_PREFIX: &str = "sim";

/// `serve`'s shard mode: converge to a count of clusters named `<prefix>-<shard>-NNNNN`.
#[derive(Debug, Clone, Default, Args)]
pub struct ShardArgs {
    /// Shard mode: keep exactly N clusters named <prefix>-<shard>-00001… (creating the missing
    /// ones, deleting the highest-numbered beyond N); needs --shard.
    #[arg(long, env = "SCA_DESIRED_CLUSTERS")]
    pub desired_clusters: Option<usize>,

    /// This agent's shard index (a StatefulSet pod's ordinal); each shard owns its own names.
    #[arg(long, env = "SCA_SHARD")]
    pub shard: Option<u32>,

    /// Prefix of a shard's cluster names; unique per Rancher [default: sim].
    #[arg(long, env = "SCA_CLUSTER_PREFIX")]
    pub cluster_prefix: Option<String>,
}

impl ShardArgs {
    /// The prefix from the flag, the file or the default.
    pub fn prefix(&self, settings: &Settings) -> String {
        self.cluster_prefix
            .clone()
            .or_else(|| settings.file.agent.cluster_prefix.clone())
            .unwrap_or_else(|| DEFAULT_CLUSTER_PREFIX.to_string())
    }

    /// Puts shard mode into `agent` when a desired count is set (flag, env or
    /// `agent.desiredClusters`): the series, and unless one is set, the shard's stable instance
    /// id ([`shard_instance_id`]).
    pub fn apply(&self, settings: &Settings, agent: &mut AgentSettings) -> anyhow::Result<()> {
        let file = &settings.file.agent;
        let count = self.desired_clusters.or(file.desired_clusters);
        let shard = self.shard.or(file.shard);
        let (count, shard) = match (count, shard) {
            (None, None) => return Ok(()),
            (Some(count), Some(shard)) => (count, shard),
            (Some(_), None) => bail!(
                "--desired-clusters needs --shard (SCA_SHARD, agent.shard): 0 for a single agent, \
                 the pod ordinal in a StatefulSet"
            ),
            (None, Some(_)) => bail!(
                "--shard needs --desired-clusters (SCA_DESIRED_CLUSTERS, agent.desiredClusters)"
            ),
        };
        let prefix = self.prefix(settings);
        let spec = ShardSpec::new(&prefix, shard, count, agent.profile)?;
        agent
            .instance_id
            .get_or_insert_with(|| shard_instance_id(&prefix, shard));
        agent.shard = Some(spec);
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
        assert_eq!(settings.kwok().shared_etcd_port, 29998, "below the range");
        assert_eq!(
            settings.kwok().shared_etcd_dir,
            settings.data_dir.join("etcd")
        );
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
    fn the_shared_etcd_port_is_configurable_and_kept_out_of_the_port_blocks() {
        let (settings, _) = parse(&["--shared-etcd-port", "7379"]);
        assert_eq!(settings.kwok().shared_etcd_port, 7379);
        let (settings, _) = parse(&[]);
        assert_eq!(settings.kwok().shared_etcd_port, 7999);
        let cli = Cli::try_parse_from(["x", "--shared-etcd-port", "8005"]).unwrap();
        let err = Settings::from_args(&cli.global).unwrap_err().to_string();
        assert!(
            err.contains("outside the cluster port blocks (8001-17996)"),
            "{err}"
        );
        let cli = Cli::try_parse_from(["x", "--shared-etcd-port", "8000"]).unwrap();
        assert!(
            Settings::from_args(&cli.global).is_err(),
            "its peer port would be 8001"
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
    fn steve_is_on_by_default_and_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "rancher: {url: 'https://r', token: 'token-a:b'}\n").unwrap();
        let config = file.to_str().unwrap();
        let (settings, rancher) = parse(&["--config", config]);
        let steve = rancher.resolve(&settings).unwrap().steve;
        assert!(steve.enabled);
        assert_eq!(steve.idle_timeout, std::time::Duration::from_secs(600));

        std::fs::write(
            &file,
            "rancher: {url: 'https://r', token: 'token-a:b'}\nsteve: {enabled: false, idleTimeout: 2m}\n",
        )
        .unwrap();
        let (settings, rancher) = parse(&["--config", config]);
        let steve = rancher.resolve(&settings).unwrap().steve;
        assert!(!steve.enabled);
        assert_eq!(steve.idle_timeout, std::time::Duration::from_secs(120));

        // Flags win over the file.
        let (settings, rancher) =
            parse(&["--config", config, "--steve", "--steve-idle-timeout", "45"]);
        let steve = rancher.resolve(&settings).unwrap().steve;
        assert!(steve.enabled);
        assert_eq!(steve.idle_timeout, std::time::Duration::from_secs(45));

        for bad in ["0", "10d", "m", "-5s"] {
            assert!(bad.parse::<DurationText>().is_err(), "{bad}");
        }
        std::fs::write(&file, "steve: {idleTimeout: soon}\n").unwrap();
        let cli = Cli::try_parse_from(["x", "--config", config]).unwrap();
        let err = format!("{:#}", Settings::from_args(&cli.global).unwrap_err());
        assert!(err.contains("invalid duration \"soon\""), "{err}");
    }

    #[test]
    fn request_audit_is_off_by_default_and_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "rancher: {url: 'https://r', token: 'token-a:b'}\n").unwrap();
        let config = file.to_str().unwrap();
        let (settings, rancher) = parse(&["--config", config]);
        assert!(!rancher.resolve(&settings).unwrap().request_audit);
        assert!(!settings.kwok().request_audit);
        let (settings, rancher) = parse(&["--config", config, "--request-audit"]);
        assert!(rancher.resolve(&settings).unwrap().request_audit);

        std::fs::write(
            &file,
            "rancher: {url: 'https://r', token: 'token-a:b'}\nagent: {requestAudit: true}\n",
        )
        .unwrap();
        let (settings, rancher) = parse(&["--config", config]);
        assert!(rancher.resolve(&settings).unwrap().request_audit);
        assert!(settings.kwok().request_audit);
        let (settings, rancher) = parse(&["--config", config, "--request-audit=false"]);
        assert!(!rancher.resolve(&settings).unwrap().request_audit);
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
