//! The agent's HTTP API (axum), listening on loopback by default.
//!
//! | method & path            | success                        |
//! |--------------------------|--------------------------------|
//! | `GET /`                  | 200 the live status page (HTML; no data in it, so open like `/health`) |
//! | `GET /health`            | 200 [`Health`] (503 while shutting down) |
//! | `GET /metrics`           | 200 Prometheus text exposition |
//! | `GET /status`            | 200 [`Status`](crate::observe::status::Status): what the status page shows |
//! | `GET /clusters`          | 200 `[Cluster]`                |
//! | `GET /clusters/{name}`   | 200 [`Cluster`]                |
//! | `POST /clusters`         | 201 [`Cluster`] from [`CreateRequest`] |
//! | `POST /clusters/bulk`    | 201 `[Cluster]` from [`BulkCreateRequest`] |
//! | `DELETE /clusters/{name}`| 202 [`Cluster`] in phase `deleting` |
//! | `POST /clusters/{name}/stop`  | 202 [`Cluster`]: stop requested (phase `stopping`, then `stopped`) |
//! | `POST /clusters/{name}/start` | 202 [`Cluster`]: start requested (back to `active`) |
//! | `PUT` or `POST /clusters/{name}/scale` | 202 [`Cluster`] from [`ScaleRequest`]: `desired_nodes` set, `nodes` follows |
//!
//! Every failure is JSON [`ErrorBody`] `{"error": CODE, "reason": TEXT}`, never axum's plain-text
//! default:
//!
//! | status | `error`                  | when |
//! |--------|--------------------------|------|
//! | 400    | `invalid_name`           | a cluster name that is not a lowercase RFC 1123 label |
//! | 400    | `unknown_profile`        | a profile other than `full` / `lean` |
//! | 400    | `invalid_bulk`           | bulk `count` outside 1..=[`MAX_BULK`], or a prefix giving invalid names |
//! | 400    | `malformed_json`         | a body that is not JSON (or is empty) |
//! | 400    | `invalid_body`           | JSON of the wrong shape: missing field, wrong type, unknown field |
//! | 400    | `invalid_path`           | a path parameter that cannot be decoded |
//! | 400    | `unreadable_body`        | the body could not be read |
//! | 413    | `body_too_large`         | a body over axum's limit (2 MB) |
//! | 415    | `unsupported_media_type` | a body without `Content-Type: application/json` |
//! | 404    | `not_found`              | no cluster of that name |
//! | 404    | `no_route`               | no such endpoint |
//! | 405    | `method_not_allowed`     | the endpoint exists, the method does not |
//! | 409    | `duplicate`              | a cluster of that name already exists |
//! | 409    | `deleting`               | stop, start or scale of a cluster whose deletion was requested |
//! | 422    | `invalid_nodes`          | a node count outside 0..=[`MAX_NODES`](crate::agent::MAX_NODES) |
//! | 503    | `shutting_down`          | the agent is stopping and takes no changes |
//! | 500    | `store_error`            | the state database failed |
//! | 403    | `forbidden_host`         | a `Host` that is not localhost, a loopback IP or the listen address (DNS rebinding) |
//! | 401    | `unauthorized`           | an API token is configured and the request does not carry it (all but `GET /health`) |
//!
//! The `Host` check and the token check run before any route (see [`super::auth`]).
//! Responses are built from the [`Cluster`] wire type, which carries no token or tunnel params.

use std::fmt::Write as _;
use std::future::Future;
use std::str::FromStr;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::{Access, ApiToken};
use super::{BulkCreateRequest, Cluster, CreateRequest, ErrorBody, Health, ScaleRequest};
use crate::agent::{Agent, AgentError, MAX_BULK};
use crate::kwok::ComponentProfile;
use crate::observe;
use crate::scenario::Runner;
use crate::store::AgentPhase;

/// Every phase, so `/metrics` reports zeros too: a series that appears only once non-zero breaks
/// `rate()` and alerting on absence.
const PHASES: [AgentPhase; 9] = [
    AgentPhase::Pending,
    AgentPhase::Provisioning,
    AgentPhase::Registering,
    AgentPhase::Connecting,
    AgentPhase::Active,
    AgentPhase::Stopping,
    AgentPhase::Stopped,
    AgentPhase::Failed,
    AgentPhase::Deleting,
];

