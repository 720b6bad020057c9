//! Reading the agent's inputs out of Rancher's import manifest (`/v3/import/<token>_<id>.yaml`):
//! the `cluster-register` container env of Deployment `cattle-system/cattle-cluster-agent`, and the
//! registration token in the `cattle-credentials-*` Secret it mounts.

use base64::Engine;
use serde::Deserialize;
use serde_yaml::Value;

/// The agent's inputs found in an import manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImportManifest {
    pub server_url: String,
    pub ca_checksum: Option<String>,
    pub strict_verify: bool,
    /// The token of the `cattle-credentials-*` Secret named by `CATTLE_CREDENTIAL_NAME`.
    pub credentials_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EnvVar {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

impl ImportManifest {
    /// Parses the multi-document YAML. Errors name what is missing, never a value.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let mut env: Option<Vec<EnvVar>> = None;
        let mut secrets: Vec<Value> = Vec::new();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let object = Value::deserialize(document).map_err(|e| format!("invalid YAML: {e}"))?;
            let kind = object.get("kind").and_then(Value::as_str);
            let name = object
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str);
            match (kind, name) {
                (Some("Deployment"), Some("cattle-cluster-agent")) => {
                    env = Some(agent_env(&object)?);
                }
                (Some("Secret"), Some(n)) if n.starts_with("cattle-credentials-") => {
                    secrets.push(object);
                }
                _ => {}
            }
        }
        let env = env.ok_or("no Deployment cattle-cluster-agent")?;
        let lookup = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .map(|e| e.value.clone().unwrap_or_default())
        };
        let server_url = lookup("CATTLE_SERVER")
            .filter(|s| !s.is_empty())
            .ok_or("CATTLE_SERVER missing or empty")?;
        let ca_checksum = lookup("CATTLE_CA_CHECKSUM")
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty());
        let strict_verify = lookup("STRICT_VERIFY").is_some_and(|s| s.trim() == "true");
        let credentials_token = match lookup("CATTLE_CREDENTIAL_NAME") {
            Some(name) => secrets
                .iter()
                .find(|s| s["metadata"]["name"].as_str() == Some(name.as_str()))
                .map(secret_token)
                .transpose()?,
            None => None,
        };
        Ok(Self {
            server_url,
            ca_checksum,
            strict_verify,
            credentials_token,
        })
    }
}

fn agent_env(deployment: &Value) -> Result<Vec<EnvVar>, String> {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .ok_or("Deployment cattle-cluster-agent has no containers")?;
    let container = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("cluster-register"))
        .ok_or("Deployment cattle-cluster-agent has no container cluster-register")?;
    match container.get("env") {
        None => Ok(Vec::new()),
        Some(env) => serde_yaml::from_value(env.clone())
            .map_err(|e| format!("container cluster-register env: {e}")),
    }
}

fn secret_token(secret: &Value) -> Result<String, String> {
    let encoded = secret["data"]["token"]
        .as_str()
        .ok_or("cattle-credentials Secret has no data.token")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("cattle-credentials data.token is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "cattle-credentials data.token is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
---
apiVersion: v1
kind: Namespace
metadata:
  name: cattle-system
---
apiVersion: v1
kind: Secret
metadata:
  name: cattle-credentials-0123456789
  namespace: cattle-system
type: Opaque
data:
  url: "aHR0cHM6Ly9yYW5jaGVy"
  token: "dG9rZW52YWx1ZQ=="
  namespace: ""
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: cattle-cluster-agent
  namespace: cattle-system
spec:
  template:
    spec:
      containers:
        - name: cluster-register
          env:
          - name: CATTLE_SERVER
            value: "https://rancher"
          - name: CATTLE_CA_CHECKSUM
            value: "ABCDEF"
          - name: CATTLE_CLUSTER_REGISTRY
          - name: CATTLE_CREDENTIAL_NAME
            value: cattle-credentials-0123456789
          - name: STRICT_VERIFY
            value: "true"
"#;

    #[test]
    fn reads_server_checksum_strict_and_credentials() {
        let m = ImportManifest::parse(MANIFEST).expect("parses");
        assert_eq!(m.server_url, "https://rancher");
        assert_eq!(m.ca_checksum.as_deref(), Some("abcdef"));
        assert!(m.strict_verify);
        assert_eq!(m.credentials_token.as_deref(), Some("tokenvalue"));
    }

    #[test]
    fn empty_checksum_and_false_strict() {
        let yaml = MANIFEST
            .replace("\"ABCDEF\"", "\"\"")
            .replace("value: \"true\"", "value: \"false\"");
        let m = ImportManifest::parse(&yaml).expect("parses");
        assert_eq!(m.ca_checksum, None);
        assert!(!m.strict_verify);
    }

    #[test]
    fn missing_deployment_or_server_is_an_error() {
        let without_deployment = MANIFEST
            .split("---\napiVersion: apps/v1")
            .next()
            .unwrap_or("");
        assert!(ImportManifest::parse(without_deployment)
            .expect_err("no deployment")
            .contains("cattle-cluster-agent"));
        let without_server = MANIFEST.replace("CATTLE_SERVER", "CATTLE_OTHER");
        assert!(ImportManifest::parse(&without_server)
            .expect_err("no server")
            .contains("CATTLE_SERVER"));
    }
}
