//! Downloading official release binaries, verified against the SHA-256 the release publishes.
//! Downloads land in a temporary file next to the cache entry and are renamed into place only after
//! the checksum and `--version` match, so a failed or tampered download leaves nothing in the cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::build::parent_dir;
use super::progress::Progress;
use super::version::verify;
use super::{Component, ToolchainError, ToolchainOptions};

/// Default base of the Kubernetes release binaries.
pub const OFFICIAL_KUBE: &str = "https://dl.k8s.io";
/// Default base of the kwok and etcd GitHub releases.
pub const OFFICIAL_GITHUB: &str = "https://github.com";

/// What a mirror given with `--download-base-url BASE` must serve: the official paths under BASE.
pub const MIRROR_LAYOUT: &str = "\
A mirror (--download-base-url BASE) serves the official release paths under BASE ({arch} is amd64 or arm64):
  BASE/release/v1.36.1/bin/linux/{arch}/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
  BASE/release/v1.36.1/bin/linux/{arch}/<binary>.sha256          (hex digest, as dl.k8s.io publishes)
  BASE/kubernetes-sigs/kwok/releases/download/v0.8.0/{kwok,kwokctl}-linux-{arch}
  BASE/kubernetes-sigs/kwok/releases/download/v0.8.0/{kwok,kwokctl}-linux-{arch}.sha256
      (kwok's GitHub releases publish no checksums, so only a mirror providing these can serve kwok)
  BASE/etcd-io/etcd/releases/download/v3.6.16/etcd-v3.6.16-linux-{arch}.tar.gz   (etcd is extracted)
  BASE/etcd-io/etcd/releases/download/v3.6.16/SHA256SUMS          (`<hex>  <file>` lines)
Without a mirror: https://dl.k8s.io for the kube binaries, https://github.com for kwok and etcd.";

/// Where one component's release artifact and its checksum live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub url: String,
    pub checksum_url: String,
    /// File name the checksum file lists the artifact under.
    pub file_name: String,
    /// For tarballs: the path of the binary inside the archive.
    pub member: Option<String>,
}

/// The Go architecture name of this machine.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `None` for the hosts, which have no release: they are only ever built.
pub(crate) fn artifact(component: Component, base_url: Option<&str>) -> Option<Artifact> {
    let version = component.pinned_version();
    let bin = component.binary_name();
    let arch = arch();
    Some(match component {
        Component::KubeApiserver
        | Component::KubeControllerManager
        | Component::KubeScheduler
        | Component::Kubectl => {
            let base = base_url.unwrap_or(OFFICIAL_KUBE).trim_end_matches('/');
            let url = format!("{base}/release/{version}/bin/linux/{arch}/{bin}");
            Artifact {
                checksum_url: format!("{url}.sha256"),
                url,
                file_name: bin.to_string(),
                member: None,
            }
        }
        Component::Kwok | Component::Kwokctl => {
            let base = base_url.unwrap_or(OFFICIAL_GITHUB).trim_end_matches('/');
            let file_name = format!("{bin}-linux-{arch}");
            let url =
                format!("{base}/kubernetes-sigs/kwok/releases/download/{version}/{file_name}");
            Artifact {
                checksum_url: format!("{url}.sha256"),
                url,
                file_name,
                member: None,
            }
        }
        Component::Etcd => {
            let base = base_url.unwrap_or(OFFICIAL_GITHUB).trim_end_matches('/');
            let dir = format!("{base}/etcd-io/etcd/releases/download/{version}");
            let stem = format!("etcd-{version}-linux-{arch}");
            Artifact {
                url: format!("{dir}/{stem}.tar.gz"),
                checksum_url: format!("{dir}/SHA256SUMS"),
                file_name: format!("{stem}.tar.gz"),
                member: Some(format!("{stem}/etcd")),
            }
        }
        Component::SteveHost | Component::ControllerHost => return None,
    })
}

