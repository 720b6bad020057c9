//! Session behaviour against a scripted server written with tokio-tungstenite, for the cases
//! the upstream server cannot be made to produce on demand: Pause from the server, malformed
//! frames, missing pongs, rejected upgrades, SyncConnections contents, buffer overflow.

mod support;

use bytes::Bytes;
use remotedialer::codec::Payload;
use remotedialer::{
    spawn_client, ConnectionState, FlowControl, InProcessHandler, Metrics, Route, SessionError,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::fake_server::{config, data, echo, wait_for_error, FakeServer, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

#[tokio::test]
async fn a_stream_open_past_the_threshold_counts_as_long_lived_until_it_ends() {
    let server = FakeServer::start().await;
    let router = Arc::new(|_: &remotedialer::ConnectRequest| {
        // A watch: held open until the server ends it.
        Route::Handle(InProcessHandler::new(|stream| async move {
            let _held = stream;
            std::future::pending::<()>().await
        }))
    });
    let metrics = Arc::new(Metrics::new());
    // The scripted server answers pings only while it reads; it reads nothing while the stream
    // ages, so the session must not be dropped for a missing pong meanwhile.
    let mut config = config(server.url());
    config.keepalive.pong_timeout = Duration::from_secs(120);
    let client = spawn_client(config, router, metrics.clone());
    let mut session = server.accept().await;
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
        .next_matching(|m| m.payload == Payload::SyncConnections(vec![2]))
        .await;
    let opened = std::time::Instant::now();
    assert_eq!(metrics.snapshot().streams_long_lived, 0, "not yet");
    let limit = remotedialer::LONG_LIVED_AFTER + Duration::from_secs(10);
    support::eventually(limit, "the stream to count as long-lived", || async {
        (metrics.snapshot().streams_long_lived == 1).then_some(())
    })
    .await;
    assert!(opened.elapsed() >= remotedialer::LONG_LIVED_AFTER - Duration::from_secs(1));
    session.send(2, Payload::Error("EOF".into())).await;
    support::eventually(Duration::from_secs(10), "the gauge to drop", || async {
        (metrics.snapshot().streams_long_lived == 0).then_some(())
    })
    .await;
    client.shutdown().await;
}
