//! The agent's HTTP API over a real [`Agent`] (real store, real KWOK cluster manager, the
//! rancher-sim test peer as Rancher): every error status and its JSON shape, the cluster views
//! without secrets, `/health`, `/metrics`, graceful shutdown, and the discovery file.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use scale_cluster_agent::agent::{Agent, AgentConfig, MAX_BULK};
use scale_cluster_agent::api::{self, discovery, AgentClient, ClientError, Cluster, Discovery};
use scale_cluster_agent::kwok::{ClusterManager, ComponentProfile, PopulationProfile};
use scale_cluster_agent::scenario::{Limits, Runner};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::{AgentPhase, Store};
use serde_json::{json, Value};
use support::eventually;
use support::rancher_sim::{self, RancherSim, SimOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An agent with its API on a loopback port, over a fresh data dir and its own port range.
struct Env {
    url: String,
    client: AgentClient,
    http: reqwest::Client,
    agent: Agent,
    store: Store,
    reconcile: Option<JoinHandle<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    stop_server: Option<oneshot::Sender<()>>,
    sim: RancherSim,
    kwok_workdir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    /// `port_base` must be unique per test (22500 and up is this file's range).
    async fn start(port_base: u16, default_profile: ComponentProfile) -> Env {
        let sim = tokio::task::spawn_blocking(|| rancher_sim::start(SimOptions::default()))
            .await
            .expect("starting rancher-sim");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = support::settings();
        settings.data_dir = dir.path().join("data");
        settings.kwok_workdir = dir.path().join("kwok");
        settings.ports = PortRange::new(port_base, 10, 4).expect("port range");
        let toolchain = tokio::task::spawn_blocking(support::toolchain)
            .await
            .expect("toolchain");
        let store = Store::open(&settings.state_db()).expect("state db");
        let manager = ClusterManager::new(&settings.kwok(), toolchain, store.clone());
        let config = AgentConfig {
            concurrency: 1,
            population: PopulationProfile {
                nodes: 1,
                ..PopulationProfile::default()
            },
            rancher_poll: Duration::from_secs(2),
            retry: scale_cluster_agent::rancher::Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(120),
            },
            ..AgentConfig::default()
        };
        let (agent, reconcile) = Agent::start(config, manager, sim.client().await)
            .await
            .expect("agent starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind API");
        let url = format!("http://{}", listener.local_addr().expect("API address"));
        let (stop_server, stopped) = oneshot::channel::<()>();
        let runner = Runner::new(
            agent.clone(),
            store.clone(),
            default_profile,
            Limits { max_clusters: 4 },
        )
        .await
        .expect("scenario runner");
        let server = tokio::spawn(api::serve(
            listener,
            agent.clone(),
            runner,
            default_profile,
            None,
            async move {
                let _ = stopped.await;
            },
        ));
        Env {
            client: AgentClient::new(&url).expect("client"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            url,
            agent,
            store,
            reconcile: Some(reconcile),
            server: Some(server),
            stop_server: Some(stop_server),
            sim,
            kwok_workdir: settings.kwok_workdir.clone(),
            _dir: dir,
        }
    }

    /// A raw request; the body is sent as-is with the given content type (if any).
    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }

    /// A JSON request; returns the status and the parsed JSON answer.
    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (content_type, text) = match body {
            Some(body) => (Some("application/json"), body.to_string()),
            None => (None, String::new()),
        };
        let (status, headers, text) = self.raw(method, path, content_type, &text).await;
        assert_eq!(
            headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
            "application/json",
            "every API answer but /metrics is JSON: {text}"
        );
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
        (status, value)
    }

    /// Stops the API (graceful shutdown must complete) and the agent.
    async fn stop(mut self) {
        self.agent.shutdown().await;
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("server stops after the shutdown signal")
                .expect("server task")
                .expect("server ends cleanly");
        }
        if let Some(reconcile) = self.reconcile.take() {
            tokio::time::timeout(Duration::from_secs(30), reconcile)
                .await
                .expect("reconcile loop stops")
                .expect("reconcile task");
        }
    }
}

/// A test that panics never reaches its cleanup, and kwokctl's components outlive the test
/// process (they are re-parented to init): kill whatever still runs from this environment's kwok
/// work dir, so a failed run does not hold ports and CPU for the next one.
impl Drop for Env {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.kwok_workdir);
        // The shared etcd of `lean` clusters: a daemon in the data dir next to the work dir.
        support::kill_processes_mentioning(&self.kwok_workdir.with_file_name("data"));
    }
}

