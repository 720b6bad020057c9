//! KWOK cluster manager: creates, starts, stops and deletes simulated clusters through kwokctl's binary
//! runtime with the provisioned binaries, assigns each cluster its own port block, reports status from
//! the real processes and `/readyz`, restarts the components of a running cluster that died or hang
//! (`heal`), and populates clusters through kube-rs.

pub mod binder;
pub mod endpoints;
pub mod heal;
pub mod kwokctl;
pub mod manager;
pub mod memory_merge;
pub mod names;
pub mod population;
pub mod profile;
pub mod shared_etcd;
pub mod status;

pub use heal::{
    ClusterHealth, ComponentHealth, ComponentState, HealOutcome, Restart, RestartReason,
};
pub use manager::{
    ClusterInfo, ClusterManager, CreateRequest, CreateTimings, Endpoint, Health, KwokError,
    KwokSettings,
};
pub use population::PopulationProfile;
pub use profile::ComponentProfile;
