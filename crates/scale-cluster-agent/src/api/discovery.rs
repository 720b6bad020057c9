//! How the CLI finds a running agent: the agent writes `<data_dir>/agent.json`
//! (`{"url": "http://127.0.0.1:PORT", "pid": N}`, plus `"token"` when the API requires one) once
//! its API listens, and removes it on a clean exit. The file is mode 0600 in a 0700 directory, so
//! only the agent's user can read the token from it. A file left by an agent that died (`kill -9`)
//! names a dead process (pid and start time: a restarted container agent is pid 1 again) and is
//! ignored, so the CLI never waits on an address nobody serves.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::auth::ApiToken;

/// File name inside the data directory.
pub const FILE_NAME: &str = "agent.json";

/// Where a running agent's API is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Discovery {
    /// Base URL of the API, e.g. `http://127.0.0.1:8765`.
    pub url: String,
    /// Process id of the agent.
    pub pid: u32,
    /// The agent's start time (`/proc/<pid>/stat`), which tells it from a later process with the
    /// same pid. Files written before it was recorded are judged by the pid alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// The API bearer token, when the agent requires one (`Debug` redacts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<ApiToken>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `<data_dir>/agent.json`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Announces this process's API at `url`. The file is mode 0600 and replaced atomically (temporary
/// file + rename), so a reader sees either the old or the new content, never half of it.
pub fn write(data_dir: &Path, url: &str) -> Result<Discovery, DiscoveryError> {
    write_with_token(data_dir, url, None)
}

/// [`write`], also recording the API token the CLI must send.
pub fn write_with_token(
    data_dir: &Path,
    url: &str,
    token: Option<&ApiToken>,
) -> Result<Discovery, DiscoveryError> {
    let discovery = Discovery {
        url: url.to_string(),
        pid: std::process::id(),
        start_time: crate::process::ProcessId::current().map(|id| id.start_time),
        token: token.cloned(),
    };
    let target = path(data_dir);
    let fail = |source| DiscoveryError::Write {
        path: target.clone(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    // The pid keeps two processes writing at once from sharing a temporary file.
    let temp = data_dir.join(format!(".{FILE_NAME}.{}.tmp", discovery.pid));
    let body = serde_json::to_vec(&discovery).map_err(|e| fail(e.into()))?;
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(source));
    }
    Ok(discovery)
}

/// The running agent announced in `data_dir`, if any: `None` when there is no file, it does not
/// parse, or its pid is not alive.
pub fn read(data_dir: &Path) -> Option<Discovery> {
    let text = std::fs::read(path(data_dir)).ok()?;
    let discovery: Discovery = serde_json::from_slice(&text).ok()?;
    announced_alive(&discovery).then_some(discovery)
}

/// Removes the file if this process wrote it. Another agent's file is left alone: an agent that
/// started on the same directory after this one must stay discoverable.
pub fn remove(data_dir: &Path) -> Result<(), DiscoveryError> {
    let target = path(data_dir);
    let ours = std::fs::read(&target)
        .ok()
        .and_then(|text| serde_json::from_slice::<Discovery>(&text).ok())
        .is_some_and(|d| {
            d.pid == std::process::id()
                && d.start_time == crate::process::ProcessId::current().map(|id| id.start_time)
        });
    if !ours {
        return Ok(());
    }
    match std::fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DiscoveryError::Remove {
            path: target,
            source,
        }),
    }
}

/// Whether the announced agent still runs (a zombie, a vanished pid or a recycled one does not);
/// the liveness rule is [`crate::process`]'s, shared with the KWOK layer.
fn announced_alive(discovery: &Discovery) -> bool {
    match discovery.start_time {
        Some(start_time) => crate::process::is_alive(&crate::process::ProcessId {
            pid: discovery.pid,
            start_time,
        }),
        None => crate::process::pid_alive(discovery.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(pid: u32, start_time: Option<u64>) -> Discovery {
        Discovery {
            url: "http://127.0.0.1:1".into(),
            pid,
            start_time,
            token: None,
        }
    }

    #[test]
    fn a_file_names_a_live_agent_only_with_its_own_start_time() {
        let me = crate::process::ProcessId::current().expect("/proc");
        assert!(announced_alive(&announced(me.pid, Some(me.start_time))));
        // Our pid, but another start time: a dead agent whose pid came back (pid 1 in a container).
        assert!(!announced_alive(&announced(
            me.pid,
            Some(me.start_time + 1)
        )));
        assert!(
            announced_alive(&announced(me.pid, None)),
            "old files: pid only"
        );
        assert!(!announced_alive(&announced(0, None)));
        assert!(!announced_alive(&announced(u32::MAX, None)));
    }

    #[test]
    fn written_files_carry_the_start_time_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write(dir.path(), "http://127.0.0.1:9").expect("write");
        assert!(written.start_time.is_some());
        assert_eq!(read(dir.path()), Some(written));
        remove(dir.path()).expect("remove");
        assert!(read(dir.path()).is_none());
    }
}
