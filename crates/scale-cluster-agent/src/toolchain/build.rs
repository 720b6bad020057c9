//! Building components from the pinned Go modules with the local `go`. The module files under
//! `tools/` and the hosts' sources (`hosts/steve-host`, `hosts/controller-host`) are embedded in
//! this binary and written to a temporary module directory, so an installed agent builds the same
//! pins outside the repository.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::locate::find_on_path;
use super::progress::Progress;
use super::version::verify;
use super::{Component, ToolchainError, ToolchainOptions, KUBE_VERSION};

/// One Go module: a wrapper pinning a Go project (`tools/<name>/`), or a host's own.
struct GoModule {
    name: &'static str,
    /// `(file name, contents)`, written into the module directory.
    files: &'static [(&'static str, &'static str)],
}

#[cfg(test)]
impl GoModule {
    fn file(&self, name: &str) -> &'static str {
        self.files
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, text)| text)
    }
}

const KWOK_MODULE: GoModule = GoModule {
    name: "kwok",
    files: &[
        ("go.mod", include_str!("../../../../tools/kwok/go.mod")),
        ("go.sum", include_str!("../../../../tools/kwok/go.sum")),
        ("tools.go", include_str!("../../../../tools/kwok/tools.go")),
    ],
};

const K8S_MODULE: GoModule = GoModule {
    name: "k8s",
    files: &[
        ("go.mod", include_str!("../../../../tools/k8s/go.mod")),
        ("go.sum", include_str!("../../../../tools/k8s/go.sum")),
        ("tools.go", include_str!("../../../../tools/k8s/tools.go")),
    ],
};

const ETCD_MODULE: GoModule = GoModule {
    name: "etcd",
    files: &[
        ("go.mod", include_str!("../../../../tools/etcd/go.mod")),
        ("go.sum", include_str!("../../../../tools/etcd/go.sum")),
        ("tools.go", include_str!("../../../../tools/etcd/tools.go")),
    ],
};

/// The steve host's whole module (its tests aside): the program is ours, so its sources, not a
/// pin, are what is built.
const STEVE_HOST_MODULE: GoModule = GoModule {
    name: "steve-host",
    files: &[
        (
            "go.mod",
            include_str!("../../../../hosts/steve-host/go.mod"),
        ),
        (
            "go.sum",
            include_str!("../../../../hosts/steve-host/go.sum"),
        ),
        (
            "main.go",
            include_str!("../../../../hosts/steve-host/main.go"),
        ),
        (
            "hosts.go",
            include_str!("../../../../hosts/steve-host/hosts.go"),
        ),
        (
            "steve.go",
            include_str!("../../../../hosts/steve-host/steve.go"),
        ),
    ],
};

/// The Steve release the steve host is built against: the one Rancher v2.15 pins.
pub const STEVE_VERSION: &str = "v0.9.18";

/// The steve host's version: [`STEVE_VERSION`] plus 16 hex digits of an FNV-1a hash of its
/// embedded sources, computed at compile time. Any change to the sources is a new version, hence
/// a new cache entry and a rebuild, never a stale binary.
pub const STEVE_HOST_VERSION: &str = match std::str::from_utf8(&host_version_bytes::<
    STEVE_HOST_VERSION_LEN,
>(&STEVE_HOST_MODULE, STEVE_VERSION))
{
    Ok(version) => version,
    Err(_) => panic!("the steve host version is ASCII"),
};

const STEVE_HOST_VERSION_LEN: usize = STEVE_VERSION.len() + 1 + 16;

/// The controller host's whole module (its tests aside), as for the steve host.
const CONTROLLER_HOST_MODULE: GoModule = GoModule {
    name: "controller-host",
    files: &[
        (
            "go.mod",
            include_str!("../../../../hosts/controller-host/go.mod"),
        ),
        (
            "go.sum",
            include_str!("../../../../hosts/controller-host/go.sum"),
        ),
        (
            "main.go",
            include_str!("../../../../hosts/controller-host/main.go"),
        ),
        (
            "clusters.go",
            include_str!("../../../../hosts/controller-host/clusters.go"),
        ),
        (
            "kcm.go",
            include_str!("../../../../hosts/controller-host/kcm.go"),
        ),
        (
            "kwok.go",
            include_str!("../../../../hosts/controller-host/kwok.go"),
        ),
    ],
};

