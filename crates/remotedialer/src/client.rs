//! The long-lived client: connect (TCP, optional TLS, websocket upgrade with the caller's
//! headers), run a session, and reconnect with jittered exponential backoff until shut down.
//! Its status (state and last error) is published on a watch channel.

use crate::error::SessionError;
use crate::metrics::{self, GaugeGuard, Metrics};
use crate::router::Router;
use crate::session::{run_session, Keepalive, StreamLimits};
use crate::stream::FlowControl;
use crate::tls::{client_tls_config, TlsMode};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// Exponential backoff with full jitter: attempt `n` waits a uniformly random time in
/// `[0, min(cap, base * 2^n)]`, so many clients cut off together do not come back together.
/// Used for the reconnects here; an application can use the same policy for its own retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The longest delay of attempt `attempt`: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// The delay before attempt `attempt` (for the reconnects: 0 after a session that was up).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] drawn from `rng`: a seeded one gives a caller that evaluates the
    /// delay repeatedly (e.g. once per tick) the same delay every time.
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling_ms))
    }
}

/// Decides from the error whether to stop reconnecting (for example on HTTP 400/401).
pub type GiveUpPolicy = Arc<dyn Fn(&SessionError) -> bool + Send + Sync>;

/// Everything one client needs. Header values are never logged.
#[derive(Clone)]
pub struct ClientConfig {
    /// `ws://` or `wss://` url of the tunnel endpoint, e.g. `wss://rancher/v3/connect`.
    pub url: String,
    /// Extra upgrade request headers (`X-API-Tunnel-Token`, `Authorization`, ...).
    pub headers: Vec<(String, String)>,
    pub tls: TlsMode,
    pub backoff: Backoff,
    pub keepalive: Keepalive,
    pub flow: FlowControl,
    /// How many streams a session may hold and when idle in-process streams are closed.
    pub streams: StreamLimits,
    /// Limit for TCP connect, TLS and websocket upgrade together (upstream: 10 s).
    pub handshake_timeout: Duration,
    /// Initial websocket read buffer. tungstenite's 128 KiB default is far too much for
    /// thousands of mostly idle sessions; the buffer grows for large frames as needed.
    pub websocket_read_buffer: usize,
    /// Largest frame accepted from the server; bigger ones end the session.
    pub max_frame_size: usize,
    /// Called with each connect or session error; returning true stops the client.
    pub give_up: Option<GiveUpPolicy>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: Vec::new(),
            tls: TlsMode::default(),
            backoff: Backoff::default(),
            keepalive: Keepalive::default(),
            flow: FlowControl::default(),
            streams: StreamLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            websocket_read_buffer: 4 << 10,
            max_frame_size: 16 << 20,
            give_up: None,
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("header_names", &header_names)
            .field("tls", &self.tls)
            .field("backoff", &self.backoff)
            .field("keepalive", &self.keepalive)
            .field("flow", &self.flow)
            .field("streams", &self.streams)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("websocket_read_buffer", &self.websocket_read_buffer)
            .field("max_frame_size", &self.max_frame_size)
            .field("give_up", &self.give_up.is_some())
            .finish()
    }
}

/// What the client is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Waiting before the next connect attempt.
    Backoff {
        retry_in: Duration,
    },
    /// Shut down, or given up by the [`GiveUpPolicy`].
    Stopped,
}

/// Published on every state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus {
    pub state: ConnectionState,
    /// Why the latest connect attempt failed or the latest session ended.
    pub last_error: Option<SessionError>,
    /// Sessions this client has established so far.
    pub sessions_established: u64,
}

/// Controls a spawned client.
pub struct ClientHandle {
    status: watch::Receiver<ClientStatus>,
    shutdown: CancellationToken,
    /// Bumped by each drop request; a session ends when it changes.
    drop_session: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl ClientHandle {
    pub fn status(&self) -> ClientStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (`changed()`, `wait_for()`).
    pub fn watch_status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Cuts the current session abruptly, as a network failure would: the websocket's TCP
    /// connection is closed without a close frame, every stream ends, and the client reconnects
    /// with its normal backoff. For fault injection; a no-op while not connected.
    pub fn drop_session(&self) {
        self.drop_session.send_modify(|requests| *requests += 1);
    }

    /// Closes every stream and the websocket, then waits for the client task to finish.
    pub async fn shutdown(self) -> ClientStatus {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the client stops by itself (its [`GiveUpPolicy`] said so).
    pub async fn wait(self) -> ClientStatus {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "remotedialer client task failed");
        }
        let status = self.status.borrow().clone();
        status
    }
}

