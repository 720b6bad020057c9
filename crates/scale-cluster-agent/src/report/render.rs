//! The report as HTML (one file, inline CSS and SVG, nothing fetched) or Markdown (the same
//! numbers as tables, for a pull request or a wiki page).

use std::fmt::Write as _;

use super::svg::{self, Series, COLOURS};
use super::{Report, TIMELINE_GROUPS};
use crate::observe::MEASURED_PHASES;
use crate::store::memory::MemorySummary;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Markdown,
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Html => html(report),
        Format::Markdown => markdown(report),
    }
}

/// RFC 3339 UTC, to the second.
pub fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The percentile rows: (label, count, p50, p90, p99, max).
fn percentile_rows(report: &Report) -> Vec<(String, String, String, String, String, String)> {
    MEASURED_PHASES
        .iter()
        .map(|p| p.as_str())
        .chain(["create_to_active"])
        .filter_map(|name| {
            report.percentiles.get(name).map(|p| {
                (
                    name.replace('_', " "),
                    p.count.to_string(),
                    format!("{:.2}", p.p50),
                    format!("{:.2}", p.p90),
                    format!("{:.2}", p.p99),
                    format!("{:.2}", p.max),
                )
            })
        })
        .collect()
}

fn summary_rows(report: &Report) -> Vec<(&'static str, String)> {
    vec![
        (
            "window",
            format!("{} → {}", time(report.from_ms), time(report.to_ms)),
        ),
        ("events", report.events.to_string()),
        ("clusters created", report.created.to_string()),
        (
            "clusters that reached active",
            report.first_active.to_string(),
        ),
        ("failed steps", report.failures.to_string()),
        ("tunnel drops", report.disconnects.to_string()),
        ("tunnel reconnects", report.reconnects.to_string()),
        (
            "agent memory (max RSS)",
            report
                .samples
                .iter()
                .map(|s| s.rss_bytes)
                .max()
                .map(|b| format!("{:.1} MiB", mib(b)))
                .unwrap_or_else(|| "not sampled".into()),
        ),
        (
            "cluster memory p50 / max (RSS, last sample)",
            report
                .memory
                .last()
                .filter(|m| m.clusters > 0)
                .map(|m| {
                    format!(
                        "{:.1} / {:.1} MiB over {} clusters",
                        mib(m.rss_p50),
                        mib(m.rss_max),
                        m.clusters
                    )
                })
                .unwrap_or_else(|| "not sampled".into()),
        ),
    ]
}

