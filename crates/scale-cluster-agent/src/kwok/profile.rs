//! Component profiles: which control-plane processes a cluster runs and with which flags.
//!
//! - `full`: every kwokctl default component (etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler, kwok-controller).
//! - `lean`: no kube-scheduler (the agent binds pods to nodes itself), and a kube-controller-manager
//!   restricted to the controllers Rancher relies on, without leader election.
//!
//! Both bind every component to 127.0.0.1 (kwokctl's default is 0.0.0.0, settable only by config).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ports::PortBlock;
use crate::toolchain::Toolchain;

/// kube-controller-manager controllers the `lean` profile keeps: service-account tokens that Rancher
/// waits for, default service accounts, the root CA ConfigMap, namespace deletion, garbage collection
/// and the aggregated admin/edit/view roles Rancher's role templates bind to.
pub const LEAN_CONTROLLERS: &[&str] = &[
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "clusterrole-aggregation-controller",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ComponentProfile {
    Full,
    #[default]
    Lean,
}

impl ComponentProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentProfile::Full => "full",
            ComponentProfile::Lean => "lean",
        }
    }

    /// kwokctl component names this profile runs.
    pub fn components(self) -> &'static [&'static str] {
        match self {
            ComponentProfile::Full => &[
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok-controller",
            ],
            ComponentProfile::Lean => &[
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kwok-controller",
            ],
        }
    }

    /// Whether pods must be bound to nodes by whoever creates them.
    pub fn has_scheduler(self) -> bool {
        self == ComponentProfile::Full
    }

    /// Extra `kwokctl create cluster` flags.
    pub fn create_flags(self) -> Vec<String> {
        match self {
            ComponentProfile::Full => Vec::new(),
            ComponentProfile::Lean => vec!["--disable".into(), "kube-scheduler".into()],
        }
    }

    /// The per-cluster `KwokctlConfiguration` document: binaries, bind address, etcd peer port and
    /// this profile's component patches.
    pub fn kwokctl_config(self, toolchain: &Toolchain, ports: &PortBlock) -> String {
        let mut doc = format!(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  etcdPeerPort: {etcd_peer}
  kubeApiserverBinary: {apiserver}
  kubeControllerManagerBinary: {kcm}
  kubeSchedulerBinary: {scheduler}
  kwokControllerBinary: {kwok}
  etcdBinary: {etcd}
  kubectlBinary: {kubectl}
",
            etcd_peer = ports.etcd_peer,
            apiserver = yaml_path(&toolchain.kube_apiserver),
            kcm = yaml_path(&toolchain.kube_controller_manager),
            scheduler = yaml_path(&toolchain.kube_scheduler),
            kwok = yaml_path(&toolchain.kwok),
            etcd = yaml_path(&toolchain.etcd),
            kubectl = yaml_path(&toolchain.kubectl),
        );
        if self == ComponentProfile::Lean {
            doc.push_str(&format!(
                "componentsPatches:
- name: kube-controller-manager
  extraArgs:
  - key: controllers
    value: {controllers}
  - key: leader-elect
    value: \"false\"
",
                controllers = LEAN_CONTROLLERS.join(","),
            ));
        }
        doc
    }
}

/// Quotes a path as a YAML string.
fn yaml_path(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).unwrap_or_default()
}

impl fmt::Display for ComponentProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown component profile {0:?}: expected \"full\" or \"lean\"")]
pub struct UnknownProfile(pub String);

impl FromStr for ComponentProfile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(ComponentProfile::Full),
            "lean" => Ok(ComponentProfile::Lean),
            other => Err(UnknownProfile(other.to_string())),
        }
    }
}
