//! What the real cattle-cluster-agent finds inside its own cluster, set up through kube-rs: namespace
//! `cattle-system`, ServiceAccount `cattle` bound to `cluster-admin`, a long-lived
//! `kubernetes.io/service-account-token` Secret filled by kube-controller-manager's token controller.
//! With the cluster CA they make the main tunnel's `X-API-Tunnel-Params`.
//!
//! Once registered, the real agent also leaves `cattle-system/stv-aggregation` behind
//! ([`apply_steve_aggregation`]), from which Rancher sets the cluster's `AgentTlsStrictCheck`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::kwok::population::FIELD_MANAGER;
use crate::rancher::{ca_checksum, RancherClient, Registration};

pub const NAMESPACE: &str = "cattle-system";
pub const SERVICE_ACCOUNT: &str = "cattle";
const TOKEN_SECRET: &str = "cattle-token";
/// Not Rancher's own `cattle-admin-binding` (to its `cattle-admin` role), which Rancher applies
/// from the import manifest later: a roleRef cannot change, so the names must differ.
const BINDING: &str = "cattle-cluster-admin";
/// The label Rancher's `EnsureSecretForServiceAccount` puts on the token Secret it reuses.
const SA_NAME_LABEL: &str = "cattle.io/service-account.name";
/// The Secret the real agent's `setupSteveAggregation` writes (rancher/rancher `pkg/agent/rancher`).
pub const STEVE_AGGREGATION_SECRET: &str = "stv-aggregation";
const TOKEN_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("Kubernetes API error while {action}: {source}")]
    Api {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the token controller did not fill Secret {NAMESPACE}/{TOKEN_SECRET} within {0:?} (is kube-controller-manager running?)")]
    TokenTimeout(Duration),
}

fn api_err(action: &'static str) -> impl FnOnce(kube::Error) -> PrepareError {
    move |source| PrepareError::Api { action, source }
}

#[derive(Serialize)]
struct Params<'a> {
    cluster: ClusterParams<'a>,
}

/// Field order is fixed by this struct, so the same inputs always give the same bytes.
#[derive(Serialize)]
struct ClusterParams<'a> {
    address: &'a str,
    token: &'a str,
    #[serde(rename = "caCert")]
    ca_cert: String,
}

/// `X-API-Tunnel-Params`: standard base64 (with padding, as Rancher decodes it) of
/// `{"cluster":{"address","token","caCert"}}`, `caCert` being base64 of the CA PEM.
pub fn tunnel_params(address: &str, token: &str, ca_pem: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let params = Params {
        cluster: ClusterParams {
            address,
            token,
            ca_cert: b64.encode(ca_pem.as_bytes()),
        },
    };
    // Serialising plain strings cannot fail.
    b64.encode(serde_json::to_vec(&params).unwrap_or_default())
}

/// Applies namespace, service account, binding and token Secret, and returns the token once the
/// token controller has filled it. (The CA is the cluster's `pki/ca.crt`, the same bytes the
/// root-CA publisher copies into `kube-root-ca.crt`; reading the file keeps the params stable.)
pub async fn prepare(client: &Client) -> Result<String, PrepareError> {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .patch(NAMESPACE, &apply, &Patch::Apply(&ns))
        .await
        .map_err(api_err("applying namespace cattle-system"))?;

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(SERVICE_ACCOUNT.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .patch(SERVICE_ACCOUNT, &apply, &Patch::Apply(&sa))
        .await
        .map_err(api_err("applying service account cattle"))?;

    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(BINDING.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: SERVICE_ACCOUNT.into(),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    bindings
        .patch(BINDING, &apply, &Patch::Apply(&binding))
        .await
        .map_err(api_err(
            "applying cluster role binding cattle-admin-binding",
        ))?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([(
                SA_NAME_LABEL.to_string(),
                SERVICE_ACCOUNT.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/service-account.name".to_string(),
                SERVICE_ACCOUNT.to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Default::default()
    };
    secrets
        .patch(TOKEN_SECRET, &apply, &Patch::Apply(&secret))
        .await
        .map_err(api_err("applying the cattle token Secret"))?;

    let deadline = tokio::time::Instant::now() + TOKEN_WAIT;
    let token = loop {
        let filled = secrets
            .get(TOKEN_SECRET)
            .await
            .map_err(api_err("reading the cattle token Secret"))?
            .data
            .and_then(|mut d| d.remove("token"))
            .map(|t| String::from_utf8_lossy(&t.0).trim().to_string())
            .filter(|t| !t.is_empty());
        if let Some(token) = filled {
            break token;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PrepareError::TokenTimeout(TOKEN_WAIT));
        }
        tokio::time::sleep(POLL).await;
    };

    Ok(token)
}

/// What the real agent writes into `cattle-system/stv-aggregation`. `Debug` leaves the token out.
pub struct SteveAggregation<'a> {
    /// `CATTLE_SERVER`.
    pub server_url: &'a str,
    /// The registration token (`CATTLE_TOKEN`): a cluster-local credential Rancher gave the
    /// agent, written into the simulated cluster as the real agent writes it, never logged.
    pub token: &'a str,
    /// `CATTLE_CA_CHECKSUM`, empty when Rancher's certificate is publicly trusted.
    pub ca_checksum: Option<&'a str>,
    /// The pinned CA (the PEM the checksum names), the real agent's `serverca` file.
    pub ca_pem: Option<&'a str>,
    /// `CATTLE_CACERTS_VALID`: whether the agent reached Rancher trusting that CA.
    pub cacerts_valid: bool,
}

impl std::fmt::Debug for SteveAggregation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteveAggregation")
            .field("server_url", &self.server_url)
            .field("ca_checksum", &self.ca_checksum)
            .field("cacerts_valid", &self.cacerts_valid)
            .finish_non_exhaustive()
    }
}

