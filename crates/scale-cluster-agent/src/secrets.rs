//! The rules that keep secrets on this side of the process boundary: no child process inherits
//! a secret variable (the CLI moves them out of its environment at start, [`take_secret_env`],
//! and every spawn removes them again, [`scrub_secret_env`]), and the directories holding state
//! are private to the user ([`ensure_private_dir`]). A neutral module: the configuration reads the
//! taken variables, and `kwok`, `toolchain` and `store` apply the rules, without depending on one
//! another or on the CLI.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Environment variable holding the Rancher API token.
pub const RANCHER_TOKEN_ENV: &str = "SCA_RANCHER_TOKEN";
/// Environment variable holding the agent API's bearer token.
pub const API_TOKEN_ENV: &str = "SCA_API_TOKEN";

/// Whether a child process must not inherit the variable `name`: our two token variables and,
/// so a token variable added later is covered without remembering this list, any `SCA_*`
/// variable whose name mentions a token (the `*_TOKEN_FILE` paths go too; no child needs them).
pub fn is_secret_env(name: &str) -> bool {
    name == RANCHER_TOKEN_ENV
        || name == API_TOKEN_ENV
        || (name.starts_with("SCA_") && name.to_ascii_uppercase().contains("TOKEN"))
}

/// The secret variables [`take_secret_env`] moved out of the environment.
static TAKEN_SECRETS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Moves every secret variable ([`is_secret_env`]) out of this process's environment into
/// memory, where [`secret_var`] (the configuration) still finds them, so that no child process can inherit
/// one, whoever spawns it and however. The CLI calls it first thing, after parsing the command
/// line (clap reads `SCA_*_TOKEN_FILE` from the environment) and before any other thread exists:
/// changing the environment while another thread reads it is undefined behaviour in libc.
pub fn take_secret_env() {
    let taken: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| is_secret_env(name))
        .collect();
    for (name, _) in &taken {
        std::env::remove_var(name);
    }
    let _ = TAKEN_SECRETS.set(taken);
}

/// A secret variable: from [`take_secret_env`]'s copy, else (library use, tests) the environment.
pub(crate) fn secret_var(name: &str) -> Option<String> {
    match TAKEN_SECRETS.get() {
        Some(taken) => taken
            .iter()
            .find(|(taken, _)| taken == name)
            .map(|(_, value)| value.clone()),
        None => std::env::var(name).ok(),
    }
}

/// Removes every secret variable ([`is_secret_env`]) from what `cmd` passes to its child. Every
/// process the agent spawns goes through this: kwokctl passes its environment on to etcd,
/// kube-apiserver and the rest, whose `/proc/<pid>/environ` any process of the user can read for
/// as long as they run.
pub fn scrub_secret_env(cmd: &mut std::process::Command) {
    for name in secret_env_names(std::env::vars_os().map(|(name, _)| name)) {
        cmd.env_remove(name);
    }
}

/// The names among `names` that [`is_secret_env`] rejects, plus the fixed ones (removing an unset
/// variable is harmless, and it also undoes a `cmd.env()` set earlier by mistake).
fn secret_env_names(names: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut secret: Vec<OsString> = names
        .filter(|name| name.to_str().is_some_and(is_secret_env))
        .collect();
    secret.push(RANCHER_TOKEN_ENV.into());
    secret.push(API_TOKEN_ENV.into());
    secret
}

/// Creates `dir` (and its parents) with mode 0700, or tightens an existing `dir` to 0700 when it
/// belongs to this user. A directory of someone else's, or a shared sticky one like `/tmp`, is
/// left as it is (with a warning): changing it would break its other users.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // /proc/self belongs to this process's effective uid.
    let ours = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == meta.uid());
    let sticky = mode & 0o1000 != 0;
    if ours && !sticky {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    } else {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o7777),
            "directory holding secrets is open to other users and is not ours to tighten"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_are_recognised() {
        for name in [
            "SCA_RANCHER_TOKEN",
            "SCA_API_TOKEN",
            "SCA_API_TOKEN_FILE",
            "SCA_SOME_NEW_token",
        ] {
            assert!(is_secret_env(name), "{name}");
        }
        for name in ["PATH", "HOME", "SCA_DATA_DIR", "KUBE_TOKEN", "GOFLAGS"] {
            assert!(!is_secret_env(name), "{name}");
        }
        let names = secret_env_names(
            ["PATH", "SCA_X_TOKEN", "SCA_LOG"]
                .into_iter()
                .map(OsString::from),
        );
        assert_eq!(
            names,
            ["SCA_X_TOKEN", RANCHER_TOKEN_ENV, API_TOKEN_ENV].map(OsString::from)
        );
        // What a child really sees.
        let mut cmd = std::process::Command::new("env");
        cmd.env(RANCHER_TOKEN_ENV, "leaked-value")
            .env("SCA_KEEP", "kept");
        scrub_secret_env(&mut cmd);
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert!(
            !out.contains("leaked-value") && out.contains("SCA_KEEP=kept"),
            "{out}"
        );
    }

    #[test]
    fn private_dirs_are_created_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = dir.path().join("a/b");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        // A shared sticky directory is not ours to change.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o1777);
    }
}
