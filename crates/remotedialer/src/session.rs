//! One connected session: the websocket reader, the single frame writer, keepalive and
//! SyncConnections timers, and the table of live streams with the tasks that splice them.
//!
//! All websocket writes go through one bounded queue drained by one writer, so frames never
//! interleave and a stalled socket applies back-pressure instead of growing memory. The reader
//! never waits on a stream: Data is appended to that stream's buffer (see [`crate::stream`]).
//!
//! What one server can make a session hold is bounded by [`StreamLimits`]: at most
//! `max_streams` open streams (a Connect beyond that gets an Error for that id only), and
//! in-process streams that see no traffic for `handler_idle_timeout` are closed. Buffered bytes
//! are bounded per stream and per session by [`FlowControl`].

use crate::codec::{self, Message, Payload, MAX_HEADER_LEN};
use crate::error::SessionError;
use crate::metrics::{self, GaugeGuard, Metrics};
use crate::router::{ConnectRequest, Route, Router};
use crate::stream::{FlowControl, Inbound, OfferOutcome, RemoteEnd, StreamShared};
use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Keepalive and write-stall timers. Upstream fixes these at 5 s / 60 s / 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// How often to send a websocket Ping.
    pub ping_interval: Duration,
    /// Drop the session when nothing (Pong or Ping) came back for this long.
    pub pong_timeout: Duration,
    /// How often to send SyncConnections listing every live stream.
    pub sync_interval: Duration,
    /// Drop the session when writing one frame takes longer than this.
    pub write_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(60),
            sync_interval: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// How many streams one session may hold, and how long an in-process stream may sit idle.
///
/// Upstream sets neither: every Connect spawns a dial and a pipe, and handler streams live
/// until the server closes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams open at once per session (including ones still dialing). A Connect beyond this
    /// is answered with an Error for its id only; the session and other streams go on.
    pub max_streams: usize,
    /// Close a [`Route::Handle`] stream after this long without a byte either way, with an
    /// Error so the server knows. `None` never closes. Dialed streams are never idle-closed:
    /// a watch through the tunnel is legitimately quiet for a long time.
    pub handler_idle_timeout: Option<Duration>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            // Rancher keeps about a dozen watches open through a cluster's tunnel, plus
            // short-lived requests and UI subscriptions: far more than that still fits.
            max_streams: 1024,
            handler_idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// Frames waiting for the writer. Small, so thousands of idle queues cost little.
const OUTGOING_QUEUE: usize = 64;

/// Payloads read from a target below this size are copied into an exact-size frame so a
/// short response does not pin a whole read buffer while it waits in the queue.
const COPY_BELOW: usize = 4096;
/// First read of a stream's target: small, so waiting streams hold little memory.
const IDLE_READ: usize = 512;

enum Outgoing {
    Frame(Bytes),
    Ping,
}

/// How a spliced stream ended, which decides whether we owe the server an Error.
enum StreamEnd {
    /// The server closed it (or the session is going away): send nothing.
    Remote,
    /// The target closed cleanly: send `Error(EOF)`.
    LocalEof,
    /// Reading or writing the target failed: send the error text.
    LocalError(String),
    /// No traffic either way for this long: send an Error saying so.
    Idle(Duration),
}

struct SessionShared {
    streams: Mutex<HashMap<i64, Arc<StreamShared>>>,
    outgoing: mpsc::Sender<Outgoing>,
    router: Arc<dyn Router>,
    flow: FlowControl,
    limits: StreamLimits,
    /// Bytes buffered for targets by all streams together (see [`crate::stream`]).
    buffered: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
}

