//! Seeing a run: two clusters brought up against rancher-sim, Rancher restarted under them (every
//! tunnel drops and reconnects), then the agent's `/metrics`, `/status`, the status page as
//! headless Chromium renders it, the Grafana dashboard's queries and the run report are checked
//! against each other and against what the API and rancher-sim say.
//!
//! Chromium (Debian package `chromium`) is required; `.ci/run` installs it. With
//! `SCA_STATUS_SCREENSHOT=<png>` the test also saves a screenshot of the page there (how
//! `docs/status-page.png` is made).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use scale_cluster_agent::api::ApiToken;
use scale_cluster_agent::app::RunningAgent;
use scale_cluster_agent::config::Settings;
use scale_cluster_agent::kwok::ComponentProfile;
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::AgentPhase;
use support::rancher_sim;

const DEADLINE: Duration = Duration::from_secs(300);
/// A throwaway token of this test's own agent: the page must work with the API's auth.
const TOKEN: &str = "observability-test-token-0123456789";

struct KwokGuard(std::path::PathBuf);

impl Drop for KwokGuard {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

async fn get(url: &str) -> reqwest::Response {
    let response = http()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    response
}

async fn scrape(api: &str) -> String {
    get(&format!("{api}/metrics"))
        .await
        .text()
        .await
        .expect("metrics body")
}

/// The value of the series written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Every metric family the scrape declares (`# TYPE name kind`), with its kind.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

fn chromium() -> &'static str {
    for candidate in ["chromium", "chromium-browser"] {
        if std::process::Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return candidate;
        }
    }
    panic!("headless Chromium is required (apt-get install -y chromium; .ci/run does it)")
}

/// The page's DOM after its script polled `/status` (Chromium's virtual time runs the timers).
async fn rendered_dom(page: &str) -> String {
    let browser = chromium();
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let output = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(page)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("chromium finishes")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("DOM is UTF-8")
}

async fn screenshot(page: &str, png: &str) {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let status = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,860",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={png}"))
        .arg(page)
        .kill_on_drop(true)
        .status()
        .await
        .expect("chromium runs");
    assert!(status.success(), "screenshot");
}

/// The `data-<attr>` of the element with `id` in a DOM dump.
fn data_attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_end = at + dom[at..].find('>')?;
    let start = dom[..at].rfind('<')?;
    let tag = &dom[start..tag_end];
    let key = format!("data-{attr}=\"");
    let from = tag.find(&key)? + key.len();
    let len = tag[from..].find('"')?;
    Some(tag[from..from + len].to_string())
}