/// Rows of the per-cluster memory table: cluster, processes, RSS MiB, PSS MiB.
fn cluster_memory_rows(report: &Report) -> Vec<[String; 4]> {
    report
        .cluster_memory
        .iter()
        .map(|c| {
            [
                c.cluster.clone(),
                c.processes.to_string(),
                format!("{:.1}", mib(c.rss_bytes)),
                c.pss_bytes
                    .map(|b| format!("{:.1}", mib(b)))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

/// Rows of the shared processes at the last sample: name, RSS MiB, PSS MiB.
fn shared_rows(report: &Report) -> Vec<[String; 3]> {
    report
        .memory
        .last()
        .map(|m| {
            m.shared
                .iter()
                .map(|p| {
                    [
                        p.name.clone(),
                        format!("{:.1}", mib(p.rss_bytes)),
                        p.pss_bytes
                            .map(|b| format!("{:.1}", mib(b)))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Rows of Rancher's requests: verb, resource, requests, clusters.
fn request_rows(report: &Report) -> Vec<[String; 4]> {
    report
        .requests
        .iter()
        .map(|r| {
            [
                r.verb.clone(),
                r.resource.clone(),
                r.count.to_string(),
                r.clusters.to_string(),
            ]
        })
        .collect()
}

/// An HTML table with a header row; every cell escaped, numbers right-aligned from `numeric_from`.
fn html_table<const N: usize>(
    out: &mut String,
    id: &str,
    header: [&str; N],
    rows: &[[String; N]],
    numeric_from: usize,
) {
    let _ = write!(out, "<table id=\"{id}\"><tr>");
    for h in header {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if i >= numeric_from {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// A Markdown table with a header row, numbers right-aligned from `numeric_from`.
fn markdown_table<const N: usize>(
    out: &mut String,
    header: [&str; N],
    rows: &[[String; N]],
    numeric_from: usize,
) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> = (0..N)
        .map(|i| if i >= numeric_from { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn settings_rows(report: &Report) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    if let Some(started) = report.run_started_ms {
        rows.push(("run started".to_string(), time(started)));
    }
    if let Some(serde_json::Value::Object(map)) = &report.settings {
        for (key, value) in map {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rows.push((key.clone(), value));
        }
    }
    rows
}

fn charts(report: &Report) -> Vec<String> {
    let start = report.from_ms;
    let minutes = move |x: f64| format!("{:.1} min", x);
    let rel = |ms: i64| (ms - start) as f64 / 60_000.0;
    let mut out = Vec::new();
    // CDF of create→active.
    let n = report.create_to_active.len() as f64;
    let cdf: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            report
                .create_to_active
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, (i + 1) as f64 / n * 100.0)),
        )
        .collect();
    out.push(svg::lines(
        "Create → active (CDF)",
        "seconds from creation to active",
        "% of clusters",
        &[Series {
            name: "clusters",
            colour: COLOURS[0],
            points: if report.create_to_active.is_empty() {
                vec![]
            } else {
                cdf
            },
            step: true,
        }],
        &|x| format!("{x:.0} s"),
    ));
    // Clusters by phase over time.
    let series: Vec<Series<'_>> = TIMELINE_GROUPS
        .iter()
        .enumerate()
        .map(|(g, name)| Series {
            name,
            colour: COLOURS[g],
            points: report
                .timeline
                .iter()
                .map(|(at, counts)| (rel(*at), counts[g] as f64))
                .collect(),
            step: true,
        })
        .filter(|s| s.points.iter().any(|(_, y)| *y > 0.0))
        .collect();
    out.push(svg::lines(
        "Clusters by phase",
        "minutes into the window",
        "clusters",
        &series,
        &minutes,
    ));
    // Tunnel drops per minute.
    let buckets = ((report.to_ms - report.from_ms) / 60_000 + 1).clamp(1, 10_000) as usize;
    let mut per_minute = vec![0usize; buckets];
    for at in &report.disconnect_times {
        let i = ((at - report.from_ms) / 60_000).clamp(0, buckets as i64 - 1) as usize;
        per_minute[i] += 1;
    }
    out.push(svg::lines(
        "Tunnel drops per minute",
        "minutes into the window",
        "drops",
        &[Series {
            name: "drops",
            colour: COLOURS[3],
            points: per_minute
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64, *n as f64))
                .collect(),
            step: true,
        }],
        &minutes,
    ));
    // Agent memory and CPU.
    let cpu: Vec<(f64, f64)> = report
        .samples
        .windows(2)
        .filter(|w| w[1].at_ms > w[0].at_ms && w[1].cpu_seconds >= w[0].cpu_seconds)
        .map(|w| {
            let dt = (w[1].at_ms - w[0].at_ms) as f64 / 1000.0;
            (
                rel(w[1].at_ms),
                (w[1].cpu_seconds - w[0].cpu_seconds) / dt * 100.0,
            )
        })
        .collect();
    out.push(svg::lines(
        "Agent memory (RSS, MiB) and CPU (%)",
        "minutes into the window",
        "MiB / %",
        &[
            Series {
                name: "RSS MiB",
                colour: COLOURS[0],
                points: report
                    .samples
                    .iter()
                    .map(|s| (rel(s.at_ms), mib(s.rss_bytes)))
                    .collect(),
                step: false,
            },
            Series {
                name: "CPU %",
                colour: COLOURS[1],
                points: cpu,
                step: false,
            },
        ],
        &minutes,
    ));
    if !report.memory.is_empty() {
        let series = |name: &'static str,
                      colour: usize,
                      value: &dyn Fn(&MemorySummary) -> Option<u64>| Series {
            name,
            colour: COLOURS[colour],
            points: report
                .memory
                .iter()
                .filter_map(|m| Some((rel(m.at_ms), mib(value(m)?))))
                .collect(),
            step: false,
        };
        let all = [
            series("RSS p50", 0, &|m| (m.clusters > 0).then_some(m.rss_p50)),
            series("RSS max", 1, &|m| (m.clusters > 0).then_some(m.rss_max)),
            series("PSS p50", 2, &|m| m.pss_p50),
            series("PSS max", 3, &|m| m.pss_max),
            series("shared processes (RSS)", 4, &|m| {
                (!m.shared.is_empty()).then(|| m.shared.iter().map(|p| p.rss_bytes).sum())
            }),
        ];
        let kept: Vec<Series<'_>> = all.into_iter().filter(|s| !s.points.is_empty()).collect();
        out.push(svg::lines(
            "Memory per cluster (its own processes, MiB) and shared processes",
            "minutes into the window",
            "MiB",
            &kept,
            &minutes,
        ));
    }
    out.push(svg::bars(
        "Rancher load per cluster (top, bytes both ways)",
        "MiB",
        &report
            .top_load
            .iter()
            .map(|l| (l.cluster.clone(), mib(l.bytes_received + l.bytes_sent)))
            .collect::<Vec<_>>(),
    ));
    out
}

/// Each scenario run: a title (name, id, seed, how it ended) and one row per stage.
fn scenario_rows(report: &Report) -> Vec<(String, Vec<[String; 5]>)> {
    report
        .scenarios
        .iter()
        .map(|run| {
            let mut title = format!(
                "{} ({}, seed {}): {}",
                run.name,
                run.id,
                run.seed,
                run.state.as_str()
            );
            if let Some(reason) = &run.reason {
                title.push_str(&format!(": {reason}"));
            }
            let rows = run
                .stages
                .iter()
                .map(|stage| {
                    let took = stage
                        .finished_at_ms
                        .map(|end| format!("{:.1} s", (end - stage.started_at_ms) as f64 / 1000.0))
                        .unwrap_or_else(|| "-".into());
                    [
                        stage.index.to_string(),
                        stage.kind.clone(),
                        stage
                            .outcome
                            .map(|o| o.as_str().to_string())
                            .unwrap_or_else(|| "running".into()),
                        took,
                        stage
                            .summary
                            .as_ref()
                            .map(|s| s.to_string())
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            (title, rows)
        })
        .collect()
}

fn html(report: &Report) -> String {
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>scale-cluster-agent \
         run report</title><style>body{font:14px/1.4 system-ui,sans-serif;color:#1d2433;\
         max-width:760px;margin:24px auto;padding:0 12px}table{border-collapse:collapse;\
         margin:8px 0 16px}th,td{text-align:left;padding:3px 10px;border-bottom:1px solid #e3e6ee}\
         td.n{text-align:right;font-variant-numeric:tabular-nums}h2{margin-top:28px}\
         svg{display:block;margin:12px 0;max-width:100%;height:auto}</style></head><body>\
         <h1>scale-cluster-agent run report</h1>",
    );
    out.push_str("<h2>Summary</h2><table id=\"summary\">");
    for (key, value) in summary_rows(report) {
        let _ = write!(
            out,
            "<tr><th>{}</th><td class=\"n\">{}</td></tr>",
            key,
            escape(&value)
        );
    }
    out.push_str("</table><h2>Phase latency (seconds)</h2><table id=\"percentiles\"><tr><th>phase</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>");
    for (name, count, p50, p90, p99, max) in percentile_rows(report) {
        let _ = write!(
            out,
            "<tr><td>{name}</td><td class=\"n\">{count}</td><td class=\"n\">{p50}</td><td class=\"n\">{p90}</td><td class=\"n\">{p99}</td><td class=\"n\">{max}</td></tr>"
        );
    }
    out.push_str("</table><h2>Plots</h2>");
    for chart in charts(report) {
        out.push_str(&chart);
    }
    out.push_str("<h2>Rancher load per cluster (top)</h2><table id=\"load\"><tr><th>cluster</th><th>streams opened</th><th>watches open</th><th>from Rancher</th><th>to Rancher</th></tr>");
    for l in &report.top_load {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2} MiB</td><td class=\"n\">{:.2} MiB</td></tr>",
            escape(&l.cluster),
            l.streams_opened,
            l.streams_long_lived,
            mib(l.bytes_received),
            mib(l.bytes_sent)
        );
    }
    out.push_str("</table>");
    if !report.requests.is_empty() {
        out.push_str("<h2>Rancher requests by verb/resource (top)</h2>");
        html_table(
            &mut out,
            "requests",
            ["verb", "resource", "requests", "clusters"],
            &request_rows(report),
            2,
        );
    }
    if !report.cluster_memory.is_empty() || !report.memory.is_empty() {
        out.push_str("<h2>Memory per cluster (last sample, top)</h2>");
        html_table(
            &mut out,
            "cluster-memory",
            ["cluster", "processes", "RSS MiB", "PSS MiB"],
            &cluster_memory_rows(report),
            1,
        );
        out.push_str("<h3>Shared processes (last sample)</h3>");
        html_table(
            &mut out,
            "shared-memory",
            ["process", "RSS MiB", "PSS MiB"],
            &shared_rows(report),
            1,
        );
    }
    out.push_str("<h2>Failures by reason</h2><table id=\"failures\">");
    for (reason, n) in &report.failures_by_reason {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
            escape(reason)
        );
    }
    out.push_str("</table><h2>Recent failures</h2><table>");
    for f in &report.recent_failures {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(f.at_ms),
            escape(&f.cluster),
            escape(&f.phase),
            escape(&f.error)
        );
    }
    out.push_str("</table>");
    if !report.scenarios.is_empty() {
        out.push_str("<h2>Scenario runs</h2>");
        for (title, rows) in scenario_rows(report) {
            let _ = write!(
                out,
                "<h3>{}</h3><table class=\"scenario\"><tr><th>#</th><th>stage</th><th>outcome</th><th>took</th><th>result</th></tr>",
                escape(&title)
            );
            for row in rows {
                out.push_str("<tr>");
                for cell in row {
                    let _ = write!(out, "<td>{}</td>", escape(&cell));
                }
                out.push_str("</tr>");
            }
            out.push_str("</table>");
        }
    }
    out.push_str("<h2>Settings of the run</h2><table id=\"settings\">");
    for (key, value) in settings_rows(report) {
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

fn markdown(report: &Report) -> String {
    let mut out =
        String::from("# scale-cluster-agent run report\n\n## Summary\n\n| | |\n|---|---:|\n");
    for (key, value) in summary_rows(report) {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    out.push_str("\n## Phase latency (seconds)\n\n| phase | count | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, count, p50, p90, p99, max) in percentile_rows(report) {
        let _ = writeln!(out, "| {name} | {count} | {p50} | {p90} | {p99} | {max} |");
    }
    out.push_str("\n## Rancher load per cluster (top)\n\n| cluster | streams opened | watches open | from Rancher (MiB) | to Rancher (MiB) |\n|---|---:|---:|---:|---:|\n");
    for l in &report.top_load {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {:.2} |",
            l.cluster,
            l.streams_opened,
            l.streams_long_lived,
            mib(l.bytes_received),
            mib(l.bytes_sent)
        );
    }
    if !report.requests.is_empty() {
        out.push_str("\n## Rancher requests by verb/resource (top)\n\n");
        markdown_table(
            &mut out,
            ["verb", "resource", "requests", "clusters"],
            &request_rows(report),
            2,
        );
    }
    if !report.cluster_memory.is_empty() || !report.memory.is_empty() {
        out.push_str("\n## Memory per cluster (last sample, top)\n\n");
        markdown_table(
            &mut out,
            ["cluster", "processes", "RSS MiB", "PSS MiB"],
            &cluster_memory_rows(report),
            1,
        );
        out.push_str("\nShared processes (last sample):\n\n");
        markdown_table(
            &mut out,
            ["process", "RSS MiB", "PSS MiB"],
            &shared_rows(report),
            1,
        );
    }
    out.push_str("\n## Failures by reason\n\n| reason | count |\n|---|---:|\n");
    for (reason, n) in &report.failures_by_reason {
        let _ = writeln!(out, "| {reason} | {n} |");
    }
    for (title, rows) in scenario_rows(report) {
        let _ = write!(
            out,
            "\n## Scenario run {title}\n\n| # | stage | outcome | took | result |\n|---:|---|---|---:|---|\n"
        );
        for row in rows {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out.push_str("\n## Settings of the run\n\n| setting | value |\n|---|---|\n");
    for (key, value) in settings_rows(report) {
        let _ = writeln!(out, "| {key} | {} |", value.replace('|', "\\|"));
    }
    out.push_str("\nPlots: `--format html`.\n");
    out
}
