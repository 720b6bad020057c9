//! Client side of Rancher's remotedialer tunnel protocol: the wire codec, a client session that
//! splices server-initiated streams to local targets, flow control, keepalive and reconnects.
//!
//! This crate knows nothing about KWOK, clusters or Rancher's management API.
//!
//! Typical use: build a [`ClientConfig`], a [`Router`] (any `Fn(&ConnectRequest) -> Route`),
//! one shared [`Metrics`], then [`spawn_client`] and keep the [`ClientHandle`] to watch its
//! status and shut it down.

pub mod client;
pub mod codec;
pub mod error;
pub mod metrics;
pub mod router;
pub mod session;
pub mod stream;
pub mod tls;

pub use client::{
    spawn_client, Backoff, ClientConfig, ClientHandle, ClientStatus, ConnectionState, GiveUpPolicy,
};
pub use error::SessionError;
pub use metrics::{Metrics, MetricsSnapshot, LONG_LIVED_AFTER};
pub use router::{ConnectRequest, DialTcp, InProcessHandler, Route, Router, TunnelStream};
pub use session::{Keepalive, StreamLimits};
pub use stream::FlowControl;
pub use tls::{client_tls_config, TlsError, TlsMode};
