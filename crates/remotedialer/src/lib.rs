//! Client side of Rancher's remotedialer tunnel protocol: the wire codec, a client session that
//! splices server-initiated streams to local targets, flow control, keepalive and reconnects.
//!
//! This crate knows nothing about KWOK, clusters or Rancher's management API.
