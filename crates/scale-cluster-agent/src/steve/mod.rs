//! Rancher's Steve API for the simulated clusters, served as the real cattle-cluster-agent serves
//! it: Rancher's steve proxy sends the user's `/k8s/clusters/<id>/v1/…` requests, with
//! `Impersonate-*` headers and no credentials, through the cluster's steve tunnel, and the agent
//! answers them with the upstream Steve library (`github.com/rancher/steve`, Rancher's pin).
//!
//! - [`host`]: the one **steve host** child process per agent (`hosts/steve-host`, built by the
//!   toolchain), which serves every cluster from a unix socket in a private directory, starts a
//!   cluster's Steve server on its first request and releases it when idle. The agent supervises
//!   it: scrubbed environment, restart with backoff after a crash, terminated and awaited on
//!   shutdown.
//! - [`proxy`]: the steve tunnel's in-process HTTP handler: `GET /ping` answered at once (Rancher's
//!   Connected probe), everything else (websocket upgrades included) forwarded to the host with
//!   the cluster named in [`proxy::CLUSTER_HEADER`], which only the agent sets.

pub mod host;
pub mod proxy;

use std::path::PathBuf;
use std::time::Duration;

pub use host::{SteveHost, SteveHostConfig, SteveHostError};
pub use proxy::{ping_only_handler, SteveProxy, CLUSTER_HEADER};

use crate::kwok::KwokSettings;

/// Default `steve.idleTimeout`: how long a cluster's Steve server lives without requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where kwokctl keeps its clusters: `<workdir>/clusters/<name>/kubeconfig.yaml` is the admin
/// kubeconfig the steve host loads (the layout `ClusterManager::kubeconfig_path` names).
pub fn clusters_dir(kwok: &KwokSettings) -> PathBuf {
    kwok.workdir.join("clusters")
}
