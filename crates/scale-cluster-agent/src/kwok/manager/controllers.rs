//! The manager's side of the agent's controller host ([`crate::controllers`]): which kwokctl
//! components a cluster is created with, which it is expected to run, and registering it with
//! the host while it runs. Each lifecycle verb makes one call here.

use std::sync::Arc;

use super::{ClusterManager, KwokError};
use crate::controllers::{self, ControllerHost};
use crate::kwok::profile::ComponentProfile;
use crate::store::ClusterRecord;

impl ClusterManager {
    /// Has `lean` clusters created from now on run their kube-controller-manager's and
    /// kwok-controller's controllers in `host` instead of two processes each. Without a host
    /// (the CLI's direct path), clusters run kwokctl's processes as before.
    pub fn with_controller_host(mut self, host: Arc<ControllerHost>) -> Self {
        self.controller_host = Some(host);
        self
    }

    /// The controller host, if this manager has one.
    pub fn controller_host(&self) -> Option<&Arc<ControllerHost>> {
        self.controller_host.as_ref()
    }

    /// `kwokctl create cluster` flags for `profile`: the profile's own, plus leaving out the
    /// components the host replaces when a `lean` cluster is created with a host. That choice is
    /// then recorded in the cluster's `kwok.yaml`, which `kwokctl start` and the health checks
    /// follow.
    pub(super) fn create_flags(&self, profile: ComponentProfile) -> Vec<String> {
        let mut flags = profile.create_flags();
        if self.controller_host.is_some() && profile == ComponentProfile::Lean {
            flags.extend(controllers::disable_flags());
        }
        flags
    }

    /// The components the cluster runs: its profile's, less those its `kwok.yaml` does not list
    /// (the host's, for a cluster created with one); the profile's alone if the file cannot be
    /// read.
    pub(super) async fn expected_components(&self, record: &ClusterRecord) -> Vec<&'static str> {
        let all = super::kwokctl_components(record);
        match controllers::configured_components(&self.cluster_dir(&record.name)).await {
            Some(listed) => all
                .iter()
                .copied()
                .filter(|c| listed.iter().any(|l| l == c))
                .collect(),
            None => all,
        }
    }

    /// Registers the cluster with the controller host if it was created to use one; idempotent.
    pub(super) async fn attach_controllers(&self, name: &str) -> Result<(), KwokError> {
        if !controllers::uses_host(&self.cluster_dir(name)).await {
            return Ok(());
        }
        match &self.controller_host {
            Some(host) => Ok(host.register(name).await?),
            None => {
                tracing::warn!(
                    cluster = name,
                    "the cluster's controllers run in the agent's controller host, which this command does not start; \
                     its nodes, pods and service-account tokens are not reconciled until the agent runs it"
                );
                Ok(())
            }
        }
    }

    /// Stops the cluster's controllers in the host, if any run there. A failure is logged, not
    /// returned: the cluster is going away, and the host drops what it cannot reach.
    pub(super) async fn detach_controllers(&self, name: &str) {
        if let Some(host) = &self.controller_host {
            if let Err(error) = host.deregister(name).await {
                tracing::warn!(cluster = name, %error, "cannot remove the cluster from the controller host");
            }
        }
    }
}