/// Runs one session until the server goes away, a keepalive or protocol error occurs, or
/// `shutdown` is cancelled (then it returns `Ok` after closing the websocket politely).
/// Every stream of the session is closed before this returns.
pub(crate) async fn run_session<S>(
    websocket: WebSocketStream<S>,
    router: Arc<dyn Router>,
    keepalive: Keepalive,
    flow: FlowControl,
    limits: StreamLimits,
    metrics: Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut frames) = websocket.split();
    let (outgoing, mut queue) = mpsc::channel(OUTGOING_QUEUE);
    let closing = CancellationToken::new();
    let _close_streams_on_exit = closing.clone().drop_guard();
    let session = Arc::new(SessionShared {
        streams: Mutex::new(HashMap::new()),
        outgoing,
        router,
        flow,
        limits,
        buffered: Arc::new(AtomicUsize::new(0)),
        metrics,
        closing,
    });
    let started = Instant::now();
    let last_heard_ms = AtomicU64::new(0);
    let heard = || last_heard_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);

    let outcome = {
        let reader = async {
            while let Some(item) = frames.next().await {
                match item.map_err(|error| SessionError::WebSocket(error.to_string()))? {
                    WsMessage::Binary(frame) => session.handle_frame(frame).await?,
                    WsMessage::Text(_) => return Err(SessionError::TextFrame),
                    // The Go client also treats a Ping from the server as proof of life.
                    WsMessage::Ping(_) | WsMessage::Pong(_) => heard(),
                    WsMessage::Close(_) => return Err(SessionError::ClosedByServer),
                    WsMessage::Frame(_) => {}
                }
            }
            Err(SessionError::ClosedByServer)
        };
        let writer = async {
            while let Some(item) = queue.recv().await {
                let message = match item {
                    Outgoing::Frame(frame) => WsMessage::Binary(frame),
                    Outgoing::Ping => WsMessage::Ping(Bytes::new()),
                };
                write_within(keepalive.write_timeout, sink.feed(message)).await?;
                // Batch whatever is already queued into one flush.
                if queue.is_empty() {
                    write_within(keepalive.write_timeout, sink.flush()).await?;
                }
            }
            Ok(())
        };
        let timers = async {
            let start = tokio::time::Instant::now();
            let mut ping =
                tokio::time::interval_at(start + keepalive.ping_interval, keepalive.ping_interval);
            let mut sync =
                tokio::time::interval_at(start + keepalive.sync_interval, keepalive.sync_interval);
            loop {
                tokio::select! {
                    _ = ping.tick() => {
                        let silent_ms = (started.elapsed().as_millis() as u64)
                            .saturating_sub(last_heard_ms.load(Ordering::Relaxed));
                        if Duration::from_millis(silent_ms) > keepalive.pong_timeout {
                            return Err(SessionError::PongTimeout(keepalive.pong_timeout));
                        }
                        session.enqueue(Outgoing::Ping).await;
                    }
                    _ = sync.tick() => {
                        let frame = codec::encode(&Message {
                            id: codec::next_message_id(),
                            conn_id: 0,
                            payload: Payload::SyncConnections(session.live_stream_ids()),
                        });
                        session.enqueue(Outgoing::Frame(frame)).await;
                    }
                }
            }
        };
        tokio::select! {
            result = reader => result,
            result = writer => result,
            result = timers => result,
            _ = shutdown.cancelled() => Ok(()),
        }
    };

    session.close_all_streams();
    if outcome.is_ok() {
        // Tell the server right away rather than letting it notice a dead socket later.
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    outcome
}

async fn write_within<F>(limit: Duration, write: F) -> Result<(), SessionError>
where
    F: std::future::Future<Output = Result<(), tokio_tungstenite::tungstenite::Error>>,
{
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(SessionError::WebSocket(error.to_string())),
        Err(_) => Err(SessionError::WriteStalled(limit)),
    }
}

impl SessionShared {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<StreamShared>>> {
        // Critical sections are single map operations; a poisoned map is still consistent.
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn enqueue(&self, item: Outgoing) {
        // Fails only when the writer is gone, i.e. the session is ending anyway.
        let _ = self.outgoing.send(item).await;
    }

    async fn send(&self, conn_id: i64, payload: Payload) {
        let frame = codec::encode(&Message {
            id: codec::next_message_id(),
            conn_id,
            payload,
        });
        self.enqueue(Outgoing::Frame(frame)).await;
    }

    fn live_stream_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.table().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn lookup(&self, conn_id: i64) -> Option<Arc<StreamShared>> {
        self.table().get(&conn_id).cloned()
    }

