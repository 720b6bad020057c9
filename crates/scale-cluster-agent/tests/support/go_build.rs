//! Builds the Go test peers under `tests/` (rancher-sim, the upstream remotedialer server) with the
//! local `go`, once per test process and under a file lock, into `target/<profile>/go-peers/`.
//! A missing `go` or a failed build panics with the build output: tests never skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The repository's `tests/<name>` Go module.
pub fn module(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(name)
}

fn output_dir() -> PathBuf {
    // target/<profile>/deps/<test binary> -> target/<profile>/go-peers
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .join("go-peers")
}

/// `CGO_ENABLED=0 go build -trimpath -o <output> <package>` inside `module_dir`; returns the
/// binary's path.
pub fn build(module_dir: &Path, package: &str, output_name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get_or_insert_with(HashMap::new).get(output_name) {
        return path.clone();
    }
    let dir = output_dir();
    std::fs::create_dir_all(&dir).expect("create go peers dir");
    let lock =
        std::fs::File::create(dir.join(format!(".{output_name}.lock"))).expect("create lock file");
    fs4::fs_std::FileExt::lock_exclusive(&lock).expect("lock go build");
    let output = dir.join(output_name);
    let result = Command::new("go")
        // The toolchain's flags: its cached Kubernetes packages (the same k8s.io modules) are
        // then reused instead of compiled again with cgo.
        .args(["build", "-trimpath", "-o"])
        .arg(&output)
        .arg(package)
        .current_dir(module_dir)
        // Never fetch another toolchain; a too-old `go` must fail here, loudly.
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output();
    match result {
        Err(error) => {
            panic!("cannot run `go` to build {package} (is Go installed and on PATH?): {error}")
        }
        Ok(out) if !out.status.success() => panic!(
            "go build of {package} in {} failed ({}):\n{}\n{}",
            module_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
    fs4::fs_std::FileExt::unlock(&lock).expect("unlock go build");
    built
        .get_or_insert_with(HashMap::new)
        .insert(output_name.to_string(), output.clone());
    output
}
