//! `--request-audit`: Rancher's requests to each cluster, counted by verb and resource.
//!
//! The main tunnel carries TLS end to end, so the agent cannot read Rancher's requests on the
//! way; each cluster's kube-apiserver can. With the option on, clusters are created with an
//! audit policy ([`crate::kwok::profile::REQUEST_AUDIT_POLICY`]) that writes one `Metadata` event
//! per request of Rancher's service account to `<cluster>/logs/audit.log` (rotated by the
//! apiserver at 1 MB, one backup) and nothing for anyone else. One task tails every cluster's log
//! (a poll every [`AUDIT_EVERY`], no inotify: its instances are the first host limit at scale)
//! and keeps the counts in memory, so a scrape reads no database.
//!
//! - Rotation: the open file is read to its end before the new one (another inode at the same
//!   path) is opened from its start, so no event of the old file is lost.
//! - Restart: a log found by the first sweep after the agent starts is read from its end, so
//!   an old log is never counted twice (counters cover this process's life, as Prometheus
//!   expects); a log appearing later (a cluster created since) is read from its start.
//! - Delete: a cluster whose directory is gone loses its series.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::kwok::profile::RANCHER_USER;

/// How often the logs are read.
pub const AUDIT_EVERY: Duration = Duration::from_secs(2);
/// Most bytes read from one cluster's log per sweep; the rest waits for the next sweep, so a
/// burst in one cluster cannot stall the others.
const MAX_READ_PER_SWEEP: usize = 8 << 20;
/// Most distinct (verb, resource, subresource) series per cluster; further ones are counted as
/// resource `other`. Rancher uses about 40 resources with a handful of verbs each.
const MAX_SERIES_PER_CLUSTER: usize = 500;
/// Longest line kept while waiting for its end (a Metadata event is under 2 KiB).
const MAX_LINE: usize = 1 << 20;

/// One counted series of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    pub verb: String,
    /// The resource (`namespaces`), or for a request without one the first segment of its path
    /// (`/version`, `/apis`, `/readyz`).
    pub resource: String,
    /// Empty when none.
    pub subresource: String,
}

/// Rancher's requests per cluster since the agent started.
#[derive(Debug, Default)]
pub struct RequestCounts {
    by_cluster: Mutex<BTreeMap<String, BTreeMap<RequestKey, u64>>>,
    /// Counted since the last write to the store.
    unsaved: Mutex<HashMap<(String, RequestKey), u64>>,
}

impl RequestCounts {
    /// Every series: (cluster, key, count), by cluster then key.
    pub fn snapshot(&self) -> Vec<(String, RequestKey, u64)> {
        let by_cluster = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        by_cluster
            .iter()
            .flat_map(|(cluster, keys)| {
                keys.iter()
                    .map(move |(key, n)| (cluster.clone(), key.clone(), *n))
            })
            .collect()
    }

    /// Appends `sca_rancher_apiserver_requests_total` to a `/metrics` text.
    pub fn render(&self, out: &mut String) {
        Self::declare(out);
        let by_cluster = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        for (cluster, keys) in by_cluster.iter() {
            for (key, n) in keys {
                let _ = writeln!(
                    out,
                    "sca_rancher_apiserver_requests_total{{cluster=\"{}\",verb=\"{}\",resource=\"{}\",subresource=\"{}\"}} {n}",
                    super::exposition::label(cluster),
                    super::exposition::label(&key.verb),
                    super::exposition::label(&key.resource),
                    super::exposition::label(&key.subresource),
                );
            }
        }
    }