/// The controller host's version: the Kubernetes pin ([`KUBE_VERSION`], whose kube-controller-manager
/// it embeds) plus the hash of its embedded sources, as for [`STEVE_HOST_VERSION`].
pub const CONTROLLER_HOST_VERSION: &str =
    match std::str::from_utf8(&host_version_bytes::<CONTROLLER_HOST_VERSION_LEN>(
        &CONTROLLER_HOST_MODULE,
        KUBE_VERSION,
    )) {
        Ok(version) => version,
        Err(_) => panic!("the controller host version is ASCII"),
    };

const CONTROLLER_HOST_VERSION_LEN: usize = KUBE_VERSION.len() + 1 + 16;

/// `<pin>-<16 hex digits>`: `N` must be `pin.len() + 17`.
const fn host_version_bytes<const N: usize>(module: &GoModule, pin: &str) -> [u8; N] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut f = 0;
    while f < module.files.len() {
        // Name and contents, each followed by a 0 byte, so moving text between files changes it.
        let parts = [module.files[f].0.as_bytes(), module.files[f].1.as_bytes()];
        let mut p = 0;
        while p < parts.len() {
            let mut i = 0;
            while i <= parts[p].len() {
                let byte = if i < parts[p].len() { parts[p][i] } else { 0 };
                hash ^= byte as u64;
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
                i += 1;
            }
            p += 1;
        }
        f += 1;
    }
    let mut out = [0u8; N];
    let prefix = pin.as_bytes();
    let mut i = 0;
    while i < prefix.len() {
        out[i] = prefix[i];
        i += 1;
    }
    out[i] = b'-';
    let digits = b"0123456789abcdef";
    let mut d = 0;
    while d < 16 {
        out[i + 1 + d] = digits[((hash >> (60 - 4 * d)) & 0xf) as usize];
        d += 1;
    }
    out
}

/// Module and main package that produce `component`.
fn recipe(component: Component) -> (&'static GoModule, &'static str) {
    match component {
        Component::Kwokctl => (&KWOK_MODULE, "sigs.k8s.io/kwok/cmd/kwokctl"),
        Component::Kwok => (&KWOK_MODULE, "sigs.k8s.io/kwok/cmd/kwok"),
        Component::KubeApiserver => (&K8S_MODULE, "k8s.io/kubernetes/cmd/kube-apiserver"),
        Component::KubeControllerManager => {
            (&K8S_MODULE, "k8s.io/kubernetes/cmd/kube-controller-manager")
        }
        Component::KubeScheduler => (&K8S_MODULE, "k8s.io/kubernetes/cmd/kube-scheduler"),
        Component::Kubectl => (&K8S_MODULE, "k8s.io/kubernetes/cmd/kubectl"),
        Component::Etcd => (&ETCD_MODULE, "go.etcd.io/etcd/server/v3"),
        Component::SteveHost => (&STEVE_HOST_MODULE, "."),
        Component::ControllerHost => (&CONTROLLER_HOST_MODULE, "."),
    }
}

/// `-ldflags` for `component`: stripped, plus (for Kubernetes) the version stamps of
/// `hack/lib/version.sh`, so `--version` and `/version` report the pin instead of `v0.0.0-master`,
/// and (for the hosts) their own version. The build date is fixed so rebuilds are reproducible.
pub(crate) fn ldflags(component: Component) -> String {
    let mut ld = String::from("-s -w");
    match component {
        Component::SteveHost => ld.push_str(&format!(" -X main.version={STEVE_HOST_VERSION}")),
        Component::ControllerHost => {
            ld.push_str(&format!(" -X main.version={CONTROLLER_HOST_VERSION}"))
        }
        _ => {}
    }
    // The controller host embeds kube-controller-manager: its version stamps are the same.
    if recipe(component).0.name == K8S_MODULE.name || component == Component::ControllerHost {
        let (major, minor) = kube_major_minor();
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (key, value) in [
                ("gitVersion", KUBE_VERSION),
                ("gitMajor", major),
                ("gitMinor", minor),
                ("gitTreeState", "clean"),
                ("gitCommit", "0000000000000000000000000000000000000000"),
                ("buildDate", "1970-01-01T00:00:00Z"),
            ] {
                ld.push_str(&format!(" -X {pkg}.{key}={value}"));
            }
        }
    }
    ld
}