    /// Removes `stream` from the table unless a newer Connect reused its id.
    fn forget(&self, stream: &Arc<StreamShared>) {
        let mut table = self.table();
        if table
            .get(&stream.conn_id)
            .is_some_and(|current| Arc::ptr_eq(current, stream))
        {
            table.remove(&stream.conn_id);
        }
    }

    fn close_all_streams(&self) {
        self.closing.cancel();
        let streams: Vec<_> = self.table().drain().map(|(_, stream)| stream).collect();
        for stream in streams {
            stream.end(RemoteEnd::Failed("session closed".into()));
        }
    }

    async fn handle_frame(self: &Arc<Self>, frame: Bytes) -> Result<(), SessionError> {
        let message = codec::decode(frame).inspect_err(|_| {
            metrics::bump(&self.metrics.protocol_errors);
        })?;
        let conn_id = message.conn_id;
        match message.payload {
            Payload::Connect { proto, address } => {
                if self.at_stream_limit(conn_id) {
                    metrics::bump(&self.metrics.streams_refused);
                    tracing::debug!(conn_id, %address, "stream limit reached; refusing connect");
                    let limit = self.limits.max_streams;
                    self.send(
                        conn_id,
                        Payload::Error(format!("too many streams: the limit is {limit}")),
                    )
                    .await;
                } else {
                    self.open_stream(ConnectRequest {
                        conn_id,
                        proto,
                        address,
                    });
                }
            }
            Payload::Data(bytes) => match self.lookup(conn_id) {
                None => {
                    self.send(
                        conn_id,
                        Payload::Error(format!("connection not found {conn_id}")),
                    )
                    .await
                }
                Some(stream) => {
                    metrics::add(&self.metrics.bytes_received, bytes.len());
                    match stream.offer(bytes) {
                        OfferOutcome::Buffered => {}
                        OfferOutcome::SendPause => {
                            metrics::bump(&self.metrics.pauses_sent);
                            self.send(conn_id, Payload::Pause).await
                        }
                        OfferOutcome::Overflow => {
                            self.forget(&stream);
                            metrics::bump(&self.metrics.buffer_overflows);
                            tracing::warn!(conn_id, "server ignored Pause; closing stream");
                            self.send(conn_id, Payload::Error("receive buffer overflow".into()))
                                .await;
                        }
                    }
                    if self.buffered.load(Ordering::Relaxed) > self.flow.session_buffer_limit {
                        self.shed_largest_stream().await;
                    }
                }
            },
            Payload::Error(text) => {
                let removed = self.table().remove(&conn_id);
                if let Some(stream) = removed {
                    stream.end(if text == "EOF" {
                        RemoteEnd::Eof
                    } else {
                        RemoteEnd::Failed(text)
                    });
                }
            }
            Payload::Pause => {
                if let Some(stream) = self.lookup(conn_id) {
                    stream.set_remote_paused(true);
                }
            }
            Payload::Resume => {
                if let Some(stream) = self.lookup(conn_id) {
                    stream.set_remote_paused(false);
                }
            }
            // Peer bookkeeping between servers, or types from newer servers: not ours.
            Payload::AddClient(_)
            | Payload::RemoveClient(_)
            | Payload::SyncConnections(_)
            | Payload::Unknown { .. } => {
                tracing::trace!(
                    conn_id,
                    "ignoring message type {}",
                    message.payload.type_code()
                );
            }
        }
        Ok(())
    }

    /// True when a Connect for `conn_id` would exceed `max_streams`. A Connect reusing a live
    /// id replaces that stream, so it never counts as one more.
    fn at_stream_limit(&self, conn_id: i64) -> bool {
        let table = self.table();
        table.len() >= self.limits.max_streams && !table.contains_key(&conn_id)
    }