    /// The family's `HELP` and `TYPE` without samples: what `/metrics` shows with the option off,
    /// so that dashboards and alerts name a declared metric either way.
    pub fn declare(out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sca_rancher_apiserver_requests_total Requests Rancher made to a cluster's \
             kube-apiserver through the main tunnel, by verb, resource and subresource (from the \
             apiserver's audit log; a watch counts when it opens)."
        );
        let _ = writeln!(out, "# TYPE sca_rancher_apiserver_requests_total counter");
    }

    /// Adds what was counted since the last call to the store's totals (one transaction).
    async fn save(&self, store: &crate::store::Store) {
        let unsaved: Vec<((String, RequestKey), u64)> = self
            .unsaved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let at_ms = crate::store::now_ms();
        let rows = unsaved
            .into_iter()
            .map(
                |((cluster, key), count)| crate::store::requests::RequestCount {
                    cluster,
                    verb: key.verb,
                    resource: key.resource,
                    subresource: key.subresource,
                    count,
                    at_ms,
                },
            )
            .collect();
        if let Err(error) = store.add_rancher_requests(rows).await {
            // Lost for the report only; the live counters have them.
            tracing::warn!(%error, "recording Rancher's requests");
        }
    }

    /// Adds a sweep's counts and drops the clusters that are gone.
    fn apply(&self, sweep: Sweep) {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_cluster = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        by_cluster.retain(|cluster, _| sweep.present.contains(cluster));
        for (cluster_name, counts) in sweep.counts {
            let series = by_cluster.entry(cluster_name.clone()).or_default();
            for (key, n) in counts {
                let key = if series.len() >= MAX_SERIES_PER_CLUSTER && !series.contains_key(&key) {
                    RequestKey {
                        verb: key.verb,
                        resource: "other".into(),
                        subresource: String::new(),
                    }
                } else {
                    key
                };
                *unsaved
                    .entry((cluster_name.clone(), key.clone()))
                    .or_default() += n;
                *series.entry(key).or_default() += n;
            }
        }
    }
}

/// Tails every cluster's audit log under `clusters_dir` every `every` until `stop`, adding the
/// counts to `store`'s totals every `save_every` (and once more at the end).
pub async fn tail_loop(
    counts: Arc<RequestCounts>,
    clusters_dir: PathBuf,
    every: Duration,
    store: crate::store::Store,
    save_every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tails = Tails::default();
    let mut last_save = tokio::time::Instant::now();
    loop {
        if last_save.elapsed() >= save_every || stop.is_cancelled() {
            counts.save(&store).await;
            last_save = tokio::time::Instant::now();
        }
        if stop.is_cancelled() {
            return;
        }
        let dir = clusters_dir.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let sweep = tails.sweep(&dir);
            (tails, sweep)
        })
        .await;
        match swept {
            Ok((kept, sweep)) => {
                tails = kept;
                counts.apply(sweep);
            }
            Err(error) => {
                // The positions went with the task: start again from the files' ends, as after
                // a restart, rather than count anything twice.
                tracing::warn!(%error, "reading the audit logs");
                tails = Tails::default();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// What one sweep found.
#[derive(Debug, Default)]
struct Sweep {
    /// Clusters whose directory exists.
    present: HashSet<String>,
    counts: HashMap<String, HashMap<RequestKey, u64>>,
}

/// The read position in every cluster's log.
#[derive(Debug, Default)]
struct Tails {
    swept_once: bool,
    by_cluster: HashMap<String, Tail>,
}

#[derive(Debug)]
struct Tail {
    file: File,
    inode: u64,
    offset: u64,
    /// The start of a line whose end is not written yet.
    partial: Vec<u8>,
}

impl Tails {
    fn sweep(&mut self, clusters_dir: &Path) -> Sweep {
        let mut sweep = Sweep::default();
        let entries = match std::fs::read_dir(clusters_dir) {
            Ok(entries) => entries,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(%error, dir = %clusters_dir.display(), "listing clusters");
                }
                self.by_cluster.clear();
                self.swept_once = true;
                return sweep;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let log = entry.path().join("logs").join("audit.log");
            sweep.present.insert(name.clone());
            let counts = sweep.counts.entry(name.clone()).or_default();
            if let Err(error) = self.read_cluster(&name, &log, counts) {
                tracing::debug!(%error, log = %log.display(), "reading an audit log");
            }
        }
        self.by_cluster
            .retain(|name, _| sweep.present.contains(name));
        sweep.counts.retain(|_, counts| !counts.is_empty());
        self.swept_once = true;
        sweep
    }

    fn read_cluster(
        &mut self,
        name: &str,
        log: &Path,
        counts: &mut HashMap<RequestKey, u64>,
    ) -> std::io::Result<()> {
        // The path is looked at before the open file is drained: once it names a new file the
        // apiserver writes nothing more to the old one, so draining after this sees it all.
        let current = match std::fs::metadata(log) {
            Ok(meta) => Some(meta),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        if let Some(tail) = self.by_cluster.get_mut(name) {
            tail.read(counts)?;
            let Some(meta) = current else {
                // Between the apiserver's rename and its create: the next sweep opens the new one.
                return Ok(());
            };
            if meta.ino() == tail.inode && meta.len() >= tail.offset {
                return Ok(());
            }
            // Rotated (a new inode) or truncated: the new contents from their start.
            self.by_cluster.remove(name);
            let mut tail = Tail::open(log, 0)?;
            tail.read(counts)?;
            self.by_cluster.insert(name.to_string(), tail);
            return Ok(());
        }
        let Some(meta) = current else {
            return Ok(());
        };
        let start = if self.swept_once { 0 } else { meta.len() };
        let mut tail = Tail::open(log, start)?;
        tail.read(counts)?;
        self.by_cluster.insert(name.to_string(), tail);
        Ok(())
    }
}

impl Tail {
    fn open(path: &Path, offset: u64) -> std::io::Result<Self> {
        let mut file = File::open(path)?;
        let inode = file.metadata()?.ino();
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            file,
            inode,
            offset,
            partial: Vec::new(),
        })
    }

    /// Reads what was appended since the last read (at most [`MAX_READ_PER_SWEEP`]) and counts
    /// its complete lines.
    fn read(&mut self, counts: &mut HashMap<RequestKey, u64>) -> std::io::Result<()> {
        let mut chunk = vec![0u8; 64 << 10];
        let mut read_total = 0;
        while read_total < MAX_READ_PER_SWEEP {
            let n = self.file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            read_total += n;
            self.offset += n as u64;
            let mut data = &chunk[..n];
            while let Some(end) = data.iter().position(|b| *b == b'\n') {
                let line = &data[..end];
                if self.partial.is_empty() {
                    count_line(line, counts);
                } else {
                    self.partial.extend_from_slice(line);
                    count_line(&std::mem::take(&mut self.partial), counts);
                }
                data = &data[end + 1..];
            }
            if self.partial.len() + data.len() <= MAX_LINE {
                self.partial.extend_from_slice(data);
            } else {
                // Not an audit event: dropped rather than held without bound.
                self.partial.clear();
            }
        }
        Ok(())
    }
}

