//! Toolchain provisioning: finds, builds (from the pinned Go modules under `tools/`) or downloads the
//! KWOK and Kubernetes binaries every simulated cluster runs, and builds the agent's hosts
//! (`hosts/steve-host`, `hosts/controller-host`, embedded), caching them per version outside the
//! work tree
//! (`~/.cache/scale-cluster-agent/<component>/<version>/`).
//!
//! Resolution order for each component (see [`locate`] and [`install`]):
//! 1. an explicit path (`--<binary>-binary` / `SCA_<BINARY>_BINARY`): must exist and report the pin;
//! 2. `PATH`, only if the binary there reports the pinned version;
//! 3. the versioned cache `<cache_dir>/<component>/<version>/<binary>`;
//! 4. ([`install`] only) a build from the embedded Go modules with the local `go`, or
//! 5. ([`install`] only) a download of the official release binary, checked against its SHA-256.
//!
//! Every binary found is verified by running it (`--version`) and matching the pinned version.
//! The hosts have no upstream release: a host's version is its pin (Steve's, Kubernetes') plus a
//! hash of its embedded sources ([`STEVE_HOST_VERSION`], [`CONTROLLER_HOST_VERSION`]), so changed
//! sources are a new cache entry, and they are only ever built.

mod build;
mod download;
mod install;
mod locate;
mod lock;
mod progress;
mod version;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

pub use build::{CONTROLLER_HOST_VERSION, STEVE_HOST_VERSION};
pub use download::{MIRROR_LAYOUT, OFFICIAL_GITHUB, OFFICIAL_KUBE};
pub use install::{install, install_component, Installed};
pub use locate::{locate, status, ComponentStatus};
pub use progress::Progress;
pub use version::parse_version;

/// Kubernetes release whose binaries every simulated cluster runs: the one kwok's pinned release defaults to.
pub const KUBE_VERSION: &str = "v1.36.1";
/// kwok / kwokctl release.
pub const KWOK_VERSION: &str = "v0.8.0";
/// etcd server release (3.6.x, as kwokctl expects for Kubernetes 1.36).
pub const ETCD_VERSION: &str = "v3.6.16";

/// One binary the toolchain provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Kwokctl,
    Kwok,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kubectl,
    Etcd,
    /// The agent's steve host (`hosts/steve-host`), which serves Rancher's Steve API for the
    /// simulated clusters; not part of a cluster's [`Toolchain`].
    SteveHost,
    /// The agent's controller host (`hosts/controller-host`), which runs kube-controller-manager's
    /// and kwok's controllers for the simulated clusters; not part of a cluster's [`Toolchain`].
    ControllerHost,
}

impl Component {
    /// The binaries a KWOK cluster runs: what [`Toolchain`] holds.
    pub const ALL: [Component; 7] = [
        Component::Kwokctl,
        Component::Kwok,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Kubectl,
        Component::Etcd,
    ];

    /// Every component: the cluster binaries and the steve host. `install` provisions and
    /// `status` reports all of them.
    pub const EVERY: [Component; 9] = [
        Component::Kwokctl,
        Component::Kwok,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Kubectl,
        Component::Etcd,
        Component::SteveHost,
        Component::ControllerHost,
    ];

    /// File name of the binary (also the cache sub-directory).
    pub fn binary_name(self) -> &'static str {
        match self {
            Component::Kwokctl => "kwokctl",
            Component::Kwok => "kwok",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kubectl => "kubectl",
            Component::Etcd => "etcd",
            Component::SteveHost => "steve-host",
            Component::ControllerHost => "controller-host",
        }
    }

    /// The pinned version this project runs.
    pub fn pinned_version(self) -> &'static str {
        match self {
            Component::Kwokctl | Component::Kwok => KWOK_VERSION,
            Component::Etcd => ETCD_VERSION,
            Component::SteveHost => STEVE_HOST_VERSION,
            Component::ControllerHost => CONTROLLER_HOST_VERSION,
            _ => KUBE_VERSION,
        }
    }

    /// Where the cache keeps this component: `<cache_dir>/<component>/<version>/<binary>`.
    pub fn cache_path(self, cache_dir: &Path) -> PathBuf {
        cache_dir
            .join(self.binary_name())
            .join(self.pinned_version())
            .join(self.binary_name())
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

/// Resolved paths of every binary a KWOK cluster needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub kwokctl: PathBuf,
    pub kwok: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
}

impl Toolchain {
    /// Path of one component's binary; `None` for the steve host, which is not a cluster's
    /// (the agent resolves it on its own with [`install_component`]).
    pub fn path(&self, component: Component) -> Option<&Path> {
        Some(match component {
            Component::Kwokctl => &self.kwokctl,
            Component::Kwok => &self.kwok,
            Component::KubeApiserver => &self.kube_apiserver,
            Component::KubeControllerManager => &self.kube_controller_manager,
            Component::KubeScheduler => &self.kube_scheduler,
            Component::Kubectl => &self.kubectl,
            Component::Etcd => &self.etcd,
            Component::SteveHost | Component::ControllerHost => return None,
        })
    }

