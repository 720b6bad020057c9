//! [`AgentClient`]: typed calls onto a running agent's API, as the CLI makes them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::ApiToken;
use super::scenarios::{StartRequest, StartResponse};
use super::{BulkCreateRequest, Cluster, CreateRequest, ErrorBody, Health, ScaleRequest};
use crate::kwok::ComponentProfile;
use crate::store::scenarios::RunRecord;

/// Per-request limit: the API answers from the state database, so anything slower means the agent
/// is stuck, and the CLI should say so rather than hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent refused the request; `reason` is its own explanation.
    #[error("{reason}")]
    Api {
        status: u16,
        /// Machine code, e.g. `duplicate` or `not_found`.
        code: String,
        reason: String,
    },
    #[error("unexpected answer from the agent at {url} (HTTP {status}): {detail}")]
    Protocol {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(#[source] reqwest::Error),
}

impl ClientError {
    /// The agent's error code, when the agent answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client for one agent, e.g. at the URL from [`super::discovery::read`].
#[derive(Debug, Clone)]
pub struct AgentClient {
    base: String,
    http: reqwest::Client,
    /// Sent as a bearer token on every request when the agent requires one.
    token: Option<ApiToken>,
}

impl AgentClient {
    /// `url` is the API base, e.g. `http://127.0.0.1:8765`.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // The agent listens on loopback; a proxy from the environment would only get in the way.
            .no_proxy()
            .build()
            .map_err(ClientError::Setup)?;
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            http,
            token: None,
        })
    }

    /// Sends `token` (e.g. from [`super::Discovery::token`]) as `Authorization: Bearer` on every
    /// request.
    pub fn with_token(mut self, token: Option<ApiToken>) -> Self {
        self.token = token;
        self
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `GET /health`. A stopping agent answers 503 with a health body; that is returned as `Ok`
    /// with `status == "shutting-down"`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let (status, body, url) = self.send(Method::GET, "/health", None::<&()>).await?;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            if let Ok(health) = serde_json::from_slice::<Health>(&body) {
                return Ok(health);
            }
        }
        decode(status, &body, &url)
    }

    pub async fn list(&self) -> Result<Vec<Cluster>, ClientError> {
        self.call(Method::GET, "/clusters", None::<&()>).await
    }

    pub async fn get(&self, name: &str) -> Result<Cluster, ClientError> {
        self.call(Method::GET, &cluster_path(name), None::<&()>)
            .await
    }

    /// `None` leaves the profile to the agent's default.
    pub async fn create(
        &self,
        name: &str,
        profile: Option<ComponentProfile>,
    ) -> Result<Cluster, ClientError> {
        let request = CreateRequest {
            name: name.to_string(),
            profile: profile.map(|p| p.as_str().to_string()),
        };
        self.call(Method::POST, "/clusters", Some(&request)).await
    }

    /// `count` clusters named `<prefix>-NNNNN`; `None` leaves the profile to the agent's default.
    pub async fn create_bulk(
        &self,
        count: usize,
        prefix: &str,
        profile: Option<ComponentProfile>,
    ) -> Result<Vec<Cluster>, ClientError> {
        let request = BulkCreateRequest {
            count,
            prefix: prefix.to_string(),
            profile: profile.map(|p| p.as_str().to_string()),
        };
        self.call(Method::POST, "/clusters/bulk", Some(&request))
            .await
    }

    /// Marks the cluster for deletion; the agent removes it in the background.
    pub async fn delete(&self, name: &str) -> Result<Cluster, ClientError> {
        self.call(Method::DELETE, &cluster_path(name), None::<&()>)
            .await
    }

    /// Requests the cluster's stop; the agent closes its tunnels and stops its KWOK cluster in
    /// the background (phase `stopping`, then `stopped`).
    pub async fn stop(&self, name: &str) -> Result<Cluster, ClientError> {
        let path = format!("{}/stop", cluster_path(name));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// Requests that a stopped cluster run again; the agent brings it back up to `active`.
    pub async fn start(&self, name: &str) -> Result<Cluster, ClientError> {
        let path = format!("{}/start", cluster_path(name));
        self.call(Method::POST, &path, None::<&()>).await
    }

    /// Sets the node count the cluster should have; its view's `nodes` follows once applied.
    pub async fn scale(&self, name: &str, nodes: u32) -> Result<Cluster, ClientError> {
        let path = format!("{}/scale", cluster_path(name));
        let request = ScaleRequest {
            nodes: i64::from(nodes),
        };
        self.call(Method::PUT, &path, Some(&request)).await
    }

    /// `POST /scenarios`: starts a run of the scenario file `spec` (or only plans it).
    pub async fn scenario_start(
        &self,
        spec: &str,
        dry_run: bool,
    ) -> Result<StartResponse, ClientError> {
        let request = StartRequest {
            spec: spec.to_string(),
            dry_run,
        };
        self.call(Method::POST, "/scenarios", Some(&request)).await
    }

    /// `GET /scenarios`: the latest runs, newest first.
    pub async fn scenario_runs(&self) -> Result<Vec<RunRecord>, ClientError> {
        self.call(Method::GET, "/scenarios", None::<&()>).await
    }

    pub async fn scenario_run(&self, id: &str) -> Result<RunRecord, ClientError> {
        let path = format!("/scenarios/{}", path_segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Asks a run to stop after its current step.
    pub async fn scenario_stop(&self, id: &str) -> Result<RunRecord, ClientError> {
        let path = format!("/scenarios/{}/stop", path_segment(id));
        self.call(Method::POST, &path, None::<&()>).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let (status, bytes, url) = self.send(method, path, body).await?;
        decode(status, &bytes, &url)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(StatusCode, bytes::Bytes, String), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            // reqwest marks this header sensitive, so it is kept out of its own debug output.
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            let json = serde_json::to_vec(body).map_err(|e| ClientError::Protocol {
                url: url.clone(),
                status: 0,
                detail: format!("cannot encode the request: {e}"),
            })?;
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json);
        }
        let unreachable = |source| ClientError::Unreachable {
            url: self.base.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        Ok((status, bytes, url))
    }
}

/// Names are RFC 1123 labels when valid; anything else is percent-encoded so it reaches the
/// agent intact and is rejected there with a proper reason.
fn cluster_path(name: &str) -> String {
    format!("/clusters/{}", path_segment(name))
}

/// `text` percent-encoded into one path segment.
fn path_segment(text: &str) -> String {
    let mut segment = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

fn decode<T: DeserializeOwned>(
    status: StatusCode,
    body: &[u8],
    url: &str,
) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| ClientError::Protocol {
            url: url.to_string(),
            status: status.as_u16(),
            detail: format!("cannot decode the answer: {e}"),
        });
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => Err(ClientError::Api {
            status: status.as_u16(),
            code: error.error,
            reason: error.reason,
        }),
        Err(_) => Err(ClientError::Protocol {
            url: url.to_string(),
            status: status.as_u16(),
            detail: String::from_utf8_lossy(body).chars().take(200).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_into_one_path_segment() {
        assert_eq!(cluster_path("sim-00001"), "/clusters/sim-00001");
        assert_eq!(cluster_path("a/b c"), "/clusters/a%2Fb%20c");
        assert_eq!(cluster_path(""), "/clusters/");
    }
}
