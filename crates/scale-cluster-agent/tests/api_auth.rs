//! Who may use the agent's HTTP API: the `Host` check against DNS rebinding, the bearer token a
//! non-loopback listen requires, and the CLI finding that token in the private discovery file.
//! In-process tests run a real [`Agent`] (rancher-sim as Rancher); the start-up and CLI tests run
//! the real binary.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use scale_cluster_agent::agent::{Agent, AgentConfig};
use scale_cluster_agent::api::{self, AgentClient, ApiToken};
use scale_cluster_agent::kwok::{ClusterManager, ComponentProfile};
use scale_cluster_agent::scenario::{Limits, Runner};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::Store;
use serde_json::Value;
use support::agent_home::AgentProcess;
use support::rancher_sim::{self, RancherSim, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API_TOKEN: &str = "api-token-for-tests-5f1c9e0d2b7a";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// An agent with its API on a loopback port requiring [`API_TOKEN`]. No cluster is created, so
/// its port range (24700..) is only reserved, never used.
struct Env {
    url: String,
    agent: Agent,
    _sim: RancherSim,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let sim = tokio::task::spawn_blocking(|| rancher_sim::start(SimOptions::default()))
            .await
            .expect("starting rancher-sim");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = support::settings();
        settings.data_dir = dir.path().join("data");
        settings.kwok_workdir = dir.path().join("kwok");
        settings.ports = PortRange::new(24700, 10, 2).expect("port range");
        let toolchain = tokio::task::spawn_blocking(support::toolchain)
            .await
            .expect("toolchain");
        let store = Store::open(&settings.state_db()).expect("state db");
        let manager = ClusterManager::new(&settings.kwok(), toolchain, store.clone());
        let config = AgentConfig {
            ..AgentConfig::default()
        };
        let (agent, _reconcile) = Agent::start(config, manager, sim.client().await)
            .await
            .expect("agent starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind API");
        let url = format!("http://{}", listener.local_addr().expect("API address"));
        let runner = Runner::new(
            agent.clone(),
            store,
            ComponentProfile::Lean,
            Limits { max_clusters: 2 },
        )
        .await
        .expect("scenario runner");
        tokio::spawn(api::serve(
            listener,
            agent.clone(),
            runner,
            ComponentProfile::Lean,
            Some(ApiToken::new(API_TOKEN).expect("valid token")),
            std::future::pending(),
        ));
        Env {
            url,
            agent,
            _sim: sim,
            _dir: dir,
        }
    }

    /// `method path` with the given `Host` and `Authorization` headers (reqwest sends the
    /// connection's own Host when `host` is `None`).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        host: Option<&str>,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = http().request(method, format!("{}{path}", self.url));
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// One raw HTTP/1.x request, for what reqwest will not send (an absolute-form target, no
    /// `Host`); returns the status code.
    async fn raw(&self, request: &str) -> u16 {
        let addr = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the API answers and closes")
            .expect("read answer");
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"))
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_are_refused_and_the_token_is_required() {
    let env = Env::start().await;
    let port = env.url.rsplit(':').next().expect("port").to_string();
    let get = reqwest::Method::GET;

    // DNS rebinding: the browser sends the attacker's name as Host. Refused everywhere, with or
    // without the token, before any route (even a missing one) answers.
    for path in ["/health", "/clusters", "/metrics", "/no-such-endpoint"] {
        for host in ["evil.example", &format!("evil.example:{port}"), "10.9.8.7"] {
            let (status, body) = env
                .send(get.clone(), path, Some(host), Some(API_TOKEN))
                .await;
            assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden_host");
        }
    }
    let (status, body) = env
        .send(
            reqwest::Method::POST,
            "/clusters",
            Some("evil.example"),
            Some(API_TOKEN),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden_host");
    let absolute = format!(
        "GET http://evil.example/health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        env.raw(&absolute).await,
        403,
        "the request target names the host too"
    );
    assert_eq!(
        env.raw("GET /health HTTP/1.0\r\n\r\n").await,
        403,
        "no Host at all"
    );

    // Local names pass; /health needs no token.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_string(),
    ] {
        let (status, body) = env.send(get.clone(), "/health", Some(&host), None).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }

    // The status page is static (its data comes from /status, which needs the token): open.
    let (status, body) = env.send(get.clone(), "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let page = body.as_str().unwrap_or_default();
    assert!(
        page.contains("<html") && page.contains("fetch(\"/status\""),
        "{page}"
    );

    // Everything else needs the token: none or a wrong one is 401 and changes nothing.
    for bearer in [None, Some("api-token-for-tests-wrong-000000"), Some("")] {
        for (method, path) in [
            (get.clone(), "/clusters"),
            (get.clone(), "/metrics"),
            (get.clone(), "/status"),
            (get.clone(), "/clusters/x"),
            (reqwest::Method::POST, "/clusters"),
            (reqwest::Method::DELETE, "/clusters/x"),
        ] {
            let (status, body) = env.send(method.clone(), path, None, bearer).await;
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    let response = http()
        .get(format!("{}/clusters", env.url))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("")),
        Some("Bearer")
    );
    let created = http()
        .post(format!("{}/clusters", env.url))
        .json(&serde_json::json!({"name": "sneaky"}))
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), StatusCode::UNAUTHORIZED);
    assert!(
        env.agent.list().await.expect("list").is_empty(),
        "a refused request creates nothing"
    );

    let (status, body) = env
        .send(get.clone(), "/clusters", None, Some(API_TOKEN))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, Value::Array(vec![]));

    // The typed client: with the token it works, without it the agent's reason comes through.
    let client = AgentClient::new(&env.url).expect("client");
    let err = client.list().await.expect_err("no token");
    assert_eq!(err.code(), Some("unauthorized"), "{err}");
    let client = client.with_token(Some(ApiToken::new(API_TOKEN).expect("token")));
    assert!(client.list().await.expect("list with the token").is_empty());
    env.agent.shutdown().await;
}