/// `("1", "36")` from `v1.36.1`.
fn kube_major_minor() -> (&'static str, &'static str) {
    let mut parts = KUBE_VERSION.trim_start_matches('v').split('.');
    (parts.next().unwrap_or("1"), parts.next().unwrap_or("0"))
}

/// The `go` binary to build with: the explicit one, else `go` on the search path.
pub(crate) fn find_go(opts: &ToolchainOptions) -> Result<PathBuf, ToolchainError> {
    match &opts.go {
        Some(go) if go.is_file() => Ok(go.clone()),
        Some(go) => Err(ToolchainError::NoGo {
            looked: format!("--go-binary {} does not exist", go.display()),
        }),
        None => {
            find_on_path(opts.search_path().as_deref(), "go").ok_or_else(|| ToolchainError::NoGo {
                looked: "`go` is not on PATH".to_string(),
            })
        }
    }
}

/// Builds `component` into its cache path: `go build` writes a temporary file next to it, which is
/// verified and then renamed into place, so readers never see a partial binary.
pub(crate) async fn build(
    opts: &ToolchainOptions,
    component: Component,
    go: &Path,
    progress: Progress,
) -> Result<PathBuf, ToolchainError> {
    let (module, package) = recipe(component);
    let dest = component.cache_path(&opts.cache_dir);
    let dest_dir = parent_dir(&dest)?;
    std::fs::create_dir_all(dest_dir).map_err(ToolchainError::io(format!(
        "creating {}",
        dest_dir.display()
    )))?;
    let log_dir = opts.log_dir();
    std::fs::create_dir_all(&log_dir).map_err(ToolchainError::io(format!(
        "creating {}",
        log_dir.display()
    )))?;
    let log_path = log_dir.join(format!(
        "build-{}-{}.log",
        component,
        component.pinned_version()
    ));

    let module_dir = tempfile::Builder::new()
        .prefix(&format!("sca-go-{}-", module.name))
        .tempdir()
        .map_err(ToolchainError::io(
            "creating a temporary Go module directory",
        ))?;
    for (name, text) in module.files {
        let path = module_dir.path().join(name);
        std::fs::write(&path, text)
            .map_err(ToolchainError::io(format!("writing {}", path.display())))?;
    }

    // `go build -o` refuses to overwrite a file that is not a Go binary, so use a fresh name.
    let partial = dest_dir.join(format!(
        ".{}.partial-{}-{:08x}",
        component,
        std::process::id(),
        rand::random::<u32>()
    ));
    let ld = ldflags(component);
    let log = std::fs::File::create(&log_path).map_err(ToolchainError::io(format!(
        "creating {}",
        log_path.display()
    )))?;
    let log_err = log.try_clone().map_err(ToolchainError::io(format!(
        "opening {}",
        log_path.display()
    )))?;
    {
        use std::io::Write;
        let mut header = &log;
        // The header only helps a human reading the log; a failed write is not worth failing for.
        let _ = writeln!(
            header,
            "# cd {} && CGO_ENABLED=0 GOWORK=off {} build -trimpath -ldflags '{ld}' -o {} {package}",
            module_dir.path().display(),
            go.display(),
            partial.display()
        );
    }

    let task = progress.task(format!(
        "building {component} {} (log: {})",
        component.pinned_version(),
        log_path.display()
    ));
    let mut command = tokio::process::Command::new(go);
    // `go build` runs arbitrary module code (generators, cgo tools); it gets no token.
    crate::secrets::scrub_secret_env(command.as_std_mut());
    let status = command
        .arg("build")
        .arg("-trimpath")
        .arg("-ldflags")
        .arg(&ld)
        .arg("-o")
        .arg(&partial)
        .arg(package)
        .current_dir(module_dir.path())
        .env("CGO_ENABLED", "0")
        // A go.work of the caller's environment must not redirect the pinned modules.
        .env("GOWORK", "off")
        // Rancher's modules are resolved without the public checksum database (as Rancher's own
        // build does); go.sum still pins every one of them.
        .env("GONOSUMDB", "github.com/rancher")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .status()
        .await;
    let fail = |detail: String| {
        // The partial file may not exist (go failed before linking); nothing else to clean up.
        let _ = std::fs::remove_file(&partial);
        ToolchainError::BuildFailed {
            component,
            log: log_path.clone(),
            detail,
        }
    };
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => {
            return Err(fail(format!(
                "`go build` exited with {status}: {}",
                last_line(&log_path)
            )))
        }
        Err(e) => return Err(fail(format!("cannot run {}: {e}", go.display()))),
    }
    if let Err(err) = verify(component, &partial).await {
        return Err(fail(format!("the built binary failed verification: {err}")));
    }
    std::fs::rename(&partial, &dest).map_err(|e| fail(format!("renaming into place: {e}")))?;
    task.finish(&format!("built {component} {}", component.pinned_version()));
    Ok(dest)
}

