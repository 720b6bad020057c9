//! Toolchain provisioning end to end: downloads from a local mirror (success, checksum mismatch,
//! 404), explicit paths, missing `go`, a real `go build` of kwokctl, concurrent installs and
//! idempotence. None of these touch the default cache.

mod support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use scale_cluster_agent::toolchain::{
    self, parse_version, Component, Progress, Source, SourcePreference, ToolchainError,
    ToolchainOptions,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Go architecture name, as the download URLs use it.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A tiny HTTP/1.1 file server on 127.0.0.1 that counts requests per path.
struct Mirror {
    base_url: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Mirror {
    async fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let files = Arc::new(files);
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (files, counter) = (files.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    *counter.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                    let (status, body) = match files.get(&path) {
                        Some(body) => ("200 OK", body.clone()),
                        None => ("404 Not Found", b"not found".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Mirror { base_url, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

/// A shell script that prints what `component`'s version command prints at the pinned version.
fn fake_binary(component: Component, version: &str) -> Vec<u8> {
    let line = match component {
        Component::KubeApiserver | Component::KubeControllerManager | Component::KubeScheduler => {
            format!("Kubernetes {version}")
        }
        Component::Kubectl => format!("Client Version: {version}"),
        Component::Etcd => format!("etcd Version: {}", version.trim_start_matches('v')),
        Component::Kwok => format!("kwok version {version} go1.26.8 (linux/amd64)"),
        Component::Kwokctl => format!("kwokctl version {version} go1.26.8 (linux/amd64)"),
        Component::SteveHost => format!("steve-host version {version}"),
        Component::ControllerHost => format!("controller-host version {version}"),
    };
    format!("#!/bin/sh\necho '{line}'\n").into_bytes()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The official layout (see `toolchain::MIRROR_LAYOUT`) with fake binaries and their checksums.
/// `corrupt` components get a checksum that does not match.
fn mirror_files(corrupt: &[Component]) -> HashMap<String, Vec<u8>> {
    let arch = arch();
    let mut files = HashMap::new();
    for c in Component::ALL {
        let body = fake_binary(c, c.pinned_version());
        let digest = if corrupt.contains(&c) {
            sha256_hex(b"something else")
        } else {
            sha256_hex(&body)
        };
        let version = c.pinned_version();
        match c {
            Component::Etcd => {
                let dir = format!("/etcd-io/etcd/releases/download/{version}");
                let stem = format!("etcd-{version}-linux-{arch}");
                let tarball = etcd_tarball(&stem, &body);
                let digest = if corrupt.contains(&c) {
                    sha256_hex(b"something else")
                } else {
                    sha256_hex(&tarball)
                };
                files.insert(
                    format!("{dir}/SHA256SUMS"),
                    format!(
                        "{}  etcd-{version}-darwin-amd64.zip\n{digest}  {stem}.tar.gz\n",
                        "0".repeat(64)
                    )
                    .into_bytes(),
                );
                files.insert(format!("{dir}/{stem}.tar.gz"), tarball);
            }
            Component::Kwok | Component::Kwokctl => {
                let path =
                    format!("/kubernetes-sigs/kwok/releases/download/{version}/{c}-linux-{arch}");
                files.insert(format!("{path}.sha256"), format!("{digest}\n").into_bytes());
                files.insert(path, body);
            }
            _ => {
                let path = format!("/release/{version}/bin/linux/{arch}/{c}");
                files.insert(format!("{path}.sha256"), digest.into_bytes());
                files.insert(path, body);
            }
        }
    }
    files
}

/// A gzipped tarball like etcd's release: `<stem>/etcd` plus a README.
fn etcd_tarball(stem: &str, etcd: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data, mode) in [
        (format!("{stem}/README.md"), b"etcd".as_slice(), 0o644),
        (format!("{stem}/etcd"), etcd, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Options for a private cache that ignore `PATH` and download from `mirror`.
fn mirror_opts(cache: &Path, mirror: &Mirror) -> ToolchainOptions {
    let mut opts = ToolchainOptions::new(cache);
    opts.search_path = Some(OsString::new());
    opts.source = SourcePreference::Download;
    opts.download_base_url = Some(mirror.base_url.clone());
    opts
}

/// Every regular file under `dir` except the install lock and logs.
fn cached_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(cached_files(&path));
        } else if path.file_name() != Some(".install.lock".as_ref()) {
            out.push(path);
        }
    }
    out
}

fn run_version(component: Component, path: &Path) -> String {
    let args: &[&str] = if component == Component::Kubectl {
        &["version", "--client"]
    } else {
        &["--version"]
    };
    let out = Command::new(path).args(args).output().unwrap();
    assert!(out.status.success(), "{} {args:?} failed", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn download_installs_every_component_and_second_install_is_a_no_op() {
    let mirror = Mirror::start(mirror_files(&[])).await;
    let tmp = tempfile::tempdir().unwrap();
    let opts = mirror_opts(tmp.path(), &mirror);

    let tc = toolchain::install(&opts, Progress::Silent).await.unwrap();
    for c in Component::ALL {
        let path = tc.path(c).unwrap();
        assert_eq!(path, c.cache_path(tmp.path()), "{c}");
        let out = run_version(c, path);
        assert_eq!(
            parse_version(c, &out).as_deref(),
            Some(c.pinned_version()),
            "{c}: {out}"
        );
    }
    // Only the binaries are left in the cache: no temporary files, no tarball.
    let mut files = cached_files(tmp.path());
    files.sort();
    let mut expected: Vec<_> = Component::ALL
        .iter()
        .map(|c| c.cache_path(tmp.path()))
        .collect();
    expected.sort();
    assert_eq!(files, expected);
    let first_round = mirror.total_hits();
    assert_eq!(first_round, 14, "one binary and one checksum per component");

    // Idempotent: everything is found in the cache, nothing is fetched again.
    let again = toolchain::install(&opts, Progress::Silent).await.unwrap();
    assert_eq!(again, tc);
    assert_eq!(mirror.total_hits(), first_round);
    assert_eq!(toolchain::locate(&opts).await.unwrap(), tc);
    let status = toolchain::status(&opts).await;
    // The hosts have no release to download: status reports them missing.
    assert!(status
        .iter()
        .filter(|s| Component::ALL.contains(&s.component))
        .all(|s| s.usable && s.source == Source::Cache));
    for host in [Component::SteveHost, Component::ControllerHost] {
        assert!(status
            .iter()
            .any(|s| s.component == host && s.source == Source::Missing));
    }
}

#[tokio::test]
async fn checksum_mismatch_is_an_error_and_leaves_nothing_in_the_cache() {
    let mirror = Mirror::start(mirror_files(&[Component::Kwokctl, Component::Etcd])).await;
    let tmp = tempfile::tempdir().unwrap();
    let opts = mirror_opts(tmp.path(), &mirror);

    for c in [Component::Kwokctl, Component::Etcd] {
        let err = toolchain::install_component(&opts, c, Progress::Silent)
            .await
            .unwrap_err();
        match &err {
            ToolchainError::ChecksumMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &sha256_hex(b"something else"));
                assert_ne!(actual, expected);
                let msg = err.to_string();
                assert!(msg.contains(expected) && msg.contains(actual), "{msg}");
            }
            other => panic!("{c}: expected a checksum mismatch, got {other:?}"),
        }
    }
    assert_eq!(cached_files(tmp.path()), Vec::<PathBuf>::new());
    assert!(matches!(
        toolchain::locate(&opts).await,
        Err(ToolchainError::Missing { .. })
    ));

    // The uncorrupted components still install from the same mirror.
    let ok = toolchain::install_component(&opts, Component::Kwok, Progress::Silent)
        .await
        .unwrap();
    assert_eq!(ok.source, Source::Downloaded);
}

#[tokio::test]
async fn missing_release_file_is_a_clear_error() {
    let mirror = Mirror::start(HashMap::new()).await;
    let tmp = tempfile::tempdir().unwrap();
    let opts = mirror_opts(tmp.path(), &mirror);
    let err = toolchain::install_component(&opts, Component::KubeScheduler, Progress::Silent)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ToolchainError::Download { .. }), "{err:?}");
    assert!(msg.contains("404"), "{msg}");
    assert!(
        msg.contains(&format!(
            "/release/v1.36.1/bin/linux/{}/kube-scheduler.sha256",
            arch()
        )),
        "{msg}"
    );
    assert_eq!(cached_files(tmp.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn concurrent_installs_download_each_file_once() {
    let mirror = Mirror::start(mirror_files(&[])).await;
    let tmp = tempfile::tempdir().unwrap();
    let opts = mirror_opts(tmp.path(), &mirror);
    let (a, b) = tokio::join!(
        tokio::spawn({
            let opts = opts.clone();
            async move { toolchain::install(&opts, Progress::Silent).await }
        }),
        tokio::spawn({
            let opts = opts.clone();
            async move { toolchain::install(&opts, Progress::Silent).await }
        }),
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a, b);
    let arch = arch();
    for path in [
        format!("/release/v1.36.1/bin/linux/{arch}/kube-apiserver"),
        format!("/kubernetes-sigs/kwok/releases/download/v0.8.0/kwokctl-linux-{arch}"),
        format!("/etcd-io/etcd/releases/download/v3.6.16/etcd-v3.6.16-linux-{arch}.tar.gz"),
    ] {
        assert_eq!(mirror.hits(&path), 1, "{path}");
    }
    assert_eq!(mirror.total_hits(), 14);
    for c in Component::ALL {
        let out = run_version(c, a.path(c).unwrap());
        assert_eq!(parse_version(c, &out).as_deref(), Some(c.pinned_version()));
    }
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn explicit_path_must_exist_and_report_the_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("kube-apiserver");
    write_script(&wrong, "echo 'Kubernetes v1.35.0'");
    let mut opts = ToolchainOptions::new(tmp.path().join("cache"));
    opts.search_path = Some(OsString::new());
    opts.explicit
        .insert(Component::KubeApiserver, wrong.clone());
    let err = toolchain::locate(&opts).await.unwrap_err();
    match &err {
        ToolchainError::WrongVersion {
            component,
            path,
            found,
            expected,
        } => {
            assert_eq!(*component, Component::KubeApiserver);
            assert_eq!(path, &wrong);
            assert_eq!(found, "v1.35.0");
            assert_eq!(*expected, "v1.36.1");
        }
        other => panic!("expected WrongVersion, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("v1.35.0") && msg.contains("v1.36.1"), "{msg}");
    let st = toolchain::status(&opts).await;
    let api = st
        .iter()
        .find(|s| s.component == Component::KubeApiserver)
        .unwrap();
    assert!(!api.usable);
    assert_eq!(api.version.as_deref(), Some("v1.35.0"));

    let gone = tmp.path().join("no-such-etcd");
    opts.explicit.clear();
    opts.explicit.insert(Component::Etcd, gone.clone());
    let err = toolchain::locate(&opts).await.unwrap_err();
    assert!(
        matches!(&err, ToolchainError::ExplicitNotFound { path, .. } if path == &gone),
        "{err:?}"
    );
}

#[tokio::test]
async fn explicit_wrong_version_fails_install_without_building() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("kwok");
    write_script(&wrong, "echo 'kwok version v0.7.0 go1.24.0 (linux/amd64)'");
    let mut opts = ToolchainOptions::new(tmp.path().join("cache"));
    opts.search_path = Some(OsString::new());
    opts.go = Some(tmp.path().join("no-go-here"));
    opts.explicit.insert(Component::Kwok, wrong);
    let err = toolchain::install_component(&opts, Component::Kwok, Progress::Silent)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ToolchainError::WrongVersion { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn missing_go_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = ToolchainOptions::new(tmp.path());
    opts.search_path = Some(OsString::new());
    opts.source = SourcePreference::Build;

    // No `go` on the (empty) search path.
    let err = toolchain::install_component(&opts, Component::Kwokctl, Progress::Silent)
        .await
        .unwrap_err();
    assert!(matches!(err, ToolchainError::NoGo { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("go.dev/dl"), "{msg}");
    assert!(msg.contains("--download-base-url"), "{msg}");

    // An explicit `go` that does not exist.
    opts.go = Some(tmp.path().join("nonexistent/go"));
    let err = toolchain::install_component(&opts, Component::Kwokctl, Progress::Silent)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nonexistent/go"), "{err}");

    assert_eq!(cached_files(tmp.path()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn failed_build_names_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let go = tmp.path().join("go");
    write_script(
        &go,
        "echo 'pkg/thing.go:1:1: syntax error: unexpected junk' >&2; exit 1",
    );
    let cache = tmp.path().join("cache");
    let mut opts = ToolchainOptions::new(&cache);
    opts.search_path = Some(OsString::new());
    opts.source = SourcePreference::Build;
    opts.go = Some(go);
    let err = toolchain::install_component(&opts, Component::Etcd, Progress::Silent)
        .await
        .unwrap_err();
    let ToolchainError::BuildFailed { log, detail, .. } = &err else {
        panic!("expected BuildFailed, got {err:?}");
    };
    assert!(log.starts_with(&cache), "{}", log.display());
    assert!(
        err.to_string().contains(&log.display().to_string()),
        "{err}"
    );
    assert!(detail.contains("syntax error"), "{detail}");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("-trimpath") && text.contains("go.etcd.io/etcd/server/v3"));
    assert!(text.contains("syntax error: unexpected junk"), "{text}");
    assert!(!Component::Etcd.cache_path(&cache).exists());
}

/// The real `go` on PATH; these tests need it (the project builds its toolchain with it).
fn real_go() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("go"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`go` must be on PATH to test the build path"))
}

#[tokio::test]
async fn builds_kwokctl_from_the_embedded_module() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = ToolchainOptions::new(tmp.path());
    opts.search_path = Some(OsString::new());
    opts.source = SourcePreference::Build;
    opts.go = Some(real_go());
    let installed = toolchain::install_component(&opts, Component::Kwokctl, Progress::Plain)
        .await
        .unwrap();
    assert_eq!(installed.source, Source::Built);
    assert_eq!(installed.path, Component::Kwokctl.cache_path(tmp.path()));
    let out = run_version(Component::Kwokctl, &installed.path);
    assert!(out.starts_with("kwokctl version v0.8.0 "), "{out}");
    // Built outside the repository: the log shows the temporary module directory.
    let log = tmp.path().join("logs/build-kwokctl-v0.8.0.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sca-go-kwok-"), "{text}");
    assert!(!text.contains("/tools/kwok"), "{text}");

    let again = toolchain::install_component(&opts, Component::Kwokctl, Progress::Silent)
        .await
        .unwrap();
    assert_eq!(again.source, Source::Cache);
    assert_eq!(again.path, installed.path);
}

/// The shared helper returns a complete toolchain whose kube binaries report the pin (not
/// `v0.0.0-master`), which is what Rancher reads from `/version`.
#[test]
fn support_toolchain_is_complete_and_stamped() {
    let tc = support::toolchain();
    for c in Component::ALL {
        let out = run_version(c, tc.path(c).unwrap());
        assert_eq!(
            parse_version(c, &out).as_deref(),
            Some(c.pinned_version()),
            "{c} at {}: {out}",
            tc.path(c).unwrap().display()
        );
    }
}

/// Two CLI processes installing into one cache take turns on the lock: every file is fetched once
/// and both succeed.
#[tokio::test]
async fn concurrent_install_processes_share_one_download() {
    let mirror = Mirror::start(mirror_files(&[])).await;
    let tmp = tempfile::tempdir().unwrap();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
            .args(["toolchain", "install", "--source", "download", "--plain"])
            .env("SCA_CACHE_DIR", tmp.path())
            .env("SCA_DOWNLOAD_BASE_URL", &mirror.base_url)
            // An empty PATH keeps host binaries (e.g. a kubectl) out of the picture.
            .env("PATH", "")
            .env("HOME", tmp.path())
            .output()
    };
    let (a, b) = tokio::join!(spawn(), spawn());
    for out in [a.unwrap(), b.unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("kube-apiserver"), "{table}");
    }
    assert_eq!(mirror.total_hits(), 14);
    let mut opts = ToolchainOptions::new(tmp.path());
    opts.search_path = Some(OsString::new());
    let tc = toolchain::locate(&opts).await.unwrap();
    assert_eq!(tc.etcd, Component::Etcd.cache_path(tmp.path()));
}

/// A Kubernetes component built by the build path carries the version stamps, so `--version` (and
/// the apiserver's `/version`, from the same variables) report the pin, never `v0.0.0-master`.
/// Fast when Go's build cache is warm (e.g. after `toolchain install`).
#[tokio::test]
async fn builds_kube_scheduler_with_version_stamps() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = ToolchainOptions::new(tmp.path());
    opts.search_path = Some(OsString::new());
    opts.source = SourcePreference::Build;
    opts.go = Some(real_go());
    let installed = toolchain::install_component(&opts, Component::KubeScheduler, Progress::Plain)
        .await
        .unwrap();
    assert_eq!(installed.source, Source::Built);
    let out = run_version(Component::KubeScheduler, &installed.path);
    assert_eq!(out.trim(), "Kubernetes v1.36.1");
}