/// Finds the digest for `file_name` in a checksum file: either a bare digest (dl.k8s.io's
/// `<binary>.sha256`) or `sha256sum`-style `<hex>  <file>` lines.
pub(crate) fn parse_checksum(text: &str, file_name: &str) -> Option<String> {
    let is_digest = |s: &str| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit());
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let digest = fields.next()?;
        if !is_digest(digest) {
            return None;
        }
        match fields.next() {
            None => Some(digest.to_ascii_lowercase()),
            Some(name) => {
                let name = name.trim_start_matches('*');
                let base = name.rsplit('/').next().unwrap_or(name);
                (base == file_name).then(|| digest.to_ascii_lowercase())
            }
        }
    })
}

fn client() -> Result<reqwest::Client, ToolchainError> {
    reqwest::Client::builder()
        .user_agent(concat!("scale-cluster-agent/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ToolchainError::Download {
            url: String::new(),
            detail: format!("cannot create the HTTP client: {e}"),
        })
}

async fn get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, ToolchainError> {
    let err = |detail: String| ToolchainError::Download {
        url: url.to_string(),
        detail,
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(err(format!("HTTP {status}")));
    }
    Ok(response)
}

/// Downloads `component` into its cache path after checking its SHA-256 and `--version`.
pub(crate) async fn download(
    opts: &ToolchainOptions,
    component: Component,
    progress: Progress,
) -> Result<PathBuf, ToolchainError> {
    let artifact = artifact(component, opts.download_base_url.as_deref())
        .ok_or(ToolchainError::BuildOnly { component })?;
    let dest = component.cache_path(&opts.cache_dir);
    let dest_dir = parent_dir(&dest)?.to_path_buf();
    std::fs::create_dir_all(&dest_dir).map_err(ToolchainError::io(format!(
        "creating {}",
        dest_dir.display()
    )))?;
    let client = client()?;

    let sums = get(&client, &artifact.checksum_url)
        .await?
        .text()
        .await
        .map_err(|e| ToolchainError::Download {
            url: artifact.checksum_url.clone(),
            detail: e.to_string(),
        })?;
    let expected =
        parse_checksum(&sums, &artifact.file_name).ok_or_else(|| ToolchainError::Download {
            url: artifact.checksum_url.clone(),
            detail: format!("no SHA-256 for {} in the checksum file", artifact.file_name),
        })?;

    let task = progress.task(format!("downloading {}", artifact.url));
    // Deleted on drop unless persisted: a failed download leaves nothing behind.
    let fetched = tempfile::Builder::new()
        .prefix(&format!(".{component}.download-"))
        .tempfile_in(&dest_dir)
        .map_err(ToolchainError::io(format!(
            "creating a temporary file in {}",
            dest_dir.display()
        )))?;
    let actual = fetch_to(&client, &artifact.url, fetched.path(), &task).await?;
    if actual != expected {
        return Err(ToolchainError::ChecksumMismatch {
            url: artifact.url,
            expected,
            actual,
        });
    }

    // Close our handle before running the binary: executing a file open for writing fails (ETXTBSY).
    let fetched = fetched.into_temp_path();
    let binary = match &artifact.member {
        None => fetched,
        Some(member) => {
            let (archive, member, dir) = (fetched, member.clone(), dest_dir.clone());
            tokio::task::spawn_blocking(move || extract(component, &archive, &member, &dir))
                .await
                .map_err(|e| ToolchainError::Archive {
                    component,
                    detail: format!("extraction task failed: {e}"),
                })??
        }
    };
    set_executable(&binary)?;
    verify(component, &binary).await?;
    binary
        .persist(&dest)
        .map_err(|e| ToolchainError::io(format!("moving into {}", dest.display()))(e.error))?;
    task.finish(&format!(
        "downloaded {component} {}",
        component.pinned_version()
    ));
    Ok(dest)
}

