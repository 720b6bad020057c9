//! Where the agent keeps things on disk, and the defaults every command shares. Flags and environment
//! variables (declared on [`GlobalArgs`]) override the built-in defaults.

use std::path::PathBuf;

use clap::Args;

use crate::kwok::ports::PortRange;
use crate::toolchain::ToolchainArgs;

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory holding the agent's state database.
    #[arg(long, env = "SCA_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// kwokctl work directory (clusters live in `<dir>/clusters/<name>`).
    #[arg(long, env = "SCA_KWOK_WORKDIR", global = true)]
    pub kwok_workdir: Option<PathBuf>,

    /// Versioned binary cache (`<dir>/<component>/<version>/<binary>`).
    #[arg(long, env = "SCA_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// First port of the first cluster's port block.
    #[arg(long, env = "SCA_PORT_BASE", default_value_t = PortRange::DEFAULT.base, global = true)]
    pub port_base: u16,

    /// Distance between two clusters' port blocks (at least 6).
    #[arg(long, env = "SCA_PORT_STRIDE", default_value_t = PortRange::DEFAULT.stride, global = true)]
    pub port_stride: u16,

    /// Maximum number of port blocks (clusters) in the range.
    #[arg(long, env = "SCA_PORT_BLOCKS", default_value_t = PortRange::DEFAULT.blocks, global = true)]
    pub port_blocks: u16,

    #[command(flatten)]
    pub toolchain: ToolchainArgs,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kwok_workdir: PathBuf,
    pub cache_dir: PathBuf,
    pub ports: PortRange,
    pub toolchain: ToolchainArgs,
}

impl Settings {
    pub fn from_args(args: &GlobalArgs) -> anyhow::Result<Self> {
        let home = home_dir()?;
        let ports = PortRange::new(args.port_base, args.port_stride, args.port_blocks)?;
        Ok(Self {
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| home.join(".local/share/scale-cluster-agent")),
            kwok_workdir: args
                .kwok_workdir
                .clone()
                .unwrap_or_else(|| home.join(".kwok")),
            cache_dir: args
                .cache_dir
                .clone()
                .unwrap_or_else(|| default_cache_dir(&home)),
            ports,
            toolchain: args.toolchain.clone(),
        })
    }

    /// Path of the state database.
    pub fn state_db(&self) -> PathBuf {
        self.data_dir.join("state.db")
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
