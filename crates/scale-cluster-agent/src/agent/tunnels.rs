//! The two remotedialer tunnels per simulated cluster, as the real cattle-cluster-agent holds them:
//!
//! - **main**: `X-API-Tunnel-Token` + `X-API-Tunnel-Params`; Rancher dials the cluster's apiserver
//!   through it. Only the address advertised in the params (that cluster's own apiserver) is
//!   dialed; any other address gets an error on that stream, so Rancher can reach nothing else on
//!   this host.
//! - **steve**: `Authorization: Bearer stv-cluster-<token>`; every stream is served in process:
//!   `GET /ping` → `200 pong` at once (Rancher's Connected probe), anything else goes to the
//!   agent's steve host, which serves it with Rancher's Steve library ([`crate::steve`]); with
//!   Steve switched off, anything else → 503.
//!
//! Both reconnect with jittered backoff and give up only on a rejection (HTTP 4xx, see
//! [`gives_up`]), which the agent then inspects (Rancher answers 400 `cluster not found` once a
//! cluster is deleted there). Rancher's own transient update conflict, which it often answers
//! to a new cluster's first connect, is retried like any other connect error, as the real agent
//! does.
//!
//! Each tunnel counts its own traffic (its own [`Metrics`]): that is the Rancher load per cluster
//! (streams Rancher opened, bytes each way, streams open now and long-lived ones), and the agent's
//! totals are their sum plus what closed tunnels counted. With an event store
//! ([`TunnelSet::with_events`]), a connected tunnel that drops and its reconnect are recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remotedialer::{
    spawn_client, Backoff, ClientConfig, ClientHandle, ClientStatus, ConnectRequest,
    ConnectionState, FlowControl, Keepalive, Metrics, MetricsSnapshot, Route, SessionError,
    StreamLimits, TlsMode,
};
use serde::{Deserialize, Serialize};

use crate::steve::{ping_only_handler, SteveProxy};
use crate::store::Store;

/// Options shared by every tunnel.
#[derive(Debug, Clone, Default)]
pub struct TunnelOptions {
    pub keepalive: Keepalive,
    pub backoff: Backoff,
    /// Per-stream and per-session receive buffer limits.
    pub flow: FlowControl,
    /// Streams per session (default 1024) and the idle timeout of in-process streams (default
    /// 5 min), which applies to the steve tunnel's handler; the main tunnel only dials.
    pub streams: StreamLimits,
    /// Where the steve tunnel sends what is not `/ping`; `None` answers it 503 (Steve off).
    pub steve: Option<SteveProxy>,
}

/// What one cluster's tunnels need. `Debug` leaves the secrets out.
#[derive(Clone)]
pub struct TunnelSpec {
    /// `CATTLE_SERVER`, e.g. `https://rancher.example.com`.
    pub server_url: String,
    pub registration_token: String,
    /// base64 JSON `{"cluster":{"address","token","caCert"}}`, byte-identical on every reconnect.
    pub params: String,
    /// `host:port` advertised in the params: the only address the main tunnel dials.
    pub apiserver_address: String,
    pub tls: TlsMode,
}

impl std::fmt::Debug for TunnelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSpec")
            .field("server_url", &self.server_url)
            .field("apiserver_address", &self.apiserver_address)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel TLS: {0}")]
    Tls(#[from] remotedialer::TlsError),
    #[error("invalid Rancher server url {0:?}: expected https://host[:port]")]
    ServerUrl(String),
    #[error("{tunnel} tunnel was rejected by Rancher: {error}")]
    Rejected {
        tunnel: &'static str,
        error: SessionError,
    },
    #[error("{tunnel} tunnel not connected within {timeout:?}{}", last.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotConnected {
        tunnel: &'static str,
        timeout: Duration,
        last: Option<SessionError>,
    },
}

/// Connection state of a cluster's tunnels, for the API: `connecting`, `connected`, `backoff`,
/// `stopped` or `closed`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelsView {
    pub main: String,
    pub steve: String,
}

