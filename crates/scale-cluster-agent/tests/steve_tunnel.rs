//! Rancher's Steve API through the steve tunnel, end to end with real parts: real KWOK clusters,
//! the real steve host (built by the toolchain) under the agent's supervisor, our remotedialer
//! client with the agent's steve router, and an upstream remotedialer server
//! (`tests/remotedialer-peers/cmd/steve-proxy`) that dials `127.0.0.1:6080` through the session
//! as Rancher's steve proxy does. The test adds the headers Rancher's proxy adds
//! (`Impersonate-User`, `-Group`, `-Extra-*`, `X-API-URL-Prefix`) and checks every answer against
//! the apiserver itself.
//!
//! The second test runs the whole agent against rancher-sim: the host it supervises gets no
//! token, keeps its socket private and serves that agent's clusters, `stv-aggregation` is in the
//! cluster, and stop ends the host.
//!
//! Port bases 25700 (first test) and 25800 (second).

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::Api;
use scale_cluster_agent::agent::tunnels::steve_router;
use scale_cluster_agent::app::RunningAgent;
use scale_cluster_agent::kwok::{
    population, ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use scale_cluster_agent::steve::{self, SteveHost, SteveHostConfig, SteveProxy};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::{AgentPhase, Store};
use scale_cluster_agent::toolchain::{self, Component, Progress};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(120);

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the KWOK components (they outlive everything by design) however the test ends.
struct KwokGuard(PathBuf);

impl Drop for KwokGuard {
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

async fn steve_host_binary() -> PathBuf {
    let opts = support::settings().toolchain_options();
    toolchain::install_component(&opts, Component::SteveHost, Progress::Plain)
        .await
        .expect("the steve host builds from its embedded sources")
        .path
}

/// A user as Rancher's proxy names it: impersonation headers, no credentials.
struct User {
    name: &'static str,
    groups: &'static [&'static str],
}

const ALICE: User = User {
    name: "u-alice",
    groups: &["system:authenticated", "system:cattle:authenticated"],
};
const MALLORY: User = User {
    name: "u-mallory",
    groups: &["system:authenticated", "system:cattle:authenticated"],
};

/// Requests through the upstream server and our tunnel, as Rancher's steve proxy sends them.
struct Rancher {
    http: reqwest::Client,
    base: String,
    port: u16,
    session: String,
}

impl Rancher {
    fn request(&self, user: Option<&User>, path: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .get(format!("{}/proxy/{}{path}", self.base, self.session))
            .header("X-API-URL-Prefix", "/k8s/clusters/c-m-test");
        if let Some(user) = user {
            request = request
                .header("Impersonate-User", user.name)
                .header(
                    "Impersonate-Extra-Principalid",
                    format!("local://{}", user.name),
                )
                .header("Impersonate-Extra-Username", user.name);
            for group in user.groups {
                request = request.header("Impersonate-Group", *group);
            }
        }
        request
    }

    /// Whether `/ping` answers 200 through the tunnel (the peer may still be starting).
    async fn pings(&self) -> bool {
        self.request(None, "/ping")
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    async fn get(&self, user: Option<&User>, path: &str) -> (u16, String) {
        let response = self.request(user, path).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    async fn json(&self, user: &User, path: &str) -> Value {
        let (status, body) = self.get(Some(user), path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

fn names(collection: &Value) -> BTreeSet<String> {
    collection["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Proportional set size of a process, in KiB, from the kernel.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn create_cluster(manager: &ClusterManager, name: &str, nodes: u32) -> kube::Client {
    let info = manager
        .create(CreateRequest {
            name: name.into(),
            profile: ComponentProfile::Lean,
            population: PopulationProfile {
                nodes,
                ..PopulationProfile::default()
            },
        })
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    population::client(&info.kubeconfig).await.expect("client")
}

async fn bind_cluster_admin(client: &kube::Client, user: &str) {
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    bindings
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(format!("{user}-admin")),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: "cluster-admin".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "User".into(),
                    name: user.into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("binding");
}

async fn real_node_names(client: &kube::Client) -> BTreeSet<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&ListParams::default())
        .await
        .expect("nodes from the apiserver")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect()
}

/// Opens `/v1/subscribe` through the tunnel as `user` and watches pods.
async fn subscribe(
    rancher: &Rancher,
    user: &User,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://127.0.0.1:{}/proxy/{}/v1/subscribe",
        rancher.port, rancher.session
    );
    let mut request = url.into_client_request().expect("ws request");
    let headers = request.headers_mut();
    headers.insert("Impersonate-User", user.name.parse().unwrap());
    for group in user.groups {
        headers.append("Impersonate-Group", group.parse().unwrap());
    }
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", rancher.port))
        .await
        .expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("websocket upgrade through the tunnel");
    assert_eq!(response.status().as_u16(), 101);
    ws.send(Message::text(r#"{"resourceType":"pod"}"#))
        .await
        .expect("subscribe to pods");
    ws
}

/// Waits on the subscription for an event carrying pod `name`.
async fn wait_for_pod_event(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    name: &str,
) -> Value {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let message = ws
                .next()
                .await
                .expect("the subscription stays open")
                .expect("websocket message");
            let Message::Text(text) = message else {
                continue;
            };
            let event: Value = serde_json::from_str(&text).expect("JSON event");
            if event["data"]["metadata"]["name"] == name {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no subscription event for pod {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steve_serves_the_clusters_real_objects_through_the_tunnel_with_the_users_rbac() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(25700, 10, 2).unwrap();
    // The KWOK components and the shared etcd (in the data dir): all under `dir`.
    let _kwok = KwokGuard(dir.path().to_path_buf());
    let binary = steve_host_binary().await;
    let manager = ClusterManager::new(
        &settings.kwok(),
        tokio::task::spawn_blocking(support::toolchain)
            .await
            .unwrap(),
        Store::open(&settings.state_db()).unwrap(),
    );
    let clusters_dir = steve::clusters_dir(&settings.kwok());
    assert_eq!(
        clusters_dir.join("stv-a").join("kubeconfig.yaml"),
        manager.kubeconfig_path("stv-a"),
        "the host looks where kwokctl writes"
    );
    let (a, b) = tokio::join!(
        create_cluster(&manager, "stv-a", 3),
        create_cluster(&manager, "stv-b", 2)
    );
    bind_cluster_admin(&a, ALICE.name).await;
    bind_cluster_admin(&b, ALICE.name).await;

    let run_dir = dir.path().join("run");
    let log_file = dir.path().join("logs").join("steve-host.log");
    let host = SteveHost::start(SteveHostConfig {
        binary,
        run_dir: run_dir.clone(),
        clusters_dir,
        idle_timeout: Duration::from_secs(5),
        log_file: log_file.clone(),
        backoff: remotedialer::Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
        },
    })
    .await
    .expect("steve host starts");
    assert_eq!(
        std::fs::metadata(&run_dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "the socket's directory is private"
    );
    let proxy = SteveProxy::new(host.socket());

    // Upstream remotedialer server, one session per cluster, as Rancher's stv-cluster-<id>.
    let peer_bin = support::go_build::build(
        &support::go_build::module("remotedialer-peers"),
        "./cmd/steve-proxy",
        "steve-proxy",
    );
    let port = free_port();
    let _peer = Peer(
        Command::new(peer_bin)
            .args(["-listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let metrics = Arc::new(remotedialer::Metrics::new());
    let connect = |session: &str, router| {
        let config = remotedialer::ClientConfig::new(format!("ws://127.0.0.1:{port}/connect"))
            .header("x-tunnel-id", session.to_string());
        remotedialer::spawn_client(config, Arc::new(router), metrics.clone())
    };
    let tunnel_a = connect("stv-cluster-a", steve_router(Some(&proxy), "stv-a"));
    let tunnel_b = connect("stv-cluster-b", steve_router(Some(&proxy), "stv-b"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let rancher = |session: &str| Rancher {
        http: http.clone(),
        base: format!("http://127.0.0.1:{port}"),
        port,
        session: session.into(),
    };
    let (ra, rb) = (rancher("stv-cluster-a"), rancher("stv-cluster-b"));
    support::eventually(
        Duration::from_secs(60),
        "both tunnels connected",
        || async { (ra.pings().await && rb.pings().await).then_some(()) },
    )
    .await;
    let (status, body) = ra.get(None, "/ping").await;
    assert_eq!((status, body.as_str()), (200, "pong"));

    let host_pid = host.pid().expect("host running");
    let pss_fresh = pss_kib(host_pid);

    // Schemas: what Steve derives from the cluster's discovery, for this user.
    let schemas = ra.json(&ALICE, "/v1/schemas").await;
    let ids: BTreeSet<&str> = schemas["data"]
        .as_array()
        .expect("schema list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        ids.contains("node") && ids.contains("pod") && ids.contains("namespace"),
        "{ids:?}"
    );

    // Nodes: exactly the cluster's real nodes, per cluster.
    let real_a = real_node_names(&a).await;
    let real_b = real_node_names(&b).await;
    assert_eq!(real_a.len(), 3);
    assert_eq!(real_b.len(), 2);
    assert_eq!(names(&ra.json(&ALICE, "/v1/nodes").await), real_a);
    assert_eq!(names(&rb.json(&ALICE, "/v1/nodes").await), real_b);
    // Pagination as Steve does it.
    let page = ra.json(&ALICE, "/v1/nodes?limit=2").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(2), "{page}");
    assert!(page["pagination"]["next"].is_string(), "{page}");

    // A user cannot pick another cluster: Rancher's proxy passes user headers through, the
    // agent replaces this one.
    let spoofed = ra
        .request(Some(&ALICE), "/v1/nodes")
        .header(steve::CLUSTER_HEADER, "stv-b")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status().as_u16(), 200);
    assert_eq!(
        names(&spoofed.json().await.unwrap()),
        real_a,
        "still stv-a's nodes"
    );

    // Counts, from Steve's summary cache: eventually the real number of nodes.
    support::eventually(DEADLINE, "/v1/counts to count the nodes", || async {
        let counts = ra.json(&ALICE, "/v1/counts").await;
        let count = counts["data"][0]["counts"]["node"]["summary"]["count"].as_u64();
        (count == Some(3)).then_some(())
    })
    .await;

    // A user without RBAC in the downstream cluster sees nothing of it.
    let (status, body) = ra.get(Some(&MALLORY), "/v1/nodes").await;
    assert!(
        status == 403 || status == 404,
        "u-mallory listed nodes: {status} {body}"
    );
    assert!(real_a.iter().all(|n| !body.contains(n.as_str())), "{body}");
    let mallory_schemas = ra.json(&MALLORY, "/v1/schemas").await;
    assert!(
        !mallory_schemas.to_string().contains("\"id\":\"node\""),
        "u-mallory may not even see the node type"
    );
    // No impersonation headers at all: unauthenticated, refused too.
    let (status, body) = ra.get(None, "/v1/nodes").await;
    assert!(
        status == 401 || status == 403 || status == 404,
        "{status} {body}"
    );
    assert!(real_a.iter().all(|n| !body.contains(n.as_str())), "{body}");

    // The subscription websocket delivers a new pod.
    let mut ws = subscribe(&ra, &ALICE).await;
    let pods: Api<Pod> = Api::namespaced(a.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "steve-sees-me"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let event = wait_for_pod_event(&mut ws, "steve-sees-me").await;
    assert!(
        event["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("resource.")),
        "{event}"
    );
    ws.close(None).await.ok();
    // Browsing both clusters, the subscription included, is done.
    let pss_browsed = pss_kib(host_pid);

    // The host killed -9: the supervisor restarts it and requests work again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut pid = host.watch_pid();
    let new_pid = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(p) = *pid.borrow_and_update() {
                if p != host_pid {
                    return p;
                }
            }
            pid.changed().await.expect("supervisor alive");
        }
    })
    .await
    .expect("the steve host is restarted");
    support::eventually(DEADLINE, "Steve to answer after the restart", || async {
        let (status, body) = ra.get(Some(&ALICE), "/v1/nodes").await;
        (status == 200 && serde_json::from_str::<Value>(&body).is_ok_and(|v| names(&v) == real_a))
            .then_some(())
    })
    .await;

    // Idle clusters are released: the host says so, and memory goes back down.
    let pss_one_browsed = pss_kib(new_pid);
    support::eventually(DEADLINE, "the idle cluster to be released", || async {
        let log = tokio::fs::read_to_string(&log_file)
            .await
            .unwrap_or_default();
        log.contains("Steve released for idle cluster")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // the host hands memory back 2 s later
    let pss_idle = pss_kib(new_pid);
    eprintln!(
        "steve-host PSS: fresh {pss_fresh} KiB; 2 clusters browsed {pss_browsed} KiB; \
         after restart, 1 cluster browsed {pss_one_browsed} KiB; after idle release {pss_idle} KiB"
    );
    // A released cluster is served again on its next request.
    assert_eq!(names(&ra.json(&ALICE, "/v1/nodes").await), real_a);

    // No secret of the agent reaches the host.
    let environ = std::fs::read(format!("/proc/{new_pid}/environ")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&environ).contains("SCA_RANCHER_TOKEN"),
        "the host got a token variable"
    );

    // A host that cannot be reached: a clear 503, and /ping still answers.
    let dead = SteveProxy::new(dir.path().join("no-such.sock"));
    let tunnel_dead = connect("stv-cluster-dead", steve_router(Some(&dead), "stv-a"));
    let rdead = rancher("stv-cluster-dead");
    support::eventually(Duration::from_secs(60), "the third tunnel", || async {
        rdead.pings().await.then_some(())
    })
    .await;
    let (status, body) = rdead.get(Some(&ALICE), "/v1/nodes").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("steve-host"), "{body}");

    tunnel_dead.shutdown().await;
    tunnel_a.shutdown().await;
    tunnel_b.shutdown().await;
    host.shutdown().await;
    assert!(
        !Path::new(&format!("/proc/{new_pid}")).exists()
            || support::process_identity(new_pid).is_none(),
        "the host is gone after shutdown"
    );
    assert!(support::processes_mentioning(&run_dir).is_empty());
    manager.delete("stv-a").await.unwrap();
    manager.delete("stv-b").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_supervises_a_private_tokenless_host_and_writes_stv_aggregation() {
    use support::rancher_sim;
    let sim =
        tokio::task::spawn_blocking(|| rancher_sim::start(support::agent_home::sim_options()))
            .await
            .expect("starting rancher-sim");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(25800, 10, 2).unwrap();
    // The KWOK components and the shared etcd (in the data dir): all under `dir`.
    let _kwok = KwokGuard(dir.path().to_path_buf());
    tokio::task::spawn_blocking(support::toolchain)
        .await
        .unwrap();
    steve_host_binary().await;
    let agent = sim.agent_settings();
    let running = RunningAgent::start(&settings, &agent)
        .await
        .expect("agent starts");
    running
        .agent
        .create("stv-agent", ComponentProfile::Lean)
        .await
        .unwrap();
    let id = support::eventually(Duration::from_secs(240), "stv-agent active", || async {
        let view = running.agent.get("stv-agent").await.ok()?;
        (view.phase == AgentPhase::Active)
            .then_some(view.rancher_cluster_id)
            .flatten()
    })
    .await;

    // stv-aggregation, as the real agent leaves it, read from the apiserver.
    let client = population::client(
        &settings
            .kwok_workdir
            .join("clusters/stv-agent/kubeconfig.yaml"),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "cattle-system");
    let secret = support::eventually(DEADLINE, "stv-aggregation", || async {
        secrets.get_opt("stv-aggregation").await.ok().flatten()
    })
    .await;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        String::from_utf8(data.get(key).unwrap_or_else(|| panic!("{key}")).0.clone()).unwrap()
    };
    let registration = sim.client().await.registration(&id).await.unwrap();
    let token = registration.token.expose();
    assert_eq!(text("CATTLE_SERVER"), sim.url);
    assert_eq!(text("url"), format!("{}/v3/connect", sim.url));
    assert_eq!(text("token"), format!("stv-cluster-{token}"));
    assert_eq!(text("CATTLE_TOKEN"), token);
    assert_eq!(text("CATTLE_CA_CHECKSUM"), sim.ca_checksum);
    assert_eq!(text("CATTLE_CACERTS_VALID"), "true");
    assert_eq!(text("ca.crt").trim(), sim.ca_pem.trim());

    // The supervised host: private socket directory, no token in its environment, serving this
    // agent's cluster from its socket.
    let run_dir = settings.data_dir.join("run");
    assert_eq!(
        std::fs::metadata(&run_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // The controller host shares the run directory and gets no token either.
    for host in ["steve-host", "controller-host"] {
        let pids: Vec<u32> = support::processes_mentioning(&run_dir)
            .into_iter()
            .filter(|pid| support::program_name(*pid).as_deref() == Some(host))
            .collect();
        assert_eq!(pids.len(), 1, "one {host}: {pids:?}");
        let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ.contains(sim.token.as_str()),
            "{host} got the API token"
        );
        assert!(
            !environ.contains(token),
            "{host} got the registration token"
        );
    }
    let (status, body) = unix_get(&run_dir.join("steve-host.sock"), "/v1/nodes", "stv-agent").await;
    assert_eq!(status, 200, "{body}");
    let nodes: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(names(&nodes), real_node_names(&client).await);

    running.stop().await.expect("stop");
    assert!(
        support::processes_mentioning(&run_dir).is_empty(),
        "stop ended the steve host and the controller host"
    );
}

/// A GET straight to the host's socket as an admin-impersonating agent request (the agent is the
/// only other party that can reach it; `system:masters` stands in for a bound Rancher user).
async fn unix_get(socket: &Path, path: &str, cluster: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("socket");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("Host", "steve")
        .header(steve::CLUSTER_HEADER, cluster)
        .header("Impersonate-User", "admin")
        .header("Impersonate-Group", "system:masters")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
