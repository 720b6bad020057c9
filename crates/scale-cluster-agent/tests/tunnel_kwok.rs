//! Our remotedialer client with the agent's main-tunnel router, against the unmodified upstream
//! server program (`github.com/rancher/remotedialer/server`, pinned in tests/remotedialer-peers) and
//! a real KWOK apiserver: HTTPS requests through `/client/<id>/https/<apiserver>/...` reach the
//! cluster with full TLS verification against its CA, while any other address on the host (here the
//! same cluster's etcd) is refused on that stream only.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use scale_cluster_agent::agent::tunnels::apiserver_only;
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::Store;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills whatever still runs from the test's directory (KWOK components, the shared etcd in the
/// data dir) however the test ends.
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_server_reaches_the_kwok_apiserver_through_our_tunnel_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(22800, 10, 2).unwrap();
    let _guard = DirGuard(dir.path().to_path_buf());
    let manager = ClusterManager::new(
        &settings.kwok(),
        support::toolchain(),
        Store::open(&settings.state_db()).unwrap(),
    );
    let info = manager
        .create(CreateRequest {
            name: "tunneled".into(),
            profile: ComponentProfile::Lean,
            population: PopulationProfile {
                nodes: 1,
                ..PopulationProfile::default()
            },
        })
        .await
        .unwrap();
    let apiserver = format!("127.0.0.1:{}", info.ports.kube_apiserver);
    let ca = manager.cluster_dir("tunneled").join("pki").join("ca.crt");

    let server_bin = support::go_build::build(
        &support::go_build::module("remotedialer-peers"),
        "github.com/rancher/remotedialer/server",
        "remotedialer-server",
    );
    let port = free_port();
    let _server = Server(
        Command::new(server_bin)
            .args(["-listen", &format!("127.0.0.1:{port}"), "-id", "upstream"])
            // Go's default TLS client trusts SSL_CERT_FILE: the upstream server then verifies the
            // apiserver it reaches through our tunnel against that cluster's own CA.
            .env("SSL_CERT_FILE", &ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let config = remotedialer::ClientConfig::new(format!("ws://127.0.0.1:{port}/connect"))
        .header("x-tunnel-id", "kwok-1");
    let metrics = Arc::new(remotedialer::Metrics::new());
    let client = remotedialer::spawn_client(
        config,
        Arc::new(apiserver_only(apiserver.clone())),
        metrics.clone(),
    );
    let mut status = client.watch_status();
    tokio::time::timeout(Duration::from_secs(60), async {
        while status.borrow_and_update().state != remotedialer::ConnectionState::Connected {
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("tunnel connected to the upstream server");

    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}/client/kwok-1/{path}");
        async move {
            let resp = http.get(&url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status_code, body) = get(format!("https/{apiserver}/version")).await;
    assert_eq!(status_code, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["gitVersion"], "v1.36.1");
    let (status_code, body) = get(format!("https/{apiserver}/readyz")).await;
    assert_eq!((status_code, body.as_str()), (200, "ok"));

    // The same cluster's etcd is on this host too, but not reachable through the tunnel.
    let etcd = format!("127.0.0.1:{}", info.ports.etcd_client);
    let (status_code, body) = get(format!("http/{etcd}/version")).await;
    assert_eq!(status_code, 500, "{body}");
    // The upstream server writes the request into the new stream at once; when our refusal (an
    // Error frame) closes the stream before that write, its HTTP transport reports the closed
    // pipe instead of our reason. Either way the stream was refused, and nothing of etcd came back.
    assert!(
        body.contains("not this cluster's apiserver") || body.contains("read/write on closed pipe"),
        "{body}"
    );
    assert!(
        !body.contains("etcdserver"),
        "nothing from etcd came back: {body}"
    );

    // The refusal ended that stream only: the session still serves the apiserver.
    let (status_code, _) = get(format!("https/{apiserver}/readyz")).await;
    assert_eq!(status_code, 200);
    assert_eq!(
        client.status().sessions_established,
        1,
        "no reconnect was needed"
    );

    client.shutdown().await;
    manager.delete("tunneled").await.unwrap();
}
