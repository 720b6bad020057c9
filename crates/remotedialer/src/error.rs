//! Why a connect attempt failed or a session ended, in a form the caller can act on (for
//! example stop reconnecting when the server answered the upgrade with HTTP 400/401).

use crate::codec::DecodeError;
use std::time::Duration;

/// Cloneable so the latest one can be published through the client's status channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("invalid tunnel url: {0}")]
    InvalidUrl(String),
    #[error("invalid header {name}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("tls setup failed: {0}")]
    Tls(String),
    #[error("connecting to {address} failed: {reason}")]
    Connect { address: String, reason: String },
    #[error("websocket handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The server answered the upgrade with a non-101 HTTP status. Rancher answers 400
    /// ("cluster not found") for deleted clusters and 401 for bad credentials.
    #[error("server rejected the websocket upgrade with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    #[error("websocket failed: {0}")]
    WebSocket(String),
    #[error("malformed frame from server: {0}")]
    Protocol(#[from] DecodeError),
    #[error("server sent a text frame; remotedialer uses binary frames only")]
    TextFrame,
    #[error("no pong from server within {0:?}")]
    PongTimeout(Duration),
    #[error("writing a frame stalled for more than {0:?}")]
    WriteStalled(Duration),
    #[error("server closed the websocket")]
    ClosedByServer,
    /// The caller cut the session on purpose ([`crate::ClientHandle::drop_session`]), as a network
    /// failure would.
    #[error("session dropped on request")]
    Dropped,
}

impl SessionError {
    /// The HTTP status of a rejected upgrade, if that is what happened.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            SessionError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the server refused the session itself (HTTP 4xx other than 408/429): trying
    /// again with the same url and headers will most likely fail the same way.
    pub fn is_rejection(&self) -> bool {
        matches!(self.http_status(), Some(status) if (400..500).contains(&status) && status != 408 && status != 429)
    }
}
