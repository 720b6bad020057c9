//! The container image, run the way the chart runs it: `deploy/build-image.sh` builds it (buildah,
//! FROM scratch) around this test's agent binary, `helm template` renders the chart for two
//! replicas against rancher-sim, and each shard runs in its own working container of the image
//! (`buildah run --isolation chroot`: podman's crun cannot set rlimits in this sandbox) with
//! exactly the env, args and mounted files the rendered StatefulSet gives pod ordinals 0 and 1.
//! Two deviations, because the containers share the host's network namespace here instead of
//! each pod having its own: the API listens on its own loopback port and each shard gets its own
//! KWOK port base. Checked in rancher-sim: each shard converges to its count with disjoint names,
//! and a restarted shard resumes without duplicates.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_yaml::Value;
use support::agent_home::{sim_options, DEADLINE};
use support::chart::{find, objects, pod_env, repo, Helm};
use support::rancher_sim::{self, RancherSim};

const UID: u32 = 10001;
const TAG: &str = "localhost/scale-cluster-agent:test";

/// buildah on this test's own image storage.
struct Buildah {
    storage: tempfile::TempDir,
}

impl Buildah {
    fn command(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.storage.path())
            .arg("--runroot")
            .arg(self.storage.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("running buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "--all"]).output();
    }
}

/// One replica: its working container, its volumes on the host, the running process.
struct Shard {
    ordinal: u32,
    container: String,
    root: PathBuf,
    volumes: tempfile::TempDir,
    child: Option<Child>,
}

impl Shard {
    /// Kills every process whose root is this container's (what a pod's end does), then buildah.
    fn kill(&mut self) {
        for _ in 0..3 {
            for pid in processes_rooted_at(&self.root) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.volumes.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Processes whose root directory is `root`. Compared by device and inode: in the container's
/// mount namespace the link reads `/`.
fn processes_rooted_at(root: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(root) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/root/"))
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .collect()
}

fn decoded(secret: &Value, key: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().expect("secret key"))
        .expect("base64")
}

/// Writes a mounted file as the kubelet does with `fsGroup`: root-owned, group the pod's.
fn mounted_file(dir: &Path, name: &str, content: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    chown(&path, Some(0), Some(UID)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
}

/// Starts (or restarts) ordinal `shard.ordinal` with the rendered pod's env, args and mounts.
fn start(buildah: &Buildah, objs: &[Value], entrypoint: &[String], shard: &mut Shard) {
    let sts = find(objs, "StatefulSet", None);
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let vols = shard.volumes.path();
    // Each volume of the pod as a host directory with the rendered content.
    let mut host_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for volume in pod["volumes"].as_sequence().unwrap() {
        let name = volume["name"].as_str().unwrap().to_string();
        let dir = vols.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let data = find(objs, "Secret", Some(secret));
            match volume["secret"]["items"].as_sequence() {
                Some(items) => {
                    for item in items {
                        let key = item["key"].as_str().unwrap();
                        mounted_file(&dir, item["path"].as_str().unwrap(), &decoded(data, key));
                    }
                }
                None => {
                    for (key, _) in data["data"].as_mapping().unwrap() {
                        let key = key.as_str().unwrap();
                        mounted_file(&dir, key, &decoded(data, key));
                    }
                }
            }
        } else if let Some(map) = volume["configMap"]["name"].as_str() {
            let data = find(objs, "ConfigMap", Some(map));
            for (key, value) in data["data"].as_mapping().unwrap() {
                mounted_file(
                    &dir,
                    key.as_str().unwrap(),
                    value.as_str().unwrap().as_bytes(),
                );
            }
        } else {
            assert!(
                volume.get("emptyDir").is_some(),
                "unexpected volume {volume:?}"
            );
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        host_dirs.insert(name, dir);
    }
    // The PVC (volumeClaimTemplates), owned by the pod's fsGroup as the kubelet makes it.
    let data = vols.join("pvc-data");
    std::fs::create_dir_all(&data).unwrap();
    chown(&data, Some(UID), Some(UID)).unwrap();
    host_dirs.insert("data".into(), data);

    let mut cmd = buildah.command();
    cmd.args(["run", "--isolation", "chroot"]);
    for mount in container["volumeMounts"].as_sequence().unwrap() {
        let host = &host_dirs[mount["name"].as_str().unwrap()];
        let ro = if mount["readOnly"].as_bool() == Some(true) {
            ":ro"
        } else {
            ""
        };
        cmd.arg("--volume").arg(format!(
            "{}:{}{ro}",
            host.display(),
            mount["mountPath"].as_str().unwrap()
        ));
    }
    let mut env = pod_env(sts, shard.ordinal);
    // The two deviations (shared network namespace), nothing else.
    let listen = format!("127.0.0.1:{}", 27890 + shard.ordinal);
    for (name, value) in env.iter_mut() {
        if name == "SCA_LISTEN" {
            *value = listen.clone();
        }
    }
    env.push((
        "SCA_PORT_BASE".into(),
        (27750 + 70 * shard.ordinal).to_string(),
    ));
    for (name, value) in &env {
        cmd.arg("--env").arg(format!("{name}={value}"));
    }
    let args: Vec<String> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    cmd.arg(&shard.container)
        .arg("--")
        .args(entrypoint)
        .args(&args);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(vols.join("agent.log"))
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    shard.child = Some(cmd.spawn().expect("buildah run"));
}

/// Rancher's clusters of `shard` (name → id), all active and owned by the shard's instance, once
/// exactly `count` exist.
async fn wait_shard(
    sim: &RancherSim,
    shard: u32,
    count: usize,
    logs: &dyn Fn() -> String,
) -> BTreeMap<String, String> {
    let want: Vec<String> = (1..=count).map(|n| format!("sim-{shard}-{n:05}")).collect();
    let owner = format!("sim-shard-{shard}");
    let prefix = format!("sim-{shard}-");
    let what = format!("shard {shard} to hold exactly {want:?}, active, in rancher-sim");
    let deadline = tokio::time::Instant::now() + DEADLINE * 2;
    loop {
        let list = sim.get_v3("clusters").await;
        let mine: Vec<&serde_json::Value> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .collect();
        let active: BTreeMap<String, String> = mine
            .iter()
            .filter(|c| {
                c["state"] == "active"
                    && c["labels"][scale_cluster_agent::rancher::INSTANCE_LABEL] == owner.as_str()
            })
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if mine.len() == count && active.keys().cloned().collect::<Vec<_>>() == want {
            return active;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_the_rendered_statefulset_as_two_shards_against_rancher_sim() {
    assert!(
        Command::new("buildah").arg("--version").output().is_ok_and(|o| o.status.success()),
        "buildah is needed to build and run the image (Debian: apt-get install -y buildah; .ci/run installs it)"
    );
    support::toolchain();
    let buildah = Buildah {
        storage: tempfile::tempdir().unwrap(),
    };
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("image.oci.tar");
    let built = Command::new(repo().join("deploy/build-image.sh"))
        .args([
            "--agent-binary",
            env!("CARGO_BIN_EXE_scale-cluster-agent"),
            "--tag",
            TAG,
            "--output",
        ])
        .arg(&archive)
        .env("BUILDAH_ROOT", buildah.storage.path())
        .output()
        .expect("running deploy/build-image.sh");
    assert!(
        built.status.success(),
        "build-image.sh: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        archive.metadata().unwrap().len() > 0,
        "the OCI archive is written"
    );
    // The image's own entrypoint and user, as a container runtime would use them.
    let inspected: serde_json::Value =
        serde_json::from_str(&buildah.run(&["inspect", "--type", "image", TAG])).unwrap();
    let config = &inspected["OCIv1"]["config"];
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone()).unwrap();
    let user = config["User"].as_str().unwrap_or_default();
    assert_eq!(
        user,
        format!("{UID}:{UID}"),
        "the image runs as a non-root user"
    );

    let sim = rancher_sim::start(sim_options());
    let ca = out_dir.path().join("ca.crt");
    std::fs::copy(sim.state_dir.join("ca.crt"), &ca).unwrap();
    let helm = Helm::new();
    let url = format!("rancher.url={}", sim.url);
    let token = format!("rancher.token={}", sim.token);
    let yaml = helm
        .template(
            &[
                &url,
                &token,
                "replicas=2",
                "clustersPerReplica=2",
                "image.repository=localhost/scale-cluster-agent",
                "image.tag=test",
            ],
            &[("rancher.caCert", ca.as_path())],
        )
        .expect("helm template");
    let objs = objects(&yaml);
    let sts = find(&objs, "StatefulSet", None);
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(TAG)
    );

    let mut shards = Vec::new();
    for ordinal in 0..2u32 {
        let container = buildah.run(&["from", "--name", &format!("sca-shard-{ordinal}"), TAG]);
        let root = PathBuf::from(buildah.run(&["mount", &container]));
        shards.push(Shard {
            ordinal,
            container,
            root,
            volumes: tempfile::tempdir().unwrap(),
            child: None,
        });
    }
    for shard in &mut shards {
        start(&buildah, &objs, &entrypoint, shard);
    }
    let logs = || {
        shards
            .iter()
            .map(|s| format!("--- shard {}:\n{}", s.ordinal, s.log()))
            .collect::<String>()
    };
    let shard0 = wait_shard(&sim, 0, 2, &logs).await;
    let shard1 = wait_shard(&sim, 1, 2, &logs).await;
    assert!(
        shard0.keys().all(|n| !shard1.contains_key(n)),
        "disjoint names"
    );
    let all = sim.get_v3("clusters").await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        4,
        "nothing else in Rancher: {all}"
    );

    // Restart shard 1 (every process of its container killed, as when a pod is deleted): it
    // resumes from its volume, reconnecting the same clusters, creating none.
    let mut connects = BTreeMap::new();
    for id in shard1.values() {
        connects.insert(
            id.clone(),
            sim.stats(id).await["stats"]["mainConnects"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    shards[1].kill();
    start(&buildah, &objs, &entrypoint, &mut shards[1]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for (id, before) in &connects {
        loop {
            let stats = sim.stats(id).await;
            if stats["stats"]["mainConnects"].as_u64().unwrap_or(0) > *before
                && stats["stats"]["connected"] == true
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {id} to be reconnected by the restarted shard: {stats}\n{}",
                shards[1].log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    let logs = || {
        shards
            .iter()
            .map(|s| format!("--- shard {}:\n{}", s.ordinal, s.log()))
            .collect::<String>()
    };
    assert_eq!(
        wait_shard(&sim, 1, 2, &logs).await,
        shard1,
        "same clusters after the restart"
    );
    assert_eq!(wait_shard(&sim, 0, 2, &logs).await, shard0);
    let all = sim.get_v3("clusters").await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        4,
        "no duplicates: {all}"
    );
    let log = logs();
    assert!(!log.contains(&sim.token), "the token is never logged");
}
