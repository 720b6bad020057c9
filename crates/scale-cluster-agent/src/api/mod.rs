//! The HTTP API of the long-running agent, and the client the CLI uses to talk to it.
//!
//! - [`server`]: the axum router over an [`Agent`](crate::agent::Agent) (`/health`, `/clusters`,
//!   `/metrics`) and [`serve`], which runs it with graceful shutdown.
//! - [`auth`]: who may call the API: the `Host` allow-list and the optional bearer token.
//! - [`discovery`]: `<data_dir>/agent.json`, how the CLI finds a running agent (and its token).
//! - [`scenarios`]: `/scenarios`, scenario runs started, followed and stopped.
//! - [`client`]: [`AgentClient`], typed calls onto the API.
//!
//! The types in this module are the wire format both sides share: the agent's own views (which by
//! construction carry no token or params) and the request and error bodies.

pub mod auth;
pub mod client;
pub mod discovery;
pub mod scenarios;
pub mod server;

use serde::{Deserialize, Serialize};

pub use auth::{Access, ApiToken};
pub use client::{AgentClient, ClientError};
pub use discovery::Discovery;
pub use server::{router, serve};

/// Connection state of a cluster's two tunnels.
pub use crate::agent::tunnels::TunnelsView as Tunnels;
/// One cluster as `GET /clusters` shows it: the agent's view, which holds no secret.
pub use crate::agent::ClusterView as Cluster;
/// `GET /health`.
pub use crate::agent::Health;

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

/// `PUT` or `POST /clusters/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The node count wanted, 0 to [`MAX_NODES`](crate::agent::MAX_NODES) (signed, so that a
    /// negative count is refused with a reason rather than as a malformed body).
    pub nodes: i64,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_name` (see [`server`] for the full table).
    pub error: String,
    /// What went wrong, for a human.
    pub reason: String,
}
