//! Toolchain provisioning: finds, builds (from the pinned Go modules under `tools/`) or downloads the
//! KWOK and Kubernetes binaries every simulated cluster runs, and caches them per version outside the
//! work tree (`~/.cache/scale-cluster-agent/<component>/<version>/`).

use std::fmt;
use std::path::PathBuf;

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
}

impl Component {
    pub const ALL: [Component; 7] = [
        Component::Kwokctl,
        Component::Kwok,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Kubectl,
        Component::Etcd,
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
        }
    }

    /// The pinned version this project runs.
    pub fn pinned_version(self) -> &'static str {
        match self {
            Component::Kwokctl | Component::Kwok => KWOK_VERSION,
            Component::Etcd => ETCD_VERSION,
            _ => KUBE_VERSION,
        }
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

/// Toolchain options every command accepts (explicit binary paths, download mirror, ...).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ToolchainArgs {}
