//! The agent's **controller host**: one child process per agent (`hosts/controller-host`, built
//! by the toolchain) that runs, for every `lean` cluster the agent tells it about,
//! kube-controller-manager's [`LEAN_CONTROLLERS`] and kwok's node, lease and pod controllers, in
//! place of a kube-controller-manager and a kwok-controller process per cluster.
//!
//! - [`host`]: the supervisor (scrubbed environment, no token, restart with backoff, every
//!   registered cluster registered again after a restart, terminated and awaited on shutdown)
//!   and the calls that add and remove a cluster through the host's control API on a unix socket
//!   in a private (0700) directory.
//!
//! Whether a cluster uses the host is a property of the cluster, fixed at its creation: a `lean`
//! cluster created by a [`crate::kwok::ClusterManager`] that has a host runs without kwokctl's
//! `kube-controller-manager` and `kwok-controller` components, which its `kwok.yaml` then does
//! not list ([`uses_host`]).

pub mod host;

use std::path::Path;

pub use host::{ControllerHost, ControllerHostConfig, ControllerHostError};

pub use crate::kwok::profile::LEAN_CONTROLLERS;

/// The kwokctl components the host replaces.
pub const REPLACED_COMPONENTS: [&str; 2] = ["kube-controller-manager", "kwok-controller"];

/// `kwokctl create cluster` flags that leave the replaced components out.
pub fn disable_flags() -> Vec<String> {
    REPLACED_COMPONENTS
        .iter()
        .flat_map(|c| ["--disable".to_string(), (*c).to_string()])
        .collect()
}

/// The component names listed in a cluster's `kwok.yaml` (kwokctl's saved configuration:
/// `KwokctlConfiguration.components[].name`), which are what `kwokctl start` runs; `None` when the
/// file cannot be read or holds no such list.
pub async fn configured_components(cluster_dir: &Path) -> Option<Vec<String>> {
    let text = tokio::fs::read_to_string(cluster_dir.join("kwok.yaml"))
        .await
        .ok()?;
    components_in(&text)
}

fn components_in(text: &str) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Doc {
        kind: Option<String>,
        components: Option<Vec<Named>>,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    for doc in serde_yaml::Deserializer::from_str(text) {
        // A syntax error ends the stream: serde_yaml's iterator would yield it forever.
        let Ok(doc) = <Doc as serde::Deserialize>::deserialize(doc) else {
            return None;
        };
        if doc.kind.as_deref() == Some("KwokctlConfiguration") {
            return doc
                .components
                .map(|list| list.into_iter().map(|c| c.name).collect());
        }
    }
    None
}

/// Whether the cluster in `cluster_dir` was created to have its controllers run by the host: its
/// `kwok.yaml` lists an apiserver but neither replaced component.
pub async fn uses_host(cluster_dir: &Path) -> bool {
    configured_components(cluster_dir)
        .await
        .is_some_and(|components| lists_no_replaced(&components))
}

fn lists_no_replaced(components: &[String]) -> bool {
    components.iter().any(|c| c == "kube-apiserver")
        && !components
            .iter()
            .any(|c| REPLACED_COMPONENTS.contains(&c.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KWOK_YAML: &str =
        "kind: KwokConfiguration\napiVersion: config.kwok.x-k8s.io/v1alpha1\n---\n\
apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokctlConfiguration\ncomponents:\n\
- name: etcd\n  args: [a]\n- name: kube-apiserver\n---\nkind: Stage\nspec: {}\n";

    #[test]
    fn reads_the_component_list_of_kwokctls_configuration() {
        assert_eq!(
            components_in(KWOK_YAML).unwrap(),
            vec!["etcd".to_string(), "kube-apiserver".to_string()]
        );
        assert!(lists_no_replaced(&components_in(KWOK_YAML).unwrap()));
        let with_kcm = KWOK_YAML.replace(
            "- name: kube-apiserver",
            "- name: kube-apiserver\n- name: kube-controller-manager",
        );
        assert!(!lists_no_replaced(&components_in(&with_kcm).unwrap()));
        assert_eq!(components_in("kind: Stage\n"), None);
        assert_eq!(components_in(": not yaml ["), None);
    }

    #[test]
    fn disables_both_replaced_components() {
        assert_eq!(
            disable_flags(),
            [
                "--disable",
                "kube-controller-manager",
                "--disable",
                "kwok-controller"
            ]
        );
    }
}