/// Streams `url` into `path`, returning the hex SHA-256 of what was received.
async fn fetch_to(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
    task: &super::progress::Task,
) -> Result<String, ToolchainError> {
    let err = |detail: String| ToolchainError::Download {
        url: url.to_string(),
        detail,
    };
    let mut response = get(client, url).await?;
    if let Some(len) = response.content_length() {
        task.set_length(len);
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await
        .map_err(ToolchainError::io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| err(e.to_string()))? {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(ToolchainError::io(format!("writing {}", path.display())))?;
        task.inc(chunk.len() as u64);
    }
    file.flush()
        .await
        .map_err(ToolchainError::io(format!("writing {}", path.display())))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Copies `member` out of the gzipped tarball `archive` into a temporary file in `dir`.
fn extract(
    component: Component,
    archive: &Path,
    member: &str,
    dir: &Path,
) -> Result<tempfile::TempPath, ToolchainError> {
    let archive_err = |detail: String| ToolchainError::Archive { component, detail };
    let file = std::fs::File::open(archive)
        .map_err(ToolchainError::io(format!("opening {}", archive.display())))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = tar
        .entries()
        .map_err(|e| archive_err(format!("reading the release tarball: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_err(format!("reading the release tarball: {e}")))?;
        let is_member = entry
            .path()
            .map(|p| p == Path::new(member))
            .unwrap_or(false);
        if !is_member {
            continue;
        }
        let mut out = tempfile::Builder::new()
            .prefix(&format!(".{component}.extract-"))
            .tempfile_in(dir)
            .map_err(ToolchainError::io(format!(
                "creating a temporary file in {}",
                dir.display()
            )))?;
        std::io::copy(&mut entry, out.as_file_mut())
            .map_err(|e| archive_err(format!("extracting {member}: {e}")))?;
        out.as_file_mut()
            .flush()
            .map_err(ToolchainError::io(format!(
                "writing {}",
                out.path().display()
            )))?;
        return Ok(out.into_temp_path());
    }
    Err(archive_err(format!("the release tarball has no {member}")))
}

fn set_executable(path: &Path) -> Result<(), ToolchainError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(ToolchainError::io(format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_urls() {
        let a = artifact(Component::KubeApiserver, None).unwrap();
        assert_eq!(
            a.url,
            format!(
                "https://dl.k8s.io/release/v1.36.1/bin/linux/{}/kube-apiserver",
                arch()
            )
        );
        assert_eq!(a.checksum_url, format!("{}.sha256", a.url));
        let a = artifact(Component::Kwokctl, None).unwrap();
        assert_eq!(
            a.url,
            format!(
                "https://github.com/kubernetes-sigs/kwok/releases/download/v0.8.0/kwokctl-linux-{}",
                arch()
            )
        );
        let a = artifact(Component::Etcd, Some("http://mirror.test/base/")).unwrap();
        assert_eq!(
            a.url,
            format!(
                "http://mirror.test/base/etcd-io/etcd/releases/download/v3.6.16/etcd-v3.6.16-linux-{}.tar.gz",
                arch()
            )
        );
        assert_eq!(
            a.checksum_url,
            "http://mirror.test/base/etcd-io/etcd/releases/download/v3.6.16/SHA256SUMS"
        );
        assert_eq!(
            a.member.as_deref(),
            Some(format!("etcd-v3.6.16-linux-{}/etcd", arch()).as_str())
        );
    }

    #[test]
    fn mirror_layout_names_the_pins() {
        for c in Component::ALL {
            assert!(MIRROR_LAYOUT.contains(c.pinned_version()), "{c}");
            let path = artifact(c, Some("BASE"))
                .unwrap()
                .url
                .replace(arch(), "{arch}");
            let dir = &path[..path.rfind('/').unwrap()];
            assert!(MIRROR_LAYOUT.contains(dir), "{c}: {dir}");
        }
    }

    #[test]
    fn checksum_formats() {
        let d = "a".repeat(64);
        assert_eq!(
            parse_checksum(&format!("{d}\n"), "kubectl"),
            Some(d.clone())
        );
        let sums = format!(
            "{}  etcd-v3.6.16-darwin-amd64.zip\n{d}  etcd-v3.6.16-linux-amd64.tar.gz\n",
            "b".repeat(64)
        );
        assert_eq!(
            parse_checksum(&sums, "etcd-v3.6.16-linux-amd64.tar.gz"),
            Some(d.clone())
        );
        assert_eq!(
            parse_checksum(&sums, "etcd-v3.6.16-linux-arm64.tar.gz"),
            None
        );
        assert_eq!(
            parse_checksum(&format!("{d} *./kwok-linux-amd64"), "kwok-linux-amd64"),
            Some(d)
        );
        assert_eq!(parse_checksum("<html>not found</html>", "kubectl"), None);
    }
}
