//! The Helm chart under test: helm built from its pinned Go module (`tools/helm`) like the other Go
//! test peers, run with private HELM_* homes, and `helm template` parsed into objects.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/scale-cluster-agent")
}

/// helm with its own config, cache and data homes (nothing of the user's is read or written).
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    pub fn new() -> Self {
        let bin = super::go_build::build(
            &repo().join("tools/helm"),
            "helm.sh/helm/v3/cmd/helm",
            "helm",
        );
        Self {
            bin,
            home: tempfile::tempdir().expect("helm home"),
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (var, dir) in [
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.path().join(dir));
        }
        cmd.env_remove("KUBECONFIG");
        cmd
    }

    /// Runs helm; its stdout, or its stdout and stderr as the error.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String, String> {
        let out = self.command().args(args).output().expect("running helm");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `helm template sim <chart> --namespace sca` with `--set` pairs and `--set-file` pairs,
    /// hooks included; the rendered YAML.
    pub fn template(&self, sets: &[&str], set_files: &[(&str, &Path)]) -> Result<String, String> {
        let mut args: Vec<String> = vec![
            "template".into(),
            "sim".into(),
            chart_dir().display().to_string(),
            "--namespace".into(),
            "sca".into(),
        ];
        for set in sets {
            args.push("--set".into());
            args.push((*set).into());
        }
        for (key, path) in set_files {
            args.push("--set-file".into());
            args.push(format!("{key}={}", path.display()));
        }
        self.run(&args)
    }
}

/// The objects of a multi-document YAML stream (empty documents left out).
pub fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The first object of `kind` (and `name`, when given).
pub fn find<'a>(objects: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some(kind)
                && name.is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
        })
        .unwrap_or_else(|| panic!("no {kind} {name:?} rendered"))
}

/// The `SCA_*` environment the rendered StatefulSet gives the pod with `ordinal`: plain values
/// as written, the pod-index label resolved as the downward API does.
pub fn pod_env(statefulset: &Value, ordinal: u32) -> Vec<(String, String)> {
    let container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else {
                let path = e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or_else(|| panic!("unsupported env source for {name}: {e:?}"));
                assert_eq!(
                    path, "metadata.labels['apps.kubernetes.io/pod-index']",
                    "{name}"
                );
                ordinal.to_string()
            };
            (name, value)
        })
        .collect()
}