/// Prometheus text exposition format, version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct ApiState {
    agent: Agent,
    default_profile: ComponentProfile,
    /// For the scenario families of `/metrics` (the `/scenarios` routes have their own state).
    runner: Runner,
}

impl ApiState {
    fn profile(&self, requested: Option<&str>) -> Result<ComponentProfile, ApiError> {
        match requested {
            None => Ok(self.default_profile),
            Some(name) => ComponentProfile::from_str(name)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "unknown_profile", e)),
        }
    }
}

/// The router over `agent` and its scenario `runner`; `default_profile` applies to creations that
/// name none; `access` decides which requests are served at all.
pub fn router(
    agent: Agent,
    runner: Runner,
    default_profile: ComponentProfile,
    access: Access,
) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/clusters", get(list).post(create))
        // The static segment wins over `{name}` for every method, so a cluster that is really
        // named `bulk` is served here too.
        .route(
            "/clusters/bulk",
            post(create_bulk)
                .get(|state| get_named(state, "bulk".to_string()))
                .delete(|state| delete_named(state, "bulk".to_string())),
        )
        .route("/clusters/{name}", get(get_cluster).delete(delete))
        .route("/clusters/{name}/stop", post(stop))
        .route("/clusters/{name}/start", post(start))
        .route("/clusters/{name}/scale", post(scale).put(scale))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ApiState {
            agent,
            default_profile,
            runner: runner.clone(),
        })
        .merge(super::scenarios::router(runner))
        // Added last so it wraps every route and the fallbacks: nothing is answered to a request
        // that fails the checks, not even "no such endpoint".
        .layer(middleware::from_fn_with_state(access, guard))
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight requests finish.
/// With `token`, every request but `GET /health` must carry it as a bearer token.
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: Agent,
    runner: Runner,
    default_profile: ComponentProfile,
    token: Option<ApiToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let access = Access {
        listen: listener.local_addr()?,
        token,
    };
    axum::serve(listener, router(agent, runner, default_profile, access))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The DNS-rebinding defence, then the token check; see [`super::auth`].
async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    // An absolute-form request target names the host itself, and HTTP/1.1 says it wins over
    // `Host`; both must be acceptable.
    // A missing or non-text Host is refused like a foreign one.
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let target = request.uri().authority().map(|a| a.as_str());
    let allowed = host.is_some_and(|h| access.host_allowed(h))
        && target.is_none_or(|t| access.host_allowed(t));
    if !allowed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "the Host header must be localhost, a loopback address or the agent's listen address",
        )
        .into_response();
    }
    // /health stays open so a probe (and the CLI's liveness check) needs no secret; it shows
    // counts only. The status page is static HTML and script: the data it polls (/status) asks
    // for the token, which the page takes from its URL fragment (never sent to the server).
    let open = request.method() == Method::GET && matches!(request.uri().path(), "/health" | "/");
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if !open && !access.authorized(authorization) {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token (send `Authorization: Bearer <token>`; the CLI reads it \
             from agent.json in the data directory)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// A failed request: status, machine code and human reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, reason: impl ToString) -> Self {
        Self {
            status,
            code,
            reason: reason.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            reason: self.reason,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<AgentError> for ApiError {
    fn from(err: AgentError) -> Self {
        let (status, code) = match &err {
            AgentError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            AgentError::InvalidBulk(_) => (StatusCode::BAD_REQUEST, "invalid_bulk"),
            AgentError::Duplicate(_) => (StatusCode::CONFLICT, "duplicate"),
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::Deleting(_) => (StatusCode::CONFLICT, "deleting"),
            AgentError::InvalidNodes(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_nodes"),
            AgentError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            AgentError::NoTunnels(_) | AgentError::Fault(_) => (StatusCode::CONFLICT, "fault"),
            AgentError::Store(_) | AgentError::InvalidInstanceId(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "store_error")
            }
        };
        ApiError::new(status, code, err)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            // axum answers 422 here; to a client a missing or mistyped field is as bad a request
            // as broken JSON, and one status for both keeps the contract simple.
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                "body_too_large"
            }
            _ => "unreadable_body",
        };
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn health(State(state): State<ApiState>) -> ApiResult<(StatusCode, Json<Health>)> {
    let health = state.agent.health().await?;
    let status = if health.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(health)))
}

