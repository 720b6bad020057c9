//! Interop with Rancher's own implementation: the unmodified upstream server program, and an
//! upstream `remotedialer.Server` in our Go peer for the server-to-client direction.

mod support;

use remotedialer::{
    spawn_client, Backoff, ClientConfig, ClientHandle, ConnectRequest, ConnectionState, DialTcp,
    InProcessHandler, Keepalive, Metrics, Route, Router,
};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIG: u64 = 64 << 20;

/// Short timers so keepalive and SyncConnections run many times during each test: a live
/// stream missing from our SyncConnections would be closed by the server and fail the test.
fn tunnel_config(url: String, id: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url).header("x-tunnel-id", id);
    config.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_secs(1),
    };
    config.keepalive = Keepalive {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_secs(10),
        sync_interval: Duration::from_millis(150),
        write_timeout: Duration::from_secs(30),
    };
    config
}

async fn wait_state(handle: &ClientHandle, wanted: fn(&ConnectionState) -> bool) {
    let mut status = handle.watch_status();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|status| wanted(&status.state)),
    )
    .await
    .expect("state reached in time")
    .expect("client alive");
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// GETs `url` until it answers 200 (the server registers a session just after the upgrade).
async fn get_ok(url: &str) -> String {
    let client = http();
    eventually(Duration::from_secs(20), url, || async {
        let response = client.get(url).send().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        response.text().await.ok()
    })
    .await
}

