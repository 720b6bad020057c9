//! Shared helpers for integration tests. Include with `mod support;`.
//!
//! [`toolchain`] gives a complete, verified toolchain, building or downloading whatever is missing
//! (once per test binary). It honours the same `SCA_*` variables as the CLI (`SCA_CACHE_DIR`,
//! `SCA_KUBE_APISERVER_BINARY`, `SCA_DOWNLOAD_BASE_URL`, ...); the cache defaults to
//! `~/.cache/scale-cluster-agent`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod go_build;
pub mod rancher_sim;

use std::sync::OnceLock;

use clap::Parser;
use scale_cluster_agent::cli::Cli;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::toolchain::{self, Progress, Toolchain, ToolchainOptions};

/// Settings as the CLI would resolve them from the environment.
pub fn settings() -> Settings {
    let cli = Cli::try_parse_from(["scale-cluster-agent", "toolchain", "status"])
        .unwrap_or_else(|e| panic!("parsing the SCA_* environment: {e}"));
    Settings::from_args(&cli.global).unwrap_or_else(|e| panic!("resolving settings: {e:#}"))
}

/// The full toolchain, installed (with plain progress lines) on first use.
pub fn toolchain() -> Toolchain {
    static TOOLCHAIN: OnceLock<Toolchain> = OnceLock::new();
    TOOLCHAIN
        .get_or_init(|| {
            let opts = ToolchainOptions::from_settings(&settings());
            // A private runtime on its own thread: callers may be inside another runtime, where a
            // runtime can be neither driven nor dropped.
            std::thread::scope(|s| {
                s.spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| {
                            panic!("starting a runtime for the toolchain install: {e}")
                        })
                        .block_on(toolchain::install(&opts, Progress::Plain))
                })
                .join()
                .unwrap_or_else(|_| panic!("toolchain install panicked"))
            })
            .unwrap_or_else(|e| panic!("toolchain install failed: {e}"))
        })
        .clone()
}
