//! Where the server's Connect requests go: the caller-supplied [`Router`] and the in-process
//! handler type for streams served inside the agent rather than dialed over TCP.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The stream an [`InProcessHandler`] serves: an in-memory pipe whose other end is spliced
/// to the tunnel. Reading returns what the server sent; writing goes back to the server.
pub type TunnelStream = tokio::io::DuplexStream;

/// A Connect request from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The virtual connection number the server chose.
    pub conn_id: i64,
    /// Usually `tcp`.
    pub proto: String,
    /// Usually `host:port`.
    pub address: String,
}

type HandlerFn = dyn Fn(TunnelStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// Serves a stream inside the process (for example a small HTTP responder).
#[derive(Clone)]
pub struct InProcessHandler(Arc<HandlerFn>);

impl InProcessHandler {
    pub fn new<F, Fut>(handler: F) -> Self
    where
        F: Fn(TunnelStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self(Arc::new(move |stream| Box::pin(handler(stream))))
    }

    pub(crate) fn serve(&self, stream: TunnelStream) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        (self.0)(stream)
    }
}

impl std::fmt::Debug for InProcessHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcessHandler")
    }
}

/// What to do with one Connect.
#[derive(Debug, Clone)]
pub enum Route {
    /// Dial this `host:port` over TCP and splice the stream to it.
    Dial(String),
    /// Hand the stream to an in-process handler.
    Handle(InProcessHandler),
    /// Refuse: the server gets an Error with this text for this stream only.
    Deny(String),
}

/// Decides where each Connect goes. Implemented for any `Fn(&ConnectRequest) -> Route`.
pub trait Router: Send + Sync + 'static {
    fn route(&self, request: &ConnectRequest) -> Route;
}

impl<F> Router for F
where
    F: Fn(&ConnectRequest) -> Route + Send + Sync + 'static,
{
    fn route(&self, request: &ConnectRequest) -> Route {
        self(request)
    }
}

/// Dials every `tcp` address as given and denies other protos.
#[derive(Debug, Clone, Copy, Default)]
pub struct DialTcp;

impl Router for DialTcp {
    fn route(&self, request: &ConnectRequest) -> Route {
        if request.proto == "tcp" {
            Route::Dial(request.address.clone())
        } else {
            Route::Deny(format!("proto {} not allowed", request.proto))
        }
    }
}