    /// Assembles a toolchain from one resolved path per component.
    fn from_fn(
        mut path: impl FnMut(Component) -> Result<PathBuf, ToolchainError>,
    ) -> Result<Self, ToolchainError> {
        Ok(Self {
            kwokctl: path(Component::Kwokctl)?,
            kwok: path(Component::Kwok)?,
            kube_apiserver: path(Component::KubeApiserver)?,
            kube_controller_manager: path(Component::KubeControllerManager)?,
            kube_scheduler: path(Component::KubeScheduler)?,
            kubectl: path(Component::Kubectl)?,
            etcd: path(Component::Etcd)?,
        })
    }
}

/// How [`install`] provisions a component that is neither given, on `PATH`, nor cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourcePreference {
    /// Download when a mirror is configured, else build when `go` is available, else download the
    /// official release.
    #[default]
    Auto,
    /// Always build from the pinned Go modules (needs `go`).
    Build,
    /// Always download release binaries (official locations or `--download-base-url`).
    Download,
}

/// Everything [`locate`], [`install`] and [`status`] need; built from the configuration by the
/// app, or directly by tests.
#[derive(Debug, Clone)]
pub struct ToolchainOptions {
    /// Versioned binary cache.
    pub cache_dir: PathBuf,
    /// Explicit binaries; each must exist and report the pinned version.
    pub explicit: BTreeMap<Component, PathBuf>,
    /// How to provision missing components.
    pub source: SourcePreference,
    /// Mirror base URL; `None` means the official locations.
    pub download_base_url: Option<String>,
    /// Explicit `go` binary; `None` looks `go` up on the search path.
    pub go: Option<PathBuf>,
    /// Directories searched for binaries and `go`; `None` means the process's `PATH`.
    pub search_path: Option<OsString>,
}

impl ToolchainOptions {
    /// Defaults: no explicit binaries, automatic source, official download locations, process `PATH`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            explicit: BTreeMap::new(),
            source: SourcePreference::Auto,
            download_base_url: None,
            go: None,
            search_path: None,
        }
    }

    /// The search path in effect.
    fn search_path(&self) -> Option<OsString> {
        self.search_path
            .clone()
            .or_else(|| std::env::var_os("PATH"))
    }

    /// The lock file that serialises installs into this cache.
    fn lock_path(&self) -> PathBuf {
        self.cache_dir.join(".install.lock")
    }

    /// Where `go build` logs go.
    fn log_dir(&self) -> PathBuf {
        self.cache_dir.join("logs")
    }
}

/// Where a resolved binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--<binary>-binary` or `SCA_<BINARY>_BINARY`.
    Explicit,
    /// Found on `PATH` with the pinned version.
    Path,
    /// Already in the versioned cache.
    Cache,
    /// Built by this install.
    Built,
    /// Downloaded by this install.
    Downloaded,
    /// Not found.
    Missing,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Explicit => "flag/env",
            Source::Path => "PATH",
            Source::Cache => "cache",
            Source::Built => "built",
            Source::Downloaded => "downloaded",
            Source::Missing => "missing",
        })
    }
}

/// Errors of toolchain provisioning; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("{component} {} is not installed ({hint}); run `scale-cluster-agent toolchain install`", component.pinned_version())]
    Missing { component: Component, hint: String },

    #[error("{component}: the explicit binary {} (--{component}-binary / SCA_*_BINARY) does not exist", path.display())]
    ExplicitNotFound { component: Component, path: PathBuf },

    #[error("{component}: {} reports version {found}, but this project pins {expected}", path.display())]
    WrongVersion {
        component: Component,
        path: PathBuf,
        found: String,
        expected: &'static str,
    },

    #[error("{component}: cannot verify {}: {detail}", path.display())]
    VersionCheck {
        component: Component,
        path: PathBuf,
        detail: String,
    },

    #[error("no `go` toolchain found ({looked}); install Go >= 1.26 (https://go.dev/dl/) or pass --go-binary, or download release binaries with --toolchain-source download [--download-base-url URL]")]
    NoGo { looked: String },

    #[error("no `go` toolchain found to build {component}, and downloading it failed: {source}; install Go >= 1.26 (https://go.dev/dl/) or point --download-base-url at a mirror")]
    NoGoAndDownloadFailed {
        component: Component,
        #[source]
        source: Box<ToolchainError>,
    },

    #[error("building {component} failed ({detail}); full `go build` log: {}", log.display())]
    BuildFailed {
        component: Component,
        log: PathBuf,
        detail: String,
    },

    #[error("{component} has no release binary to download: it is built from the sources embedded in this program, which needs `go` (install Go >= 1.26 from https://go.dev/dl/ or pass --go-binary)")]
    BuildOnly { component: Component },

    #[error("downloading {url} failed: {detail}")]
    Download { url: String, detail: String },

    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}; nothing was installed")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },

    #[error("{component}: {detail}")]
    Archive {
        component: Component,
        detail: String,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ToolchainError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ToolchainError {
        let context = context.into();
        move |source| ToolchainError::Io { context, source }
    }
}
