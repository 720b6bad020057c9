//! File and directory helpers that name the path in their errors and treat "already gone" as done.

use std::path::Path;

use super::KwokError;

pub(super) async fn write_file(path: &Path, contents: &str) -> Result<(), KwokError> {
    let io = |source| KwokError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    tokio::fs::write(path, contents).await.map_err(io)
}

pub(super) async fn remove_dir(path: &Path) -> Result<(), KwokError> {
    match tokio::fs::remove_dir_all(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KwokError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

pub(super) async fn remove_file(path: &Path) -> Result<(), KwokError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KwokError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}
