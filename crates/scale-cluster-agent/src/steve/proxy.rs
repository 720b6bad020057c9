//! The steve tunnel's in-process HTTP/1.1 server. `GET /ping` is answered here, at once, whatever
//! the host is doing: it is Rancher's Connected probe, every 15 s per cluster. Every other request
//! goes to the steve host's unix socket over a fresh HTTP/1.1 connection, with the cluster named
//! in [`CLUSTER_HEADER`]; a websocket upgrade (`/v1/subscribe`) is completed on both sides and
//! the two upgraded streams are then copied into each other until either ends.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use remotedialer::{InProcessHandler, TunnelStream};

/// The header that names the cluster a request is for. The steve host trusts it because only the
/// agent can reach the host's socket, and the agent replaces whatever value a request arrived
/// with (Rancher's proxy passes a user's headers through).
pub const CLUSTER_HEADER: &str = "x-scale-cluster";

type Body = Either<Incoming, Full<Bytes>>;

/// Forwards a cluster's steve tunnel streams to the steve host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SteveProxy {
    socket: Arc<PathBuf>,
}

impl SteveProxy {
    /// A proxy to the host listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: Arc::new(socket.into()),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The steve tunnel handler of cluster `cluster`.
    pub fn handler(&self, cluster: &str) -> InProcessHandler {
        let socket = self.socket.clone();
        // A cluster name is an RFC 1123 label, always a valid header value; a name that somehow
        // is not gets requests refused rather than sent to another cluster.
        let name = HeaderValue::from_str(cluster).ok();
        InProcessHandler::new(move |stream| {
            let (socket, name) = (socket.clone(), name.clone());
            serve_stream(stream, move |request| {
                let (socket, name) = (socket.clone(), name.clone());
                async move { Ok::<_, Infallible>(forward(&socket, name, request).await) }
            })
        })
    }
}

/// The steve tunnel's handler when Steve is switched off (`--steve=false`): `/ping` only.
pub fn ping_only_handler() -> InProcessHandler {
    InProcessHandler::new(|stream| {
        serve_stream(stream, |_request| async {
            Ok::<_, Infallible>(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Steve is switched off in this simulated cluster agent (steve.enabled: false)",
            ))
        })
    })
}

/// Serves one tunnel stream as an HTTP/1.1 connection: `/ping` here, the rest through `other`.
async fn serve_stream<F, Fut>(stream: TunnelStream, other: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let other = Arc::new(other);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let other = other.clone();
        async move {
            if request.method() == Method::GET && request.uri().path() == "/ping" {
                return Ok(text(StatusCode::OK, "pong"));
            }
            other(request).await
        }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%error, "steve stream ended");
    }
}

/// Sends `request` to the steve host and returns its answer; 503 with the reason when the host
/// cannot be reached (not started yet, restarting after a crash).
async fn forward(
    socket: &Path,
    cluster: Option<HeaderValue>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let Some(cluster) = cluster else {
        return text(
            StatusCode::BAD_REQUEST,
            "this tunnel's cluster name is not a valid header value",
        );
    };
    // `insert` replaces every value a request arrived with: Rancher's proxy passes the user's
    // headers through, so a user must not pick another cluster by sending this header.
    request.headers_mut().insert(CLUSTER_HEADER, cluster);

    let unavailable = |what: &str, error: &dyn std::fmt::Display| {
        tracing::warn!(%error, "steve host {what}");
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the simulated cluster agent's Steve server (steve-host) is unavailable: {what}: \
                 {error}"
            ),
        )
    };
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(error) => return unavailable("not reachable", &error),
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(error) => return unavailable("handshake failed", &error),
        };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "steve host connection ended");
        }
    });

    let from_rancher = hyper::upgrade::on(&mut request);
    let mut response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return unavailable("request failed", &error),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let from_host = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(from_rancher, from_host) {
                Ok((rancher, host)) => {
                    let (mut rancher, mut host) = (TokioIo::new(rancher), TokioIo::new(host));
                    if let Err(error) = tokio::io::copy_bidirectional(&mut rancher, &mut host).await
                    {
                        tracing::debug!(%error, "steve websocket ended");
                    }
                }
                Err(error) => tracing::debug!(%error, "steve websocket upgrade failed"),
            }
        });
    }
    response.map(Either::Left)
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
