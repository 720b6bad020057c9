//! Finding binaries without building or downloading anything: explicit paths, `PATH`, the versioned
//! cache. Also the per-component status report.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::version::{probe, verify};
use super::{Component, Source, Toolchain, ToolchainError, ToolchainOptions};

/// One component's state, as `toolchain status` shows it.
#[derive(Debug, Clone)]
pub struct ComponentStatus {
    pub component: Component,
    /// The version the resolved binary reports (the pin when usable).
    pub version: Option<String>,
    pub path: Option<PathBuf>,
    pub source: Source,
    /// Whether the component can be used as is (found and reporting the pin).
    pub usable: bool,
    /// Why a candidate was skipped or rejected (wrong version on PATH, bad explicit path, ...).
    pub note: Option<String>,
}

/// A usable binary.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub source: Source,
}

/// Outcome of looking for one component.
pub(crate) struct Lookup {
    /// The usable binary, if any; an error when an explicit path is unusable.
    pub found: Result<Option<Found>, ToolchainError>,
    /// Candidates passed over (e.g. a `PATH` binary with another version).
    pub skipped: Vec<String>,
}

/// Finds every component of the cluster toolchain without building or downloading; the first
/// missing or unusable one is an error telling the user to run `scale-cluster-agent toolchain
/// install`.
pub async fn locate(opts: &ToolchainOptions) -> Result<Toolchain, ToolchainError> {
    // A bad explicit path is reported before any missing component: installing would not fix it.
    let mut lookups: BTreeMap<Component, Lookup> = lookup_all(opts, &Component::ALL).await;
    if let Some(c) = Component::ALL
        .into_iter()
        .find(|c| lookups.get(c).is_some_and(|l| l.found.is_err()))
    {
        if let Some(Lookup {
            found: Err(err), ..
        }) = lookups.remove(&c)
        {
            return Err(err);
        }
    }
    Toolchain::from_fn(|component| {
        let lookup = lookups.remove(&component).unwrap_or_else(|| Lookup {
            found: Ok(None),
            skipped: Vec::new(),
        });
        match lookup.found? {
            Some(found) => Ok(found.path),
            None => Err(ToolchainError::Missing {
                component,
                hint: missing_hint(opts, component, &lookup.skipped),
            }),
        }
    })
}

/// Each component's version, path and source, the steve host's included; never fails (problems
/// show up in `note`).
pub async fn status(opts: &ToolchainOptions) -> Vec<ComponentStatus> {
    lookup_all(opts, &Component::EVERY)
        .await
        .into_iter()
        .map(|(component, lookup)| {
            let skipped = (!lookup.skipped.is_empty()).then(|| lookup.skipped.join("; "));
            match lookup.found {
                Ok(Some(found)) => ComponentStatus {
                    component,
                    version: Some(component.pinned_version().to_string()),
                    path: Some(found.path),
                    source: found.source,
                    usable: true,
                    note: skipped,
                },
                Ok(None) => ComponentStatus {
                    component,
                    version: None,
                    path: None,
                    source: Source::Missing,
                    usable: false,
                    note: Some(skipped.map_or_else(
                        || "run `scale-cluster-agent toolchain install`".to_string(),
                        |s| format!("{s}; run `scale-cluster-agent toolchain install`"),
                    )),
                },
                Err(err) => {
                    let (path, version) = match &err {
                        ToolchainError::WrongVersion { path, found, .. } => {
                            (Some(path.clone()), Some(found.clone()))
                        }
                        ToolchainError::ExplicitNotFound { path, .. }
                        | ToolchainError::VersionCheck { path, .. } => (Some(path.clone()), None),
                        _ => (None, None),
                    };
                    ComponentStatus {
                        component,
                        version,
                        path,
                        source: Source::Explicit,
                        usable: false,
                        note: Some(format!("unusable: {err}")),
                    }
                }
            }
        })
        .collect()
}

/// Looks for `components` at once: their version probes run concurrently.
async fn lookup_all(
    opts: &ToolchainOptions,
    components: &[Component],
) -> BTreeMap<Component, Lookup> {
    let lookups = components
        .iter()
        .map(|&c| async move { (c, lookup(opts, c).await) });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .collect()
}

