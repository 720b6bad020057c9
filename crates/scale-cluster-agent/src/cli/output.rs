//! How the CLI prints for people and for programs, after kubectl: plain aligned tables (upper-case
//! headers, columns three spaces apart, no borders), `-o wide` for more columns, `-o json|yaml` for
//! the objects themselves, RFC 3339 times and kubectl's ages (`5s`, `3m20s`, `2h`, `4d`).
//!
//! Everything meant for stdout goes through [`outln!`]/[`out!`], which return an error instead of
//! panicking (as `println!` does) when stdout is closed: `cluster list | head -1` then ends
//! quietly with status 0 ([`is_closed_stdout`]), as kubectl does.

use std::fmt;
use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format: a table (default), a table with more columns (wide), or the objects as JSON
    /// or YAML.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

impl Output {
    /// Whether this is a table format (`table` or `wide`), not an object dump.
    pub fn is_table(self) -> bool {
        matches!(self, Output::Table | Output::Wide)
    }
}

/// Writes to stdout; a closed stdout is an error ([`io::ErrorKind::BrokenPipe`]), not a panic.
pub fn write_out(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()
}

/// `print!` that returns an [`io::Result`] instead of panicking when stdout is closed.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!($($arg)*))
    };
}

/// `println!` that returns an [`io::Result`] instead of panicking when stdout is closed.
macro_rules! outln {
    () => {
        $crate::cli::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

/// Whether `error` comes from writing to a stdout whose reader has gone (`| head`): the command
/// then ends quietly and successfully, as kubectl does.
pub fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Prints `value` as JSON or YAML; returns false (printing nothing) for the table formats, which
/// the caller renders itself.
pub fn print_object<T: Serialize + ?Sized>(value: &T, output: Output) -> anyhow::Result<bool> {
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(value)?)?,
        // serde_yaml ends its document with a newline already.
        Output::Yaml => out!("{}", serde_yaml::to_string(value)?)?,
        Output::Table | Output::Wide => return Ok(false),
    }
    Ok(true)
}

/// What kubectl prints in a cell that has no value.
pub const NONE: &str = "<none>";

/// A kubectl-style table: every column as wide as its widest cell plus three spaces (at least six,
/// as kubectl's tabwriter), the last column not padded, so no line ends in spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Column padding and minimum column width of kubectl's printers (cli-runtime tabwriter).
    const PADDING: usize = 3;
    const MIN_WIDTH: usize = 6;

    pub fn new<S: AsRef<str>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers
                .into_iter()
                .map(|h| h.as_ref().to_uppercase())
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Empty cells print as `<none>`, and line breaks inside a cell become spaces so
    /// that one object stays one line (for `grep` and `awk`).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let row = cells
            .into_iter()
            .map(|cell| {
                let cell: String = cell.into();
                if cell.trim().is_empty() {
                    NONE.to_string()
                } else {
                    cell.split(['\n', '\r', '\t'])
                        .filter(|part| !part.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            })
            .collect();
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                text.push_str(cell);
                if i + 1 < line.len() {
                    let column = (widths[i] + Self::PADDING).max(Self::MIN_WIDTH);
                    let fill = column - cell.chars().count();
                    text.extend(std::iter::repeat_n(' ', fill));
                }
            }
            writeln!(f, "{text}")?;
        }
        Ok(())
    }
}

/// The time since `unix_seconds`, as kubectl prints an AGE (k8s.io/apimachinery's
/// `HumanDuration`): about two significant figures, `<invalid>` for a time more than a second
/// in the future.
pub fn age_since(unix_seconds: u64, now: SystemTime) -> String {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i128);
    age(now - i128::from(unix_seconds))
}

/// [`age_since`] from now.
pub fn age_now(unix_seconds: u64) -> String {
    age_since(unix_seconds, SystemTime::now())
}

/// kubectl's age of a signed number of seconds.
fn age(seconds: i128) -> String {
    // Like kubectl, a clock a second ahead still counts as "now".
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    let s = seconds.max(0);
    let (minutes, hours, days) = (s / 60, s / 3600, s / (24 * 3600));
    // The unit and the detail below it, dropping a detail of zero.
    let two = |big: i128, big_unit: &str, small: i128, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if minutes < 10 => two(minutes, "m", s % 60, "s"),
        _ if minutes < 3 * 60 => format!("{minutes}m"),
        _ if hours < 8 => two(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 8 * 24 => two(days, "d", hours % 24, "h"),
        _ if days < 2 * 365 => format!("{days}d"),
        _ if days < 8 * 365 => two(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    }
}

/// `unix_seconds` as an RFC 3339 UTC timestamp (`2026-12-01T15:23:40Z`), as kubectl shows
/// `creationTimestamp`.
pub fn rfc3339(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(
            || format!("{unix_seconds} (unix seconds, out of range)"),
            |t| t.to_string(),
        )
}

/// `2026-12-01T15:23:40Z (5m ago)`.
pub fn time_and_age(unix_seconds: u64) -> String {
    format!("{} ({} ago)", rfc3339(unix_seconds), age_now(unix_seconds))
}

/// At most `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `value`, or `<none>`.
pub fn or_none(value: Option<&str>) -> String {
    value.unwrap_or(NONE).to_string()
}

/// A time span for messages: `250ms`, `90s`, `10m`, `1h`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_kubectl_style() {
        let mut table = Table::new(["name", "phase", "last error"]);
        table.row(["a", "active", ""]);
        table.row(["long-name-42", "failed", "line one\nline two"]);
        assert_eq!(
            table.to_string(),
            "NAME           PHASE    LAST ERROR\n\
             a              active   <none>\n\
             long-name-42   failed   line one line two\n"
        );
        assert!(!table.is_empty());
        assert!(Table::new(["x"]).is_empty());
    }

    #[test]
    fn narrow_columns_are_six_wide_and_no_line_ends_in_spaces() {
        let mut table = Table::new(["n", "x"]);
        table.row(["1", "2"]);
        table.row(["ü", "é…"]);
        let text = table.to_string();
        assert_eq!(text, "N     X\n1     2\nü     é…\n");
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
        assert!(!text.contains(['│', '─', '┌', '+', '|']), "{text}");
    }

    #[test]
    fn ages_are_kubectl_ages() {
        for (seconds, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 25 * 60, "3h25m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (4 * 86400 + 5 * 3600, "4d5h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(age(seconds), want, "{seconds}s");
        }
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(age_since(1_000_000 - 7200, now), "120m");
        assert_eq!(age_since(1_000_010, now), "<invalid>");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_138_620), "2026-12-01T15:23:40Z");
        assert!(rfc3339(u64::MAX).contains("out of range"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let shown = time_and_age(now - 300);
        assert!(shown.ends_with(" (5m ago)"), "{shown}");
    }

    #[test]
    fn objects_print_only_for_json_and_yaml() {
        assert!(!print_object(&[1], Output::Table).expect("table"));
        assert!(!print_object(&[1], Output::Wide).expect("wide"));
        assert!(print_object(&[1], Output::Yaml).expect("yaml"));
        assert!(Output::Wide.is_table() && !Output::Json.is_table());
    }

    #[test]
    fn a_closed_stdout_is_told_apart_from_other_errors() {
        let closed = anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("printing the table");
        assert!(is_closed_stdout(&closed));
        let other = anyhow::Error::from(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!is_closed_stdout(&other));
        assert!(!is_closed_stdout(&anyhow::anyhow!("no agent")));
    }

    #[test]
    fn shortening_and_durations() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
