//! Component profiles: which control-plane processes a cluster runs and with which flags.
//!
//! - `full`: every kwokctl default component (etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler, kwok-controller).
//! - `lean`: no kube-scheduler (the agent binds pods to nodes itself), and a kube-controller-manager
//!   restricted to the controllers Rancher relies on, without leader election.
//!
//! Both bind every component to 127.0.0.1 (kwokctl's default is 0.0.0.0, settable only by config).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::store::ports::PortBlock;
use crate::toolchain::Toolchain;

/// kube-controller-manager controllers the `lean` profile keeps: service-account tokens that Rancher
/// waits for, default service accounts, the root CA ConfigMap, namespace deletion, garbage collection
/// and the aggregated admin/edit/view roles Rancher's role templates bind to; and the deployment and
/// replicaset controllers, which turn the cattle-cluster-agent Deployment Rancher applies into a
/// pod (bound by `kwok::binder`, run by kwok).
pub const LEAN_CONTROLLERS: &str = "serviceaccount-controller,serviceaccount-token-controller,\
root-ca-certificate-publisher-controller,namespace-controller,garbage-collector-controller,\
clusterrole-aggregation-controller,deployment-controller,replicaset-controller";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ComponentProfile {
    Full,
    #[default]
    Lean,
}

impl ComponentProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentProfile::Full => "full",
            ComponentProfile::Lean => "lean",
        }
    }

    /// kwokctl component names this profile runs.
    pub fn components(self) -> &'static [&'static str] {
        match self {
            ComponentProfile::Full => &[
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kwok-controller",
            ],
            ComponentProfile::Lean => &[
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kwok-controller",
            ],
        }
    }

    /// Whether pods must be bound to nodes by whoever creates them.
    pub fn has_scheduler(self) -> bool {
        self == ComponentProfile::Full
    }

    /// Whether clusters of this profile keep their objects in the agent's shared etcd (`lean`)
    /// rather than in an etcd of their own (`full`, kwokctl's default).
    pub fn uses_shared_etcd(self) -> bool {
        self == ComponentProfile::Lean
    }

    /// Extra `kwokctl create cluster` flags.
    pub fn create_flags(self) -> Vec<String> {
        match self {
            ComponentProfile::Full => Vec::new(),
            ComponentProfile::Lean => vec!["--disable".into(), "kube-scheduler".into()],
        }
    }

    /// The per-cluster `KwokctlConfiguration` document: binaries, bind address, etcd peer port,
    /// this profile's component patches, for a cluster in the shared etcd where that is, and with
    /// `audit_policy` (the file of [`REQUEST_AUDIT_POLICY`]) the apiserver's bounded audit log,
    /// and with `advertise` the address a `lean` apiserver advertises, with no endpoint
    /// reconciler: the agent writes the `kubernetes` endpoints itself (`kwok::endpoints`).
    pub fn kwokctl_config(
        self,
        toolchain: &Toolchain,
        ports: &PortBlock,
        shared_etcd: Option<&SharedEtcdPlacement>,
        audit_policy: Option<&Path>,
        advertise: Option<IpAddr>,
    ) -> String {
        let mut doc = format!(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  etcdPeerPort: {etcd_peer}
  kubeApiserverBinary: {apiserver}
  kubeControllerManagerBinary: {kcm}
  kubeSchedulerBinary: {scheduler}
  kwokControllerBinary: {kwok}
  etcdBinary: {etcd}
  kubectlBinary: {kubectl}
",
            etcd_peer = ports.etcd_peer,
            apiserver = yaml_path(&toolchain.kube_apiserver),
            kcm = yaml_path(&toolchain.kube_controller_manager),
            scheduler = yaml_path(&toolchain.kube_scheduler),
            kwok = yaml_path(&toolchain.kwok),
            etcd = yaml_path(&toolchain.etcd),
            kubectl = yaml_path(&toolchain.kubectl),
        );
        if let Some(shared) = shared_etcd {
            // kwokctl writes `--etcd-prefix` from this option (its default is `/registry`).
            doc.push_str(&format!("  etcdPrefix: {}\n", yaml_str(&shared.prefix)));
        }
        if let Some(policy) = audit_policy {
            // kwokctl copies the policy into the cluster dir and adds `--audit-policy-file` and
            // `--audit-log-path=<cluster>/logs/audit.log` (kwok v0.8.0
            // `pkg/kwokctl/components/kube_apiserver.go`), for both profiles.
            doc.push_str(&format!("  kubeAuditPolicy: {}\n", yaml_path(policy)));
        }
        if self == ComponentProfile::Lean || shared_etcd.is_some() || audit_policy.is_some() {
            doc.push_str("componentsPatches:\n");
        }
        if audit_policy.is_some() {
            // Bounded disk: one file of at most 1 MB (the flag's unit) and one rotated backup,
            // about 1,400 requests each; the agent tails the live file (`observe::audit`).
            doc.push_str(&apiserver_patch(&[
                ("audit-log-maxsize", "1", false),
                ("audit-log-maxbackup", "1", false),
                ("audit-log-format", "json", false),
            ]));
        }
        if let Some(shared) = shared_etcd {
            // kwokctl points the apiserver at its own etcd: replace that (an added flag would
            // leave both). No compactor in the apiserver: the shared etcd compacts the whole
            // keyspace itself (`kwok::shared_etcd`), once for all clusters.
            doc.push_str(&apiserver_patch(&[
                ("etcd-servers", &shared.client_url, true),
                ("etcd-compaction-interval", "0", false),
            ]));
        }
        if self == ComponentProfile::Lean {
            if let Some(address) = advertise {
                // The `kubernetes` Service's endpoints never change here (one apiserver, a fixed
                // port): the agent writes them once at bring-up (`kwok::endpoints`) instead of
                // the reconciler's lease renewal and reads every 10 s. Measured A/B on a running
                // N = 20 density run: ~0.95x apiserver CPU (docs/benchmarks.md).
                doc.push_str(&apiserver_patch(&[
                    ("advertise-address", &address.to_string(), false),
                    ("endpoint-reconciler-type", "none", false),
                ]));
            }
            for patch in LEAN_PATCHES {
                doc.push_str(&format!("- name: {}\n", patch.component));
                if !patch.args.is_empty() || !patch.overrides.is_empty() {
                    doc.push_str("  extraArgs:\n");
                    for (key, value) in patch.args {
                        doc.push_str(&format!("  - key: {key}\n    value: {}\n", yaml_str(value)));
                    }
                    for (key, value) in patch.overrides {
                        doc.push_str(&format!(
                            "  - key: {key}\n    value: {}\n    override: true\n",
                            yaml_str(value)
                        ));
                    }
                }
                if !patch.envs.is_empty() {
                    doc.push_str("  extraEnvs:\n");
                    for (name, value) in patch.envs {
                        doc.push_str(&format!(
                            "  - name: {name}\n    value: {}\n",
                            yaml_str(value)
                        ));
                    }
                }
            }
        }
        doc
    }
}

