//! The Helm chart: `helm lint`, `helm template` for several value sets validated by a real
//! kube-apiserver (server-side dry-run against a KWOK cluster, Kubernetes 1.36), the values
//! schema refusing bad values, and an install into that cluster whose objects are read back from
//! the apiserver, including what the StatefulSet controller made of them (pods carrying the
//! pod-index label the shard comes from, a PVC per replica), and an upgrade that scales down.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::Api;
use scale_cluster_agent::kwok::{
    ClusterManager, ComponentProfile, CreateRequest, PopulationProfile,
};
use scale_cluster_agent::store::ports::PortRange;
use scale_cluster_agent::store::Store;
use scale_cluster_agent::toolchain::Component;
use serde_yaml::Value;
use support::chart::{find, objects, pod_env, Helm};

const DEADLINE: Duration = Duration::from_secs(120);
const BASE: &[&str] = &[
    "rancher.url=https://rancher.example.com",
    "rancher.token=token-abcde:s3cr3t",
];

/// A self-signed CA in PEM (any certificate does: the chart only carries it).
fn ca_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUXq==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    path
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let bin = support::toolchain()
        .path(Component::Kubectl)
        .expect("kubectl in the toolchain")
        .to_path_buf();
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A minimal ServiceMonitor CRD, so that the optional ServiceMonitor is accepted by the
/// apiserver (its kind and group; prometheus-operator's full schema is not available offline).
const SERVICE_MONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// `--set-file` pairs: a value key and the file it is read from.
type SetFiles<'a> = Vec<(&'a str, &'a Path)>;

fn sets<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    BASE.iter().copied().chain(extra.iter().copied()).collect()
}