    /// Closes the stream holding the most buffered bytes, which includes the one that just
    /// took the session over its limit, so the total shrinks by at least that frame.
    async fn shed_largest_stream(&self) {
        let largest = self
            .table()
            .values()
            .map(|stream| (stream.buffered(), stream.clone()))
            .max_by_key(|(buffered, _)| *buffered);
        let Some((buffered, stream)) = largest else {
            return;
        };
        stream.shed();
        self.forget(&stream);
        metrics::bump(&self.metrics.buffer_overflows);
        tracing::warn!(
            conn_id = stream.conn_id,
            buffered,
            limit = self.flow.session_buffer_limit,
            "session receive buffers over their limit; closing the largest stream"
        );
        self.send(
            stream.conn_id,
            Payload::Error("receive buffer overflow".into()),
        )
        .await;
    }

    /// Registers the stream before anything is dialed: Data may follow the Connect at once,
    /// and the id must already appear in SyncConnections.
    fn open_stream(self: &Arc<Self>, request: ConnectRequest) {
        let stream = Arc::new(StreamShared::new(
            request.conn_id,
            self.flow,
            self.buffered.clone(),
        ));
        let replaced = self.table().insert(request.conn_id, stream.clone());
        if let Some(replaced) = replaced {
            replaced.end(RemoteEnd::Failed("connection id reused".into()));
        }
        metrics::bump(&self.metrics.streams_opened);
        let session = self.clone();
        tokio::spawn(async move {
            let _active = GaugeGuard::new(session.metrics.clone(), |m| &m.streams_active);
            // Counted as long-lived from LONG_LIVED_AFTER on, until it ends (the guard).
            let mut _long_lived = None;
            let long_lived = tokio::time::sleep(metrics::LONG_LIVED_AFTER);
            let serve = session.serve_stream(&stream, request);
            tokio::pin!(long_lived, serve);
            loop {
                tokio::select! {
                    _ = session.closing.cancelled() => break,
                    _ = &mut serve => break,
                    _ = &mut long_lived, if _long_lived.is_none() => {
                        _long_lived = Some(GaugeGuard::new(
                            session.metrics.clone(),
                            |m| &m.streams_long_lived,
                        ));
                    }
                }
            }
            session.forget(&stream);
        });
    }

    async fn serve_stream(&self, stream: &StreamShared, request: ConnectRequest) {
        let conn_id = request.conn_id;
        let route = self.router.route(&request);
        tracing::debug!(conn_id, proto = %request.proto, address = %request.address, "connect");
        let end = match route {
            Route::Deny(reason) => Err(reason),
            Route::Handle(handler) => {
                let (ours, theirs) = tokio::io::duplex(self.flow.read_chunk);
                tokio::spawn(handler.serve(theirs));
                Ok(self
                    .splice(stream, ours, self.limits.handler_idle_timeout)
                    .await)
            }
            Route::Dial(address) => {
                let dial = tokio::net::TcpStream::connect(address.as_str());
                match tokio::time::timeout(self.flow.dial_timeout, dial).await {
                    Ok(Ok(socket)) => {
                        // Tunnel traffic is mostly small request/response exchanges.
                        let _ = socket.set_nodelay(true);
                        Ok(self.splice(stream, socket, None).await)
                    }
                    Ok(Err(error)) => Err(format!("dial tcp {address}: {error}")),
                    Err(_) => Err(format!("dial tcp {address}: timed out")),
                }
            }
        };
        match end {
            Ok(StreamEnd::Remote) => {}
            Ok(StreamEnd::LocalEof) => self.send(conn_id, Payload::Error("EOF".into())).await,
            Ok(StreamEnd::LocalError(text)) => self.send(conn_id, Payload::Error(text)).await,
            Ok(StreamEnd::Idle(after)) => {
                metrics::bump(&self.metrics.streams_closed_idle);
                tracing::debug!(conn_id, ?after, "closing idle stream");
                let text = format!("stream idle for {}s", after.as_secs_f64());
                self.send(conn_id, Payload::Error(text)).await
            }
            Err(reason) => {
                metrics::bump(&self.metrics.streams_failed);
                tracing::debug!(conn_id, %reason, "stream target unavailable");
                self.send(conn_id, Payload::Error(reason)).await;
            }
        }
    }

