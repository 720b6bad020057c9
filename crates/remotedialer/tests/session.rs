//! Session behaviour against a scripted server written with tokio-tungstenite, for the cases
//! the upstream server cannot be made to produce on demand: Pause from the server, malformed
//! frames, missing pongs, rejected upgrades, SyncConnections contents, buffer overflow.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remotedialer::codec::{decode, encode, Message, Payload};
use remotedialer::{
    spawn_client, Backoff, ClientConfig, ClientHandle, ConnectionState, FlowControl,
    InProcessHandler, Keepalive, Metrics, Route, SessionError,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(10);

struct FakeServer {
    listener: TcpListener,
}

struct FakeSession {
    websocket: WebSocketStream<TcpStream>,
    headers: Vec<(String, String)>,
    next_id: i64,
}

// tungstenite's handshake callback signature fixes the large `Err` type.
#[allow(clippy::result_large_err)]
impl FakeServer {
    async fn start() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    fn url(&self) -> String {
        format!(
            "ws://{}/v3/connect",
            self.listener.local_addr().expect("addr")
        )
    }

    async fn accept(&self) -> FakeSession {
        let (socket, _) = tokio::time::timeout(LIMIT, self.listener.accept())
            .await
            .expect("client connected in time")
            .expect("accept");
        let headers = Arc::new(Mutex::new(Vec::new()));
        let seen = headers.clone();
        let websocket = tokio_tungstenite::accept_hdr_async(
            socket,
            move |request: &Request, response: Response| {
                let mut seen = seen.lock().expect("headers lock");
                for (name, value) in request.headers() {
                    seen.push((
                        name.as_str().to_owned(),
                        value.to_str().unwrap_or_default().to_owned(),
                    ));
                }
                Ok(response)
            },
        )
        .await
        .expect("upgrade");
        let headers = headers.lock().expect("headers lock").clone();
        FakeSession {
            websocket,
            headers,
            next_id: 1000,
        }
    }

    /// Answers the next upgrade with `status` and `body`.
    async fn reject(&self, status: u16, body: &str) {
        let (socket, _) = tokio::time::timeout(LIMIT, self.listener.accept())
            .await
            .expect("client connected in time")
            .expect("accept");
        let body = body.to_owned();
        let _ = tokio_tungstenite::accept_hdr_async(socket, move |_: &Request, _: Response| {
            let mut response = ErrorResponse::new(Some(body.clone()));
            *response.status_mut() = status.try_into().expect("status");
            Err(response)
        })
        .await;
    }
}

impl FakeSession {
    async fn send(&mut self, conn_id: i64, payload: Payload) {
        self.next_id += 1;
        let frame = encode(&Message {
            id: self.next_id,
            conn_id,
            payload,
        });
        self.websocket
            .send(WsMessage::Binary(frame))
            .await
            .expect("send frame");
    }

    async fn send_raw(&mut self, message: WsMessage) {
        self.websocket.send(message).await.expect("send raw");
    }

    /// The next remotedialer message from the client, skipping pings.
    async fn next(&mut self) -> Message {
        loop {
            let item = tokio::time::timeout(LIMIT, self.websocket.next())
                .await
                .expect("client sent something in time")
                .expect("websocket open")
                .expect("websocket ok");
            match item {
                WsMessage::Binary(frame) => return decode(frame).expect("client frame decodes"),
                WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                other => panic!("unexpected websocket message {other:?}"),
            }
        }
    }

    /// Skips messages until one satisfies `wanted`.
    async fn next_matching(&mut self, wanted: impl Fn(&Message) -> bool) -> Message {
        loop {
            let message = self.next().await;
            if wanted(&message) {
                return message;
            }
        }
    }
}

fn config(url: String) -> ClientConfig {
    let mut config = ClientConfig::new(url).header("X-API-Tunnel-Token", "token-value");
    config.backoff = Backoff {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
    };
    config.keepalive = Keepalive {
        ping_interval: Duration::from_millis(50),
        pong_timeout: Duration::from_secs(10),
        sync_interval: Duration::from_millis(100),
        write_timeout: Duration::from_secs(10),
    };
    config
}

/// Handler that echoes everything back.
fn echo() -> Route {
    Route::Handle(InProcessHandler::new(|stream| async move {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    }))
}

fn data(message: &Message, conn_id: i64) -> Option<Bytes> {
    match &message.payload {
        Payload::Data(bytes) if message.conn_id == conn_id => Some(bytes.clone()),
        _ => None,
    }
}

async fn wait_for_error(handle: &ClientHandle, wanted: fn(&SessionError) -> bool) -> SessionError {
    let mut status = handle.watch_status();
    let status = tokio::time::timeout(
        LIMIT,
        status.wait_for(|status| status.last_error.as_ref().is_some_and(wanted)),
    )
    .await
    .expect("error reported in time")
    .expect("client alive");
    status.last_error.clone().expect("error present")
}

#[tokio::test]
async fn sends_headers_and_lists_every_live_stream_in_sync_connections() {
    let server = FakeServer::start().await;
    let router = Arc::new(|_: &remotedialer::ConnectRequest| {
        // Never finishes: the stream stays live (like one still dialing) until closed.
        Route::Handle(InProcessHandler::new(|stream| async move {
            let _held = stream;
            std::future::pending::<()>().await
        }))
    });
    let client = spawn_client(config(server.url()), router, Arc::new(Metrics::new()));
    let mut session = server.accept().await;
    assert!(session
        .headers
        .contains(&("x-api-tunnel-token".into(), "token-value".into())));

    session
        .send(
            2,
            Payload::Connect {
                proto: "tcp".into(),
                address: "a:1".into(),
            },
        )
        .await;
    session
        .send(
            4,
            Payload::Connect {
                proto: "tcp".into(),
                address: "b:2".into(),
            },
        )
        .await;
    session
        .next_matching(|m| m.payload == Payload::SyncConnections(vec![2, 4]))
        .await;
    session.send(2, Payload::Error("EOF".into())).await;
    session
        .next_matching(|m| m.payload == Payload::SyncConnections(vec![4]))
        .await;
    client.shutdown().await;
}

#[tokio::test]
async fn pause_from_server_holds_only_that_stream_until_resume() {
    let server = FakeServer::start().await;
    let client = spawn_client(
        config(server.url()),
        Arc::new(|_: &_| echo()),
        Arc::new(Metrics::new()),
    );
    let mut session = server.accept().await;
    for conn_id in [2, 4] {
        session
            .send(
                conn_id,
                Payload::Connect {
                    proto: "tcp".into(),
                    address: "echo:1".into(),
                },
            )
            .await;
    }
    session.send(2, Payload::Pause).await;
    session
        .send(2, Payload::Data(Bytes::from_static(b"held")))
        .await;
    session
        .send(4, Payload::Data(Bytes::from_static(b"free")))
        .await;
    let first = session
        .next_matching(|m| matches!(m.payload, Payload::Data(_)))
        .await;
    assert_eq!(data(&first, 4).as_deref(), Some(&b"free"[..]), "{first:?}");
    session.send(2, Payload::Resume).await;
    let second = session
        .next_matching(|m| matches!(m.payload, Payload::Data(_)))
        .await;
    assert_eq!(
        data(&second, 2).as_deref(),
        Some(&b"held"[..]),
        "{second:?}"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn local_close_sends_eof_after_data_and_server_error_closes_target() {
    let server = FakeServer::start().await;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let router = Arc::new(move |request: &remotedialer::ConnectRequest| {
        if request.address == "speaker:1" {
            Route::Handle(InProcessHandler::new(|mut stream| async move {
                let _ = stream.write_all(b"hi").await;
            }))
        } else {
            let closed_tx = closed_tx.clone();
            Route::Handle(InProcessHandler::new(move |mut stream| {
                let closed_tx = closed_tx.clone();
                async move {
                    let mut received = Vec::new();
                    let _ = stream.read_to_end(&mut received).await;
                    if let Some(sender) = closed_tx.lock().expect("lock").take() {
                        let _ = sender.send(received);
                    }
                }
            }))
        }
    });
    let client = spawn_client(config(server.url()), router, Arc::new(Metrics::new()));
    let mut session = server.accept().await;

    session
        .send(
            2,
            Payload::Connect {
                proto: "tcp".into(),
                address: "speaker:1".into(),
            },
        )
        .await;
    let said = session.next_matching(|m| m.conn_id == 2).await;
    assert_eq!(data(&said, 2).as_deref(), Some(&b"hi"[..]));
    let closed = session.next_matching(|m| m.conn_id == 2).await;
    assert_eq!(closed.payload, Payload::Error("EOF".into()));

    session
        .send(
            4,
            Payload::Connect {
                proto: "tcp".into(),
                address: "listener:1".into(),
            },
        )
        .await;
    session
        .send(4, Payload::Data(Bytes::from_static(b"last words")))
        .await;
    session.send(4, Payload::Error("EOF".into())).await;
    let received = tokio::time::timeout(LIMIT, closed_rx)
        .await
        .expect("target closed in time")
        .expect("handler reported");
    assert_eq!(
        received, b"last words",
        "buffered data is delivered before the close"
    );
    client.shutdown().await;
}

#[tokio::test]
async fn data_for_unknown_stream_gets_error_and_session_survives() {
    let server = FakeServer::start().await;
    let metrics = Arc::new(Metrics::new());
    let client = spawn_client(
        config(server.url()),
        Arc::new(|_: &_| echo()),
        metrics.clone(),
    );
    let mut session = server.accept().await;
    session
        .send(9, Payload::Data(Bytes::from_static(b"?")))
        .await;
    let reply = session.next_matching(|m| m.conn_id == 9).await;
    assert!(
        matches!(&reply.payload, Payload::Error(text) if text.starts_with("connection not found")),
        "{reply:?}"
    );
    // Unknown types and peer bookkeeping are ignored, not fatal.
    session
        .send(
            0,
            Payload::Unknown {
                type_code: 42,
                body: Bytes::from_static(b"x"),
            },
        )
        .await;
    session.send(0, Payload::AddClient("a/1".into())).await;
    session
        .send(
            2,
            Payload::Connect {
                proto: "tcp".into(),
                address: "echo:1".into(),
            },
        )
        .await;
    session
        .send(2, Payload::Data(Bytes::from_static(b"ok")))
        .await;
    let echoed = session.next_matching(|m| data(m, 2).is_some()).await;
    assert_eq!(data(&echoed, 2).as_deref(), Some(&b"ok"[..]));
    assert_eq!(metrics.snapshot().sessions_established, 1);
    client.shutdown().await;
}

#[tokio::test]
async fn malformed_and_text_frames_end_the_session_and_the_client_reconnects() {
    let server = FakeServer::start().await;
    let metrics = Arc::new(Metrics::new());
    let client = spawn_client(
        config(server.url()),
        Arc::new(|_: &_| echo()),
        metrics.clone(),
    );

    let mut first = server.accept().await;
    first
        .send_raw(WsMessage::Binary(Bytes::from_static(&[
            0x02, 0x04, 0x04, 0xb0, 0xea, 0x01, b'x',
        ])))
        .await;
    let error = wait_for_error(&client, |e| matches!(e, SessionError::Protocol(_))).await;
    assert!(error.to_string().contains("'/'"), "{error}");

    let mut second = server.accept().await;
    second.send_raw(WsMessage::text("hello")).await;
    wait_for_error(&client, |e| *e == SessionError::TextFrame).await;

    let _third = server.accept().await;
    let mut status = client.watch_status();
    tokio::time::timeout(LIMIT, status.wait_for(|s| s.sessions_established >= 3))
        .await
        .expect("third session in time")
        .expect("client alive");
    assert_eq!(metrics.snapshot().protocol_errors, 1);
    client.shutdown().await;
}

#[tokio::test]
async fn missing_pong_drops_the_session() {
    let server = FakeServer::start().await;
    let mut config = config(server.url());
    config.keepalive.pong_timeout = Duration::from_millis(300);
    let client = spawn_client(config, Arc::new(|_: &_| echo()), Arc::new(Metrics::new()));
    // Never read: tungstenite only answers pings while reading.
    let _silent = server.accept().await;
    wait_for_error(&client, |e| matches!(e, SessionError::PongTimeout(_))).await;
    let _next = server.accept().await;
    client.shutdown().await;
}

#[tokio::test]
async fn rejected_upgrade_reports_status_and_body_and_give_up_stops_the_client() {
    let server = FakeServer::start().await;
    let mut config = config(server.url());
    config.give_up = Some(Arc::new(SessionError::is_rejection));
    let client = spawn_client(config, Arc::new(|_: &_| echo()), Arc::new(Metrics::new()));
    server.reject(400, "cluster not found").await;
    let status = tokio::time::timeout(LIMIT, client.wait())
        .await
        .expect("client gave up in time");
    assert_eq!(status.state, ConnectionState::Stopped);
    assert_eq!(
        status.last_error,
        Some(SessionError::Rejected {
            status: 400,
            body: "cluster not found".into()
        })
    );
}

#[tokio::test]
async fn slow_target_makes_us_pause_and_resume_and_overflow_closes_only_that_stream() {
    let server = FakeServer::start().await;
    let (start_reading, reading_allowed) = tokio::sync::watch::channel(false);
    let router = Arc::new(move |request: &remotedialer::ConnectRequest| {
        if request.address == "slow:1" {
            let reading_allowed = reading_allowed.clone();
            Route::Handle(InProcessHandler::new(move |mut stream| {
                let mut reading_allowed = reading_allowed.clone();
                async move {
                    let _ = reading_allowed.wait_for(|allowed| *allowed).await;
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                }
            }))
        } else {
            Route::Handle(InProcessHandler::new(|stream| async move {
                let _held = stream;
                std::future::pending::<()>().await
            }))
        }
    });
    let mut config = config(server.url());
    config.flow = FlowControl {
        pause_above: 256 << 10,
        resume_below: 32 << 10,
        overflow_limit: 1 << 20,
        ..FlowControl::default()
    };
    let metrics = Arc::new(Metrics::new());
    let client = spawn_client(config, router, metrics.clone());
    let mut session = server.accept().await;
    let chunk = Bytes::from(vec![7u8; 64 << 10]);

    session
        .send(
            2,
            Payload::Connect {
                proto: "tcp".into(),
                address: "slow:1".into(),
            },
        )
        .await;
    for _ in 0..8 {
        session.send(2, Payload::Data(chunk.clone())).await;
    }
    session
        .next_matching(|m| m.conn_id == 2 && m.payload == Payload::Pause)
        .await;
    start_reading.send_replace(true);
    session
        .next_matching(|m| m.conn_id == 2 && m.payload == Payload::Resume)
        .await;

    // A server that ignores Pause: the stream is closed, the session is not.
    session
        .send(
            6,
            Payload::Connect {
                proto: "tcp".into(),
                address: "never-reads:1".into(),
            },
        )
        .await;
    let never_reads = Bytes::from(vec![1u8; 256 << 10]);
    for _ in 0..6 {
        session.send(6, Payload::Data(never_reads.clone())).await;
    }
    let closed = session
        .next_matching(|m| m.conn_id == 6 && matches!(m.payload, Payload::Error(_)))
        .await;
    assert_eq!(
        closed.payload,
        Payload::Error("receive buffer overflow".into())
    );
    assert_eq!(metrics.snapshot().sessions_established, 1);
    assert!(metrics.snapshot().pauses_sent >= 1);
    client.shutdown().await;
}
