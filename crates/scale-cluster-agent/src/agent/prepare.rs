//! What the real cattle-cluster-agent finds inside its own cluster, set up through kube-rs: namespace
//! `cattle-system`, ServiceAccount `cattle` bound to `cluster-admin`, a long-lived
//! `kubernetes.io/service-account-token` Secret filled by kube-controller-manager's token controller.
//! With the cluster CA they make the main tunnel's `X-API-Tunnel-Params`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::kwok::population::FIELD_MANAGER;

pub const NAMESPACE: &str = "cattle-system";
pub const SERVICE_ACCOUNT: &str = "cattle";
const TOKEN_SECRET: &str = "cattle-token";
/// Not Rancher's own `cattle-admin-binding` (to its `cattle-admin` role), which Rancher applies
/// from the import manifest later: a roleRef cannot change, so the names must differ.
const BINDING: &str = "cattle-cluster-admin";
/// The label Rancher's `EnsureSecretForServiceAccount` puts on the token Secret it reuses.
const SA_NAME_LABEL: &str = "cattle.io/service-account.name";
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

#[cfg(test)]
mod tests {
    use super::*;

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