/// A `scale-cluster-agent` command on `home` with a clean environment: only what is passed here
/// (and PATH/HOME) reaches it, so no token leaks in from the test's own environment.
fn agent_command(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("SCA_DATA_DIR", home.join("data"))
        .env("SCA_KWOK_WORKDIR", home.join("kwok"))
        .env("SCA_CACHE_DIR", support::settings().cache_dir)
        .stdin(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

#[test]
fn a_non_loopback_listen_without_a_token_refuses_to_start() {
    let home = tempfile::tempdir().expect("temp dir");
    let output = agent_command(
        home.path(),
        &["serve", "--listen", "0.0.0.0:0"],
        &[
            // Never contacted: the check comes first.
            ("SCA_RANCHER_URL", "https://127.0.0.1:9"),
            ("SCA_RANCHER_TOKEN", "token-abcde:not-used"),
        ],
    )
    .output()
    .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("0.0.0.0:0 is not a loopback address")
            && stderr.contains("SCA_API_TOKEN")
            && stderr.contains("--api-token-file"),
        "{stderr}"
    );
    assert!(
        !home.path().join("data/agent.json").exists(),
        "nothing was announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uses_the_token_from_the_discovery_file() {
    support::toolchain();
    let sim = tokio::task::spawn_blocking(|| rancher_sim::start(SimOptions::default()))
        .await
        .expect("starting rancher-sim");
    let home = tempfile::tempdir().expect("temp dir");
    let token_file = home.path().join("api-token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).expect("write token file");
    let ca = sim.state_dir.join("ca.crt");
    let log = std::fs::File::create(home.path().join("agent.log")).expect("log");
    let mut agent = AgentProcess {
        child: agent_command(
            home.path(),
            &["serve"],
            &[
                // Off loopback: possible only because a token is configured.
                ("SCA_LISTEN", "0.0.0.0:0"),
                ("SCA_API_TOKEN_FILE", token_file.to_str().expect("utf-8")),
                ("SCA_RANCHER_URL", &sim.url),
                ("SCA_RANCHER_TOKEN", &sim.token),
                ("SCA_RANCHER_CA_FILE", ca.to_str().expect("utf-8")),
                ("SCA_PORT_BASE", "24720"),
                ("SCA_PORT_BLOCKS", "2"),
            ],
        )
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn serve"),
        kwok: home.path().join("kwok"),
    };
    let discovery = home.path().join("data/agent.json");
    let pid = agent.child.id();
    let found: Value = support::eventually(Duration::from_secs(120), "agent.json", || {
        let exited = agent.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "agent exited: {exited:?}\n{}",
            std::fs::read_to_string(home.path().join("agent.log")).unwrap_or_default()
        );
        let found = std::fs::read_to_string(&discovery)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)));
        async move { found }
    })
    .await;
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(
        mode(&discovery),
        0o600,
        "the file holding the token is private"
    );
    assert_eq!(mode(&home.path().join("data")), 0o700);
    assert_eq!(mode(&home.path().join("kwok")), 0o700);
    assert_eq!(found["token"], API_TOKEN);
    let url = found["url"].as_str().expect("url").to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "a connectable address: {url}"
    );

    // The API itself wants the token.
    let response = http()
        .get(format!("{url}/clusters"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // The CLI, with no token in its environment, reads it from agent.json.
    let list = |home: PathBuf| {
        tokio::task::spawn_blocking(move || {
            agent_command(&home, &["cluster", "list", "-o", "json"], &[])
                .output()
                .expect("run cluster list")
        })
    };
    let output = list(home.path().to_path_buf()).await.expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let clusters: Value = serde_json::from_str(&stdout).expect("JSON list");
    assert_eq!(clusters, Value::Array(vec![]), "{stdout}");
    assert!(!stdout.contains(API_TOKEN) && !stderr.contains(API_TOKEN));

    // Without the token in the file the same command is refused by the agent: the CLI really
    // goes through the API, and the token is what lets it in.
    let stripped = serde_json::json!({"url": url, "pid": pid}).to_string();
    std::fs::write(&discovery, stripped).expect("rewrite agent.json");
    let output = list(home.path().to_path_buf()).await.expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("missing or wrong API token"), "{stderr}");
}