/// Starts a client task that connects, serves Connects through `router`, and reconnects
/// until [`ClientHandle::shutdown`] is called. Must be called inside a tokio runtime.
pub fn spawn_client(
    config: ClientConfig,
    router: Arc<dyn Router>,
    metrics: Arc<Metrics>,
) -> ClientHandle {
    let (status_sender, status) = watch::channel(ClientStatus {
        state: ConnectionState::Connecting,
        last_error: None,
        sessions_established: 0,
    });
    let shutdown = CancellationToken::new();
    let (drop_session, drop_requests) = watch::channel(0);
    let task = tokio::spawn(run_client(
        config,
        router,
        metrics,
        status_sender,
        shutdown.clone(),
        drop_requests,
    ));
    ClientHandle {
        status,
        shutdown,
        drop_session,
        task,
    }
}

async fn run_client(
    config: ClientConfig,
    router: Arc<dyn Router>,
    metrics: Arc<Metrics>,
    status: watch::Sender<ClientStatus>,
    shutdown: CancellationToken,
    mut drop_requests: watch::Receiver<u64>,
) {
    let mut tls = None;
    let mut failed_attempts: u32 = 0;
    let mut first_attempt = true;
    loop {
        if !first_attempt {
            metrics::bump(&metrics.reconnects);
        }
        first_attempt = false;
        status.send_modify(|status| status.state = ConnectionState::Connecting);
        metrics::bump(&metrics.connect_attempts);
        let connected = tokio::select! {
            connected = open_websocket(&config, &mut tls) => connected,
            _ = shutdown.cancelled() => break,
        };
        let error = match connected {
            Ok(websocket) => {
                metrics::bump(&metrics.sessions_established);
                failed_attempts = 0;
                status.send_modify(|status| {
                    status.state = ConnectionState::Connected;
                    status.sessions_established += 1;
                });
                tracing::info!(url = %config.url, "tunnel connected");
                let _active = GaugeGuard::new(metrics.clone(), |m| &m.sessions_active);
                // Requests made while no session was up do not apply to this one.
                drop_requests.borrow_and_update();
                let session = async {
                    match websocket {
                        Websocket::Plain(websocket) => {
                            serve(*websocket, &config, &router, &metrics, &shutdown).await
                        }
                        Websocket::Tls(websocket) => {
                            serve(*websocket, &config, &router, &metrics, &shutdown).await
                        }
                    }
                };
                // Dropping the session future drops the websocket: its socket closes with no
                // close frame, which is what the server sees when a network path dies.
                let ended = tokio::select! {
                    ended = session => ended,
                    Ok(()) = drop_requests.changed() => Err(SessionError::Dropped),
                };
                match ended {
                    Ok(()) => break,
                    Err(error) => error,
                }
            }
            Err(error) => {
                metrics::bump(&metrics.connect_failures);
                failed_attempts = failed_attempts.saturating_add(1);
                error
            }
        };
        tracing::warn!(url = %config.url, %error, "tunnel down");
        if config
            .give_up
            .as_ref()
            .is_some_and(|give_up| give_up(&error))
        {
            status.send_modify(|status| {
                status.state = ConnectionState::Stopped;
                status.last_error = Some(error);
            });
            return;
        }
        let retry_in = config.backoff.delay(failed_attempts);
        status.send_modify(|status| {
            status.state = ConnectionState::Backoff { retry_in };
            status.last_error = Some(error);
        });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    status.send_modify(|status| status.state = ConnectionState::Stopped);
}

async fn serve<S>(
    websocket: WebSocketStream<S>,
    config: &ClientConfig,
    router: &Arc<dyn Router>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run_session(
        websocket,
        router.clone(),
        config.keepalive,
        config.flow,
        config.streams,
        metrics.clone(),
        shutdown,
    )
    .await
}

enum Websocket {
    // Boxed: both are large and differ a lot in size; they are moved only once.
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

fn upgrade_request(config: &ClientConfig) -> Result<Request, SessionError> {
    let mut request = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| SessionError::InvalidUrl(error.to_string()))?;
    for (name, value) in &config.headers {
        let invalid = |reason: String| SessionError::InvalidHeader {
            name: name.clone(),
            reason,
        };
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|error| invalid(error.to_string()))?;
        let mut header_value =
            HeaderValue::from_str(value).map_err(|error| invalid(error.to_string()))?;
        header_value.set_sensitive(true);
        request.headers_mut().append(header_name, header_value);
    }
    Ok(request)
}

