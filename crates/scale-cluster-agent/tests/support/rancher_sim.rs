//! The rancher-sim test peer (`tests/rancher-sim`, Go): built once per test binary, started on a
//! free loopback port with a temporary state dir, killed when dropped.
//!
//! ```ignore
//! let sim = rancher_sim::start(SimOptions::default());
//! let client = sim.client().await;          // RancherClient pinned to the sim's CA file
//! let stats = sim.stats("c-xxxxx").await;   // /sim/clusters/<id>/stats
//! ```
//!
//! Building needs `go` on PATH (and the Go module proxy or a warm module cache); a missing `go` or
//! a failing build panics with the build log, never skips.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use scale_cluster_agent::rancher::{
    ca_checksum, ApiToken, RancherClient, RancherCluster, RancherConfig, TlsMode,
};

/// The API token every simulator started here accepts.
pub const API_TOKEN: &str = "token-simtst:a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6";

/// How to start the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// `--rancher-version`, e.g. `v2.12.3` (status.token) or `v2.14.0` (token in a Secret).
    pub rancher_version: String,
    pub probe_interval: Duration,
    /// Delay before a registration token's value appears.
    pub token_delay: Duration,
    /// `strict` or `system-store` (drives STRICT_VERIFY in the manifest).
    pub agent_tls_mode: String,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            rancher_version: "v2.14.0".into(),
            probe_interval: Duration::from_secs(1),
            token_delay: Duration::from_millis(300),
            agent_tls_mode: "strict".into(),
        }
    }
}