impl SteveAggregation<'_> {
    /// The Secret's data, key for key as `setupSteveAggregation` writes it: `url` is the tunnel
    /// endpoint and `token` the steve tunnel's bearer value; `ca.crt` only with a pinned CA.
    pub fn data(&self) -> BTreeMap<String, ByteString> {
        let server = self.server_url.trim_end_matches('/');
        let mut data: BTreeMap<String, ByteString> = [
            ("CATTLE_SERVER", server.to_string()),
            ("CATTLE_TOKEN", self.token.to_string()),
            (
                "CATTLE_CA_CHECKSUM",
                self.ca_checksum.unwrap_or_default().to_string(),
            ),
            ("url", format!("{server}/v3/connect")),
            ("token", format!("stv-cluster-{}", self.token)),
            (
                "CATTLE_CACERTS_VALID",
                if self.cacerts_valid { "true" } else { "false" }.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
        if let Some(pem) = self.ca_pem {
            data.insert("ca.crt".into(), ByteString(pem.as_bytes().to_vec()));
        }
        data
    }
}

/// The CA that `CATTLE_CA_CHECKSUM` pins, as the real agent keeps it (its `serverca` file): the
/// PEM the tunnels trust when they pin it, else Rancher's `cacerts` (one request), kept only when
/// it matches the checksum. `None` without a checksum (a publicly trusted Rancher) or when the
/// CA cannot be had; the Secret then says `CATTLE_CACERTS_VALID: false`, as the real agent would.
pub async fn pinned_ca(
    rancher: &RancherClient,
    registration: &Registration,
    tunnel_tls: &remotedialer::TlsMode,
) -> Option<String> {
    let checksum = registration
        .ca_checksum
        .as_deref()?
        .trim()
        .to_ascii_lowercase();
    if let remotedialer::TlsMode::CaBundle { pem, .. } = tunnel_tls {
        return Some(pem.clone());
    }
    match rancher.ca_certs().await {
        Ok(pem) if ca_checksum(&pem) == checksum => Some(pem),
        Ok(_) => {
            tracing::warn!(
                cluster = %registration.cluster_id,
                "Rancher's cacerts do not match CATTLE_CA_CHECKSUM; stv-aggregation says so"
            );
            None
        }
        Err(error) => {
            tracing::warn!(cluster = %registration.cluster_id, %error, "cannot read Rancher's cacerts for stv-aggregation");
            None
        }
    }
}

/// Writes `cattle-system/stv-aggregation` (server-side apply: the whole data, replaced when the
/// token or the CA changes). Called once the tunnels are connected, as the real agent writes it
/// from its main tunnel's `onConnect`.
pub async fn apply_steve_aggregation(
    client: &Client,
    aggregation: &SteveAggregation<'_>,
) -> Result<(), PrepareError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(STEVE_AGGREGATION_SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        data: Some(aggregation.data()),
        ..Default::default()
    };
    secrets
        .patch(
            STEVE_AGGREGATION_SECRET,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(api_err("applying the stv-aggregation Secret"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steve_aggregation_has_the_real_agents_keys() {
        let pinned = SteveAggregation {
            server_url: "https://rancher.example.com/",
            token: "abc123",
            ca_checksum: Some("deadbeef"),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n"),
            cacerts_valid: true,
        };
        let text = |data: &BTreeMap<String, ByteString>, key: &str| {
            String::from_utf8(data[key].0.clone()).unwrap()
        };
        let data = pinned.data();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "CATTLE_CACERTS_VALID",
                "CATTLE_CA_CHECKSUM",
                "CATTLE_SERVER",
                "CATTLE_TOKEN",
                "ca.crt",
                "token",
                "url"
            ]
        );
        assert_eq!(text(&data, "CATTLE_SERVER"), "https://rancher.example.com");
        assert_eq!(text(&data, "url"), "https://rancher.example.com/v3/connect");
        assert_eq!(text(&data, "token"), "stv-cluster-abc123");
        assert_eq!(text(&data, "CATTLE_TOKEN"), "abc123");
        assert_eq!(text(&data, "CATTLE_CA_CHECKSUM"), "deadbeef");
        assert_eq!(text(&data, "CATTLE_CACERTS_VALID"), "true");
        assert!(
            !format!("{pinned:?}").contains("abc123"),
            "no token in Debug"
        );

        let public = SteveAggregation {
            ca_checksum: None,
            ca_pem: None,
            cacerts_valid: false,
            ..pinned
        };
        let data = public.data();
        assert!(!data.contains_key("ca.crt"));
        assert_eq!(text(&data, "CATTLE_CA_CHECKSUM"), "");
        assert_eq!(text(&data, "CATTLE_CACERTS_VALID"), "false");
    }

    #[test]
    fn params_are_rancher_shaped_and_deterministic() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let a = tunnel_params("127.0.0.1:8001", "tok", pem);
        assert_eq!(a, tunnel_params("127.0.0.1:8001", "tok", pem));
        let b64 = base64::engine::general_purpose::STANDARD;
        let json: serde_json::Value = serde_json::from_slice(&b64.decode(&a).unwrap()).unwrap();
        assert_eq!(json["cluster"]["address"], "127.0.0.1:8001");
        assert_eq!(json["cluster"]["token"], "tok");
        assert_eq!(
            b64.decode(json["cluster"]["caCert"].as_str().unwrap())
                .unwrap(),
            pem.as_bytes()
        );
        assert!(
            json.get("node").is_none(),
            "a node key would make Rancher treat us as a node agent"
        );
    }
}
