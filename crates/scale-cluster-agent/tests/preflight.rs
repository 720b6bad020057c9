//! Preflight against the real host: the readers return values here, and the CLI exits non-zero
//! when a check fails.

use std::process::Command;

use scale_cluster_agent::preflight::{evaluate, Plan, Readings, Status};
use scale_cluster_agent::store::ports::PortRange;

#[test]
fn real_readings_are_available_on_linux() {
    let tmp = tempfile::tempdir().unwrap();
    // A work directory that does not exist yet is measured on its nearest existing ancestor.
    let r = Readings::read(&tmp.path().join("not/yet/created"));
    assert!(r.inotify_max_user_instances.is_some_and(|v| v > 0), "{r:?}");
    assert!(r.inotify_max_user_watches.is_some_and(|v| v > 0), "{r:?}");
    let nofile = r.nofile.expect("RLIMIT_NOFILE");
    assert!(nofile
        .soft
        .is_none_or(|s| nofile.hard.is_none_or(|h| s <= h)));
    assert!(r.file_max.is_some_and(|v| v > 0));
    assert!(r.pid_max.is_some_and(|v| v > 0));
    assert!(r.threads_max.is_some_and(|v| v > 0));
    assert!(r.nproc.is_some());
    let (lo, hi) = r.ephemeral_ports.expect("ip_local_port_range");
    assert!(lo <= hi);
    assert!(r.reserved_ports.is_some());
    assert!(r.disk_available.is_some_and(|v| v > 0));
    // The kernels this runs on (CI included) have KSM and per-process merging.
    assert!(r.ksm_run.is_some(), "{r:?}");
    assert!(r.memory_merge_supported, "{r:?}");

    // A socket we hold open shows up as listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = Readings::read(tmp.path());
    assert!(
        r.listening_ports
            .as_ref()
            .is_some_and(|p| p.contains(&port)),
        "port {port} not in {:?}",
        r.listening_ports
    );
    let plan = Plan {
        clusters: 1,
        ports: PortRange::new(port, 6, 1).unwrap(),
        shared_etcd_port: port - 2,
    };
    let checks = evaluate(&r, &plan);
    let ports = checks
        .iter()
        .find(|c| c.name == "cluster ports free")
        .unwrap();
    assert_eq!(ports.status, Status::Fail, "{ports:?}");
    assert!(ports.measured.contains(&port.to_string()));
}

#[test]
fn cli_exits_non_zero_when_a_check_fails() {
    let tmp = tempfile::tempdir().unwrap();
    // No disk holds 16 MiB of etcd data and logs for each of a million clusters.
    let out = Command::new(env!("CARGO_BIN_EXE_scale-cluster-agent"))
        .args(["preflight", "--clusters", "1000000"])
        .env("SCA_KWOK_WORKDIR", tmp.path())
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("disk for etcd"), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stderr.contains("preflight check(s) failed"), "{stderr}");
}