/// The user Rancher acts as on a cluster's main tunnel: the tunnel params hand Rancher the token
/// of the ServiceAccount `cattle-system/cattle` that the agent creates in every cluster
/// (`agent::prepare`), as the real cattle-cluster-agent does.
pub const RANCHER_USER: &str = "system:serviceaccount:cattle-system:cattle";

/// The audit policy of `--request-audit`: Rancher's requests at `Metadata` level (who, verb,
/// resource, status; no bodies), nothing of anyone else (kwok, the controllers, the agent), and
/// no `RequestReceived` stage, so a request is one event (two for a watch: `ResponseStarted`
/// when it opens, `ResponseComplete` when it ends).
pub const REQUEST_AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [\"system:serviceaccount:cattle-system:cattle\"]
- level: None
";

/// Where a cluster in the shared etcd keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEtcdPlacement {
    /// The shared etcd's client URL (`http://127.0.0.1:<port>`).
    pub client_url: String,
    /// The apiserver's `--etcd-prefix` ([`crate::kwok::shared_etcd::etcd_prefix`]).
    pub prefix: String,
}

/// Quotes a path as a YAML string.
fn yaml_path(path: &Path) -> String {
    yaml_str(&path.to_string_lossy())
}

/// Quotes a string for YAML (a JSON string is a valid YAML flow scalar).
fn yaml_str(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A `componentsPatches` entry giving kube-apiserver `(flag, value, replaces kwokctl's own)`.
fn apiserver_patch(args: &[(&str, &str, bool)]) -> String {
    let mut doc = String::from("- name: kube-apiserver\n  extraArgs:\n");
    for (key, value, replace) in args {
        doc.push_str(&format!("  - key: {key}\n    value: {}\n", yaml_str(value)));
        if *replace {
            doc.push_str("    override: true\n");
        }
    }
    doc
}

/// API group versions `lean` turns off (`--runtime-config`): flow control (APF is off), dynamic
/// resource allocation, storage, node (RuntimeClass), certificates, `events.k8s.io` (core events
/// stay) and `autoscaling/v1` (v2 stays). Core, apps, batch, RBAC, authentication, authorization,
/// apiextensions, apiregistration, coordination, admissionregistration, policy, scheduling,
/// networking, autoscaling/v2 and discovery stay: Rancher, its agent Deployment and Cluster
/// Explorer's workload pages use them.
pub const LEAN_DISABLED_APIS: &str =
    "flowcontrol.apiserver.k8s.io/v1=false,resource.k8s.io/v1=false,\
storage.k8s.io/v1=false,node.k8s.io/v1=false,certificates.k8s.io/v1=false,events.k8s.io/v1=false,\
autoscaling/v1=false";

/// Admission plugins `lean` turns off: those that watch a group [`LEAN_DISABLED_APIS`] removes, and
/// PodSecurity.
pub const LEAN_DISABLED_ADMISSION: &str = "RuntimeClass,DefaultStorageClass,\
PersistentVolumeClaimResize,CertificateApproval,CertificateSigning,CertificateSubjectRestriction,\
ClusterTrustBundleAttest,PodSecurity";

/// Extra flags and environment for one component.
struct Patch {
    component: &'static str,
    /// Appended to kwokctl's own arguments.
    args: &'static [(&'static str, &'static str)],
    /// Replacing the value kwokctl sets (list flags such as `--authorization-mode` would otherwise
    /// get both).
    overrides: &'static [(&'static str, &'static str)],
    envs: &'static [(&'static str, &'static str)],
}

/// What `lean` changes, each measured with `cargo bench --bench kwok_clusters` (docs/benchmarks.md):
/// a lower GC target (GOGC=15 for kube-apiserver, whose heap dominates, 25 elsewhere; a GOMEMLIMIT
/// near the live heap made kube-apiserver burn ~14% CPU idle in GC, so none is set), no API
/// priority-and-fairness, no profiling endpoints, no apiserver watch cache (the small clusters
/// are listed from etcd directly), and no API groups that neither Rancher, its UI nor the
/// controllers use ([`LEAN_DISABLED_APIS`]).
const LEAN_PATCHES: &[Patch] = &[
    Patch {
        component: "kube-apiserver",
        args: &[
            ("enable-priority-and-fairness", "false"),
            ("profiling", "false"),
            ("watch-cache", "false"),
            ("runtime-config", LEAN_DISABLED_APIS),
            // Admission plugins whose informers need a disabled group (otherwise they never sync
            // and `/readyz` fails `informer-sync`), and PodSecurity, whose pod lister keeps a copy
            // of every pod for pods no kubelet runs.
            ("disable-admission-plugins", LEAN_DISABLED_ADMISSION),
            // Idle work nobody reads: object counts per resource every minute and the database
            // size every 30 s (metrics only), and an identity Lease written every 10 s (used by
            // storage-version and peer-proxy features, not by Rancher; the peer proxy gate depends
            // on it, so it goes too).
            ("etcd-count-metric-poll-period", "0s"),
            ("etcd-db-metric-poll-interval", "0s"),
            (
                "feature-gates",
                "APIServerIdentity=false,UnknownVersionInteroperabilityProxy=false",
            ),
        ],
        // kwokctl sets `Node,RBAC`. The Node authorizer watches VolumeAttachments (storage) and
        // ResourceSlices (resource): with those groups off its informers never sync (the same
        // `/readyz` failure). There are no kubelets to authorize anyway.
        overrides: &[("authorization-mode", "RBAC")],
        // One P: an idle apiserver's CPU is goroutine wake-ups (timers, watches), and with more
        // than one P each wake-up may also wake an idle thread to steal work. Measured on a
        // running N = 20 density run, half of the apiservers restarted with it against the other
        // half: 0.88× apiserver CPU (docs/benchmarks.md).
        envs: &[("GOGC", "15"), ("GOMAXPROCS", "1")],
    },
    Patch {
        component: "kube-controller-manager",
        args: &[
            ("controllers", LEAN_CONTROLLERS),
            ("leader-elect", "false"),
            ("profiling", "false"),
        ],
        overrides: &[],
        envs: &[("GOGC", "25")],
    },
    Patch {
        component: "kwok-controller",
        args: &[],
        overrides: &[],
        envs: &[("GOGC", "25")],
    },
    Patch {
        component: "etcd",
        // The raft tick stays at 100 ms: a 500 ms tick saved ~2 mCPU of an idle etcd but
        // delayed the first election, and so apiserver readiness, by ~1.7 s.
        args: &[],
        overrides: &[],
        envs: &[("GOGC", "25")],
    },
];

impl fmt::Display for ComponentProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown component profile {0:?}: expected \"full\" or \"lean\"")]
pub struct UnknownProfile(pub String);

