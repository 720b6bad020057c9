//! `wss://` with each TLS mode against a local server whose certificate chains to a private
//! CA; the server also answers `/v3/settings/cacerts` like Rancher for checksum pinning. A plain
//! HTTP server with an oversized `cacerts` answer checks the cap on what is read.

use remotedialer::tls::CACERTS_BODY_LIMIT;
use remotedialer::{
    ca_checksum, fetch_pinned_ca, spawn_client, ClientConfig, ClientHandle, ConnectionState,
    DialTcp, Metrics, SessionError, TlsError, TlsMode,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(10);

struct TlsServer {
    address: SocketAddr,
    ca_pem: String,
}

fn server_config() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "remotedialer test ca");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca cert");
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(server_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
    )
    .expect("server config");
    (ca.pem(), Arc::new(config))
}

impl TlsServer {
    async fn start() -> Self {
        let (ca_pem, config) = server_config();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr");
        let cacerts = serde_json::json!({ "value": ca_pem.trim_end() }).to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let cacerts = cacerts.clone();
                tokio::spawn(async move {
                    let Ok(mut stream) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    if head.starts_with("GET /v3/settings/cacerts ") {
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{cacerts}",
                            cacerts.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    let key = head
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("sec-websocket-key")
                                .then(|| value.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let response = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        derive_accept_key(key.as_bytes())
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut websocket =
                        WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
                    // Reading answers the client's pings; stop when it goes away.
                    while let Some(Ok(_)) = futures::StreamExt::next(&mut websocket).await {}
                });
            }
        });
        Self { address, ca_pem }
    }

    fn url(&self) -> String {
        format!("wss://{}/v3/connect", self.address)
    }
}

fn client(server: &TlsServer, tls: TlsMode) -> ClientHandle {
    let mut config = ClientConfig::new(server.url());
    config.tls = tls;
    spawn_client(config, Arc::new(DialTcp), Arc::new(Metrics::new()))
}

async fn connects(handle: ClientHandle) {
    let mut status = handle.watch_status();
    let reached = tokio::time::timeout(
        LIMIT,
        status.wait_for(|status| status.state == ConnectionState::Connected),
    )
    .await
    // Release the watch borrow before anything else touches the status.
    .is_ok_and(|result| result.is_ok());
    let last_error = handle.status().last_error;
    assert!(reached, "not connected; last error {last_error:?}");
    handle.shutdown().await;
}

async fn fails_with_tls_error(handle: ClientHandle, needle: &str) {
    let mut status = handle.watch_status();
    let status = tokio::time::timeout(LIMIT, status.wait_for(|status| status.last_error.is_some()))
        .await
        .expect("error in time")
        .expect("client alive")
        .clone();
    match status.last_error {
        Some(SessionError::Tls(text)) => assert!(text.contains(needle), "{text}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert_eq!(status.sessions_established, 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn ca_bundle_file_is_trusted() {
    let server = TlsServer::start().await;
    let bundle = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(bundle.path(), &server.ca_pem).expect("write bundle");
    connects(client(&server, TlsMode::CaBundleFile(bundle.path().into()))).await;
}

#[tokio::test]
async fn default_roots_reject_a_private_ca() {
    let server = TlsServer::start().await;
    fails_with_tls_error(client(&server, TlsMode::WebpkiRoots), "UnknownIssuer").await;
}

#[tokio::test]
async fn skipping_verification_is_explicit_and_works() {
    let server = TlsServer::start().await;
    connects(client(&server, TlsMode::InsecureSkipVerify)).await;
}

#[tokio::test]
async fn ca_checksum_pins_the_fetched_ca_in_strict_mode() {
    let server = TlsServer::start().await;
    let checksum = ca_checksum(server.ca_pem.trim_end());
    connects(client(
        &server,
        TlsMode::CaChecksum {
            checksum,
            strict: true,
        },
    ))
    .await;
}

#[tokio::test]
async fn ca_checksum_mismatch_refuses_to_connect() {
    let server = TlsServer::start().await;
    fails_with_tls_error(
        client(
            &server,
            TlsMode::CaChecksum {
                checksum: "00".repeat(32),
                strict: false,
            },
        ),
        "checksum mismatch",
    )
    .await;
}

/// A plain-HTTP server that answers every request with `head` and then `body_bytes` of a
/// JSON-looking body (endless when `None`), counting what it managed to send.
async fn spawn_oversized_cacerts(
    head: &'static str,
    body_bytes: Option<u64>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                if socket.write_all(head.as_bytes()).await.is_err()
                    || socket.write_all(b"{\"value\":\"").await.is_err()
                {
                    return;
                }
                let block = vec![b'A'; 64 << 10];
                let mut left = body_bytes.unwrap_or(u64::MAX);
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    if socket.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    left -= n as u64;
                }
            });
        }
    });
    (address, sent)
}

#[tokio::test]
async fn an_endless_cacerts_answer_is_cut_off_at_the_limit() {
    let (address, sent) = spawn_oversized_cacerts(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        None,
    )
    .await;
    let result = tokio::time::timeout(
        LIMIT,
        fetch_pinned_ca(&format!("http://{address}"), &"00".repeat(32)),
    )
    .await
    .expect("gave up in time");
    match result {
        Err(error @ TlsError::TooLarge { limit, .. }) => {
            assert_eq!(limit, CACERTS_BODY_LIMIT);
            assert!(
                error.to_string().contains("larger than 1048576 bytes"),
                "{error}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The server was stopped by the client closing, not by a body read to its end.
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 64 << 20, "the client read {sent} bytes");
}

#[tokio::test]
async fn a_declared_oversized_cacerts_answer_is_refused_unread() {
    let (address, _) = spawn_oversized_cacerts(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
        Some(4 << 20),
    )
    .await;
    let result = fetch_pinned_ca(&format!("http://{address}"), &"00".repeat(32)).await;
    assert!(
        matches!(result, Err(TlsError::TooLarge { .. })),
        "{result:?}"
    );
}