/// The fields of an `audit.k8s.io/v1` Event the count needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    stage: String,
    verb: String,
    #[serde(rename = "requestURI", default)]
    request_uri: String,
    user: AuditUser,
    object_ref: Option<ObjectRef>,
}

#[derive(Debug, Deserialize)]
struct AuditUser {
    #[serde(default)]
    username: String,
}

#[derive(Debug, Deserialize)]
struct ObjectRef {
    resource: Option<String>,
    subresource: Option<String>,
}

/// Counts one log line if it is a request of Rancher's, once per request.
fn count_line(line: &[u8], counts: &mut HashMap<RequestKey, u64>) {
    if let Some(key) = request_of(line) {
        *counts.entry(key).or_default() += 1;
    }
}

/// The series of a log line, if it counts: Rancher's user (the policy logs no one else; checked
/// anyway, a policy file can be edited), and one stage per request. A long-running request (a
/// watch, exec, logs, a proxy) has a `ResponseStarted` event when it opens and a
/// `ResponseComplete` one when it ends, possibly much later: it counts when it opens. Any other
/// request has `ResponseComplete` alone.
fn request_of(line: &[u8]) -> Option<RequestKey> {
    let event: AuditEvent = serde_json::from_slice(line).ok()?;
    if event.user.username != RANCHER_USER {
        return None;
    }
    let (resource, subresource) = match &event.object_ref {
        Some(object) => (
            object.resource.clone().unwrap_or_default(),
            object.subresource.clone().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    let counted = match event.stage.as_str() {
        "ResponseStarted" => true,
        "ResponseComplete" | "Panic" => !long_running(&event.verb, &subresource),
        _ => false,
    };
    if !counted {
        return None;
    }
    let resource = if resource.is_empty() {
        first_segment(&event.request_uri)
    } else {
        bounded(&resource)
    };
    Some(RequestKey {
        verb: bounded(&event.verb),
        resource,
        subresource: if subresource.is_empty() {
            subresource
        } else {
            bounded(&subresource)
        },
    })
}

/// The apiserver's own rule for requests that get a `ResponseStarted` stage
/// (`BasicLongRunningRequestCheck` of verbs watch and proxy and subresources attach, exec,
/// proxy, log and portforward, as kube-apiserver configures it).
fn long_running(verb: &str, subresource: &str) -> bool {
    matches!(verb, "watch" | "proxy")
        || matches!(
            subresource,
            "attach" | "exec" | "proxy" | "log" | "portforward"
        )
}

/// A label value from the apiserver's words: kept if it looks like a resource or verb name.
fn bounded(word: &str) -> String {
    let ok = !word.is_empty()
        && word.len() <= 63
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        word.to_string()
    } else {
        "other".into()
    }
}

/// `/version` of `/version?timeout=32s`, `/apis` of `/apis/apps/v1`: the first path segment,
/// which keeps non-resource requests (discovery, health) to a few series.
fn first_segment(uri: &str) -> String {
    let path = uri.split(['?', '#']).next().unwrap_or_default();
    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if segment.is_empty() {
        "/".into()
    } else {
        format!("/{}", bounded(segment))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn event(
        stage: &str,
        user: &str,
        verb: &str,
        resource: Option<(&str, &str)>,
        uri: &str,
    ) -> String {
        let object = resource
            .map(|(r, s)| {
                if s.is_empty() {
                    format!(r#","objectRef":{{"resource":"{r}","apiVersion":"v1"}}"#)
                } else {
                    format!(
                        r#","objectRef":{{"resource":"{r}","subresource":"{s}","apiVersion":"v1"}}"#
                    )
                }
            })
            .unwrap_or_default();
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"x","stage":"{stage}","requestURI":"{uri}","verb":"{verb}","user":{{"username":"{user}","groups":["system:serviceaccounts"]}}{object},"responseStatus":{{"code":200}}}}"#
        )
    }

    fn key(verb: &str, resource: &str, subresource: &str) -> RequestKey {
        RequestKey {
            verb: verb.into(),
            resource: resource.into(),
            subresource: subresource.into(),
        }
    }

    #[test]
    fn one_count_per_request_of_rancher_only() {
        let ns = Some(("namespaces", ""));
        let cases = [
            (
                event(
                    "ResponseComplete",
                    RANCHER_USER,
                    "list",
                    ns,
                    "/api/v1/namespaces",
                ),
                Some(key("list", "namespaces", "")),
            ),
            (
                event(
                    "ResponseStarted",
                    RANCHER_USER,
                    "watch",
                    ns,
                    "/api/v1/namespaces?watch=1",
                ),
                Some(key("watch", "namespaces", "")),
            ),
            (
                event(
                    "ResponseComplete",
                    RANCHER_USER,
                    "watch",
                    ns,
                    "/api/v1/namespaces?watch=1",
                ),
                None,
            ),
            (
                event(
                    "ResponseStarted",
                    RANCHER_USER,
                    "get",
                    Some(("pods", "log")),
                    "/api/v1/namespaces/a/pods/b/log",
                ),
                Some(key("get", "pods", "log")),
            ),
            (
                event(
                    "ResponseComplete",
                    RANCHER_USER,
                    "get",
                    Some(("pods", "log")),
                    "/api/v1/namespaces/a/pods/b/log",
                ),
                None,
            ),
            (
                event(
                    "ResponseComplete",
                    RANCHER_USER,
                    "get",
                    None,
                    "/version?timeout=32s",
                ),
                Some(key("get", "/version", "")),
            ),
            (
                event(
                    "ResponseComplete",
                    RANCHER_USER,
                    "get",
                    None,
                    "/apis/apps/v1",
                ),
                Some(key("get", "/apis", "")),
            ),
            (
                event(
                    "ResponseComplete",
                    "kubernetes-admin",
                    "list",
                    ns,
                    "/api/v1/namespaces",
                ),
                None,
            ),
            (
                event(
                    "RequestReceived",
                    RANCHER_USER,
                    "list",
                    ns,
                    "/api/v1/namespaces",
                ),
                None,
            ),
            (
                event(
                    "ResponseComplete",
                    RANCHER_USER,
                    "list",
                    Some(("Bad Name", "")),
                    "/x",
                ),
                Some(key("list", "other", "")),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(request_of(line.as_bytes()), want, "{line}");
        }
        assert_eq!(request_of(b"not json"), None);
    }

    #[test]
    fn the_user_is_the_one_the_agent_hands_rancher() {
        assert_eq!(
            RANCHER_USER,
            format!(
                "system:serviceaccount:{}:{}",
                crate::agent::prepare::NAMESPACE,
                crate::agent::prepare::SERVICE_ACCOUNT
            )
        );
    }

    fn append(path: &Path, lines: &[String]) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
    }

    #[test]
    fn tails_across_rotation_partial_lines_restart_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("a").join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join("audit.log");
        let list = event(
            "ResponseComplete",
            RANCHER_USER,
            "list",
            Some(("namespaces", "")),
            "/api/v1/namespaces",
        );
        append(&log, &[list.clone(), list.clone()]);
        let counts = RequestCounts::default();
        let list_key = ("a".to_string(), key("list", "namespaces", ""));
        let total = |counts: &RequestCounts| {
            counts
                .snapshot()
                .into_iter()
                .find(|(c, k, _)| (c.clone(), k.clone()) == list_key)
                .map(|(_, _, n)| n)
                .unwrap_or(0)
        };

        // A log found at start is read from its end: what an earlier agent counted is not
        // counted again.
        let mut tails = Tails::default();
        counts.apply(tails.sweep(dir.path()));
        assert_eq!(total(&counts), 0);
        append(&log, std::slice::from_ref(&list));
        counts.apply(tails.sweep(dir.path()));
        assert_eq!(total(&counts), 1);

        // A line written in two pieces counts once, when complete.
        let (head, rest) = list.split_at(40);
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(head.as_bytes()).unwrap();
        counts.apply(tails.sweep(dir.path()));
        assert_eq!(total(&counts), 1);
        writeln!(file, "{rest}").unwrap();
        counts.apply(tails.sweep(dir.path()));
        assert_eq!(total(&counts), 2);

        // Rotation as the apiserver's logger does it: the last lines of the old file, a rename,
        // a new file; all counted once.
        append(&log, std::slice::from_ref(&list));
        std::fs::rename(&log, logs.join("audit-2026-12-02T03-00-00.000.log")).unwrap();
        append(&log, &[list.clone(), list.clone()]);
        counts.apply(tails.sweep(dir.path()));
        assert_eq!(total(&counts), 5);

        // A cluster created after the start is read from its beginning.
        let b_logs = dir.path().join("b").join("logs");
        std::fs::create_dir_all(&b_logs).unwrap();
        append(&b_logs.join("audit.log"), std::slice::from_ref(&list));
        counts.apply(tails.sweep(dir.path()));
        assert!(counts
            .snapshot()
            .iter()
            .any(|(c, _, n)| c == "b" && *n == 1));

        // Deleted: its series go.
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        counts.apply(tails.sweep(dir.path()));
        assert_eq!(total(&counts), 0);
        assert!(counts.snapshot().iter().all(|(c, _, _)| c == "b"));
        let mut text = String::new();
        counts.render(&mut text);
        assert!(text.contains(
            "sca_rancher_apiserver_requests_total{cluster=\"b\",verb=\"list\",resource=\"namespaces\",subresource=\"\"} 1\n"
        ), "{text}");
    }

    #[test]
    fn series_per_cluster_are_bounded() {
        let counts = RequestCounts::default();
        let mut sweep = Sweep::default();
        sweep.present.insert("a".into());
        let many: HashMap<RequestKey, u64> = (0..MAX_SERIES_PER_CLUSTER + 10)
            .map(|i| (key("get", &format!("r{i}"), ""), 1))
            .collect();
        sweep.counts.insert("a".into(), many);
        counts.apply(sweep);
        let snapshot = counts.snapshot();
        assert!(snapshot.len() <= MAX_SERIES_PER_CLUSTER + 1);
        assert_eq!(
            snapshot.iter().map(|(_, _, n)| n).sum::<u64>(),
            (MAX_SERIES_PER_CLUSTER + 10) as u64
        );
    }
}
