//! The typed results of the client, and the v3 (norman) JSON shapes they are read from: resources
//! with status fields flattened next to `id`/`type`, collections with `data`, errors with `code`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// A management cluster as the v3 API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RancherCluster {
    /// `c-xxxxx` (v3-created) or `c-m-xxxxxxxx` (provisioning-created).
    pub id: String,
    /// The display name (unique in Rancher).
    pub name: String,
    /// `pending`, `waiting`, `active`, `unavailable`, `removing`, ...
    pub state: String,
    /// Why the cluster is not yet where it is going (empty when settled).
    pub transitioning_message: String,
    pub conditions: Vec<Condition>,
    /// The management cluster's labels (the v3 API shows metadata labels as a top-level field).
    pub labels: BTreeMap<String, String>,
    /// True once a deletion started in Rancher.
    pub removing: bool,
}

impl RancherCluster {
    pub fn is_active(&self) -> bool {
        self.state == "active"
    }

    /// The scale-cluster-agent instance that created this cluster, from its label.
    pub fn owner(&self) -> Option<&str> {
        self.labels.get(super::INSTANCE_LABEL).map(String::as_str)
    }

    /// The condition of this type, if Rancher reports it.
    pub fn condition(&self, condition_type: &str) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|c| c.condition_type == condition_type)
    }
}

/// One status condition (`Connected`, `Ready`, `AgentDeployed`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub condition_type: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

/// A cluster registration token: authenticates both tunnels of an agent. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationToken(String);

impl RegistrationToken {
    pub(super) fn new(value: String) -> Self {
        Self(value)
    }

    /// The token, for the tunnel headers.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RegistrationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistrationToken(<redacted>)")
    }
}

/// What an agent needs to register a cluster: the token and the inputs from the import manifest.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    pub cluster_id: String,
    pub token: RegistrationToken,
    /// `<rancher>/v3/import/<token>_<cluster>.yaml`; contains the token, so `Debug` hides it.
    pub import_url: String,
    /// `CATTLE_SERVER`: the URL the agent connects to.
    pub server_url: String,
    /// `CATTLE_CA_CHECKSUM`; `None` when Rancher has a publicly trusted certificate.
    pub ca_checksum: Option<String>,
    /// `STRICT_VERIFY`: trust Rancher only through its `cacerts`, never the system roots.
    pub strict_verify: bool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("cluster_id", &self.cluster_id)
            .field("token", &self.token)
            .field("import_url", &"<redacted>")
            .field("server_url", &self.server_url)
            .field("ca_checksum", &self.ca_checksum)
            .field("strict_verify", &self.strict_verify)
            .finish()
    }
}

/// A v3 collection; `pagination.next` links the next page when the server limited this one.
#[derive(Debug, Deserialize)]
pub(super) struct Collection<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Pagination {
    #[serde(default)]
    pub next: Option<String>,
}

/// A v3 cluster resource (only the fields the client reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClusterResource {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub transitioning_message: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Set once a deletion started; such a cluster no longer owns its name.
    #[serde(default)]
    pub removed: Option<String>,
    #[serde(default)]
    pub created: String,
}

impl ClusterResource {
    pub fn is_removing(&self) -> bool {
        self.removed.is_some() || self.state == "removing"
    }
}

impl From<ClusterResource> for RancherCluster {
    fn from(r: ClusterResource) -> Self {
        Self {
            removing: r.is_removing(),
            labels: r.labels,
            id: r.id,
            name: r.name,
            state: r.state,
            transitioning_message: r.transitioning_message,
            conditions: r.conditions,
        }
    }
}

/// A v3 clusterRegistrationToken. 2.8–2.12 carry the value from `status.token`; 2.13+ keep it in
/// a Secret (`tokenSecretName`) and the API fills `token` in once it can read that Secret.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenResource {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub token: Option<String>,
}

impl TokenResource {
    /// The usable value: present, and not the `{token}` placeholder of an unfilled 2.13+ object.
    pub fn value(&self) -> Option<&str> {
        self.token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.contains(['{', '}']))
    }
}

/// A v3 error body. `status` is a number in API errors but a string in the 401 of the auth filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "fieldName")]
    pub field_name: String,
}

/// The `cacerts` setting.
#[derive(Debug, Deserialize)]
pub(super) struct Setting {
    #[serde(default)]
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_value_skips_empty_and_placeholder() {
        let parse = |json: &str| serde_json::from_str::<TokenResource>(json).expect("json");
        assert_eq!(parse(r#"{"name":"default-token"}"#).value(), None);
        assert_eq!(parse(r#"{"token":""}"#).value(), None);
        assert_eq!(parse(r#"{"token":"{token}"}"#).value(), None);
        assert_eq!(parse(r#"{"token":"abc"}"#).value(), Some("abc"));
    }

    #[test]
    fn registration_debug_hides_token_and_url() {
        let registration = Registration {
            cluster_id: "c-abcde".into(),
            token: RegistrationToken::new("sekrittoken".into()),
            import_url: "https://r/v3/import/sekrittoken_c-abcde.yaml".into(),
            server_url: "https://r".into(),
            ca_checksum: None,
            strict_verify: true,
        };
        let shown = format!("{registration:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("c-abcde"));
    }

    #[test]
    fn error_body_accepts_string_or_number_status() {
        let a: ErrorBody = serde_json::from_str(
            r#"{"type":"error","status":"401","message":"must authenticate"}"#,
        )
        .expect("string status");
        assert_eq!(a.message, "must authenticate");
        let b: ErrorBody = serde_json::from_str(
            r#"{"type":"error","status":422,"code":"NotUnique","fieldName":"Cluster name"}"#,
        )
        .expect("numeric status");
        assert_eq!(
            (b.code.as_str(), b.field_name.as_str()),
            ("NotUnique", "Cluster name")
        );
    }
}