    /// Copies both ways until either side ends; there is no half-close in this protocol.
    /// With `idle_timeout`, also ends once no bytes moved either way for that long.
    async fn splice<T>(
        &self,
        stream: &StreamShared,
        target: T,
        idle_timeout: Option<Duration>,
    ) -> StreamEnd
    where
        T: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let (mut from_target, mut to_target) = tokio::io::split(target);
        let activity = Activity::new();
        let idle = async {
            match idle_timeout {
                Some(limit) => activity.idle_for(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = self.pump_to_target(stream, &mut to_target, &activity) => end,
            end = self.pump_from_target(stream, &mut from_target, &activity) => end,
            end = idle => end,
        }
    }

    async fn pump_to_target<W>(
        &self,
        stream: &StreamShared,
        target: &mut W,
        activity: &Activity,
    ) -> StreamEnd
    where
        W: AsyncWrite + Unpin,
    {
        loop {
            match stream.next_inbound().await {
                Inbound::Chunk { bytes, send_resume } => {
                    if let Err(error) = target.write_all(&bytes).await {
                        return StreamEnd::LocalError(error.to_string());
                    }
                    activity.touch();
                    if send_resume {
                        self.send(stream.conn_id, Payload::Resume).await;
                    }
                }
                Inbound::End(end) => {
                    tracing::trace!(conn_id = stream.conn_id, ?end, "stream closed by server");
                    let _ = target.shutdown().await;
                    return StreamEnd::Remote;
                }
            }
        }
    }

    async fn pump_from_target<R>(
        &self,
        stream: &StreamShared,
        target: &mut R,
        activity: &Activity,
    ) -> StreamEnd
    where
        R: AsyncRead + Unpin,
    {
        loop {
            stream.wait_remote_resumed().await;
            // Wait for data with a small buffer: an idle stream (Rancher keeps dozens of watches
            // open per cluster) then holds a few hundred bytes instead of a full read chunk.
            let first = IDLE_READ.min(self.flow.read_chunk);
            let mut buffer = BytesMut::with_capacity(MAX_HEADER_LEN + first);
            buffer.resize(MAX_HEADER_LEN, 0);
            let mut read = match (&mut *target)
                .take(first as u64)
                .read_buf(&mut buffer)
                .await
            {
                Ok(0) => return StreamEnd::LocalEof,
                Ok(read) => read,
                Err(error) => return StreamEnd::LocalError(error.to_string()),
            };
            if read == first && self.flow.read_chunk > first {
                // More is likely waiting: take what is ready now into the same frame. `read_buf`
                // is cancel-safe, so giving up on a pending read loses nothing; an EOF or error
                // here shows up again on the next read.
                let more = self.flow.read_chunk - first;
                buffer.reserve(more);
                let ready = (&mut *target)
                    .take(more as u64)
                    .read_buf(&mut buffer)
                    .now_or_never();
                if let Some(Ok(n)) = ready {
                    read += n;
                }
            }
            if read < COPY_BELOW && buffer.capacity() > MAX_HEADER_LEN + COPY_BELOW {
                let mut exact = BytesMut::with_capacity(MAX_HEADER_LEN + read);
                exact.extend_from_slice(&buffer);
                buffer = exact;
            }
            activity.touch();
            metrics::add(&self.metrics.bytes_sent, read);
            let frame =
                codec::encode_data_in_place(buffer, codec::next_message_id(), stream.conn_id);
            if self.outgoing.send(Outgoing::Frame(frame)).await.is_err() {
                return StreamEnd::Remote;
            }
        }
    }
}

/// When a spliced stream last moved bytes, for its idle timeout. An atomic rather than a
/// timer reset per chunk, so busy streams pay one store per chunk.
struct Activity {
    started: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`; wakes at most once per `limit` while active.
    async fn idle_for(&self, limit: Duration) -> StreamEnd {
        loop {
            let seen = self.last_ms.load(Ordering::Relaxed);
            let deadline = self.started + Duration::from_millis(seen) + limit;
            tokio::time::sleep_until(deadline).await;
            if self.last_ms.load(Ordering::Relaxed) == seen {
                return StreamEnd::Idle(limit);
            }
        }
    }
}
