//! `--request-audit` and per-cluster memory, against real processes: an agent with the option
//! on brings a cluster up against rancher-sim; its real kube-apiserver runs with the audit flags,
//! the agent's `sca_rancher_apiserver_requests_total` follows what rancher-sim counts it did
//! (its health check's `get namespaces`, its informers' `watch`), requests of another
//! identity (the cluster's admin kubeconfig) are neither logged nor counted, and the run report
//! shows the requests and the cluster's memory as `/proc` has it. Without the option (the
//! default) the apiserver has no audit flag at all. Ports 29000–29300.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PodTemplate};
use kube::api::{Api, ListParams};
use scale_cluster_agent::api::ApiToken;
use scale_cluster_agent::app::RunningAgent;
use scale_cluster_agent::kwok::{ClusterManager, ComponentProfile, CreateRequest};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::{AgentPhase, Store};
use support::rancher_sim;

const DEADLINE: Duration = Duration::from_secs(300);
const TOKEN: &str = "request-audit-test-token-0123456789";
const RANCHER_USER: &str = "system:serviceaccount:cattle-system:cattle";

/// Kills every process of the test's directory (the clusters' and the shared etcd) at the end.
struct KwokGuard(std::path::PathBuf);

impl Drop for KwokGuard {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}

async fn scrape(api: &str) -> String {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
        .get(format!("{api}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics body")
}

/// The count of Rancher's `verb` of `resource` on `cluster` (0 without a series).
fn requests(text: &str, cluster: &str, verb: &str, resource: &str) -> u64 {
    let series = format!(
        "sca_rancher_apiserver_requests_total{{cluster=\"{cluster}\",verb=\"{verb}\",resource=\"{resource}\",subresource=\"\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("cmdline")
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn rss_mib(pid: u32) -> f64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // The page size of x86_64 and arm64 Linux as configured here; read from the kernel's own
    // view of this process to stay independent of the product.
    let page = std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(4.0);
    pages * page / 1024.0
}

/// Every event of the cluster's audit log, as the apiserver wrote it.
fn audit_events(cluster_dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(cluster_dir.join("logs").join("audit.log"))
        .expect("audit log")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON event"))
        .collect()
}

fn apiserver_pid(cluster_dir: &std::path::Path) -> u32 {
    support::cluster_processes(cluster_dir)
        .get("kube-apiserver")
        .map(|(pid, _)| *pid)
        .expect("the cluster's kube-apiserver runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rancher_requests_are_counted_by_verb_and_resource_and_the_report_shows_memory() {
    let sim =
        tokio::task::spawn_blocking(|| rancher_sim::start(support::agent_home::sim_options()))
            .await
            .expect("starting rancher-sim");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(29000, 10, 3).expect("port range");
    let _kwok = KwokGuard(dir.path().to_path_buf());
    tokio::task::spawn_blocking(support::toolchain)
        .await
        .expect("toolchain");
    let mut agent_settings = sim.agent_settings();
    agent_settings.api_token = Some(ApiToken::new(TOKEN).expect("token"));
    agent_settings.request_audit = true;
    let running = RunningAgent::start(&settings, &agent_settings)
        .await
        .expect("agent starts");
    let api = running.url.clone();
    let name = "aud-a";
    running
        .agent
        .create(name, ComponentProfile::Lean)
        .await
        .expect("create");
    let id = support::eventually(DEADLINE, "the cluster active", || async {
        let view = running.agent.get(name).await.ok()?;
        (view.phase == AgentPhase::Active)
            .then_some(view.rancher_cluster_id)
            .flatten()
    })
    .await;
    support::agent_home::wait_active_in_rancher(&sim, &id).await;

    // The real apiserver writes the audit log, bounded.
    let cluster_dir = settings.kwok_workdir.join("clusters").join(name);
    let pid = apiserver_pid(&cluster_dir);
    let args = cmdline(pid);
    for flag in [
        "--audit-policy-file=",
        "--audit-log-path=",
        "--audit-log-maxsize=1",
        "--audit-log-maxbackup=1",
    ] {
        assert!(
            args.iter().any(|a| a.starts_with(flag)),
            "{flag} in {args:?}"
        );
    }

    // rancher-sim's health check gets namespace kube-system once per check; its kubectl apply
    // of the manifest gets namespaces too (as many as the apiserver logged with kubectl's
    // User-Agent). The agent counts at least the checks rancher-sim made before the scrape, and
    // no more than it made by after it (one more may be under way), plus kubectl's.
    let before = sim.stats(&id).await["stats"].clone();
    let health_before = before["healthOk"].as_u64().expect("healthOk");
    assert!(health_before > 0, "{before}");
    let text = support::eventually(DEADLINE, "the health checks counted", || async {
        let text = scrape(&api).await;
        (requests(&text, name, "get", "namespaces") >= health_before).then_some(text)
    })
    .await;
    let after = sim.stats(&id).await["stats"].clone();
    let counted = requests(&text, name, "get", "namespaces");
    let gets: Vec<(String, String)> = audit_events(&cluster_dir)
        .iter()
        .filter(|e| e["verb"] == "get" && e["objectRef"]["resource"] == "namespaces")
        .map(|e| {
            (
                e["objectRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["userAgent"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let by_kubectl = gets
        .iter()
        .filter(|(_, ua)| ua.starts_with("kubectl/"))
        .count() as u64;
    let most = after["healthOk"].as_u64().unwrap_or(0)
        + after["healthFailed"].as_u64().unwrap_or(0)
        + 1
        + by_kubectl;
    assert!(
        counted <= most,
        "{counted} get namespaces counted, rancher-sim made at most {most}: {after}\n{gets:?}"
    );

    // Its informers: each start opens a watch of namespaces (client-go's streaming list: a watch
    // with the initial events, no separate list), counted when it opens.
    let starts = after["informerStarts"].as_u64().expect("informerStarts");
    assert!(starts >= 1, "{after}");
    let watches = requests(&text, name, "watch", "namespaces");
    assert!(
        watches >= starts,
        "watch namespaces: {watches} < {starts} informer starts\n{text}"
    );

    // Another identity (the cluster's admin kubeconfig, as kubectl or the agent itself use): not
    // in the log, not counted. Once the counter moved past two more health checks, the tailer
    // read beyond those requests.
    let admin = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(cluster_dir.join("kubeconfig.yaml"))
                .expect("admin kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kube config"),
    )
    .expect("kube client");
    for _ in 0..3 {
        Api::<PodTemplate>::all(admin.clone())
            .list(&ListParams::default())
            .await
            .expect("admin lists pod templates");
        Api::<ConfigMap>::all(admin.clone())
            .list(&ListParams::default())
            .await
            .expect("admin lists config maps");
    }
    let mark = requests(&scrape(&api).await, name, "get", "namespaces");
    let text = support::eventually(DEADLINE, "two more health checks counted", || async {
        let text = scrape(&api).await;
        (requests(&text, name, "get", "namespaces") >= mark + 2).then_some(text)
    })
    .await;
    for resource in ["podtemplates", "configmaps"] {
        assert_eq!(
            requests(&text, name, "list", resource),
            0,
            "the admin's list {resource} was counted:\n{text}"
        );
    }
    let events = audit_events(&cluster_dir);
    assert!(!events.is_empty());
    for event in events {
        assert_eq!(event["user"]["username"], RANCHER_USER, "{event}");
        assert_eq!(event["level"], "Metadata", "{event}");
        assert_ne!(event["stage"], "RequestReceived", "{event}");
    }

    // Memory: wait for a sample with the cluster in it, then the report, made by the CLI after
    // the agent stopped, from the data dir alone (the cluster keeps running).
    let store = Store::open(&settings.state_db()).expect("state db");
    support::eventually(DEADLINE, "a memory sample of the cluster", || async {
        store.cluster_memory(name).await.ok().flatten()
    })
    .await;
    running.stop().await.expect("stop");
    let report = dir.path().join("report.md");
    support::write_report(&settings.data_dir, "markdown", &report).await;
    let markdown = std::fs::read_to_string(&report).expect("report");
    // The first row starting with `prefix` after the heading `section`.
    let cells = |section: &str, prefix: &str| -> Vec<String> {
        markdown
            .lines()
            .skip_while(|l| !l.starts_with(section))
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in\n{markdown}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let row = cells(
        "## Rancher requests by verb/resource",
        "| get | namespaces |",
    );
    let reported: u64 = row[2].parse().expect("a count");
    assert!(reported >= counted, "{row:?} vs {counted}\n{markdown}");
    // The cluster's own process (its apiserver: etcd is shared and its controllers run in the
    // controller host) as /proc has it now, within what an idle apiserver drifts.
    let row = cells("## Memory per cluster", &format!("| {name} |"));
    assert_eq!(row[1], "1", "{row:?}");
    let (rss, now) = (row[2].parse::<f64>().expect("RSS"), rss_mib(pid));
    assert!(
        (rss - now).abs() <= (now * 0.25).max(20.0),
        "report {rss} MiB vs /proc {now} MiB\n{markdown}"
    );
    let pss: f64 = row[3].parse().expect("PSS known for a single process");
    assert!(pss > 0.0 && pss <= rss * 1.05, "{row:?}");
    let etcd = cells("## Memory per cluster", "| etcd (shared) |");
    let etcd_pid: u32 = std::fs::read_to_string(settings.data_dir.join("etcd").join("etcd.pid"))
        .expect("shared etcd pid file")
        .trim()
        .parse()
        .expect("pid");
    let (reported, now) = (etcd[1].parse::<f64>().expect("RSS"), rss_mib(etcd_pid));
    assert!(
        (reported - now).abs() <= (now * 0.25).max(20.0),
        "etcd: report {reported} MiB vs /proc {now} MiB"
    );
    assert!(markdown.contains("| cluster memory p50 / max (RSS, last sample) |"));
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_the_apiserver_has_no_audit_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The settings as the CLI resolves them (no --request-audit anywhere).
    let mut settings = support::settings();
    settings.data_dir = dir.path().join("data");
    settings.kwok_workdir = dir.path().join("kwok");
    settings.ports = PortRange::new(29200, 10, 3).expect("port range");
    let _kwok = KwokGuard(dir.path().to_path_buf());
    let toolchain = tokio::task::spawn_blocking(support::toolchain)
        .await
        .expect("toolchain");
    let kwok = settings.kwok();
    assert!(!kwok.request_audit);
    let store = Store::open(&settings.state_db()).expect("state db");
    let manager = ClusterManager::new(&kwok, toolchain, store);
    manager
        .create(CreateRequest {
            name: "plain".into(),
            profile: ComponentProfile::Lean,
            population: Default::default(),
        })
        .await
        .expect("create");
    let cluster_dir = settings.kwok_workdir.join("clusters").join("plain");
    let args = cmdline(apiserver_pid(&cluster_dir));
    assert!(
        args.iter().all(|a| !a.contains("audit")),
        "audit flags without the option: {args:?}"
    );
    assert!(!cluster_dir.join("logs").join("audit.log").exists());
    manager.delete("plain").await.expect("delete");
}