/// A running rancher-sim. Dropping it kills the process and removes the state dir.
pub struct RancherSim {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The sim CA as written to `ca.crt` (with its trailing newline).
    pub ca_pem: String,
    /// CATTLE_CA_CHECKSUM of the sim's cacerts, computed here from the file independently.
    pub ca_checksum: String,
    pub token: String,
    pub state_dir: PathBuf,
    pub pid: u32,
    port: u16,
    options: SimOptions,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// Builds the simulator once per test process (see [`super::go_build`]).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        super::go_build::build(&super::go_build::module("rancher-sim"), ".", "rancher-sim")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Starts a simulator with a fresh state dir on a free loopback port.
pub fn start(options: SimOptions) -> RancherSim {
    let dir = tempfile::tempdir().expect("state dir");
    let state_dir = dir.path().to_path_buf();
    for _ in 0..5 {
        let port = free_port();
        if let Some(child) = launch(&options, &state_dir, port) {
            let ca_pem = std::fs::read_to_string(state_dir.join("ca.crt")).expect("read sim CA");
            return RancherSim {
                url: format!("https://127.0.0.1:{port}"),
                ca_checksum: file_checksum(&ca_pem),
                ca_pem,
                token: API_TOKEN.into(),
                state_dir,
                pid: child.id(),
                port,
                options,
                child: Some(child),
                _dir: dir,
            };
        }
    }
    panic!("rancher-sim did not start on any free port");
}

/// sha256 of the CA file bytes. The file ends in one newline and the setting value is the same
/// PEM without it, so this equals Rancher's checksum of the setting, derived independently.
fn file_checksum(pem: &str) -> String {
    use sha2::Digest;
    assert!(pem.ends_with('\n') && !pem.ends_with("\n\n"));
    let checksum = hex::encode(sha2::Sha256::digest(pem.as_bytes()));
    assert_eq!(checksum, ca_checksum(pem.trim_end()));
    checksum
}

/// Starts the process and waits until it wrote its address for `port`; `None` if it exited
/// (port taken) or never came up.
fn launch(options: &SimOptions, state_dir: &Path, port: u16) -> Option<Child> {
    let address_file = state_dir.join("address");
    let _ = std::fs::remove_file(&address_file);
    let mut child = Command::new(binary())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--token")
        .arg(API_TOKEN)
        .arg("--rancher-version")
        .arg(&options.rancher_version)
        .arg("--probe-interval")
        .arg(format!("{}ms", options.probe_interval.as_millis()))
        .arg("--token-delay")
        .arg(format!("{}ms", options.token_delay.as_millis()))
        .arg("--agent-tls-mode")
        .arg(&options.agent_tls_mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rancher-sim");
    let want = format!("https://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut log = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut log);
            }
            eprintln!("rancher-sim exited ({status}) on port {port}:\n{log}");
            return None;
        }
        let written = std::fs::read_to_string(&address_file).unwrap_or_default();
        if written.trim() == want && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // Drain stderr so the process never blocks on a full pipe.
            if let Some(mut stderr) = child.stderr.take() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut stderr, &mut std::io::sink());
                });
            }
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl RancherSim {
    /// Kills the process (like a crash: SIGKILL), keeping the state dir.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts again on the same port with the same state dir.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = launch(&self.options, &self.state_dir, self.port) {
                self.pid = child.id();
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("rancher-sim did not restart on port {}", self.port);
    }

    /// A plain HTTP client trusting the sim CA.
    pub fn http(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("sim CA");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client")
    }

    /// The configuration of a client pinned to the sim CA file.
    pub fn config(&self) -> RancherConfig {
        RancherConfig::new(
            self.url.clone(),
            ApiToken::new(self.token.clone()).expect("valid token"),
            TlsMode::CaFile(self.state_dir.join("ca.crt")),
        )
    }

    pub async fn client(&self) -> RancherClient {
        RancherClient::new(self.config())
            .await
            .expect("client for rancher-sim")
    }

    /// Settings for an in-process agent ([`RunningAgent`](scale_cluster_agent::app::RunningAgent))
    /// against this sim: lean clusters one at a time, fast Rancher polls, Steve and the controller
    /// host on.
    pub fn agent_settings(&self) -> scale_cluster_agent::config::AgentSettings {
        scale_cluster_agent::config::AgentSettings {
            rancher: self.config(),
            listen: "127.0.0.1:0".parse().expect("address"),
            api_token: None,
            profile: scale_cluster_agent::kwok::ComponentProfile::Lean,
            concurrency: 1,
            rancher_poll: Duration::from_secs(2),
            rancher_gone_after: Duration::from_secs(60),
            instance_id: None,
            reconnect_max: Duration::from_secs(5),
            steve: scale_cluster_agent::config::SteveSettings {
                enabled: true,
                idle_timeout: Duration::from_secs(600),
            },
            shard: None,
            controller_host: true,
            request_audit: false,
        }
    }

    /// `/sim/clusters/<id>/stats`: connects, params history, pings, nodes seen, last error, ...
    pub async fn stats(&self, cluster_id: &str) -> serde_json::Value {
        let url = format!("{}/sim/clusters/{cluster_id}/stats", self.url);
        let response = self.http().get(&url).send().await.expect("stats request");
        assert_eq!(response.status(), 200, "stats of {cluster_id}");
        let body = response.bytes().await.expect("stats body");
        serde_json::from_slice(&body).expect("stats JSON")
    }

    /// `GET /k8s/clusters/<id>/v1/<path>` as Rancher's steve proxy serves it: impersonating
    /// `user` (the sim's admin when `None`) through the cluster's steve tunnel. Status and body.
    pub async fn steve(
        &self,
        cluster_id: &str,
        path: &str,
        user: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}/k8s/clusters/{cluster_id}/v1/{path}", self.url);
        let mut request = self.http().get(&url).bearer_auth(&self.token);
        if let Some(user) = user {
            request = request.header("X-Sim-User", user);
        }
        let response = request.send().await.expect("steve request");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("steve body");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The cluster as the management API shows it (`None` once deleted).
    pub async fn cluster(&self, id: &str) -> Option<RancherCluster> {
        self.client().await.cluster(id).await.expect("read cluster")
    }

    /// Creates an imported cluster as a Rancher user would (raw API), optionally labelled as a
    /// scale-cluster-agent instance's; returns its id.
    pub async fn create_cluster(&self, name: &str, instance: Option<&str>) -> String {
        let mut body = serde_json::json!({"type": "cluster", "name": name, "importedConfig": {}});
        if let Some(instance) = instance {
            body["labels"] =
                serde_json::json!({ scale_cluster_agent::rancher::INSTANCE_LABEL: instance });
        }
        let response = self
            .http()
            .post(format!("{}/v3/clusters", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("POST /v3/clusters");
        assert!(response.status().is_success(), "{}", response.status());
        let created: serde_json::Value = response.json().await.expect("JSON");
        created["id"].as_str().expect("id").to_string()
    }

    /// Deletes a cluster as a Rancher user would (raw API).
    pub async fn delete_cluster(&self, id: &str) {
        let response = self
            .http()
            .delete(format!("{}/v3/clusters/{id}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("DELETE /v3/clusters/<id>");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// For `seconds`, cluster lists come back empty and cluster GETs answer 404, as a proxy or a
    /// token that lost its rights would make them.
    pub async fn hide_clusters(&self, seconds: f64) {
        let response = self
            .http()
            .post(format!("{}/sim/faults", self.url))
            .json(&serde_json::json!({ "hideClustersSeconds": seconds }))
            .send()
            .await
            .expect("POST /sim/faults");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// Raw `GET /v3/<path>` with the API token, as JSON.
    pub async fn get_v3(&self, path_and_query: &str) -> serde_json::Value {
        let url = format!("{}/v3/{path_and_query}", self.url);
        let response = self
            .http()
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("v3 request");
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let body = response.bytes().await.expect("v3 body");
        serde_json::from_slice(&body).expect("v3 JSON")
    }
}

impl Drop for RancherSim {
    fn drop(&mut self) {
        self.kill();
    }
}
