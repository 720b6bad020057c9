//! `scale-cluster-agent report`: the run report from the state database (no agent needed).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::config::Settings;
use crate::report::render::{self, Format};
use crate::report::Report;
use crate::store::{now_ms, Store};

/// Write a report of the run (create→active CDF, phase percentiles, clusters by phase over time,
/// tunnel drops, Rancher load per cluster, agent memory and CPU, the run's settings) from what
/// the agent recorded in its data directory. Works after the run and after restarts.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Only what happened since then: a duration back from now (`90s`, `30m`, `2h`, `3d`) or an
    /// RFC 3339 time (`2026-12-01T20:00:00Z`). Default: everything recorded.
    #[arg(long)]
    pub since: Option<String>,
    /// The file to write; `-` or none: standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// `html` (inline SVG plots, one self-contained file) or `markdown` (the numbers as tables).
    #[arg(long, value_enum, default_value = "html")]
    pub format: Format,
}

pub async fn run(settings: &Settings, args: ReportArgs) -> anyhow::Result<()> {
    let now = now_ms();
    let since = match &args.since {
        Some(text) => parse_since(text, now)?,
        None => 0,
    };
    let db = settings.state_db();
    if !tokio::fs::try_exists(&db).await.unwrap_or(false) {
        anyhow::bail!(
            "no state database at {}: nothing was recorded there (is --data-dir the agent's?)",
            db.display()
        );
    }
    let store = tokio::task::spawn_blocking(move || Store::open(&db))
        .await
        .context("opening the state database")??;
    let report = Report::build(&store, since, now).await?;
    let text = render::render(&report, args.format);
    match args.output.as_deref() {
        None => print(&text)?,
        Some(path) if path.as_os_str() == "-" => print(&text)?,
        Some(path) => {
            tokio::fs::write(path, text)
                .await
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote {} ({} events, {} clusters created, {} reached active)",
                path.display(),
                report.events,
                report.created,
                report.first_active
            );
        }
    }
    Ok(())
}

fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `--since`: a duration back from `now_ms` or an RFC 3339 time, as unix ms.
fn parse_since(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    let unit_ms = |unit: &str| match unit {
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    if let Some(split) = text.find(|c: char| !c.is_ascii_digit()).filter(|i| *i > 0) {
        let (number, unit) = text.split_at(split);
        if let (Ok(n), Some(ms)) = (number.parse::<i64>(), unit_ms(unit)) {
            return Ok(now_ms.saturating_sub(n.saturating_mul(ms)));
        }
    }
    let at: jiff::Timestamp = text.parse().map_err(|e| {
        anyhow::anyhow!(
            "--since {text:?}: expected a duration such as 30m, 2h or 3d, or an RFC 3339 time \
             such as 2026-12-01T20:00:00Z ({e})"
        )
    })?;
    Ok(at.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(parse_since("90s", 100_000).unwrap(), 10_000);
        assert_eq!(
            parse_since("2h", 10_000_000).unwrap(),
            10_000_000 - 7_200_000
        );
        assert_eq!(parse_since("1970-01-01T00:00:01Z", 0).unwrap(), 1_000);
        let err = parse_since("yesterday", 0).unwrap_err().to_string();
        assert!(err.contains("expected a duration"), "{err}");
        assert!(parse_since("5w", 0).is_err());
    }
}
