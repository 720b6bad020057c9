//! A scripted remotedialer server written with tokio-tungstenite, for the cases the upstream
//! server cannot be made to produce on demand (Pause, malformed frames, floods, ...).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use remotedialer::codec::{decode, encode, Message, Payload};
use remotedialer::{
    Backoff, ClientConfig, ClientHandle, InProcessHandler, Keepalive, Route, SessionError,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

pub const LIMIT: Duration = Duration::from_secs(10);

pub struct FakeServer {
    listener: TcpListener,
}

pub struct FakeSession {
    pub websocket: WebSocketStream<TcpStream>,
    pub headers: Vec<(String, String)>,
    next_id: i64,
}

// tungstenite's handshake callback signature fixes the large `Err` type.
#[allow(clippy::result_large_err)]
impl FakeServer {
    pub async fn start() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    pub fn url(&self) -> String {
        format!(
            "ws://{}/v3/connect",
            self.listener.local_addr().expect("addr")
        )
    }

    pub async fn accept(&self) -> FakeSession {
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
    pub async fn reject(&self, status: u16, body: &str) {
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
    pub async fn send(&mut self, conn_id: i64, payload: Payload) {
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

    pub async fn send_raw(&mut self, message: WsMessage) {
        self.websocket.send(message).await.expect("send raw");
    }

    /// The next remotedialer message from the client, skipping pings.
    pub async fn next(&mut self) -> Message {
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
    pub async fn next_matching(&mut self, wanted: impl Fn(&Message) -> bool) -> Message {
        loop {
            let message = self.next().await;
            if wanted(&message) {
                return message;
            }
        }
    }
}

pub fn config(url: String) -> ClientConfig {
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
pub fn echo() -> Route {
    Route::Handle(InProcessHandler::new(|stream| async move {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    }))
}

pub fn data(message: &Message, conn_id: i64) -> Option<Bytes> {
    match &message.payload {
        Payload::Data(bytes) if message.conn_id == conn_id => Some(bytes.clone()),
        _ => None,
    }
}

pub async fn wait_for_error(
    handle: &ClientHandle,
    wanted: fn(&SessionError) -> bool,
) -> SessionError {
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
