//! What a misbehaving server can make one session hold: too many streams, in-process streams
//! left idle, and Data floods that ignore Pause. Each test drives a scripted server (see
//! `support::fake_server`) and checks the frames the client sends back and the targets' side.
//! This is its own test binary so the flood's peak-memory figure is this process's alone.

mod support;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remotedialer::codec::{decode, encode, Message, Payload};
use remotedialer::{spawn_client, ConnectRequest, FlowControl, InProcessHandler, Metrics, Route};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake_server::{config, data, echo, FakeServer, LIMIT};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn connect(address: &str) -> Payload {
    Payload::Connect {
        proto: "tcp".into(),
        address: address.into(),
    }
}

fn error_text(message: &Message, conn_id: i64) -> Option<String> {
    match &message.payload {
        Payload::Error(text) if message.conn_id == conn_id => Some(text.clone()),
        _ => None,
    }
}

/// A TCP target that echoes every connection.
async fn spawn_echo_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let address = listener.local_addr().expect("target addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut reader, mut writer) = socket.into_split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn connects_beyond_the_limit_get_an_error_on_that_stream_only() {
    let server = FakeServer::start().await;
    let mut config = config(server.url());
    config.streams.max_streams = 2;
    let metrics = Arc::new(Metrics::new());
    let client = spawn_client(config, Arc::new(|_: &_| echo()), metrics.clone());
    let mut session = server.accept().await;

    session.send(2, connect("echo:1")).await;
    session.send(4, connect("echo:1")).await;
    session.send(6, connect("echo:1")).await;
    let refused = session.next_matching(|m| m.conn_id == 6).await;
    let text = error_text(&refused, 6).unwrap_or_else(|| panic!("{refused:?}"));
    assert!(text.contains("too many streams"), "{text}");

    // The streams opened before the refusal still carry data both ways.
    for conn_id in [2, 4] {
        session
            .send(conn_id, Payload::Data(Bytes::from_static(b"still here")))
            .await;
        let echoed = session.next_matching(|m| data(m, conn_id).is_some()).await;
        assert_eq!(data(&echoed, conn_id).as_deref(), Some(&b"still here"[..]));
    }
    assert_eq!(metrics.snapshot().streams_refused, 1);

    // Closing one frees its slot for the next Connect.
    session.send(2, Payload::Error("EOF".into())).await;
    session.send(8, connect("echo:1")).await;
    session
        .send(8, Payload::Data(Bytes::from_static(b"new")))
        .await;
    let echoed = session
        .next_matching(|m| data(m, 8).is_some() || error_text(m, 8).is_some())
        .await;
    assert_eq!(data(&echoed, 8).as_deref(), Some(&b"new"[..]), "{echoed:?}");
    assert_eq!(metrics.snapshot().streams_refused, 1);
    assert_eq!(metrics.snapshot().sessions_established, 1);
    client.shutdown().await;
}

