//! scale-cluster-agent: simulates many Rancher-imported clusters, each a real KWOK control plane
//! (kube-apiserver + etcd + kwok-controller), and plays the cattle-cluster-agent for each of them.
//!
//! - [`toolchain`]: the binaries every cluster runs (found, built from pinned Go modules, or downloaded).
//! - [`kwok`]: the KWOK cluster manager (ports, kwokctl driver, profiles, status, population).
//! - [`store`]: the embedded database that is the single source of truth for cluster state.
//! - [`rancher`]: the Rancher management-API client (imported clusters, registration tokens).
//! - [`agent`]: the per-cluster lifecycle (reconcile loop) and the two tunnels per cluster.
//! - [`steve`]: Rancher's Steve API behind the steve tunnels (the supervised steve host, the proxy).
//! - [`controllers`]: the controller host running every `lean` cluster's kcm and kwok controllers.
//! - [`supervisor`]: the one supervision of both hosts (restart with backoff, private, tokenless).
//! - [`scenario`]: scale-test scenario files (stages of ramps, holds, churn and faults).
//! - [`api`]: the agent's HTTP API (axum server, discovery file, typed client for the CLI).
//! - [`process`]: process identity (pid + start time) and the one liveness rule.
//! - [`secrets`]: secret variables kept from child processes, private state directories.
//! - [`preflight`]: host limits that bite when many clusters run on one machine.
//! - [`observe`]: the event log folded into histograms and counters, the agent's own resource use.
//! - [`report`]: the run report (HTML with inline SVG plots, or Markdown) from the event log.
//! - [`app`]: the wiring of all of them into a running agent ([`app::RunningAgent`]).
//! - [`config`]: flags, environment and config file, resolved into each layer's own settings.
//! - [`cli`]: the clap commands; thin wrappers over the modules above.

pub mod agent;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod controllers;
pub mod kwok;
pub mod observe;
pub mod preflight;
pub mod process;
pub mod rancher;
pub mod report;
pub mod scenario;
pub mod secrets;
pub mod sockets;
pub mod steve;
pub mod store;
pub mod supervisor;
pub mod toolchain;
