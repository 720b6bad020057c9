//! What the CLI prints, read from the real binary: kubectl-style tables (`-o wide`), the objects
//! (`-o json|yaml`), RFC 3339 times with ages in `cluster get`, log lines free of colour codes
//! when stderr is a pipe, and a quiet, successful end when stdout's reader is gone (`| head`). The agent it talks to is a stand-in HTTP server answering the agent
//! API's JSON, so the clusters (and their ages) are exactly known.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Path as UrlPath;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Unix seconds as the agent API writes times: RFC 3339.
fn time(unix_seconds: u64) -> String {
    scale_cluster_agent::agent::view::rfc3339::format(unix_seconds).expect("in range")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Two clusters as the agent API shows them: one created 3h25m ago, active for an hour, healed 20
/// minutes ago and being scaled from 2 to 3 nodes, one created 10 minutes ago that failed with a
/// long, multi-line error. (Ages that stay the same for
/// a minute, however slowly the CLI starts.)
fn clusters(now: u64) -> Value {
    json!([
        {
            "name": "sim-00001", "phase": "active", "profile": "lean",
            "rancher_cluster_id": "c-m-abc12", "rancher_state": "active",
            "apiserver": "https://127.0.0.1:8001",
            "tunnels": {"main": "connected", "steve": "connected"},
            "last_error": null, "attempts": 1,
            "stop_requested": false, "desired_nodes": 3, "nodes": 2,
            "last_heal": "restarted etcd (etcd process gone)",
            "last_heal_at": time(now - 1200),
            "created_at": time(now - (3 * 3600 + 25 * 60)), "active_at": time(now - 3600)
        },
        {
            "name": "sim-00002", "phase": "failed", "profile": "full",
            "rancher_cluster_id": null, "rancher_state": null, "apiserver": null,
            "tunnels": {"main": "down", "steve": "down"},
            "last_error": format!("registering: {}\nsecond line", "x".repeat(80)),
            "attempts": 4,
            "stop_requested": false, "desired_nodes": 2, "nodes": null,
            "created_at": time(now - 600), "active_at": null
        }
    ])
}

/// Serves `/health`, `/clusters` and `/clusters/{name}`; returns the base URL.
async fn stand_in_agent() -> String {
    let list = clusters(now());
    let one = list.clone();
    let app = Router::new()
        .route(
            "/health",
            get(|| async {
                Json(json!({"status": "ok", "instance_id": "test", "clusters": 2,
                            "active": 1, "failed": 1, "tunnels_connected": 2}))
            }),
        )
        .route("/clusters", get(move || async move { Json(list) }))
        .route(
            "/clusters/{name}",
            get(move |UrlPath(name): UrlPath<String>| async move {
                let found = one
                    .as_array()
                    .and_then(|all| all.iter().find(|c| c["name"] == name.as_str()))
                    .cloned();
                Json(found.unwrap_or(Value::Null))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Run {
    stdout: String,
    stderr: String,
}

/// Runs the CLI against the stand-in agent (found through `agent.json`, with this test's pid as
/// the live agent pid), stdout and stderr both pipes.
async fn cli(home: &Path, args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
            .args(args)
            .env("HOME", home)
            .env("SCA_DATA_DIR", home.join("data"))
            .env("SCA_KWOK_WORKDIR", home.join("kwok"))
            .env_remove("NO_COLOR")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("CLI finished in time")
    .expect("CLI ran");
    let run = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

async fn home_with_agent() -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    let url = stand_in_agent().await;
    scale_cluster_agent::api::discovery::write(&home.path().join("data"), &url)
        .expect("agent.json");
    home
}

/// The cells of a kubectl-style table, split on the three-space column gaps.
fn cells(line: &str) -> Vec<&str> {
    line.split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test]
async fn cluster_list_is_a_kubectl_table_and_wide_adds_columns() {
    let home = home_with_agent().await;
    let plain = cli(home.path(), &["cluster", "list"]).await;
    let lines: Vec<&str> = plain.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", plain.stdout);
    assert_eq!(
        cells(lines[0]),
        [
            "NAME",
            "PHASE",
            "RANCHER ID",
            "RANCHER STATE",
            "TUNNELS (MAIN/STEVE)",
            "AGE",
            "LAST ERROR"
        ]
    );
    let first = cells(lines[1]);
    assert_eq!(
        first,
        [
            "sim-00001",
            "active",
            "c-m-abc12",
            "active",
            "connected/connected",
            "3h25m",
            "<none>"
        ]
    );
    let second = cells(lines[2]);
    assert_eq!(
        second[..6],
        [
            "sim-00002",
            "failed",
            "<none>",
            "<none>",
            "down/down",
            "10m"
        ]
    );
    assert!(second[6].starts_with("registering: xxx") && second[6].ends_with('…'));
    // Aligned: every column starts at the same offset on every line.
    let age_at = lines[0].find("AGE").expect("AGE header");
    assert_eq!(&lines[1][age_at..age_at + 5], "3h25m");
    assert_eq!(&lines[2][age_at..age_at + 3], "10m");
    for line in &lines {
        assert!(!line.ends_with(' '), "trailing spaces: {line:?}");
        assert!(
            !line.contains(['│', '─', '┌', '╭', '|']),
            "a border: {line}"
        );
    }

    let wide = cli(home.path(), &["cluster", "list", "-o", "wide"]).await;
    let lines: Vec<&str> = wide.stdout.lines().collect();
    assert_eq!(
        cells(lines[0])[6..],
        ["PROFILE", "APISERVER", "NODES", "ATTEMPTS", "LAST ERROR"]
    );
    assert_eq!(
        cells(lines[1])[6..10],
        ["lean", "https://127.0.0.1:8001", "2/3", "1"]
    );
    assert_eq!(cells(lines[2])[7..9], ["<none>", "-/2"]);
    // The whole error, on one line.
    let error = cells(lines[2])[10];
    assert_eq!(
        error,
        format!("registering: {} second line", "x".repeat(80))
    );
}

#[tokio::test]
async fn cluster_list_prints_the_objects_as_json_and_yaml() {
    let home = home_with_agent().await;
    let json_out = cli(home.path(), &["cluster", "list", "-o", "json"]).await;
    let from_json: Value = serde_json::from_str(&json_out.stdout).expect("JSON");
    let yaml_out = cli(home.path(), &["cluster", "list", "-o", "yaml"]).await;
    let from_yaml: Value = serde_yaml::from_str(&yaml_out.stdout).expect("YAML");
    assert_eq!(from_json, from_yaml);
    assert_eq!(from_json[0]["name"], "sim-00001");
    assert_eq!(from_json[1]["attempts"], 4);
}

#[tokio::test]
async fn cluster_get_prints_rfc3339_times_with_ages() {
    let home = home_with_agent().await;
    let out = cli(home.path(), &["cluster", "get", "sim-00001"]).await;
    let field = |name: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} in {}", out.stdout))
            .to_string()
    };
    let created = field("created:");
    let (stamp, age) = created.split_once(' ').expect("time and age");
    let parsed: jiff::Timestamp = stamp.parse().expect("RFC 3339");
    let expected = now() - (3 * 3600 + 25 * 60);
    assert!(
        parsed.as_second().abs_diff(expected as i64) <= 60,
        "{created}"
    );
    assert!(stamp.ends_with('Z'), "{created}");
    assert_eq!(age, "(3h25m ago)");
    assert!(
        field("active since:").ends_with("(60m ago)"),
        "{}",
        out.stdout
    );
    let heal = field("last heal:");
    let (stamp, rest) = heal.split_once(' ').expect("time, age and what");
    let parsed: jiff::Timestamp = stamp.parse().expect("RFC 3339");
    assert!(
        parsed.as_second().abs_diff((now() - 1200) as i64) <= 60,
        "{heal}"
    );
    assert_eq!(rest, "(20m ago) (restarted etcd (etcd process gone))");
    assert_eq!(field("nodes:"), "2 (desired 3)");
    assert!(!out.stdout.contains("unix seconds"), "{}", out.stdout);
    // No raw unix seconds anywhere: every number of ten digits would be one.
    assert!(
        !out.stdout
            .split(|c: char| !c.is_ascii_digit())
            .any(|n| n.len() >= 10),
        "{}",
        out.stdout
    );
}

/// `cluster list | head -1` with the reader already gone: no panic, no error, status 0, as
/// kubectl ends. The pipe's read end is closed before the CLI starts, so every write fails.
#[tokio::test]
async fn a_closed_stdout_ends_the_command_quietly_and_successfully() {
    let home = home_with_agent().await;
    for args in [
        &["cluster", "list"][..],
        &["cluster", "list", "-o", "json"],
        &["cluster", "get", "sim-00001"],
    ] {
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        // `spawn`, not `output`: `output` would replace this stdout with a pipe of its own.
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
            .args(args)
            .env("HOME", home.path())
            .env("SCA_DATA_DIR", home.path().join("data"))
            .env("SCA_KWOK_WORKDIR", home.path().join("kwok"))
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("CLI started");
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("CLI finished in time")
            .expect("CLI ran");
        assert!(out.stdout.is_empty(), "stdout went to the closed pipe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: {stderr}"
        );
    }
}

/// Log lines written to a pipe carry no ANSI escape codes.
#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let home = home_with_agent().await;
    let out = cli(home.path(), &["--log", "debug", "cluster", "list"]).await;
    // The HTTP client's connection log: proof that log lines were written at all.
    assert!(out.stderr.contains("DEBUG"), "no log lines: {}", out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "colour codes: {:?}",
        out.stderr
    );
    assert!(
        !out.stdout.contains('\u{1b}'),
        "colour codes: {:?}",
        out.stdout
    );
}