async fn list(State(state): State<ApiState>) -> ApiResult<Json<Vec<Cluster>>> {
    let clusters = state.agent.list().await?;
    Ok(Json(clusters.into_iter().collect()))
}

async fn get_cluster(
    state: State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Cluster>> {
    let Path(name) = name?;
    get_named(state, name).await
}

async fn get_named(State(state): State<ApiState>, name: String) -> ApiResult<Json<Cluster>> {
    Ok(Json(state.agent.get(&name).await?))
}

async fn create(
    State(state): State<ApiState>,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = body?;
    let profile = state.profile(request.profile.as_deref())?;
    let cluster = state.agent.create(&request.name, profile).await?;
    let mut response = (StatusCode::CREATED, Json(&cluster)).into_response();
    // Names are RFC 1123 labels, always valid in a header and a path.
    if let Ok(location) = HeaderValue::from_str(&format!("/clusters/{}", cluster.name)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn create_bulk(
    State(state): State<ApiState>,
    body: Result<Json<BulkCreateRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Vec<Cluster>>)> {
    let Json(request) = body?;
    let profile = state.profile(request.profile.as_deref())?;
    // The agent checks the count too; checking first keeps a bad count from being reported as
    // whatever else is wrong with the request.
    if request.count == 0 || request.count > MAX_BULK {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_bulk",
            format!(
                "count must be between 1 and {MAX_BULK}, got {}",
                request.count
            ),
        ));
    }
    let clusters = state
        .agent
        .create_bulk(request.count, &request.prefix, profile)
        .await?;
    Ok((StatusCode::CREATED, Json(clusters.into_iter().collect())))
}

async fn delete(
    state: State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let Path(name) = name?;
    delete_named(state, name).await
}

async fn delete_named(
    State(state): State<ApiState>,
    name: String,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let cluster = state.agent.delete(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster)))
}

async fn stop(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let Path(name) = name?;
    let cluster = state.agent.stop_cluster(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster)))
}

async fn start(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let Path(name) = name?;
    let cluster = state.agent.start_cluster(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster)))
}

async fn scale(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<ScaleRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let Path(name) = name?;
    let Json(request) = body?;
    let cluster = state.agent.scale(&name, request.nodes).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster)))
}

async fn metrics(State(state): State<ApiState>) -> ApiResult<Response> {
    // Two queries whatever the number of clusters: one grouped count, one read of the events
    // since the last scrape (on the primary key); the rest is in memory.
    let counts = state.agent.phase_counts().await?;
    let phases: Vec<(&str, usize)> = PHASES
        .iter()
        .map(|phase| (phase.as_str(), counts.get(phase).copied().unwrap_or(0)))
        .collect();
    let mut text = exposition(
        &phases,
        &state.agent.rancher_requests(),
        &state.agent.heal_counts(),
        state.agent.tunnels_connected(),
        state.agent.tunnel_metrics(),
    );
    let usage = observe::proc_stat::read_self().await.ok();
    let folded = state
        .agent
        .observer()
        .refresh()
        .await
        .map_err(AgentError::from)?;
    observe::exposition::render(&mut text, &folded, &state.agent.tunnel_load(), usage);
    observe::exposition::render_scenarios(&mut text, &state.runner.figures());
    // In memory, no query: counted from the audit logs by their own task.
    match state.agent.request_counts() {
        Some(requests) => requests.render(&mut text),
        None => observe::audit::RequestCounts::declare(&mut text),
    }
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response())
}

/// The status page: one embedded file (HTML, CSS and script), no external asset.
const STATUS_PAGE: &str = include_str!("status.html");

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything is inline; nothing else may load, and the page may not be framed.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; frame-ancestors 'none'",
            ),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