async fn start(
    server_url: String,
    id: &str,
    router: Arc<dyn Router>,
) -> (ClientHandle, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let handle = spawn_client(tunnel_config(server_url, id), router, metrics.clone());
    wait_state(&handle, |state| *state == ConnectionState::Connected).await;
    (handle, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_upstream_server_including_100_concurrent_requests() {
    let server = UpstreamServer::start().await;
    let target = spawn_http_target().await;
    let (client, metrics) = start(server.connect_url(), "c1", Arc::new(DialTcp)).await;

    assert_eq!(
        get_ok(&server.client_url("c1", target, "hello")).await,
        "/hello"
    );

    let http = http();
    let requests = (0..100).map(|i| {
        let url = server.client_url("c1", target, &format!("req-{i}"));
        let http = http.clone();
        async move {
            let response = http.get(&url).send().await.expect("request sent");
            assert_eq!(response.status(), 200, "request {i}");
            assert_eq!(response.text().await.expect("body"), format!("/req-{i}"));
        }
    });
    futures::future::join_all(requests).await;

    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.sessions_established, 1);
    assert!(snapshot.streams_opened >= 2, "{snapshot:?}");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_from_client_to_server_arrives_intact() {
    let server = UpstreamServer::start().await;
    let target = spawn_http_target().await;
    let (client, _metrics) = start(server.connect_url(), "big", Arc::new(DialTcp)).await;
    get_ok(&server.client_url("big", target, "ready")).await;

    let mut response = http()
        .get(server.client_url("big", target, &format!("bytes/{BIG}")))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.expect("body chunk") {
        received += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(received, BIG);
    assert_eq!(hex::encode(hasher.finalize()), sha256_of(BIG, body_byte));
    client.shutdown().await;
}

/// The Go server pushes 64 MiB into a target that does not read until we have sent Pause;
/// meanwhile another stream of the same session still completes. Then the target drains and
/// the checksum must match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_from_server_obeys_our_pause_without_blocking_other_streams() {
    let peer = UploadPeer::start().await;
    let metrics = Arc::new(Metrics::new());
    let small_target = spawn_hashing_target(10, async {}).await;
    let peer_port = peer.port;
    let held_metrics = metrics.clone();
    let big_target = spawn_hashing_target(BIG, async move {
        eventually(Duration::from_secs(60), "Pause sent", || async {
            (held_metrics.snapshot().pauses_sent > 0).then_some(())
        })
        .await;
        let url = format!("http://127.0.0.1:{peer_port}/upload/up/{small_target}?size=10");
        let answer = http()
            .get(url)
            .send()
            .await
            .expect("small upload")
            .text()
            .await;
        let answer = answer.expect("small upload body");
        let (sent, reported) = answer.split_once(' ').expect("two digests");
        assert_eq!(
            sent, reported,
            "small stream completed while the big one was paused"
        );
    })
    .await;
    let client = spawn_client(
        tunnel_config(peer.connect_url(), "up"),
        Arc::new(DialTcp),
        metrics.clone(),
    );
    wait_state(&client, |state| *state == ConnectionState::Connected).await;

    let url = format!(
        "http://127.0.0.1:{}/upload/up/{big_target}?size={BIG}",
        peer.port
    );
    let answer = eventually(Duration::from_secs(20), "upload accepted", || async {
        let response = http().get(&url).send().await.ok()?;
        (response.status() == 200).then_some(response)
    })
    .await
    .text()
    .await
    .expect("upload answer");
    let (sent, reported) = answer.split_once(' ').expect("two digests");
    assert_eq!(sent, sha256_of(BIG, upload_byte));
    assert_eq!(reported, sent);
    let snapshot = metrics.snapshot();
    assert!(snapshot.pauses_sent >= 1);
    assert_eq!(snapshot.sessions_established, 1);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_denied_targets_fail_only_their_request() {
    let server = UpstreamServer::start().await;
    let target = spawn_http_target().await;
    let closed: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let router = Arc::new(|request: &ConnectRequest| match request.address.as_str() {
        "pong.local:80" => Route::Handle(InProcessHandler::new(|mut stream| async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong")
                .await;
        })),
        "denied.local:80" => Route::Deny("address not allowed by test router".into()),
        address => Route::Dial(address.to_owned()),
    });
    let (client, metrics) = start(server.connect_url(), "r1", router).await;
    get_ok(&server.client_url("r1", target, "ready")).await;

    let refused = http()
        .get(server.client_url("r1", closed, "x"))
        .send()
        .await
        .expect("server answered");
    assert_eq!(refused.status(), 500);
    let denied = http()
        .get(format!(
            "http://127.0.0.1:{}/client/r1/http/denied.local:80/x",
            server.port
        ))
        .send()
        .await
        .expect("server answered");
    assert_eq!(denied.status(), 500);
    assert!(
        denied
            .text()
            .await
            .expect("body")
            .contains("address not allowed by test router"),
        "the Deny reason reaches the server"
    );

    let pong = http()
        .get(format!(
            "http://127.0.0.1:{}/client/r1/http/pong.local:80/ping",
            server.port
        ))
        .send()
        .await
        .expect("server answered");
    assert_eq!(pong.status(), 200);
    assert_eq!(pong.text().await.expect("body"), "pong");

    assert_eq!(
        get_ok(&server.client_url("r1", target, "after")).await,
        "/after"
    );
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.sessions_established, 1, "the session stayed up");
    assert!(snapshot.streams_failed >= 2, "{snapshot:?}");
    client.shutdown().await;
}

/// While the server is down the client keeps retrying, each wait at most the backoff cap, and
/// the first attempt after the server is back connects. Checked on what the client reports, not
/// on the wall clock, which a loaded machine stretches arbitrarily.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_within_backoff_cap_after_server_restart() {
    let mut server = UpstreamServer::start().await;
    let target = spawn_http_target().await;
    let (client, metrics) = start(server.connect_url(), "rs", Arc::new(DialTcp)).await;
    get_ok(&server.client_url("rs", target, "before")).await;
    let cap = tunnel_config(String::new(), "rs").backoff.cap;

    // Every backoff the client announces, with how many connects had failed by then.
    let mut watch = client.watch_status();
    let waits_metrics = metrics.clone();
    let waits = tokio::spawn(async move {
        let mut waits = Vec::new();
        while watch.changed().await.is_ok() {
            let state = watch.borrow_and_update().state.clone();
            match state {
                ConnectionState::Backoff { retry_in } => {
                    waits.push((retry_in, waits_metrics.snapshot().connect_failures));
                }
                ConnectionState::Stopped => break,
                _ => {}
            }
        }
        waits
    });

    server.stop();
    wait_state(&client, |state| *state != ConnectionState::Connected).await;
    assert!(client.status().last_error.is_some());
    // Down long enough that an uncapped backoff (50 ms doubling: 3.2 s ceiling after 6 failed
    // connects) would be allowed waits well past the cap.
    const FAILURES: u64 = 6;
    eventually(Duration::from_secs(60), "connects failing", || async {
        (metrics.snapshot().connect_failures >= FAILURES).then_some(())
    })
    .await;
    server.restart().await;
    // The server listens again: an attempt already under way may still fail, the next succeeds.
    let failures_at_restart = metrics.snapshot().connect_failures;
    wait_state(&client, |state| *state == ConnectionState::Connected).await;
    let failures_after_restart = metrics.snapshot().connect_failures - failures_at_restart;
    assert!(
        failures_after_restart <= 1,
        "{failures_after_restart} connects failed after the server was back"
    );
    assert_eq!(
        get_ok(&server.client_url("rs", target, "after")).await,
        "/after"
    );
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.sessions_established, 2);
    assert!(snapshot.reconnects >= FAILURES);
    client.shutdown().await;

    let waits = waits.await.expect("status watcher");
    assert!(
        waits.iter().any(|(_, failures)| *failures >= FAILURES - 1),
        "the client announced no backoff after many failures: {waits:?}"
    );
    assert!(
        waits.iter().all(|(retry_in, _)| *retry_in <= cap),
        "a backoff beyond the {cap:?} cap: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_makes_the_server_drop_the_session() {
    let server = UpstreamServer::start().await;
    let target = spawn_http_target().await;
    let (client, metrics) = start(server.connect_url(), "sd", Arc::new(DialTcp)).await;
    let url = server.client_url("sd", target, "x");
    get_ok(&url).await;

    let status = client.shutdown().await;
    assert_eq!(status.state, ConnectionState::Stopped);
    assert_eq!(metrics.snapshot().sessions_active, 0);
    // The upstream server program answers 500 with the dial error when it has no session for the
    // client; any other answer (a 500 from a stream torn down mid-request, say) is retried.
    let http = http();
    eventually(
        Duration::from_secs(5),
        "server dropped the session",
        || async {
            let response = http.get(&url).send().await.ok()?;
            if response.status() != 500 {
                return None;
            }
            let body = response.text().await.ok()?;
            body.contains("failed to find Session for client sd")
                .then_some(())
        },
    )
    .await;
}

/// A dropped session is cut like a dead network path: the upstream server forgets it, the client
/// reports why and connects a new session by itself, and requests flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_is_replaced_by_a_new_one() {
    let server = UpstreamServer::start().await;
    let target = spawn_http_target().await;
    let (client, metrics) = start(server.connect_url(), "dr", Arc::new(DialTcp)).await;
    get_ok(&server.client_url("dr", target, "before")).await;

    let mut status = client.watch_status();
    status.borrow_and_update();
    client.drop_session();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.last_error == Some(remotedialer::SessionError::Dropped)),
    )
    .await
    .expect("drop reported in time")
    .expect("client alive");
    wait_state(&client, |state| *state == ConnectionState::Connected).await;
    assert_eq!(
        get_ok(&server.client_url("dr", target, "after")).await,
        "/after"
    );
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.sessions_established, 2);
    assert_eq!(snapshot.sessions_active, 1);
    client.shutdown().await;
}
