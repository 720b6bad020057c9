//! Faults injected on purpose (scenarios): a tunnel cut as a dead network path would cut it, a
//! control-plane process killed as a crash would kill it, and a client on a cluster's own
//! apiserver to change its nodes and pods. Each fault goes through the same paths a real failure
//! takes, so what repairs it (the tunnel client's reconnect, the heal loop, kwok-controller) is
//! what a scenario observes.

use super::{Agent, AgentError};
use crate::kwok::population;

impl Agent {
    /// Cuts both tunnels of a cluster without a close frame; they reconnect by themselves with
    /// their usual backoff. An error if the cluster has no open tunnels.
    pub fn drop_tunnels(&self, name: &str) -> Result<(), AgentError> {
        if self.inner.tunnels.drop_sessions(name) {
            Ok(())
        } else {
            Err(AgentError::NoTunnels(name.to_string()))
        }
    }

    /// SIGKILLs one control-plane process of a cluster (e.g. `kube-apiserver`); the heal loop
    /// restarts it. Returns the killed pid.
    pub async fn kill_component(&self, name: &str, component: &str) -> Result<u32, AgentError> {
        self.check_running()?;
        self.inner
            .manager
            .kill_component(name, component)
            .await
            .map_err(|e| AgentError::Fault(e.to_string()))
    }

    /// A Kubernetes client on a cluster's own apiserver (admin credentials from its kubeconfig).
    pub async fn cluster_client(&self, name: &str) -> Result<kube::Client, AgentError> {
        population::client(&self.inner.manager.kubeconfig_path(name))
            .await
            .map_err(|e| AgentError::Fault(e.to_string()))
    }

    /// The population profile the agent gives every cluster.
    pub fn population(&self) -> &crate::kwok::PopulationProfile {
        &self.inner.config.population
    }

    /// Whether every control-plane process of a cluster runs and its apiserver is ready, observed
    /// now (the heal loop's own check).
    pub async fn cluster_healthy(&self, name: &str) -> Result<bool, AgentError> {
        self.inner
            .manager
            .check_health(name)
            .await
            .map(|health| health.is_healthy())
            .map_err(|e| AgentError::Fault(e.to_string()))
    }

    /// Sessions both tunnels of a cluster have established so far, if both are connected right
    /// now (in memory, no database read): a reconnect shows as a higher count.
    pub fn tunnel_sessions(&self, name: &str) -> Option<u64> {
        use remotedialer::ConnectionState::Connected;
        self.inner
            .tunnels
            .status(name)
            .filter(|(main, steve)| main.state == Connected && steve.state == Connected)
            .map(|(main, steve)| main.sessions_established + steve.sessions_established)
    }
}
