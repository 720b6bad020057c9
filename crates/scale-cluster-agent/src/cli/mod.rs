//! Command-line interface: clap definitions and thin dispatch into the library modules.

mod cluster;
mod output;
mod preflight;
mod progress;
mod report;
mod scenario;
pub mod serve;
mod shard;
mod toolchain;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{GlobalArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "scale-cluster-agent",
    version,
    about = "Simulate many Rancher-imported clusters on real KWOK control planes"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `scale_cluster_agent=debug`.
    #[arg(long, env = "SCA_LOG", default_value = "warn", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision the toolchain if missing, create the default simulated clusters and print how to reach them.
    Up(up::UpArgs),
    /// Provision or inspect the KWOK and Kubernetes binaries.
    #[command(subcommand)]
    Toolchain(toolchain::ToolchainCommand),
    /// Check host limits that bite with many clusters, and say how to fix them.
    Preflight(preflight::PreflightArgs),
    /// Manage simulated clusters (through the running agent when there is one, else KWOK only).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Run the agent: register clusters with Rancher, hold their tunnels, serve the HTTP API.
    Serve(serve::ServeArgs),
    /// Run scale-test scenario files (ramp, hold, churn, faults) on the running agent.
    #[command(subcommand)]
    Scenario(scenario::ScenarioCommand),
    /// Make a run report (HTML or Markdown, with plots) from what the agent recorded.
    Report(report::ReportArgs),
    /// Shard mode helpers: remove a gone shard's clusters from Rancher.
    #[command(subcommand)]
    Shard(shard::ShardCommand),
}

/// Entry point used by `main`.
pub fn main(cli: Cli) -> ExitCode {
    // Before the runtime (and any thread) exists; see take_secret_env.
    crate::secrets::take_secret_env();
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output is gone (`| head -1`): nothing left to say, and nobody to say
        // it to.
        Err(err) if output::is_closed_stdout(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::from_args(&cli.global)?;
    match cli.command {
        Command::Up(args) => up::run(&settings, args).await,
        Command::Toolchain(cmd) => toolchain::run(&settings, cmd).await,
        Command::Preflight(args) => preflight::run(&settings, args).await,
        Command::Cluster(cmd) => cluster::run(&settings, cmd).await,
        Command::Serve(args) => serve::run(&settings, args).await,
        Command::Scenario(cmd) => scenario::run(&settings, cmd).await,
        Command::Report(args) => report::run(&settings, args).await,
        Command::Shard(cmd) => shard::run(&settings, cmd).await,
    }
}

fn init_tracing(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let user = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(user) => user,
        Err(err) => {
            eprintln!("warning: invalid --log/SCA_LOG filter {filter:?} ({err}); using \"warn\"");
            tracing_subscriber::EnvFilter::new("warn")
        }
    };
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_filter(log_filter(user));
    // `try_init` also routes the `log` records of tungstenite, reqwest and rustls into tracing,
    // where the clamps below apply to them.
    if let Err(err) = tracing_subscriber::registry().with(layer).try_init() {
        eprintln!("warning: logging is not available: {err}");
    }
}

/// Colour codes only for a person at a terminal: a log redirected to a file or a pipe stays plain
/// text, and `NO_COLOR` (any non-empty value, <https://no-color.org>) turns colour off everywhere.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Targets that can print request headers, bodies or URLs carrying secrets, and the most verbose
/// level each may log at whatever the user asks for. Read from their sources:
/// - `tungstenite` logs the whole websocket upgrade request at trace (`X-API-Tunnel-Token`,
///   `X-API-Tunnel-Params` with the cluster's service-account token, `Authorization: Bearer
///   stv-cluster-…`); `tokio_tungstenite` wraps it.
/// - `reqwest` logs every byte of a connection at trace (verbose connections) and full redirect
///   URLs at debug (the import manifest URL holds the registration token), so it stays at info.
/// - `hyper`, `hyper_util`, `h2`, `rustls`, `kube_client` and `tower_http` log raw parsing and
///   response headers at trace; their debug output is names, sizes and states only.
pub const LOG_CLAMPS: &[(&str, tracing::Level)] = &[
    ("tungstenite", tracing::Level::DEBUG),
    ("tokio_tungstenite", tracing::Level::DEBUG),
    ("reqwest", tracing::Level::INFO),
    ("hyper", tracing::Level::DEBUG),
    ("hyper_util", tracing::Level::DEBUG),
    ("h2", tracing::Level::DEBUG),
    ("rustls", tracing::Level::DEBUG),
    ("kube_client", tracing::Level::DEBUG),
    ("tower_http", tracing::Level::DEBUG),
];

/// The user's filter, and on top of it the [`LOG_CLAMPS`]. They are a second filter that must
/// also pass, not directives added to the user's: in an `EnvFilter` the most specific directive
/// wins, so a user's `tungstenite::handshake::client=trace` would beat an appended
/// `tungstenite=debug`.
pub fn log_filter<S>(
    user: tracing_subscriber::EnvFilter,
) -> impl tracing_subscriber::layer::Filter<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    let clamps = LOG_CLAMPS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, (target, level)| targets.with_target(*target, *level),
    );
    user.and(clamps)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Events that reach a subscriber filtered like the CLI's, for a user filter.
    fn recorded(user: &str, emit: impl FnOnce()) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;

        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_filter(super::log_filter(
                tracing_subscriber::EnvFilter::try_new(user).unwrap(),
            ));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn header_logging_targets_stay_clamped_whatever_the_user_filter() {
        for user in [
            "trace",
            "tungstenite=trace,reqwest=trace,hyper=trace,scale_cluster_agent=trace",
            "tungstenite::handshake::client=trace,reqwest::connect=trace,trace",
        ] {
            let lines = recorded(user, || {
                // The shapes of the real events: tungstenite's upgrade request and reqwest's
                // verbose connection log (both `log` records, bridged with their module as target).
                tracing::trace!(target: "tungstenite::handshake::client", "Request: X-API-Tunnel-Token: secret-1");
                tracing::trace!(target: "reqwest::connect::verbose", "read: secret-2");
                tracing::debug!(target: "reqwest::async_impl::client", "redirecting to /v3/import/secret-3");
                tracing::trace!(target: "hyper::proto::h1::role", "Response.parse secret-4");
                tracing::trace!(target: "scale_cluster_agent::agent", "our own trace");
                tracing::debug!(target: "tungstenite::protocol", "Received close frame");
            });
            let all = lines.join("\n");
            assert!(
                !all.contains("secret"),
                "user filter {user:?} let through:\n{all}"
            );
            assert!(all.contains("our own trace"), "user filter {user:?}: {all}");
            assert!(
                all.contains("Received close frame"),
                "user filter {user:?}: {all}"
            );
        }
        // The clamps only lower levels: a user's quieter filter still wins.
        let lines = recorded("warn", || {
            tracing::debug!(target: "tungstenite::protocol", "Received close frame");
            tracing::info!(target: "scale_cluster_agent", "info line");
        });
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(super::use_colour(true, None));
        assert!(super::use_colour(true, Some(OsStr::new(""))));
        assert!(!super::use_colour(true, Some(OsStr::new("1"))));
        assert!(!super::use_colour(false, None));
    }

    #[test]
    fn command_line_definition_is_consistent() {
        // Catches clashing argument names between flattened option groups, which clap only
        // reports at run time.
        super::Cli::command().debug_assert();
    }
}
