//! The HTTP API of the long-running agent, and the client the CLI uses to talk to it.
//!
//! - [`server`]: the axum router over an [`Agent`](crate::agent::Agent) (`/health`, `/clusters`,
//!   `/metrics`) and [`serve`], which runs it with graceful shutdown.
//! - [`discovery`]: `<data_dir>/agent.json`, how the CLI finds a running agent.
//! - [`client`]: [`AgentClient`], typed calls onto the API.
//!
//! The types in this module are the wire format both sides share. The server builds them from the
//! agent's views by exhaustive destructuring, so a field added to a view is a compile error here
//! until it is deliberately exposed (or not): nothing reaches a response by accident, secrets
//! included.

pub mod client;
pub mod discovery;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::agent;
use crate::store::AgentPhase;

pub use client::{AgentClient, ClientError};
pub use discovery::Discovery;
pub use server::{router, serve};

/// One cluster as `GET /clusters` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub phase: AgentPhase,
    pub profile: String,
    pub rancher_cluster_id: Option<String>,
    /// Rancher's own `state` of the cluster, as last seen.
    pub rancher_state: Option<String>,
    /// The simulated cluster's apiserver, once it runs.
    pub apiserver: Option<String>,
    pub tunnels: Tunnels,
    pub last_error: Option<String>,
    pub attempts: u32,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub active_at: Option<u64>,
}

/// Connection state of a cluster's two tunnels (`connecting`, `connected`, `backoff`, `closed`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tunnels {
    pub main: String,
    pub steve: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok`, or `shutting-down` (then with status 503).
    pub status: String,
    pub clusters: usize,
    pub active: usize,
    pub failed: usize,
    pub tunnels_connected: usize,
}

/// `POST /clusters`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    /// `full` or `lean`; the agent's default profile when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// `POST /clusters/bulk`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BulkCreateRequest {
    pub count: usize,
    pub prefix: String,
    /// `full` or `lean`; the agent's default profile when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_name` (see [`server`] for the full table).
    pub error: String,
    /// What went wrong, for a human.
    pub reason: String,
}

impl From<agent::ClusterView> for Cluster {
    fn from(view: agent::ClusterView) -> Self {
        let agent::ClusterView {
            name,
            phase,
            profile,
            rancher_cluster_id,
            rancher_state,
            apiserver,
            tunnels: agent::tunnels::TunnelsView { main, steve },
            last_error,
            attempts,
            created_at,
            active_at,
        } = view;
        Cluster {
            name,
            phase,
            profile,
            rancher_cluster_id,
            rancher_state,
            apiserver,
            tunnels: Tunnels {
                main: main.to_string(),
                steve: steve.to_string(),
            },
            last_error,
            attempts,
            created_at,
            active_at,
        }
    }
}

impl From<agent::Health> for Health {
    fn from(health: agent::Health) -> Self {
        let agent::Health {
            status,
            clusters,
            active,
            failed,
            tunnels_connected,
        } = health;
        Health {
            status: status.to_string(),
            clusters,
            active,
            failed,
            tunnels_connected,
        }
    }
}