/// Asserts `value` is an error body with exactly `error` and `reason` (non-empty).
fn assert_error(status: StatusCode, value: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{value}");
    let object = value.as_object().expect("error body is an object");
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["error", "reason"]), "{value}");
    assert_eq!(value["error"], want_code, "{value}");
    let reason = value["reason"].as_str().expect("reason is text");
    assert!(!reason.trim().is_empty(), "{value}");
}

/// Every key anywhere in `value`, so a secret nested anywhere is found.
fn all_keys(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                out.insert(key.clone());
                all_keys(inner, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| all_keys(v, out)),
        _ => {}
    }
}

fn assert_no_secret_keys(value: &Value) {
    let mut keys = BTreeSet::new();
    all_keys(value, &mut keys);
    for key in &keys {
        let lower = key.to_lowercase();
        assert!(
            !["token", "params", "registration", "secret", "password"]
                .iter()
                .any(|s| lower.contains(s)),
            "key {key:?} must not be in an API answer: {value}"
        );
    }
}

/// Polls the cluster until it reaches `phase`; fails fast on `failed`, and a timeout names the
/// phase it was stuck in and what Rancher (the sim) was still waiting for.
async fn wait_for_phase(env: &Env, name: &str, phase: AgentPhase, timeout: Duration) -> Cluster {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let cluster = env.client.get(name).await.expect("get");
        if cluster.phase == phase {
            return cluster;
        }
        assert_ne!(
            cluster.phase,
            AgentPhase::Failed,
            "bring-up failed: {cluster:?}"
        );
        if std::time::Instant::now() >= deadline {
            let rancher = match &cluster.rancher_cluster_id {
                Some(id) => env.sim.stats(id).await.to_string(),
                None => "no Rancher cluster yet".into(),
            };
            panic!("{name} not {phase} within {timeout:?}: {cluster:?}\nrancher-sim: {rancher}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Parses the exposition: every non-comment line is `name{labels} value` or `name value`.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                for pair in labels.split(',') {
                    let (key, quoted) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("label without = in {line:?}"));
                    assert!(is_metric_name(key), "label name {key:?} in {line:?}");
                    assert!(
                        quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'),
                        "unquoted label value in {line:?}"
                    );
                }
                (name, labels.to_string())
            }
            None => (series, String::new()),
        };
        assert!(is_metric_name(name), "metric name {name:?} in {line:?}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in {samples:?}"))
        .2
}