fn env_of(objects: &[Value], name: &str) -> String {
    let sts = find(objects, "StatefulSet", None);
    pod_env(sts, 0)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {name} in the StatefulSet's env"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_renders_valid_objects_and_installs_into_a_kwok_cluster() {
    let helm = Helm::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file(dir.path());
    let chart = support::chart::chart_dir();

    // Lint, strict, with the values a user must give.
    let mut lint = vec![
        "lint".to_string(),
        chart.display().to_string(),
        "--strict".into(),
    ];
    for set in BASE {
        lint.push("--set".into());
        lint.push((*set).into());
    }
    helm.run(&lint).expect("helm lint");

    // The schema and the templates refuse bad values with a message naming them.
    for (bad, names) in [
        ("replicas=-1", "replicas"),
        ("agent.profile=fat", "profile"),
        ("rancher.url=ftp//x", "url"),
        ("clusterPrefix=Bad_Prefix", "clusterPrefix"),
        ("rancher.caChecksum=abc", "caChecksum"),
        ("persistence.whenScaled=Sometimes", "whenScaled"),
        ("unknownKey=1", "unknownKey"),
    ] {
        let err = helm.template(&sets(&[bad]), &[]).expect_err(bad);
        assert!(err.contains(names), "{bad}: {err}");
    }
    let err = helm
        .template(&["rancher.url=https://r.example"], &[])
        .expect_err("no token");
    assert!(err.contains("rancher.token"), "{err}");
    let err = helm
        .template(&sets(&["rancher.caChecksum="]), &[])
        .map(|_| ())
        .err();
    assert!(err.is_none(), "an empty checksum is allowed: {err:?}");

    // A real apiserver to validate against and install into.
    let work = tempfile::tempdir().unwrap();
    let mut settings = support::settings();
    settings.data_dir = work.path().join("data");
    settings.kwok_workdir = work.path().join("kwok");
    settings.ports = PortRange::new(27700, 10, 2).unwrap();
    let _kill = KillOnDrop(settings.kwok_workdir.clone());
    let store = Store::open(&settings.state_db()).unwrap();
    let manager = ClusterManager::new(&settings.kwok(), support::toolchain(), store);
    manager
        .create(CreateRequest {
            name: "chart-target".into(),
            // Full: the lean profile's controller-manager runs no StatefulSet controller.
            profile: ComponentProfile::Full,
            population: PopulationProfile {
                nodes: 1,
                ..PopulationProfile::default()
            },
        })
        .await
        .expect("KWOK cluster");
    let kubeconfig = manager.kubeconfig_path("chart-target");
    kubectl(&kubeconfig, &["create", "namespace", "sca"]).unwrap();
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, SERVICE_MONITOR_CRD).unwrap();
    kubectl(&kubeconfig, &["apply", "-f", crd.to_str().unwrap()]).unwrap();
    kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd/servicemonitors.monitoring.coreos.com",
        ],
    )
    .unwrap();

    // Several value sets, each accepted by the apiserver as it stands (hooks included).
    let existing_secret = [
        "rancher.existingSecret=my-token",
        "rancher.existingSecretKey=key",
        "rancher.token=",
    ];
    let value_sets: Vec<(Vec<&str>, SetFiles)> = vec![
        (sets(&[]), vec![]),
        (
            sets(&[
                "replicas=20",
                "clustersPerReplica=150",
                "metrics.serviceMonitor.enabled=true",
                "sysctlInitContainer.enabled=true",
                "persistence.storageClassName=fast",
                "agent.profile=full",
            ]),
            vec![("rancher.caCert", ca.as_path())],
        ),
        (
            [BASE[0]]
                .into_iter()
                .chain(existing_secret)
                .chain([
                    "rancher.caChecksum=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    "cleanup.enabled=false",
                    "podDisruptionBudget.enabled=false",
                    "resources.requests.memory=1Gi",
                    "clusterPrefix=load",
                    "replicas=0",
                ])
                .collect(),
            vec![],
        ),
    ];
    let mut rendered = Vec::new();
    for (i, (values, files)) in value_sets.iter().enumerate() {
        let yaml = helm
            .template(values, files)
            .unwrap_or_else(|e| panic!("set {i}: {e}"));
        let file = dir.path().join(format!("set-{i}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        kubectl(
            &kubeconfig,
            &[
                "apply",
                "--dry-run=server",
                "-n",
                "sca",
                "-f",
                file.to_str().unwrap(),
            ],
        )
        .unwrap_or_else(|e| panic!("set {i} refused by the apiserver: {e}\n{yaml}"));
        let objs = objects(&yaml);
        for o in &objs {
            let kind = o["kind"].as_str().unwrap_or_default();
            assert!(
                !kind.contains("Role") && !kind.contains("Binding"),
                "set {i}: no RBAC for the agent, found {kind}"
            );
        }
        rendered.push(objs);
    }

    // What the values become.
    let big = &rendered[1];
    let sts = find(big, "StatefulSet", None);
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(20));
    assert_eq!(env_of(big, "SCA_DESIRED_CLUSTERS"), "150");
    assert_eq!(env_of(big, "SCA_CLUSTER_PREFIX"), "sim");
    assert_eq!(
        env_of(big, "SCA_RANCHER_CA_FILE"),
        "/etc/scale-cluster-agent/ca/ca.crt"
    );
    assert_eq!(env_of(big, "SCA_PROFILE"), "full");
    let agent = &sts["spec"]["template"]["spec"]["containers"][0];
    // 256 MiB + 160 MiB × 150, 100 m + 20 m × 150; the limit at 150 %.
    assert_eq!(
        agent["resources"]["requests"]["memory"].as_str(),
        Some("24256Mi")
    );
    assert_eq!(
        agent["resources"]["requests"]["cpu"].as_str(),
        Some("3100m")
    );
    assert_eq!(
        agent["resources"]["limits"]["memory"].as_str(),
        Some("36384Mi")
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].as_str(),
        Some("29824Mi")
    );
    assert_eq!(
        agent["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    let init = &sts["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["securityContext"]["privileged"].as_bool(), Some(true));
    assert!(rendered[0].iter().all(|o| o["kind"] != "ServiceMonitor"));
    assert!(
        find(&rendered[0], "StatefulSet", None)["spec"]["template"]["spec"]
            .get("initContainers")
            .is_none(),
        "the privileged init container is off by default"
    );
    find(big, "ServiceMonitor", None);
    find(big, "ConfigMap", Some("sim-scale-cluster-agent-ca"));
    // The token never appears in the pod spec, only in the Secret.
    let token_b64 = "dG9rZW4tYWJjZGU6czNjcjN0";
    assert!(!serde_yaml::to_string(sts).unwrap().contains("s3cr3t"));
    assert_eq!(
        find(big, "Secret", Some("sim-scale-cluster-agent-rancher"))["data"]["token"].as_str(),
        Some(token_b64)
    );
    let scale_down = find(
        big,
        "Job",
        Some("sim-scale-cluster-agent-cleanup-scale-down"),
    );
    let args: Vec<&str> = scale_down["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[..4], ["shard", "cleanup", "--from-shard", "20"]);
    let third = &rendered[2];
    assert!(third
        .iter()
        .all(|o| o["kind"] != "Job" && o["kind"] != "PodDisruptionBudget"));
    assert!(third
        .iter()
        .all(|o| o["metadata"]["name"] != "sim-scale-cluster-agent-rancher"));
    assert_eq!(env_of(third, "SCA_CLUSTER_PREFIX"), "load");
    assert_eq!(
        find(third, "StatefulSet", None)["spec"]["template"]["spec"]["containers"][0]["resources"]
            ["requests"]["memory"]
            .as_str(),
        Some("1Gi")
    );

    // Install (hooks left out: no kubelet runs their Jobs here) and read the objects back.
    let kc = kubeconfig.display().to_string();
    let mut install = vec![
        "install",
        "sim",
        chart.to_str().unwrap(),
        "--namespace",
        "sca",
        "--kubeconfig",
        &kc,
        "--no-hooks",
        "--set",
        "replicas=2",
        "--set",
        "clustersPerReplica=3",
    ];
    for set in BASE {
        install.extend(["--set", set]);
    }
    helm.run(&install).expect("helm install");
    let client = scale_cluster_agent::kwok::population::client(&kubeconfig)
        .await
        .unwrap();
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "sca");
    let got = sts
        .get("sim-scale-cluster-agent")
        .await
        .expect("StatefulSet installed");
    assert_eq!(got.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let svc: Api<Service> = Api::namespaced(client.clone(), "sca");
    let got = svc.get("sim-scale-cluster-agent").await.expect("Service");
    assert_eq!(got.spec.and_then(|s| s.cluster_ip).as_deref(), Some("None"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "sca");
    let api_token = secrets
        .get("sim-scale-cluster-agent-api")
        .await
        .expect("API token Secret");
    let token = api_token
        .data
        .and_then(|d| d.get("token").cloned())
        .expect("token");
    assert_eq!(token.0.len(), 40);
    secrets
        .get("sim-scale-cluster-agent-rancher")
        .await
        .expect("Rancher token Secret");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "sca");
    pdbs.get("sim-scale-cluster-agent").await.expect("PDB");

    // The StatefulSet controller makes one pod per ordinal with the pod-index label the shard
    // comes from, and one PVC per replica.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "sca");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "sca");
    support::eventually(
        DEADLINE,
        "pods 0 and 1 with their pod-index and PVCs",
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let mut indexed: Vec<(String, String)> = list
                .items
                .iter()
                .filter_map(|p| {
                    let name = p.metadata.name.clone()?;
                    let index = p
                        .metadata
                        .labels
                        .as_ref()?
                        .get("apps.kubernetes.io/pod-index")?
                        .clone();
                    Some((name, index))
                })
                .collect();
            indexed.sort();
            let claims = pvcs.list(&ListParams::default()).await.ok()?;
            let mut claim_names: Vec<String> = claims
                .items
                .iter()
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            claim_names.sort();
            (indexed
                == [
                    ("sim-scale-cluster-agent-0".to_string(), "0".to_string()),
                    ("sim-scale-cluster-agent-1".to_string(), "1".to_string()),
                ]
                && claim_names
                    == [
                        "data-sim-scale-cluster-agent-0",
                        "data-sim-scale-cluster-agent-1",
                    ])
            .then_some(())
        },
    )
    .await;
    let pod = pods.get("sim-scale-cluster-agent-1").await.unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));

    // An upgrade to one replica keeps the API token and scales the StatefulSet down.
    let mut upgrade = install.clone();
    upgrade[0] = "upgrade";
    let pos = upgrade.iter().position(|a| *a == "replicas=2").unwrap();
    upgrade[pos] = "replicas=1";
    helm.run(&upgrade).expect("helm upgrade");
    let after = secrets.get("sim-scale-cluster-agent-api").await.unwrap();
    assert_eq!(
        after.data.and_then(|d| d.get("token").cloned()),
        Some(token)
    );
    support::eventually(
        DEADLINE,
        "the StatefulSet scaled to 1, pod 1 gone",
        || async {
            let replicas = sts
                .get("sim-scale-cluster-agent")
                .await
                .ok()?
                .spec?
                .replicas;
            let gone = pods
                .get_opt("sim-scale-cluster-agent-1")
                .await
                .ok()?
                .is_none();
            (replicas == Some(1) && gone).then_some(())
        },
    )
    .await;
}

struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        support::kill_processes_mentioning(&self.0);
    }
}