/// Metric names a PromQL expression mentions (the agent's `sca_*` and `process_*`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (expr[i..].starts_with("sca_") || expr[i..].starts_with("process_")) {
            let len = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - i);
            names.insert(expr[i..i + len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

fn dashboard_queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/scale-cluster-agent.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard JSON");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut queries = Vec::new();
    for panel in json["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in json["templating"]["list"].as_array().expect("variables") {
        if let Some(query) = variable["query"].as_str().filter(|q| q.contains('(')) {
            queries.push(query.to_string());
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_page_dashboard_and_report_agree_with_the_run() {
    let mut sim =
        tokio::task::spawn_blocking(|| rancher_sim::start(support::agent_home::sim_options()))
            .await
            .expect("starting rancher-sim");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings: Settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(28000, 10, 3).expect("port range");
    let _kwok = KwokGuard(settings.kwok_workdir.clone());
    tokio::task::spawn_blocking(support::toolchain)
        .await
        .expect("toolchain");
    let mut agent_settings = sim.agent_settings();
    agent_settings.api_token = Some(ApiToken::new(TOKEN).expect("token"));
    agent_settings.concurrency = 2;
    let running = RunningAgent::start(&settings, &agent_settings)
        .await
        .expect("agent starts");
    let api = running.url.clone();

    let names = ["obs-a", "obs-b"];
    for name in names {
        running
            .agent
            .create(name, ComponentProfile::Lean)
            .await
            .expect("create");
    }
    let mut ids = Vec::new();
    for name in names {
        let id = support::eventually(DEADLINE, &format!("{name} active"), || async {
            let view = running.agent.get(name).await.ok()?;
            (view.phase == AgentPhase::Active)
                .then_some(view.rancher_cluster_id)
                .flatten()
        })
        .await;
        support::agent_home::wait_active_in_rancher(&sim, &id).await;
        ids.push(id);
    }

    // Lifecycle histograms: one observation per cluster and measured phase.
    let text = scrape(&api).await;
    assert_eq!(
        value(&text, "sca_cluster_create_to_active_seconds_count"),
        Some(2.0),
        "{text}"
    );
    for phase in ["provisioning", "registering", "connecting"] {
        assert_eq!(
            value(
                &text,
                &format!("sca_cluster_phase_duration_seconds_count{{phase=\"{phase}\"}}")
            ),
            Some(2.0),
            "{phase}: {text}"
        );
    }

    // Rancher restarted under the clusters: every tunnel drops and reconnects, and each
    // reconnect is timed.
    sim = tokio::task::spawn_blocking(move || {
        sim.restart();
        sim
    })
    .await
    .expect("restarting rancher-sim");
    let text = support::eventually(DEADLINE, "both clusters' tunnels to reconnect", || async {
        let text = scrape(&api).await;
        ["main", "steve"]
            .iter()
            .all(|tunnel| {
                value(
                    &text,
                    &format!("sca_tunnel_reconnect_duration_seconds_count{{tunnel=\"{tunnel}\"}}"),
                )
                .is_some_and(|n| n >= 2.0)
            })
            .then_some(text)
    })
    .await;
    let drops: f64 = text
        .lines()
        .filter(|l| l.starts_with("sca_tunnel_disconnects_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(drops >= 4.0, "two tunnels of two clusters dropped: {text}");

    // Rancher load per cluster: rancher-sim probes /ping through each steve tunnel, one stream
    // each; the agent counted at least the pings the sim counted since its restart (read first).
    for (name, id) in names.iter().zip(&ids) {
        let (pings, text) = support::eventually(DEADLINE, "rancher-sim pings", || async {
            let stats = sim.stats(id).await;
            let pings = stats["stats"]["pingsOk"].as_u64().filter(|p| *p > 0)?;
            Some((pings, scrape(&api).await))
        })
        .await;
        let series = |family: &str| {
            value(
                &text,
                &format!("{family}{{cluster=\"{name}\",tunnel=\"steve\"}}"),
            )
            .unwrap_or_else(|| panic!("no {family} for {name}: {text}"))
        };
        let opened = series("sca_rancher_streams_opened_total");
        assert!(
            opened >= pings as f64,
            "{name}: {opened} streams, sim saw {pings} pings"
        );
        assert!(
            series("sca_rancher_sent_bytes_total") > 0.0,
            "{name} answered the pings"
        );
        assert!(
            series("sca_rancher_received_bytes_total") > 0.0,
            "{name} got requests"
        );
    }
    assert!(value(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);

    // /status agrees with /clusters.
    let clusters: Vec<serde_json::Value> = get(&format!("{api}/clusters"))
        .await
        .json()
        .await
        .expect("clusters");
    let status: serde_json::Value = get(&format!("{api}/status"))
        .await
        .json()
        .await
        .expect("status");
    let active = clusters.iter().filter(|c| c["phase"] == "active").count();
    assert_eq!(status["clusters"]["active"].as_u64(), Some(active as u64));
    assert_eq!(status["total"].as_u64(), Some(clusters.len() as u64));
    assert_eq!(
        status["percentiles"]["create_to_active"]["count"].as_u64(),
        Some(2)
    );
    assert_eq!(status["tunnels"]["connected"].as_u64(), Some(4), "{status}");

    // The status page, as Chromium renders it, shows the same numbers.
    let page = format!("{api}/#token={TOKEN}");
    let dom = rendered_dom(&page).await;
    assert!(
        dom.contains("data-loaded-at"),
        "the page never loaded /status: {dom}"
    );
    assert_eq!(
        data_attr(&dom, "phase-active", "count").as_deref(),
        Some(active.to_string().as_str()),
        "{dom}"
    );
    let p50 = status["percentiles"]["create_to_active"]["p50"]
        .as_f64()
        .expect("p50");
    let shown: f64 = data_attr(&dom, "latency-create_to_active", "p50")
        .expect("create→active row")
        .parse()
        .expect("number");
    assert!((shown - p50).abs() < 1e-9, "page {shown} vs API {p50}");
    let total = dom
        .split("id=\"total\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("total cell");
    assert_eq!(total, clusters.len().to_string());
    // Without the token the page says so instead of showing numbers.
    let denied = rendered_dom(&format!("{api}/")).await;
    assert!(denied.contains("unauthorized"), "{denied}");
    if let Ok(png) = std::env::var("SCA_STATUS_SCREENSHOT") {
        screenshot(&page, &png).await;
    }

    // Every query of the Grafana dashboard names a metric this agent exports.
    let exported = families(&text);
    for query in dashboard_queries() {
        let names = metric_names(&query);
        assert!(!names.is_empty(), "query names no metric: {query}");
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| exported.get(*base).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&name);
            assert!(
                exported.contains_key(family),
                "{name} (in {query}) is not exported"
            );
        }
    }

    // The run report, made by the CLI after the agent stopped, from the data dir alone.
    let mut views: Vec<(u64, u64)> = Vec::new();
    for name in names {
        let view = running.agent.get(name).await.expect("view");
        views.push((view.created_at, view.active_at.expect("active_at")));
    }
    running.stop().await.expect("stop");
    let report_path = dir.path().join("report.md");
    let html_path = dir.path().join("report.html");
    for (format, path) in [("markdown", &report_path), ("html", &html_path)] {
        support::write_report(&settings.data_dir, format, path).await;
    }
    let markdown = std::fs::read_to_string(&report_path).expect("report");
    assert!(markdown.contains("| clusters created | 2 |"), "{markdown}");
    assert!(
        markdown.contains("| clusters that reached active | 2 |"),
        "{markdown}"
    );
    let reconnects: u64 = markdown
        .lines()
        .find_map(|l| l.strip_prefix("| tunnel reconnects | "))
        .and_then(|rest| rest.trim_end_matches(" |").parse().ok())
        .expect("reconnects row");
    assert!(reconnects >= 4, "{markdown}");
    // create→active p50 and max against the API's own second-resolution stamps.
    let row = markdown
        .lines()
        .find(|l| l.starts_with("| create to active |"))
        .expect("create→active row");
    let cells: Vec<f64> = row
        .split('|')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut api_seconds: Vec<f64> = views.iter().map(|(c, a)| (a - c) as f64).collect();
    api_seconds.sort_by(f64::total_cmp);
    assert_eq!(cells[0], 2.0, "{row}");
    assert!(
        (cells[1] - api_seconds[0]).abs() <= 1.5,
        "{row} vs {api_seconds:?}"
    );
    assert!(
        (cells[4] - api_seconds[1]).abs() <= 1.5,
        "{row} vs {api_seconds:?}"
    );
    assert!(markdown.contains("| concurrency | 2 |"), "{markdown}");
    let html = std::fs::read_to_string(&html_path).expect("html report");
    assert!(html.matches("<svg").count() >= 5, "plots inline");
    assert!(
        !html.contains("src=") && !html.contains("<link"),
        "nothing fetched"
    );
    drop(sim);
}