async fn metrics(env: &Env) -> Vec<(String, String, f64)> {
    let (status, headers, text) = env.raw(Method::GET, "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    parse_metrics(&text)
}

#[tokio::test]
async fn health_and_metrics_of_an_empty_agent() {
    let env = Env::start(22500, ComponentProfile::Lean).await;

    let (status, health) = env.json(Method::GET, "/health", None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let instance_id = health["instance_id"]
        .as_str()
        .expect("instance id")
        .to_string();
    assert_eq!(
        instance_id.len(),
        36,
        "a UUID made on first start: {health}"
    );
    // The machine's CPU pressure is whatever it is now; the kernel's own reading bounds it.
    let mut health = health;
    let pressure = health
        .as_object_mut()
        .and_then(|h| h.remove("cpu_pressure"))
        .and_then(|p| p.as_f64())
        .expect("cpu_pressure: this machine has PSI");
    assert!((0.0..=100.0).contains(&pressure), "{pressure}");
    assert_eq!(
        health,
        json!({"status": "ok", "instance_id": instance_id, "clusters": 0, "active": 0, "failed": 0,
               "tunnels_connected": 0, "held": 0})
    );
    let typed = env.client.health().await.expect("client health");
    assert_eq!(typed.status, "ok");

    let samples = metrics(&env).await;
    for phase in [
        "pending",
        "provisioning",
        "registering",
        "connecting",
        "active",
        "stopping",
        "stopped",
        "failed",
        "deleting",
    ] {
        assert_eq!(
            sample(&samples, "sca_clusters", &format!("phase=\"{phase}\"")),
            0.0
        );
    }
    assert_eq!(sample(&samples, "sca_tunnels_connected", ""), 0.0);
    for counter in [
        "sca_tunnel_connect_attempts_total",
        "sca_tunnel_connect_failures_total",
        "sca_tunnel_sessions_established_total",
        "sca_tunnel_sessions_active",
        "sca_tunnel_reconnects_total",
        "sca_tunnel_streams_opened_total",
        "sca_tunnel_streams_active",
        "sca_tunnel_streams_failed_total",
        "sca_tunnel_received_bytes_total",
        "sca_tunnel_sent_bytes_total",
        "sca_tunnel_protocol_errors_total",
        "sca_tunnel_pauses_sent_total",
    ] {
        assert_eq!(sample(&samples, counter, ""), 0.0, "{counter}");
    }
    env.stop().await;
}

/// One request that must be refused with `status` and error `code`.
struct BadRequest {
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

impl BadRequest {
    fn new(
        method: Method,
        path: &'static str,
        content_type: Option<&'static str>,
        body: &str,
        status: u16,
        code: &'static str,
    ) -> Self {
        Self {
            method,
            path,
            content_type,
            body: body.to_string(),
            status,
            code,
        }
    }
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let env = Env::start(22540, ComponentProfile::Lean).await;
    let json = Some("application/json");
    let too_many = format!(r#"{{"count":{},"prefix":"sim"}}"#, MAX_BULK + 1);
    let long_name = format!(r#"{{"name":"{}"}}"#, "a".repeat(59));
    // One line per case reads as a table; rustfmt would spread each over eight.
    #[rustfmt::skip]
    let cases = [
        BadRequest::new(Method::POST, "/clusters", json, r#"{"name":"Bad_Name"}"#, 400, "invalid_name"),
        BadRequest::new(Method::POST, "/clusters", json, &long_name, 400, "invalid_name"),
        BadRequest::new(Method::POST, "/clusters", json, r#"{"name":""}"#, 400, "invalid_name"),
        BadRequest::new(Method::POST, "/clusters", json, r#"{"name":"ok","profile":"huge"}"#, 400, "unknown_profile"),
        BadRequest::new(Method::POST, "/clusters", json, r#"{"name":"#, 400, "malformed_json"),
        BadRequest::new(Method::POST, "/clusters", json, "", 400, "malformed_json"),
        BadRequest::new(Method::POST, "/clusters", json, "{}", 400, "invalid_body"),
        BadRequest::new(Method::POST, "/clusters", json, r#"{"name":5}"#, 400, "invalid_body"),
        BadRequest::new(Method::POST, "/clusters", json, r#"{"name":"ok","nodes":3}"#, 400, "invalid_body"),
        BadRequest::new(Method::POST, "/clusters", None, r#"{"name":"ok"}"#, 415, "unsupported_media_type"),
        BadRequest::new(Method::POST, "/clusters", Some("text/plain"), r#"{"name":"ok"}"#, 415, "unsupported_media_type"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"count":0,"prefix":"sim"}"#, 400, "invalid_bulk"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, &too_many, 400, "invalid_bulk"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"count":2,"prefix":"Sim"}"#, 400, "invalid_bulk"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"count":-1,"prefix":"sim"}"#, 400, "invalid_body"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"prefix":"sim"}"#, 400, "invalid_body"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"count":1}"#, 400, "invalid_body"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"count":1,"prefix":"sim","profile":"tiny"}"#, 400, "unknown_profile"),
        BadRequest::new(Method::POST, "/clusters/bulk", json, r#"{"count":1,"#, 400, "malformed_json"),
        BadRequest::new(Method::GET, "/clusters/nope", None, "", 404, "not_found"),
        BadRequest::new(Method::DELETE, "/clusters/nope", None, "", 404, "not_found"),
        // `bulk` is a valid cluster name; there is none.
        BadRequest::new(Method::GET, "/clusters/bulk", None, "", 404, "not_found"),
        BadRequest::new(Method::DELETE, "/clusters/bulk", None, "", 404, "not_found"),
        BadRequest::new(Method::GET, "/clusters/%FF", None, "", 400, "invalid_path"),
        BadRequest::new(Method::POST, "/clusters/nope/stop", None, "", 404, "not_found"),
        BadRequest::new(Method::POST, "/clusters/nope/start", None, "", 404, "not_found"),
        BadRequest::new(Method::PUT, "/clusters/nope/scale", json, r#"{"nodes":3}"#, 404, "not_found"),
        BadRequest::new(Method::PUT, "/clusters/nope/scale", json, r#"{"nodes":-1}"#, 422, "invalid_nodes"),
        BadRequest::new(Method::POST, "/clusters/nope/scale", json, r#"{"nodes":10001}"#, 422, "invalid_nodes"),
        BadRequest::new(Method::PUT, "/clusters/nope/scale", json, r#"{"nodes":"3"}"#, 400, "invalid_body"),
        BadRequest::new(Method::PUT, "/clusters/nope/scale", json, r#"{"replicas":3}"#, 400, "invalid_body"),
        BadRequest::new(Method::GET, "/clusters/nope/stop", None, "", 405, "method_not_allowed"),
        BadRequest::new(Method::GET, "/nothing-here", None, "", 404, "no_route"),
        BadRequest::new(Method::PUT, "/clusters", None, "", 405, "method_not_allowed"),
        BadRequest::new(Method::POST, "/health", None, "", 405, "method_not_allowed"),
    ];
    for case in &cases {
        let (status, _, text) = env
            .raw(
                case.method.clone(),
                case.path,
                case.content_type,
                &case.body,
            )
            .await;
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{} {} {:?}: not JSON ({e}): {text}",
                case.method, case.path, case.body
            )
        });
        let want = StatusCode::from_u16(case.status).expect("status");
        assert_error(status, &value, want, case.code);
    }

    // The reasons are the agent's own texts, carried to the client unchanged.
    let (_, unknown) = env
        .json(
            Method::POST,
            "/clusters",
            Some(json!({"name": "ok", "profile": "huge"})),
        )
        .await;
    assert_eq!(
        unknown["reason"],
        "unknown component profile \"huge\": expected \"full\" or \"lean\""
    );
    let (_, missing) = env
        .json(
            Method::POST,
            "/clusters/bulk",
            Some(json!({"prefix": "sim"})),
        )
        .await;
    assert!(
        missing["reason"]
            .as_str()
            .is_some_and(|r| r.contains("missing field `count`")),
        "{missing}"
    );
    match env.client.create("Bad_Name", None).await {
        Err(ClientError::Api {
            status,
            code,
            reason,
        }) => {
            assert_eq!((status, code.as_str()), (400, "invalid_name"));
            assert!(
                reason.contains("invalid cluster name \"Bad_Name\""),
                "{reason}"
            );
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    match env.client.create_bulk(0, "sim", None).await {
        Err(err) => assert_eq!(err.code(), Some("invalid_bulk"), "{err}"),
        Ok(created) => panic!("count 0 created {created:?}"),
    }
    match env.client.get("nope").await {
        Err(err) => {
            assert_eq!(err.code(), Some("not_found"));
            assert_eq!(err.to_string(), "no cluster named \"nope\"");
        }
        Ok(cluster) => panic!("found {cluster:?}"),
    }

    // None of the above may have left a row behind.
    let (status, list) = env.json(Method::GET, "/clusters", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    assert!(env.store.agent_clusters().await.expect("rows").is_empty());
    env.stop().await;
}

/// A scenario file is checked (its keys, its numbers, what this agent can give) and planned
/// before anything runs; a refused file changes nothing.
#[tokio::test]
async fn scenario_files_are_checked_and_planned_before_anything_runs() {
    let env = Env::start(22560, ComponentProfile::Lean).await;
    let start = |spec: &str, dry_run: bool| {
        env.json(
            Method::POST,
            "/scenarios",
            Some(json!({"spec": spec, "dryRun": dry_run})),
        )
    };
    let bad_request = StatusCode::BAD_REQUEST;
    for (spec, names) in [
        (
            "name: s\nclusters: {prefix: s}\nstages:\n  - ramp: {to: 2, rat: 1/s}\n",
            "stages[0].ramp: unknown field `rat`",
        ),
        // The environment's port range holds 4 clusters.
        (
            "name: s\nclusters: {prefix: s}\nstages:\n  - ramp: {to: 5}\n",
            "at most 4 fit",
        ),
        // The agent gives every cluster one population profile; only the node count may differ.
        (
            "name: s\nclusters: {prefix: s, population: {podsPerNode: 9}}\nstages:\n  - ramp: {to: 1}\n",
            "population",
        ),
    ] {
        for dry_run in [true, false] {
            let (status, body) = start(spec, dry_run).await;
            assert_error(status, &body, bad_request, "invalid_scenario");
            assert!(body["reason"].as_str().unwrap().contains(names), "{body}");
        }
    }
    let (status, body) = start(
        "name: s\nseed: 7\nclusters: {prefix: s, population: {nodes: 3}}\nstages:\n  \
         - ramp: {to: 3, rate: 1/s}\n  - waitActive: {timeout: 5m}\n  \
         - tunnelDrop: {clusters: 50%}\n",
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("id").is_none(), "a dry run starts nothing: {body}");
    assert_eq!(body["plan"]["seed"], 7);
    let actions: Vec<&str> = body["plan"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create 3 clusters at 1/s",
            "wait until all 3 clusters are active in Rancher",
            "cut the tunnels of 2 clusters, all at once",
        ]
    );
    let (status, runs) = env.json(Method::GET, "/scenarios", None).await;
    assert_eq!((status, runs), (StatusCode::OK, json!([])));
    let (status, body) = env.json(Method::GET, "/scenarios/nope", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = env.json(Method::POST, "/scenarios/nope/stop", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert!(env.store.agent_clusters().await.expect("rows").is_empty());
    env.stop().await;
}

#[tokio::test]
async fn a_stopping_agent_answers_503() {
    let env = Env::start(22580, ComponentProfile::Lean).await;
    env.agent.shutdown().await;

    let (status, health) = env.json(Method::GET, "/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_eq!(health["status"], "shutting-down");
    let typed = env
        .client
        .health()
        .await
        .expect("a 503 health is still a health");
    assert_eq!(typed.status, "shutting-down");

    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    let (status, body) = env
        .json(Method::POST, "/clusters", Some(json!({"name": "late"})))
        .await;
    assert_error(status, &body, unavailable, "shutting_down");
    let (status, body) = env
        .json(
            Method::POST,
            "/clusters/bulk",
            Some(json!({"count": 1, "prefix": "late"})),
        )
        .await;
    assert_error(status, &body, unavailable, "shutting_down");
    let (status, body) = env.json(Method::DELETE, "/clusters/late", None).await;
    assert_error(status, &body, unavailable, "shutting_down");
    assert!(env.store.agent_clusters().await.expect("rows").is_empty());
    env.stop().await;
}

#[tokio::test]
async fn a_created_cluster_is_listed_without_secrets_becomes_active_and_is_deleted() {
    // The router's default profile is `full`, so a create without a profile proves the default
    // comes from the router and not from a hard-coded `lean`.
    let env = Env::start(22620, ComponentProfile::Full).await;
    let name = "api-one";

    let (status, headers, text) = env
        .raw(
            Method::POST,
            "/clusters",
            Some("application/json"),
            &json!({"name": name}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(
        headers.get("location").and_then(|v| v.to_str().ok()),
        Some("/clusters/api-one")
    );
    let created: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(created["name"], name);
    assert_eq!(created["profile"], "full");
    assert_eq!(created["phase"], "pending");
    assert_no_secret_keys(&created);

    let (status, body) = env
        .json(
            Method::POST,
            "/clusters",
            Some(json!({"name": name, "profile": "lean"})),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "duplicate");
    assert!(
        body["reason"].as_str().is_some_and(|r| r.contains(name)),
        "{body}"
    );

    let (status, list) = env.json(Method::GET, "/clusters", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, [name]);

    let active = wait_for_phase(&env, name, AgentPhase::Active, Duration::from_secs(45)).await;
    assert!(active.rancher_cluster_id.is_some(), "{active:?}");
    assert!(active.apiserver.is_some(), "{active:?}");
    assert!(active.active_at.is_some(), "{active:?}");

    // Now Rancher issued a registration token and received the tunnel params (with the cluster's
    // service-account token): neither may appear in any answer, under any key or inside any value.
    let cluster_id = active.rancher_cluster_id.as_deref().expect("id");
    let tokens = env
        .sim
        .get_v3(&format!("clusterregistrationtokens?clusterId={cluster_id}"))
        .await;
    let registration_token = tokens["data"][0]["token"]
        .as_str()
        .expect("Rancher issued a registration token")
        .to_string();
    let secrets = vec![
        registration_token,
        env.sim.stats(cluster_id).await["paramsHistory"][0]
            .as_str()
            .expect("the params Rancher received")
            .to_string(),
    ];
    for path in ["/clusters", "/clusters/api-one"] {
        let (status, headers, text) = env.raw(Method::GET, path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_no_secret_keys(&serde_json::from_str(&text).expect("JSON"));
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{path} leaks a secret");
        }
    }
    // Every field the server sends survives the client's typed decoding.
    let (_, raw) = env.json(Method::GET, "/clusters/api-one", None).await;
    let typed: Cluster = env.client.get(name).await.expect("typed get");
    let mut reencoded = serde_json::to_value(&typed).expect("encode");
    // `tunnels` and `rancher_state` are live and may move between the two reads.
    for volatile in ["tunnels", "rancher_state"] {
        reencoded[volatile] = raw[volatile].clone();
    }
    assert_eq!(reencoded, raw);

    let health = env.client.health().await.expect("health");
    assert_eq!((health.clusters, health.active, health.failed), (1, 1, 0));
    // Rancher holds both sessions of the active cluster, and the agent counts them.
    let stats = env.sim.stats(cluster_id).await;
    let held = |tunnel: &str| {
        let count = |event: &str| stats["stats"][format!("{tunnel}{event}")].as_i64();
        count("Connects").unwrap_or(0) - count("Disconnects").unwrap_or(0)
    };
    assert_eq!((held("main"), held("steve")), (1, 1), "{stats}");
    assert_eq!(health.tunnels_connected, 2);
    let samples = metrics(&env).await;
    assert_eq!(sample(&samples, "sca_clusters", "phase=\"active\""), 1.0);
    assert_eq!(sample(&samples, "sca_clusters", "phase=\"pending\""), 0.0);
    assert_eq!(sample(&samples, "sca_tunnels_connected", ""), 2.0);
    assert!(sample(&samples, "sca_tunnel_sessions_established_total", "") >= 2.0);

    let (status, deleting) = env.json(Method::DELETE, "/clusters/api-one", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    assert_eq!(deleting["phase"], "deleting");
    // Counted as the API shows it: deleting from the moment it is requested (the KWOK delete
    // that follows takes seconds).
    let samples = metrics(&env).await;
    assert_eq!(sample(&samples, "sca_clusters", "phase=\"deleting\""), 1.0);
    assert_eq!(sample(&samples, "sca_clusters", "phase=\"active\""), 0.0);
    assert_no_secret_keys(&deleting);
    eventually(Duration::from_secs(40), "the cluster to be gone", || {
        let client = env.client.clone();
        async move {
            match client.get(name).await {
                Err(err) if err.code() == Some("not_found") => Some(()),
                Err(err) => panic!("get while deleting: {err}"),
                Ok(_) => None,
            }
        }
    })
    .await;
    assert_eq!(
        env.client.list().await.expect("list"),
        Vec::<Cluster>::new()
    );
    env.stop().await;
}

#[test]
fn discovery_file_is_private_atomic_and_ignores_stale_pids() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    assert_eq!(discovery::read(&data_dir), None, "no file, no agent");
    assert!(
        discovery::remove(&data_dir).is_ok(),
        "removing nothing is fine"
    );

    let written = discovery::write(&data_dir, "http://127.0.0.1:41234").expect("write");
    assert_eq!(
        written,
        Discovery {
            url: "http://127.0.0.1:41234".into(),
            pid: std::process::id(),
            start_time: written.start_time,
            token: None,
        }
    );
    assert!(
        written.start_time.is_some(),
        "the agent's start time is recorded"
    );
    let path = discovery::path(&data_dir);
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(discovery::read(&data_dir), Some(written.clone()));
    let files: Vec<String> = std::fs::read_dir(&data_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["agent.json"], "no temporary file is left behind");

    // Rewriting replaces the content.
    let rewritten = discovery::write(&data_dir, "http://127.0.0.1:41235").expect("rewrite");
    assert_eq!(discovery::read(&data_dir), Some(rewritten));

    // A file from an agent that died (a reaped child's pid) is ignored, and is not ours to remove.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead_pid = child.id();
    child.wait().expect("reap");
    let stale = json!({"url": "http://127.0.0.1:41236", "pid": dead_pid}).to_string();
    std::fs::write(&path, &stale).expect("write stale file");
    assert_eq!(discovery::read(&data_dir), None);
    discovery::remove(&data_dir).expect("remove");
    assert!(path.exists(), "another process's file is left alone");

    // Garbage and pid 0 (which would address a process group) are no agent either.
    std::fs::write(&path, "{not json").expect("write garbage");
    assert_eq!(discovery::read(&data_dir), None);
    std::fs::write(&path, json!({"url": "http://x", "pid": 0}).to_string()).expect("write");
    assert_eq!(discovery::read(&data_dir), None);

    // Our own file is removed on a clean exit.
    discovery::write(&data_dir, "http://127.0.0.1:41237").expect("write");
    discovery::remove(&data_dir).expect("remove");
    assert!(!path.exists());
    assert_eq!(discovery::read(&data_dir), None);
}