struct Tunnels {
    main: ClientHandle,
    steve: ClientHandle,
    main_metrics: Arc<Metrics>,
    steve_metrics: Arc<Metrics>,
}

/// The tunnels and what they counted.
#[derive(Default)]
struct Open {
    by_name: HashMap<String, Tunnels>,
    /// Counters of tunnels being shut down, by close number: still counted in the totals until
    /// their last bytes are, then folded into `retired`.
    closing: HashMap<u64, [Arc<Metrics>; 2]>,
    next_close: u64,
    /// Counters (not gauges) of tunnels closed for good, so totals never go backwards.
    retired: MetricsSnapshot,
}

/// One tunnel's Rancher load, for the per-cluster metrics.
#[derive(Debug, Clone)]
pub struct TunnelLoad {
    pub cluster: String,
    /// `main` or `steve`.
    pub tunnel: &'static str,
    /// Whether the tunnel is connected now.
    pub connected: bool,
    pub metrics: MetricsSnapshot,
}

/// Every open tunnel pair, by cluster name.
pub struct TunnelSet {
    options: TunnelOptions,
    open: Mutex<Open>,
    /// Where tunnel drops and reconnects are recorded, if anywhere.
    events: Option<Store>,
    /// One rustls config per trust, shared by every tunnel: building one (with its root store)
    /// per cluster would cost memory.
    tls: tokio::sync::Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

impl TunnelSet {
    pub fn new(options: TunnelOptions) -> Self {
        Self {
            options,
            open: Mutex::new(Open::default()),
            events: None,
            tls: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Records every tunnel's drops and reconnects in `store`'s event log.
    pub fn with_events(mut self, store: Store) -> Self {
        self.events = Some(store);
        self
    }

    /// The shared TLS config for tunnels trusting `mode`, built on first use. A rustls config
    /// does not depend on the server, so one per trust serves every cluster.
    pub async fn shared_tls(&self, mode: TlsMode) -> Result<TlsMode, TunnelError> {
        if let TlsMode::Custom(_) = mode {
            return Ok(mode);
        }
        // The trust description itself is the key: a CA path or a CA bundle, never a secret.
        let key = format!("{mode:?}");
        let mut cache = self.tls.lock().await;
        if let Some(config) = cache.get(&key) {
            return Ok(TlsMode::Custom(config.clone()));
        }
        let config = remotedialer::client_tls_config(&mode).await?;
        cache.insert(key, config.clone());
        Ok(TlsMode::Custom(config))
    }

    /// Opens both tunnels of `name` unless they are open already.
    pub fn open(&self, name: &str, spec: &TunnelSpec) -> Result<(), TunnelError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.by_name.contains_key(name) {
            return Ok(());
        }
        let url = tunnel_url(&spec.server_url)?;
        let base = |url: &str| {
            let mut config = ClientConfig::new(url);
            config.tls = spec.tls.clone();
            config.keepalive = self.options.keepalive;
            config.backoff = self.options.backoff;
            config.flow = self.options.flow;
            config.streams = self.options.streams;
            config.give_up = Some(Arc::new(gives_up));
            config
        };
        let main = base(&url)
            .header("X-API-Tunnel-Token", spec.registration_token.clone())
            .header("X-API-Tunnel-Params", spec.params.clone());
        let steve = base(&url).header(
            "Authorization",
            format!("Bearer stv-cluster-{}", spec.registration_token),
        );
        let main_router = apiserver_only(spec.apiserver_address.clone());
        let steve_router = steve_router(self.options.steve.as_ref(), name);
        let (main_metrics, steve_metrics) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        let tunnels = Tunnels {
            main: spawn_client(main, Arc::new(main_router), main_metrics.clone()),
            steve: spawn_client(steve, Arc::new(steve_router), steve_metrics.clone()),
            main_metrics,
            steve_metrics,
        };
        if let Some(store) = &self.events {
            for (tunnel, handle) in [("main", &tunnels.main), ("steve", &tunnels.steve)] {
                // Ends with the tunnel: its status channel closes when the client task does.
                tokio::spawn(record_reconnects(
                    store.clone(),
                    name.to_string(),
                    tunnel,
                    handle.watch_status(),
                ));
            }
        }
        open.by_name.insert(name.to_string(), tunnels);
        Ok(())
    }

    pub fn is_open(&self, name: &str) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .contains_key(name)
    }

