//! Progress reporting for long installs: indicatif spinners/bars on a terminal, periodic plain lines
//! otherwise (so CI logs show that a 15-minute `go build` is alive), or nothing at all.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How [`install`](super::install) reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Spinners and byte bars on stderr.
    Interactive,
    /// One line per step on stderr, plus a "still ..." line every [`PLAIN_INTERVAL`].
    Plain,
    /// No output.
    Silent,
}

/// How often plain mode says a long step is still running.
const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

impl Progress {
    /// Interactive when stderr is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Interactive
        } else {
            Progress::Plain
        }
    }

    /// A one-off line.
    pub(crate) fn line(self, msg: &str) {
        if self != Progress::Silent {
            eprintln!("{msg}");
        }
    }

    /// Starts reporting a long step (`label` like "building kube-apiserver v1.36.1").
    pub(crate) fn task(self, label: String) -> Task {
        let bytes = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let (bar, ticker) = match self {
            Progress::Interactive => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(spinner_style());
                bar.set_message(label.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                (Some(bar), None)
            }
            Progress::Plain => {
                eprintln!("{label} ...");
                let (label, bytes) = (label.clone(), bytes.clone());
                let ticker = tokio::spawn(async move {
                    let mut interval = tokio::time::interval(PLAIN_INTERVAL);
                    interval.tick().await;
                    loop {
                        interval.tick().await;
                        let n = bytes.load(Ordering::Relaxed);
                        let got = if n > 0 {
                            format!(", {} received", indicatif::HumanBytes(n))
                        } else {
                            String::new()
                        };
                        eprintln!(
                            "still {label} ({} elapsed{got})",
                            indicatif::HumanDuration(start.elapsed())
                        );
                    }
                });
                (None, Some(ticker))
            }
            Progress::Silent => (None, None),
        };
        Task {
            mode: self,
            label,
            start,
            bar,
            ticker,
            bytes,
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.green} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{elapsed}] {wide_bar} {bytes}/{total_bytes}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// One running step; finish it with [`Task::finish`] (dropping it unfinished clears the bar).
pub(crate) struct Task {
    mode: Progress,
    label: String,
    start: Instant,
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    bytes: Arc<AtomicU64>,
}

impl Task {
    /// Switches to a byte bar once the download size is known.
    pub fn set_length(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_style(bytes_style());
            bar.set_length(total);
        }
    }

    /// Records `n` more bytes received.
    pub fn inc(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Ends the step with a summary line (`"built kube-apiserver"`), adding the elapsed time.
    pub fn finish(mut self, msg: &str) {
        let line = format!(
            "{msg} in {}",
            indicatif::HumanDuration(self.start.elapsed())
        );
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.mode.line(&line);
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(bar) = self.bar.take() {
            bar.abandon_with_message(format!("{} (failed)", self.label));
        }
    }
}