async fn open_websocket(
    config: &ClientConfig,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
) -> Result<Websocket, SessionError> {
    let request = upgrade_request(config)?;
    let uri = request.uri().clone();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => {
            return Err(SessionError::InvalidUrl(format!(
                "scheme must be ws or wss, not {other:?}"
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| SessionError::InvalidUrl("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    if secure && tls.is_none() {
        // Resolved once per client and kept across reconnects; a failure is retried.
        let config = client_tls_config(&config.tls)
            .await
            .map_err(|error| SessionError::Tls(error.to_string()))?;
        *tls = Some(config);
    }
    let websocket_config = WebSocketConfig::default()
        .read_buffer_size(config.websocket_read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(config.max_frame_size))
        .max_frame_size(Some(config.max_frame_size));
    let address = format!("{host}:{port}");
    let handshake = async {
        let socket = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|error| SessionError::Connect {
                address: address.clone(),
                reason: error.to_string(),
            })?;
        let _ = socket.set_nodelay(true);
        match tls.as_ref().filter(|_| secure) {
            None => upgrade(request, socket, websocket_config)
                .await
                .map(|websocket| Websocket::Plain(Box::new(websocket))),
            Some(tls) => {
                let server_name = rustls_pki_types::ServerName::try_from(host.clone())
                    .map_err(|error| SessionError::Tls(error.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(server_name, socket)
                    .await
                    .map_err(|error| SessionError::Tls(error.to_string()))?;
                upgrade(request, stream, websocket_config)
                    .await
                    .map(|websocket| Websocket::Tls(Box::new(websocket)))
            }
        }
    };
    tokio::time::timeout(config.handshake_timeout, handshake)
        .await
        .map_err(|_| SessionError::HandshakeTimeout(config.handshake_timeout))?
}

/// Longest part of a rejection body kept in [`SessionError::Rejected`].
const REJECTION_BODY_LIMIT: usize = 1024;

async fn upgrade<S>(
    request: Request,
    stream: S,
    websocket_config: WebSocketConfig,
) -> Result<WebSocketStream<S>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Error;
    match tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config)).await
    {
        Ok((websocket, _response)) => Ok(websocket),
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|body| {
                    let text =
                        String::from_utf8_lossy(&body[..body.len().min(REJECTION_BODY_LIMIT)]);
                    text.trim().to_owned()
                })
                .unwrap_or_default();
            Err(SessionError::Rejected {
                status: response.status().as_u16(),
                body,
            })
        }
        Err(error) => Err(SessionError::Handshake(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_the_exponential_ceiling_and_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for attempt in 0..40 {
            let ceiling = (100u64 << attempt.min(20)).min(1000);
            for _ in 0..20 {
                assert!(backoff.delay(attempt) <= Duration::from_millis(ceiling));
            }
        }
    }

    #[test]
    fn seeded_backoff_repeats_and_stays_under_the_ceiling() {
        use rand::SeedableRng;
        let backoff = Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(120),
        };
        assert_eq!(backoff.ceiling(0), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(16));
        assert_eq!(backoff.ceiling(40), Duration::from_secs(120));
        for seed in 0..50 {
            let draw = || backoff.delay_with(3, &mut rand::rngs::StdRng::seed_from_u64(seed));
            assert_eq!(draw(), draw(), "same seed, same delay");
            assert!(draw() <= Duration::from_secs(16));
        }
        let spread: std::collections::HashSet<_> = (0..50)
            .map(|seed| backoff.delay_with(3, &mut rand::rngs::StdRng::seed_from_u64(seed)))
            .collect();
        assert!(spread.len() > 10, "seeds should spread: {spread:?}");
    }

    #[test]
    fn backoff_is_jittered() {
        let backoff = Backoff {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(10),
        };
        let delays: std::collections::HashSet<_> = (0..50).map(|_| backoff.delay(3)).collect();
        assert!(delays.len() > 10, "delays should spread out: {delays:?}");
    }

    #[test]
    fn debug_output_hides_header_values() {
        let config = ClientConfig::new("wss://x/v3/connect").header("X-API-Tunnel-Token", "s3cret");
        let printed = format!("{config:?}");
        assert!(printed.contains("X-API-Tunnel-Token"));
        assert!(!printed.contains("s3cret"));
    }
}