    /// Current status of (main, steve).
    pub fn status(&self, name: &str) -> Option<(ClientStatus, ClientStatus)> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.by_name
            .get(name)
            .map(|t| (t.main.status(), t.steve.status()))
    }

    /// Waits until both tunnels are connected; a rejection fails at once.
    pub async fn wait_connected(&self, name: &str, timeout: Duration) -> Result<(), TunnelError> {
        let receivers = {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.by_name.get(name).map(|t| {
                [
                    ("main", t.main.watch_status()),
                    ("steve", t.steve.watch_status()),
                ]
            })
        };
        let Some(receivers) = receivers else {
            return Err(TunnelError::NotConnected {
                tunnel: "main",
                timeout,
                last: None,
            });
        };
        let deadline = tokio::time::Instant::now() + timeout;
        for (tunnel, mut rx) in receivers {
            loop {
                let status = rx.borrow_and_update().clone();
                if status.state == ConnectionState::Connected {
                    break;
                }
                if let Some(error) = status.last_error.clone().filter(gives_up) {
                    return Err(TunnelError::Rejected { tunnel, error });
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => {
                        return Err(TunnelError::NotConnected {
                            tunnel,
                            timeout,
                            last: status.last_error,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts the current sessions of both tunnels of `name` as a dead network path would; the
    /// clients reconnect with their backoff. False if `name` has no open tunnels.
    pub fn drop_sessions(&self, name: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.by_name.get(name) {
            Some(t) => {
                t.main.drop_session();
                t.steve.drop_session();
                true
            }
            None => false,
        }
    }

    /// Closes both tunnels of `name` (all streams end; Rancher sees the sessions go).
    pub async fn close(&self, name: &str) {
        let closing = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.by_name
                .remove(name)
                .map(|t| Self::start_closing(&mut open, t))
        };
        if let Some(closing) = closing {
            self.finish_closing(closing).await;
        }
    }

    pub async fn close_all(&self) {
        let all: Vec<_> = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let tunnels: Vec<Tunnels> = open.by_name.drain().map(|(_, t)| t).collect();
            tunnels
                .into_iter()
                .map(|t| Self::start_closing(&mut open, t))
                .collect()
        };
        futures::future::join_all(all.into_iter().map(|c| self.finish_closing(c))).await;
    }

    /// Moves a tunnel pair's counters to `closing`, so the totals keep them while it shuts down.
    fn start_closing(open: &mut Open, tunnels: Tunnels) -> (u64, Tunnels) {
        let id = open.next_close;
        open.next_close += 1;
        open.closing.insert(
            id,
            [tunnels.main_metrics.clone(), tunnels.steve_metrics.clone()],
        );
        (id, tunnels)
    }

    async fn finish_closing(&self, (id, tunnels): (u64, Tunnels)) {
        tokio::join!(tunnels.main.shutdown(), tunnels.steve.shutdown());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(metrics) = open.closing.remove(&id) {
            for m in metrics {
                add_snapshot(&mut open.retired, &m.snapshot(), false);
            }
        }
    }

    pub fn view(&self, name: &str) -> TunnelsView {
        match self.status(name) {
            Some((main, steve)) => TunnelsView {
                main: state_name(&main.state).into(),
                steve: state_name(&steve.state).into(),
            },
            None => TunnelsView {
                main: "closed".into(),
                steve: "closed".into(),
            },
        }
    }

    /// Number of connected tunnels (two per fully connected cluster): the sum of every
    /// tunnel's open-session gauge (atomics in memory, no I/O).
    pub fn connected_count(&self) -> usize {
        usize::try_from(self.metrics().sessions_active).unwrap_or(0)
    }

    /// Totals over every tunnel, closed ones included (counters only).
    pub fn metrics(&self) -> MetricsSnapshot {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = open.retired;
        let live = open
            .by_name
            .values()
            .flat_map(|t| [&t.main_metrics, &t.steve_metrics])
            .chain(open.closing.values().flatten());
        for metrics in live {
            add_snapshot(&mut total, &metrics.snapshot(), true);
        }
        total
    }

    /// Each open tunnel's Rancher load, by cluster name.
    pub fn load(&self) -> Vec<TunnelLoad> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut load: Vec<TunnelLoad> = open
            .by_name
            .iter()
            .flat_map(|(name, t)| {
                [
                    ("main", &t.main, &t.main_metrics),
                    ("steve", &t.steve, &t.steve_metrics),
                ]
                .map(|(tunnel, handle, m)| TunnelLoad {
                    cluster: name.clone(),
                    tunnel,
                    connected: handle.status().state == ConnectionState::Connected,
                    metrics: m.snapshot(),
                })
            })
            .collect();
        load.sort_by(|a, b| (&a.cluster, a.tunnel).cmp(&(&b.cluster, b.tunnel)));
        load
    }
}

/// Adds `s` to `total`: counters always, gauges (`with_gauges`) only for live tunnels.
fn add_snapshot(total: &mut MetricsSnapshot, s: &MetricsSnapshot, with_gauges: bool) {
    // Destructured so a counter added to the snapshot cannot be forgotten here.
    let MetricsSnapshot {
        connect_attempts,
        connect_failures,
        sessions_established,
        sessions_active,
        reconnects,
        streams_opened,
        streams_active,
        streams_long_lived,
        streams_failed,
        streams_refused,
        streams_closed_idle,
        buffer_overflows,
        bytes_received,
        bytes_sent,
        protocol_errors,
        pauses_sent,
    } = *s;
    total.connect_attempts += connect_attempts;
    total.connect_failures += connect_failures;
    total.sessions_established += sessions_established;
    total.reconnects += reconnects;
    total.streams_opened += streams_opened;
    total.streams_failed += streams_failed;
    total.streams_refused += streams_refused;
    total.streams_closed_idle += streams_closed_idle;
    total.buffer_overflows += buffer_overflows;
    total.bytes_received += bytes_received;
    total.bytes_sent += bytes_sent;
    total.protocol_errors += protocol_errors;
    total.pauses_sent += pauses_sent;
    if with_gauges {
        total.sessions_active += sessions_active;
        total.streams_active += streams_active;
        total.streams_long_lived += streams_long_lived;
    }
}

/// Records `tunnel` of `cluster` dropping after it was connected, and its reconnect with the
/// time it was down, until the tunnel ends. A tunnel stopped on purpose (closed, or given up,
/// which the reconciler records as a failure) is no drop.
async fn record_reconnects(
    store: Store,
    cluster: String,
    tunnel: &'static str,
    mut status: tokio::sync::watch::Receiver<ClientStatus>,
) {
    let mut connected_once = false;
    let mut down_since: Option<std::time::Instant> = None;
    loop {
        let now = status.borrow_and_update().clone();
        let result = match now.state {
            ConnectionState::Connected => {
                connected_once = true;
                match down_since.take() {
                    Some(since) => {
                        let down_ms =
                            i64::try_from(since.elapsed().as_millis()).unwrap_or(i64::MAX);
                        store.record_reconnected(&cluster, tunnel, down_ms).await
                    }
                    None => Ok(()),
                }
            }
            ConnectionState::Connecting | ConnectionState::Backoff { .. }
                if connected_once && down_since.is_none() =>
            {
                down_since = Some(std::time::Instant::now());
                let reason = now.last_error.as_ref().map(ToString::to_string);
                store.record_tunnel_down(&cluster, tunnel, reason).await
            }
            _ => Ok(()),
        };
        if let Err(error) = result {
            tracing::warn!(cluster, tunnel, %error, "recording a tunnel event");
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Whether a failed connect ends the tunnel: a rejection of the session itself, except Rancher's
/// `400 Operation cannot be fulfilled on clusters.management.cattle.io "c-…": the object has been
/// modified`, its own optimistic-concurrency conflict while it updates the cluster for this very
/// connect, which goes away on the next attempt.
pub fn gives_up(error: &SessionError) -> bool {
    let transient_conflict = matches!(
        error,
        SessionError::Rejected { status: 400, body } if body.contains("the object has been modified")
    );
    error.is_rejection() && !transient_conflict
}

/// The main tunnel's router: `tcp/<apiserver>` is dialed, everything else gets an error on that
/// stream only, so Rancher reaches this cluster's apiserver and nothing else on the host.
pub fn apiserver_only(
    apiserver: String,
) -> impl Fn(&ConnectRequest) -> Route + Send + Sync + 'static {
    move |request: &ConnectRequest| {
        if request.proto == "tcp" && request.address == apiserver {
            Route::Dial(apiserver.clone())
        } else {
            Route::Deny(format!(
                "{}/{} is not this cluster's apiserver; the tunnel reaches nothing else",
                request.proto, request.address
            ))
        }
    }
}

/// The steve tunnel's router for cluster `cluster`: every stream, whatever address Rancher
/// dials (`not-used:80` for its probe, `127.0.0.1:6080` for Steve), is served in process, as the
/// real agent's steve tunnel allows everything.
pub fn steve_router(
    steve: Option<&SteveProxy>,
    cluster: &str,
) -> impl Fn(&ConnectRequest) -> Route + Send + Sync + 'static {
    let handler = match steve {
        Some(proxy) => proxy.handler(cluster),
        None => ping_only_handler(),
    };
    move |_: &ConnectRequest| Route::Handle(handler.clone())
}

fn state_name(state: &ConnectionState) -> &'static str {
    match state {
        ConnectionState::Connecting => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Backoff { .. } => "backoff",
        ConnectionState::Stopped => "stopped",
    }
}

/// `wss://host[:port]/v3/connect` from `CATTLE_SERVER`; the agent always speaks TLS to Rancher.
pub fn tunnel_url(server_url: &str) -> Result<String, TunnelError> {
    let rest = server_url
        .strip_prefix("https://")
        .ok_or_else(|| TunnelError::ServerUrl(server_url.to_string()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(TunnelError::ServerUrl(server_url.to_string()));
    }
    Ok(format!("wss://{authority}/v3/connect"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rancher_update_conflicts_are_retried_other_rejections_are_final() {
        let rejected = |status, body: &str| SessionError::Rejected {
            status,
            body: body.into(),
        };
        assert!(!gives_up(&rejected(
            400,
            "Operation cannot be fulfilled on clusters.management.cattle.io \"c-abcde\": the object \
             has been modified; please apply your changes to the latest version and try again"
        )));
        assert!(gives_up(&rejected(400, "cluster not found")));
        assert!(gives_up(&rejected(401, "failed authentication")));
        assert!(!gives_up(&rejected(503, "unavailable")));
    }

    #[test]
    fn tunnel_urls() {
        assert_eq!(
            tunnel_url("https://rancher.example.com").unwrap(),
            "wss://rancher.example.com/v3/connect"
        );
        assert_eq!(
            tunnel_url("https://127.0.0.1:8443/").unwrap(),
            "wss://127.0.0.1:8443/v3/connect"
        );
        assert!(tunnel_url("http://rancher").is_err());
        assert!(tunnel_url("https://").is_err());
    }
}
