//! `install`: resolves every component like [`locate`](super::locate) and provisions what is missing
//! (build or download), under the cache's install lock so concurrent installers take turns.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::build::{build, find_go};
use super::download::download;
use super::locate::lookup;
use super::lock::InstallLock;
use super::progress::Progress;
use super::{Component, Source, SourcePreference, Toolchain, ToolchainError, ToolchainOptions};

/// A component [`install_component`] resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub path: PathBuf,
    pub source: Source,
}

/// Makes every component available (explicit, `PATH`, cache, else build or download) and returns
/// the cluster toolchain's paths. A second run finds everything and only reports.
///
/// The hosts (steve, controller) are provisioned too, when they can be: they are only ever built,
/// so with `--toolchain-source download`, or without `go` in automatic mode, they are skipped with
/// a line saying so (KWOK clusters do not need them; an agent then says what is missing).
pub async fn install(
    opts: &ToolchainOptions,
    progress: Progress,
) -> Result<Toolchain, ToolchainError> {
    let _lock = lock(opts, progress).await?;
    let mut paths = BTreeMap::new();
    for component in Component::ALL {
        let installed = provision(opts, component, progress).await?;
        paths.insert(component, installed.path);
    }
    let toolchain = Toolchain::from_fn(|component| {
        paths.remove(&component).ok_or(ToolchainError::Missing {
            component,
            hint: "not provisioned".to_string(),
        })
    })?;
    for (host, needed_by) in [
        (
            Component::SteveHost,
            "an agent serving Steve needs it (or runs with --steve=false)",
        ),
        (
            Component::ControllerHost,
            "an agent hosting its clusters' controllers needs it (or runs with --controller-host=false)",
        ),
    ] {
        match provision(opts, host, progress).await {
            Ok(_) => {}
            Err(err @ (ToolchainError::BuildOnly { .. } | ToolchainError::NoGo { .. }))
                if opts.source != SourcePreference::Build =>
            {
                progress.line(&format!("{host}: skipped ({err}); {needed_by}"));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(toolchain)
}

/// Like [`install`] for a single component.
pub async fn install_component(
    opts: &ToolchainOptions,
    component: Component,
    progress: Progress,
) -> Result<Installed, ToolchainError> {
    // A usable binary is taken without the lock: the lock file is written, and a read-only
    // cache (the container image's) must still serve the binaries it holds.
    if let Ok(Some(found)) = lookup(opts, component).await.found {
        progress.line(&format!(
            "{component} {}: {} ({})",
            component.pinned_version(),
            found.path.display(),
            found.source
        ));
        return Ok(Installed {
            path: found.path,
            source: found.source,
        });
    }
    let _lock = lock(opts, progress).await?;
    provision(opts, component, progress).await
}

async fn lock(opts: &ToolchainOptions, progress: Progress) -> Result<InstallLock, ToolchainError> {
    let path = opts.lock_path();
    InstallLock::acquire(&path, || {
        progress.line(&format!(
            "another install holds {}; waiting for it to finish",
            path.display()
        ))
    })
    .await
}

/// Resolves one component, building or downloading it if needed. Callers hold the install lock.
async fn provision(
    opts: &ToolchainOptions,
    component: Component,
    progress: Progress,
) -> Result<Installed, ToolchainError> {
    let version = component.pinned_version();
    let found = lookup(opts, component).await;
    for skipped in &found.skipped {
        progress.line(&format!("{component}: {skipped}"));
    }
    if let Some(found) = found.found? {
        progress.line(&format!(
            "{component} {version}: {} ({})",
            found.path.display(),
            found.source
        ));
        return Ok(Installed {
            path: found.path,
            source: found.source,
        });
    }

    remove_stale_partials(opts, component);
    if super::download::artifact(component, None).is_none() {
        // Nothing to download: built whatever the preference (unless told to download only).
        if opts.source == SourcePreference::Download {
            return Err(ToolchainError::BuildOnly { component });
        }
        let go = find_go(opts)?;
        return build(opts, component, &go, progress)
            .await
            .map(|path| Installed {
                path,
                source: Source::Built,
            });
    }
    let built = |go: PathBuf| async move {
        build(opts, component, &go, progress)
            .await
            .map(|path| Installed {
                path,
                source: Source::Built,
            })
    };
    let downloaded = || async {
        download(opts, component, progress)
            .await
            .map(|path| Installed {
                path,
                source: Source::Downloaded,
            })
    };
    match opts.source {
        SourcePreference::Build => built(find_go(opts)?).await,
        SourcePreference::Download => downloaded().await,
        SourcePreference::Auto if opts.download_base_url.is_some() => downloaded().await,
        SourcePreference::Auto => match find_go(opts) {
            Ok(go) => built(go).await,
            Err(no_go) => {
                progress.line(&format!("{no_go}; downloading {component} instead"));
                downloaded()
                    .await
                    .map_err(|source| ToolchainError::NoGoAndDownloadFailed {
                        component,
                        source: Box::new(source),
                    })
            }
        },
    }
}

/// Removes temporary files an interrupted build or download left next to the cache entry. Only
/// called under the install lock, so no other installer is writing them.
fn remove_stale_partials(opts: &ToolchainOptions, component: Component) {
    let dest = component.cache_path(&opts.cache_dir);
    let Some(Ok(entries)) = dest.parent().map(std::fs::read_dir) else {
        return;
    };
    let prefixes = [
        format!(".{component}.partial-"),
        format!(".{component}.download-"),
        format!(".{component}.extract-"),
    ];
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            // Best effort: a leftover we cannot remove is hidden and harmless.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
