//! `wss://` with each TLS mode against a local server whose certificate chains to a private
//! CA.

use remotedialer::{
    spawn_client, ClientConfig, ClientHandle, ConnectionState, DialTcp, Metrics, SessionError,
    TlsMode,
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
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
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
async fn a_ca_bundle_given_as_pem_is_trusted_alone_or_with_the_webpki_roots() {
    let server = TlsServer::start().await;
    for also_webpki_roots in [false, true] {
        connects(client(
            &server,
            TlsMode::CaBundle {
                pem: server.ca_pem.clone(),
                also_webpki_roots,
            },
        ))
        .await;
    }
}

#[tokio::test]
async fn a_ca_bundle_of_another_ca_is_refused() {
    let server = TlsServer::start().await;
    let (other_ca, _) = server_config();
    fails_with_tls_error(
        client(
            &server,
            TlsMode::CaBundle {
                pem: other_ca,
                also_webpki_roots: true,
            },
        ),
        // The other CA has the same name, so the chain is tried and its signature fails.
        "invalid peer certificate",
    )
    .await;
}

#[tokio::test]
async fn a_bundle_without_certificates_is_a_clear_error() {
    let error = remotedialer::client_tls_config(&TlsMode::CaBundle {
        pem: "not a certificate".into(),
        also_webpki_roots: false,
    })
    .await
    .expect_err("refused");
    assert!(
        matches!(error, remotedialer::TlsError::EmptyBundle(_)),
        "{error}"
    );
}