async fn status(State(state): State<ApiState>) -> ApiResult<Json<observe::status::Status>> {
    let counts = state.agent.phase_counts().await?;
    let clusters = PHASES
        .iter()
        .map(|phase| {
            (
                phase.as_str().to_string(),
                counts.get(phase).copied().unwrap_or(0),
            )
        })
        .collect();
    let usage = observe::proc_stat::read_self()
        .await
        .map(|u| observe::status::AgentUsage {
            rss_bytes: u.rss_bytes,
            cpu_seconds: u.cpu_seconds,
        })
        .unwrap_or(observe::status::AgentUsage {
            rss_bytes: 0,
            cpu_seconds: 0.0,
        });
    let load = state.agent.tunnel_load();
    let mut folded = state
        .agent
        .observer()
        .refresh()
        .await
        .map_err(AgentError::from)?;
    Ok(Json(observe::status::build(
        &mut folded,
        clusters,
        &load,
        usage,
        crate::store::now_ms(),
    )))
}

/// The Prometheus text for the given counts.
fn exposition(
    phases: &[(&str, usize)],
    rancher_requests: &[(&str, u64)],
    heals: &[(String, u64)],
    tunnels_connected: usize,
    tunnel: remotedialer::MetricsSnapshot,
) -> String {
    // Destructured so a counter added to the snapshot cannot be forgotten here.
    let remotedialer::MetricsSnapshot {
        connect_attempts,
        connect_failures,
        sessions_established,
        sessions_active,
        reconnects,
        streams_opened,
        streams_active,
        streams_long_lived,
        streams_failed,
        streams_refused,
        streams_closed_idle,
        buffer_overflows,
        bytes_received,
        bytes_sent,
        protocol_errors,
        pauses_sent,
    } = tunnel;
    let mut out = String::new();
    family(
        &mut out,
        "sca_clusters",
        "gauge",
        "Clusters the agent manages, by lifecycle phase.",
    );
    for (phase, count) in phases {
        // `writeln!` into a String cannot fail.
        let _ = writeln!(out, "sca_clusters{{phase=\"{phase}\"}} {count}");
    }
    family(
        &mut out,
        "sca_rancher_requests_total",
        "counter",
        "Requests the agent sent to Rancher's management API, by HTTP method (the load it adds).",
    );
    for (method, count) in rancher_requests {
        let _ = writeln!(
            out,
            "sca_rancher_requests_total{{method=\"{method}\"}} {count}"
        );
    }
    family(
        &mut out,
        "sca_cluster_heals_total",
        "counter",
        "Components of active clusters the agent restarted (process gone, or apiserver not ready).",
    );
    for (component, count) in heals {
        let _ = writeln!(
            out,
            "sca_cluster_heals_total{{component=\"{component}\"}} {count}"
        );
    }
    let simple: [(&str, &str, &str, i128); 17] = [
        (
            "sca_tunnels_connected",
            "gauge",
            "Tunnels connected now (two per fully connected cluster).",
            tunnels_connected as i128,
        ),
        (
            "sca_tunnel_connect_attempts_total",
            "counter",
            "Websocket connects tried (first connects and reconnects).",
            connect_attempts.into(),
        ),
        (
            "sca_tunnel_connect_failures_total",
            "counter",
            "Connects that did not reach an open session.",
            connect_failures.into(),
        ),
        (
            "sca_tunnel_sessions_established_total",
            "counter",
            "Sessions that completed the websocket upgrade.",
            sessions_established.into(),
        ),
        (
            "sca_tunnel_sessions_active",
            "gauge",
            "Tunnel sessions open now.",
            sessions_active.into(),
        ),
        (
            "sca_tunnel_reconnects_total",
            "counter",
            "Connect attempts made after an earlier attempt or session of the same tunnel.",
            reconnects.into(),
        ),
        (
            "sca_tunnel_streams_opened_total",
            "counter",
            "Streams Rancher opened through the tunnels.",
            streams_opened.into(),
        ),
        (
            "sca_tunnel_streams_active",
            "gauge",
            "Streams open now (including ones still dialing).",
            streams_active.into(),
        ),
        (
            "sca_tunnel_streams_long_lived",
            "gauge",
            "Streams open now for 30 s or more (Rancher's watches).",
            streams_long_lived.into(),
        ),
        (
            "sca_tunnel_streams_failed_total",
            "counter",
            "Streams whose target was denied, refused or failed to dial.",
            streams_failed.into(),
        ),
        (
            "sca_tunnel_streams_refused_total",
            "counter",
            "Streams refused because their session already had its maximum open.",
            streams_refused.into(),
        ),
        (
            "sca_tunnel_streams_closed_idle_total",
            "counter",
            "In-process (steve) streams closed after their idle timeout.",
            streams_closed_idle.into(),
        ),
        (
            "sca_tunnel_buffer_overflows_total",
            "counter",
            "Streams closed because Rancher sent past the receive buffer limits.",
            buffer_overflows.into(),
        ),
        (
            "sca_tunnel_received_bytes_total",
            "counter",
            "Data payload bytes received from Rancher.",
            bytes_received.into(),
        ),
        (
            "sca_tunnel_sent_bytes_total",
            "counter",
            "Data payload bytes sent to Rancher.",
            bytes_sent.into(),
        ),
        (
            "sca_tunnel_protocol_errors_total",
            "counter",
            "Sessions ended by a malformed or unexpected frame.",
            protocol_errors.into(),
        ),
        (
            "sca_tunnel_pauses_sent_total",
            "counter",
            "Pause messages sent because a local target fell behind.",
            pauses_sent.into(),
        ),
    ];
    for (name, kind, help, value) in simple {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such endpoint; see /, /health, /metrics, /status, /clusters, /clusters/{name}, /clusters/bulk, \
         /clusters/{name}/stop, /clusters/{name}/start, /clusters/{name}/scale",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn agent_errors_map_to_statuses_and_codes() {
        let invalid = crate::kwok::names::InvalidName {
            name: "A".into(),
            reason: "it has uppercase letters",
        };
        let cases = [
            (
                AgentError::InvalidName(invalid),
                StatusCode::BAD_REQUEST,
                "invalid_name",
            ),
            (
                AgentError::InvalidBulk("x".into()),
                StatusCode::BAD_REQUEST,
                "invalid_bulk",
            ),
            (
                AgentError::Duplicate("a".into()),
                StatusCode::CONFLICT,
                "duplicate",
            ),
            (
                AgentError::NotFound("a".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                AgentError::Deleting("a".into()),
                StatusCode::CONFLICT,
                "deleting",
            ),
            (
                AgentError::InvalidNodes(-1),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_nodes",
            ),
            (
                AgentError::ShuttingDown,
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
            ),
            (
                AgentError::Store(StoreError::Task("worker panicked".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
            ),
        ];
        for (err, status, code) in cases {
            let text = err.to_string();
            let api = ApiError::from(err);
            assert_eq!((api.status, api.code), (status, code), "{text}");
            assert_eq!(api.reason, text);
        }
    }

    #[test]
    fn exposition_lists_every_phase_and_counter() {
        let snapshot = remotedialer::MetricsSnapshot {
            connect_attempts: 7,
            sessions_active: -1,
            ..Default::default()
        };
        let text = exposition(
            &[("active", 2), ("failed", 0)],
            &[("GET", 12), ("POST", 1)],
            &[("etcd".to_string(), 1)],
            4,
            snapshot,
        );
        assert!(
            text.contains("sca_clusters{phase=\"active\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("sca_clusters{phase=\"failed\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("\nsca_tunnels_connected 4\n"), "{text}");
        assert!(
            text.contains("sca_rancher_requests_total{method=\"GET\"} 12\n"),
            "{text}"
        );
        assert!(
            text.contains("\nsca_tunnel_connect_attempts_total 7\n"),
            "{text}"
        );
        assert!(text.contains("\nsca_tunnel_sessions_active -1\n"), "{text}");
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert!(
            text.contains("sca_cluster_heals_total{component=\"etcd\"} 1\n"),
            "{text}"
        );
        assert_eq!(families, 20, "{text}");
    }
}