pub(crate) fn parent_dir(path: &Path) -> Result<&Path, ToolchainError> {
    path.parent().ok_or_else(|| ToolchainError::Io {
        context: format!("{} has no parent directory", path.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Last non-empty line of the build log, for the error message.
fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_ldflags_stamp_both_version_packages() {
        let ld = ldflags(Component::KubeApiserver);
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for kv in [
                "gitVersion=v1.36.1",
                "gitMajor=1",
                "gitMinor=36",
                "gitTreeState=clean",
                "gitCommit=0000000000000000000000000000000000000000",
                "buildDate=1970-01-01T00:00:00Z",
            ] {
                assert!(ld.contains(&format!("-X {pkg}.{kv}")), "{pkg}.{kv} in {ld}");
            }
        }
        assert!(ld.starts_with("-s -w "));
        assert_eq!(ldflags(Component::Etcd), "-s -w");
        assert_eq!(ldflags(Component::Kwokctl), "-s -w");
    }

    #[test]
    fn embedded_modules_pin_the_versions() {
        assert!(K8S_MODULE
            .file("go.mod")
            .contains(&format!("require k8s.io/kubernetes {KUBE_VERSION}")));
        assert!(KWOK_MODULE.file("go.mod").contains(&format!(
            "require sigs.k8s.io/kwok {}",
            super::super::KWOK_VERSION
        )));
        assert!(ETCD_MODULE.file("go.mod").contains(&format!(
            "require go.etcd.io/etcd/server/v3 {}",
            super::super::ETCD_VERSION
        )));
        for c in Component::ALL {
            let (module, package) = recipe(c);
            assert!(module.file("tools.go").contains(package), "{c}: {package}");
        }
        assert!(STEVE_HOST_MODULE
            .file("go.mod")
            .contains(&format!("github.com/rancher/steve {STEVE_VERSION}")));
    }

    /// Every non-test file of the host's module is embedded, or the built host would miss it (or
    /// its hash, hence its version, would not change with it).
    #[test]
    fn every_steve_host_source_is_embedded() {
        assert_every_source_embedded("steve-host", &STEVE_HOST_MODULE);
    }

    #[test]
    fn every_controller_host_source_is_embedded() {
        assert_every_source_embedded("controller-host", &CONTROLLER_HOST_MODULE);
    }

    #[test]
    fn the_controller_host_version_is_the_kube_pin_and_a_source_hash() {
        let hash = CONTROLLER_HOST_VERSION
            .strip_prefix(&format!("{KUBE_VERSION}-"))
            .unwrap();
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
        let ld = ldflags(Component::ControllerHost);
        assert!(ld.contains(&format!(" -X main.version={CONTROLLER_HOST_VERSION}")));
        assert!(ld.contains(&format!(
            "k8s.io/component-base/version.gitVersion={KUBE_VERSION}"
        )));
        assert_eq!(
            Component::ControllerHost.pinned_version(),
            CONTROLLER_HOST_VERSION
        );
    }

    fn assert_every_source_embedded(host: &str, module: &GoModule) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../hosts")
            .join(host);
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                (n.ends_with(".go") && !n.ends_with("_test.go")) || n == "go.mod" || n == "go.sum"
            })
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = module.files.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn the_steve_host_version_is_the_pin_and_a_source_hash() {
        let hash = STEVE_HOST_VERSION
            .strip_prefix(&format!("{STEVE_VERSION}-"))
            .unwrap();
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
        assert!(ldflags(Component::SteveHost)
            .ends_with(&format!(" -X main.version={STEVE_HOST_VERSION}")));
        assert_eq!(Component::SteveHost.pinned_version(), STEVE_HOST_VERSION);
    }
}
