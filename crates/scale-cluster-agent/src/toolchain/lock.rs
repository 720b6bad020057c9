//! The install lock: an exclusive `flock` on `<cache_dir>/.install.lock`, so two processes (or two
//! tasks) installing into one cache take turns and the second finds what the first produced.

use std::fs::File;
use std::path::Path;

use fs4::fs_std::FileExt;

use super::ToolchainError;

/// Held for the duration of an install; the lock is released when the file is closed on drop.
pub(crate) struct InstallLock {
    _file: File,
}

impl InstallLock {
    /// Takes the lock, waiting for another installer if needed; `on_wait` runs once before waiting.
    pub async fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<Self, ToolchainError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(ToolchainError::io(format!("creating {}", dir.display())))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ToolchainError::io(format!("opening {}", path.display())))?;
        let context = format!("locking {}", path.display());
        if file
            .try_lock_exclusive()
            .map_err(ToolchainError::io(context.clone()))?
        {
            return Ok(Self { _file: file });
        }
        on_wait();
        // flock blocks the thread, so wait off the async runtime.
        let file = tokio::task::spawn_blocking(move || file.lock_exclusive().map(|()| file))
            .await
            .map_err(|e| ToolchainError::Io {
                context: context.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(ToolchainError::io(context))?;
        Ok(Self { _file: file })
    }
}