#[tokio::test]
async fn idle_in_process_stream_is_closed_but_active_and_dialed_ones_stay() {
    const IDLE: Duration = Duration::from_millis(400);
    let server = FakeServer::start().await;
    let target = spawn_echo_target().await;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let router = Arc::new(
        move |request: &ConnectRequest| match request.address.as_str() {
            "quiet:1" => {
                let closed_tx = closed_tx.clone();
                Route::Handle(InProcessHandler::new(move |mut stream| {
                    let closed_tx = closed_tx.clone();
                    async move {
                        // Returns once the session drops its end of the pipe.
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                        let _ = closed_tx.send(Instant::now());
                    }
                }))
            }
            "dialed:1" => Route::Dial(target.to_string()),
            _ => echo(),
        },
    );
    let mut config = config(server.url());
    config.streams.handler_idle_timeout = Some(IDLE);
    let metrics = Arc::new(Metrics::new());
    let client = spawn_client(config, router, metrics.clone());
    let mut session = server.accept().await;

    let opened = Instant::now();
    session.send(2, connect("quiet:1")).await;
    session.send(4, connect("busy:1")).await;
    session.send(6, connect("dialed:1")).await;
    session
        .send(6, Payload::Data(Bytes::from_static(b"hello")))
        .await;
    session.next_matching(|m| data(m, 6).is_some()).await;

    // Keep stream 4 busy for three idle periods; collect every Error meanwhile.
    let mut errors: HashMap<i64, (String, Duration)> = HashMap::new();
    while opened.elapsed() < IDLE * 3 {
        session
            .send(4, Payload::Data(Bytes::from_static(b"tick")))
            .await;
        loop {
            let message = session.next().await;
            if let Payload::Error(text) = &message.payload {
                errors.insert(message.conn_id, (text.clone(), opened.elapsed()));
            }
            if data(&message, 4).is_some() {
                break;
            }
        }
        tokio::time::sleep(IDLE / 8).await;
    }

    let (text, after) = errors
        .get(&2)
        .expect("the idle handler stream got an Error");
    assert!(text.starts_with("stream idle"), "{text}");
    assert!(
        *after >= IDLE,
        "closed after {after:?}, before the idle timeout"
    );
    let handler_saw_close = closed_rx
        .try_recv()
        .expect("the handler saw its pipe close");
    assert!(handler_saw_close.duration_since(opened) >= IDLE);
    assert!(
        !errors.contains_key(&4) && !errors.contains_key(&6),
        "only the idle in-process stream may be closed: {errors:?}"
    );
    // The dialed stream sat idle just as long and still works.
    session
        .send(6, Payload::Data(Bytes::from_static(b"later")))
        .await;
    let echoed = session
        .next_matching(|m| data(m, 6).is_some() || error_text(m, 6).is_some())
        .await;
    assert_eq!(
        data(&echoed, 6).as_deref(),
        Some(&b"later"[..]),
        "{echoed:?}"
    );
    assert_eq!(metrics.snapshot().streams_closed_idle, 1);
    client.shutdown().await;
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

#[tokio::test]
async fn a_flood_that_ignores_pause_stays_within_the_session_buffer_limit() {
    const STREAMS: i64 = 16;
    const FLOOD: usize = 128 << 20;
    const CHUNK: usize = 64 << 10;
    let server = FakeServer::start().await;
    // Handlers that never read: everything sent stays in the session's buffers.
    let router = Arc::new(|request: &ConnectRequest| {
        if request.address == "echo:1" {
            echo()
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
        resume_below: 64 << 10,
        overflow_limit: 4 << 20,
        session_buffer_limit: 8 << 20,
        ..FlowControl::default()
    };
    let metrics = Arc::new(Metrics::new());
    let client = spawn_client(config, router, metrics.clone());
    let session = server.accept().await;
    let (mut sink, mut frames) = session.websocket.split();

    // Read what the client sends while flooding, or its writer (and then its reader) stalls.
    let replies = Arc::new(Mutex::new(Vec::<Message>::new()));
    let collector = tokio::spawn({
        let replies = replies.clone();
        async move {
            while let Some(Ok(item)) = frames.next().await {
                if let WsMessage::Binary(frame) = item {
                    let message = decode(frame).expect("client frame decodes");
                    replies.lock().expect("replies lock").push(message);
                }
            }
        }
    });
    let mut next_id = 1;
    let mut frame = |conn_id: i64, payload: Payload| {
        next_id += 1;
        WsMessage::Binary(encode(&Message {
            id: next_id,
            conn_id,
            payload,
        }))
    };

    for stream in 1..=STREAMS {
        sink.send(frame(stream * 2, connect("never-reads:1")))
            .await
            .expect("send connect");
    }
    let baseline = peak_rss();
    let chunk = Bytes::from(vec![5u8; CHUNK]);
    let flooded = tokio::time::timeout(Duration::from_secs(120), async {
        for i in 0..FLOOD / CHUNK {
            let conn_id = (i as i64 % STREAMS + 1) * 2;
            sink.send(frame(conn_id, Payload::Data(chunk.clone())))
                .await
                .expect("send data");
        }
    })
    .await;
    assert!(flooded.is_ok(), "the flood was not absorbed in time");

    // The session survived: a new stream still echoes.
    sink.send(frame(100, connect("echo:1")))
        .await
        .expect("send connect");
    sink.send(frame(100, Payload::Data(Bytes::from_static(b"alive"))))
        .await
        .expect("send data");
    let started = Instant::now();
    loop {
        let echoed = replies
            .lock()
            .expect("replies lock")
            .iter()
            .any(|m| data(m, 100).as_deref() == Some(&b"alive"[..]));
        if echoed {
            break;
        }
        assert!(started.elapsed() < LIMIT, "no echo after the flood");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grown = peak_rss().saturating_sub(baseline);

    let replies = replies.lock().expect("replies lock").clone();
    let overflowed: Vec<i64> = replies
        .iter()
        .filter(|m| m.payload == Payload::Error("receive buffer overflow".into()))
        .map(|m| m.conn_id)
        .collect();
    assert!(!overflowed.is_empty(), "no stream was closed for overflow");
    assert!(
        overflowed.iter().all(|id| (2..=STREAMS * 2).contains(id)),
        "only flooded streams are closed: {overflowed:?}"
    );
    assert!(metrics.snapshot().buffer_overflows >= 1);
    assert_eq!(metrics.snapshot().sessions_established, 1);
    // 128 MiB went in; the session may hold 8 MiB plus a frame. The allowance covers the
    // frames in flight and allocator slack, and is below what the per-stream limits alone
    // would allow (16 streams x 4 MiB).
    eprintln!(
        "flood of {} MiB: peak RSS grew by {:.1} MiB",
        FLOOD >> 20,
        grown as f64 / f64::from(1 << 20)
    );
    assert!(
        grown < 40 << 20,
        "peak RSS grew by {grown} bytes during a {FLOOD}-byte flood"
    );
    collector.abort();
    client.shutdown().await;
}