impl FromStr for ComponentProfile {
    type Err = UnknownProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(ComponentProfile::Full),
            "lean" => Ok(ComponentProfile::Lean),
            other => Err(UnknownProfile(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ports::PortBlock;
    use std::path::PathBuf;

    fn toolchain() -> Toolchain {
        let p = |n: &str| PathBuf::from(format!("/cache/{n}"));
        Toolchain {
            kwokctl: p("kwokctl"),
            kwok: p("kwok"),
            kube_apiserver: p("kube-apiserver"),
            kube_controller_manager: p("kube-controller-manager"),
            kube_scheduler: p("kube-scheduler"),
            kubectl: p("kubectl"),
            etcd: p("etcd"),
        }
    }

    /// The config with no shared etcd, audit policy or advertised address.
    fn plain_config(profile: ComponentProfile) -> String {
        profile.kwokctl_config(
            &toolchain(),
            &PortBlock::starting_at(9000),
            None,
            None,
            None,
        )
    }

    /// The value of kube-apiserver flag `key` among `args` ([`apiserver_args`]).
    fn arg_value(args: &[&serde_yaml::Value], key: &str) -> Option<serde_yaml::Value> {
        args.iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    }

    /// Every `extraArgs` entry of the kube-apiserver's patches in a kwokctl config.
    fn apiserver_args(doc: &serde_yaml::Value) -> Vec<&serde_yaml::Value> {
        doc["componentsPatches"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "kube-apiserver")
            .flat_map(|p| p["extraArgs"].as_sequence().unwrap())
            .collect()
    }

    #[test]
    fn configs_are_valid_yaml_with_local_binaries_and_loopback() {
        for profile in [ComponentProfile::Full, ComponentProfile::Lean] {
            let text = plain_config(profile);
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(doc["options"]["bindAddress"], "127.0.0.1");
            assert_eq!(doc["options"]["etcdPeerPort"], 9002);
            assert_eq!(
                doc["options"]["kubeApiserverBinary"],
                "/cache/kube-apiserver"
            );
            assert!(
                !text.contains("https://"),
                "nothing may be downloaded: {text}"
            );
        }
    }

    #[test]
    fn lean_restricts_the_controller_manager() {
        let text = plain_config(ComponentProfile::Lean);
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let patches = doc["componentsPatches"].as_sequence().unwrap();
        let kcm = patches
            .iter()
            .find(|p| p["name"] == "kube-controller-manager")
            .unwrap();
        let args = kcm["extraArgs"].as_sequence().unwrap();
        let arg = |key: &str| {
            args.iter()
                .find(|a| a["key"] == key)
                .map(|a| a["value"].as_str().unwrap().to_string())
        };
        assert_eq!(arg("leader-elect").as_deref(), Some("false"));
        let controllers = arg("controllers").unwrap();
        for needed in [
            "serviceaccount-token-controller",
            "namespace-controller",
            "garbage-collector-controller",
        ] {
            assert!(controllers.split(',').any(|c| c == needed), "{controllers}");
        }
        assert!(plain_config(ComponentProfile::Full)
            .find("componentsPatches")
            .is_none());
        assert!(!ComponentProfile::Lean
            .components()
            .contains(&"kube-scheduler"));
    }

    #[test]
    fn lean_with_an_address_advertises_it_and_runs_no_endpoint_reconciler() {
        let address: IpAddr = "192.0.2.7".parse().unwrap();
        let config = |profile: ComponentProfile| -> serde_yaml::Value {
            let text = profile.kwokctl_config(
                &toolchain(),
                &PortBlock::starting_at(9000),
                None,
                None,
                Some(address),
            );
            serde_yaml::from_str(&text).unwrap()
        };
        let lean = config(ComponentProfile::Lean);
        let args = apiserver_args(&lean);
        let arg = |key: &str| arg_value(&args, key);
        assert_eq!(arg("advertise-address"), Some("192.0.2.7".into()));
        assert_eq!(arg("endpoint-reconciler-type"), Some("none".into()));
        // `full` stays kwokctl's default: the apiserver's own reconciler and address.
        assert!(config(ComponentProfile::Full)["componentsPatches"].is_null());
        // Without an address (no default route) lean keeps the reconciler too.
        let text = plain_config(ComponentProfile::Lean);
        assert!(!text.contains("endpoint-reconciler-type"), "{text}");
    }

    #[test]
    fn a_shared_etcd_cluster_points_its_apiserver_at_its_prefix() {
        let shared = SharedEtcdPlacement {
            client_url: "http://127.0.0.1:7999".into(),
            prefix: "/clusters/a".into(),
        };
        let text = ComponentProfile::Lean.kwokctl_config(
            &toolchain(),
            &PortBlock::starting_at(9000),
            Some(&shared),
            None,
            None,
        );
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc["options"]["etcdPrefix"], "/clusters/a");
        let args = apiserver_args(&doc);
        let servers = args.iter().find(|a| a["key"] == "etcd-servers").unwrap();
        assert_eq!(servers["value"], "http://127.0.0.1:7999");
        assert_eq!(servers["override"], true, "replaces kwokctl's own etcd");
        let compaction = args
            .iter()
            .find(|a| a["key"] == "etcd-compaction-interval")
            .unwrap();
        assert_eq!(compaction["value"], "0");
        // Lean's own patches are still there.
        assert!(args.iter().any(|a| a["key"] == "watch-cache"));
    }

    #[test]
    fn request_audit_adds_the_policy_and_a_bounded_log_to_both_profiles() {
        let policy: serde_yaml::Value = serde_yaml::from_str(REQUEST_AUDIT_POLICY).unwrap();
        assert_eq!(policy["rules"][0]["users"][0], RANCHER_USER);
        assert_eq!(policy["rules"][1]["level"], "None");
        assert_eq!(policy["omitStages"][0], "RequestReceived");
        for profile in [ComponentProfile::Full, ComponentProfile::Lean] {
            let text = profile.kwokctl_config(
                &toolchain(),
                &PortBlock::starting_at(9000),
                None,
                Some(Path::new("/data/audit.yaml")),
                None,
            );
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(doc["options"]["kubeAuditPolicy"], "/data/audit.yaml");
            let args = apiserver_args(&doc);
            let arg = |key: &str| arg_value(&args, key);
            assert_eq!(arg("audit-log-maxsize"), Some("1".into()), "{text}");
            assert_eq!(arg("audit-log-maxbackup"), Some("1".into()), "{text}");
            let off = plain_config(profile);
            assert!(!off.contains("audit"), "{off}");
        }
    }
}