/// Looks for one component: explicit path, then `PATH`, then the cache.
pub(crate) async fn lookup(opts: &ToolchainOptions, component: Component) -> Lookup {
    let mut skipped = Vec::new();
    if let Some(path) = opts.explicit.get(&component) {
        let found = if path.is_file() {
            verify(component, path).await.map(|()| {
                Some(Found {
                    path: path.clone(),
                    source: Source::Explicit,
                })
            })
        } else {
            Err(ToolchainError::ExplicitNotFound {
                component,
                path: path.clone(),
            })
        };
        return Lookup { found, skipped };
    }

    if let Some(path) = find_on_path(opts.search_path().as_deref(), component.binary_name()) {
        match probe(component, &path).await {
            Ok(version) if version == component.pinned_version() => {
                return Lookup {
                    found: Ok(Some(Found {
                        path,
                        source: Source::Path,
                    })),
                    skipped,
                }
            }
            Ok(version) => skipped.push(format!(
                "{} on PATH is {version}, not {}; ignored",
                path.display(),
                component.pinned_version()
            )),
            Err(err) => skipped.push(format!("ignored PATH candidate: {err}")),
        }
    }

    let cached = component.cache_path(&opts.cache_dir);
    if cached.is_file() {
        match verify(component, &cached).await {
            Ok(()) => {
                return Lookup {
                    found: Ok(Some(Found {
                        path: cached,
                        source: Source::Cache,
                    })),
                    skipped,
                }
            }
            Err(err) => skipped.push(format!("cached binary unusable: {err}")),
        }
    }
    Lookup {
        found: Ok(None),
        skipped,
    }
}

fn missing_hint(opts: &ToolchainOptions, component: Component, skipped: &[String]) -> String {
    let mut hint = format!(
        "not given explicitly, not on PATH with the pinned version, not in {}",
        component.cache_path(&opts.cache_dir).display()
    );
    for s in skipped {
        hint.push_str("; ");
        hint.push_str(s);
    }
    hint
}

/// First executable regular file called `name` in `search_path`.
pub(crate) fn find_on_path(search_path: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(search_path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::io::Write;

    fn fake_binary(dir: &Path, name: &str, output: &str) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "#!/bin/sh\necho '{output}'").unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn path_binary_with_the_wrong_version_is_skipped_for_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        fake_binary(&bin, "etcd", "etcd Version: 3.4.23");
        let cache = tmp.path().join("cache");
        let cached = Component::Etcd.cache_path(&cache);
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        fake_binary(cached.parent().unwrap(), "etcd", "etcd Version: 3.6.16");

        let mut opts = ToolchainOptions::new(&cache);
        opts.search_path = Some(OsString::from(&bin));
        let l = lookup(&opts, Component::Etcd).await;
        let found = l.found.unwrap().unwrap();
        assert_eq!(found.path, cached);
        assert_eq!(found.source, Source::Cache);
        assert_eq!(l.skipped.len(), 1);
        assert!(l.skipped[0].contains("v3.4.23"), "{:?}", l.skipped);
    }

    #[tokio::test]
    async fn path_binary_with_the_pin_wins_over_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        fake_binary(
            tmp.path(),
            "kwok",
            "kwok version v0.8.0 go1.26.8 (linux/amd64)",
        );
        let mut opts = ToolchainOptions::new(tmp.path().join("cache"));
        opts.search_path = Some(tmp.path().as_os_str().to_owned());
        let found = lookup(&opts, Component::Kwok).await.found.unwrap().unwrap();
        assert_eq!(found.source, Source::Path);
        assert_eq!(found.path, tmp.path().join("kwok"));
    }

    #[tokio::test]
    async fn missing_component_says_to_run_install() {
        let tmp = tempfile::tempdir().unwrap();
        let mut opts = ToolchainOptions::new(tmp.path());
        opts.search_path = Some(OsString::new());
        let err = locate(&opts).await.unwrap_err();
        assert!(matches!(err, ToolchainError::Missing { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("run `scale-cluster-agent toolchain install`"),
            "{err}"
        );
        let st = status(&opts).await;
        assert_eq!(st.len(), Component::EVERY.len());
        assert!(st.iter().all(|s| s.source == Source::Missing));
    }
}
