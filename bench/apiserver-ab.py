#!/usr/bin/env python3
"""A/B census of kube-apiserver CPU on a running density run (docs/benchmarks.md).

The clusters of a running `cargo bench --bench density` (its hold) are split by name: group A,
the first half, gets a change; group B, the second half, is the reference measured in the same
window, under the same rancher-sim load and machine noise. A cluster's apiserver is found by its
command line (`--etcd-prefix=/clusters/<name>`), the shared etcd by its `--data-dir`.

  apiserver-ab.py measure SECS                 mCPU per apiserver of A and B, A/B, shared etcd total,
                                               ksmd (KSM's thread) when KSM runs; then PSS per
                                               apiserver of A and B, etcd watchers, KSM's shared pages
  apiserver-ab.py probe SECS PATH INTERVAL     the same while GETting PATH on A's apiservers every
                                               INTERVAL s, on one kept connection per apiserver
  apiserver-ab.py patch WORKDIR env NAME VALUE  adds an environment variable to A's apiservers
  apiserver-ab.py patch WORKDIR arg FLAG=VALUE  adds a flag to A's apiservers
  apiserver-ab.py patch WORKDIR revert          A's apiservers as created
  apiserver-ab.py compact RETENTION SECS       for SECS s, compacts the shared etcd every RETENTION s
                                               to the revision of RETENTION s before (what etcd's
                                               `--auto-compaction-retention` does), to compare a
                                               shorter retention with the running one in one run

`patch` edits the kube-apiserver component of each A cluster's `kwok.yaml` (what `kwokctl start`
runs) and SIGKILLs the apiserver; the agent's heal restarts it with the change. Restart a control
group too (`patch ... revert`): a freshly started apiserver is not an old one. WORKDIR is the run's
kwok workdir (`<scratch>/kwok`, in any apiserver's command line).
"""
import http.client
import json
import os
import re
import signal
import ssl
import sys
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode() for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def flag(args, name):
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def apiservers():
    """{cluster: (pid, port)} of every running kube-apiserver."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        args = cmdline(pid)
        if args and args[0].endswith("kube-apiserver") and flag(args, "etcd-prefix"):
            found[flag(args, "etcd-prefix").rsplit("/", 1)[-1]] = (int(pid), int(flag(args, "secure-port")))
    return found


def shared_etcd():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        args = cmdline(pid)
        if args and args[0].endswith("/etcd") and (flag(args, "data-dir") or "").endswith("/etcd/data"):
            return int(pid)
    return None


def etcd_connection(pid):
    """A connection to the shared etcd's loopback client URL (its JSON gateway and /metrics)."""
    url = flag(cmdline(pid), "listen-client-urls").split(",")[0]
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=30)


def etcd_call(pid, path, body):
    """POSTs `body` to the shared etcd's JSON gateway."""
    conn = etcd_connection(pid)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read() or b"{}")


def etcd_gauges(pid):
    """Watchers and the unsynced ("slow") ones the shared etcd is catching up, from its /metrics."""
    conn = etcd_connection(pid)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    wanted = ("etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_slow_watcher_total")
    values = dict(line.split() for line in text.splitlines() if line.split(" ")[0] in wanted)
    return "watchers {} slow {}".format(*(values.get(w, "?") for w in wanted))


def compact(retention, seconds):
    etcd = shared_etcd()
    if etcd is None:
        sys.exit("no shared etcd is running (an etcd whose --data-dir ends in /etcd/data)")
    revisions = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        revisions.append(int(etcd_call(etcd, "/v3/kv/range", {"key": "AA==", "limit": 1})["header"]["revision"]))
        if len(revisions) > 1:
            # The revision of one period before: history kept is between one and two periods.
            answer = etcd_call(etcd, "/v3/kv/compaction", {"revision": revisions[-2]})
            print(time.strftime("%H:%M:%S"), "compacted to", revisions[-2], answer.get("message", ""), flush=True)
        time.sleep(retention)


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pss_mib(pid):
    """(PSS, anonymous PSS) of a process in MiB, from smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields.get("Pss", 0) / 1024, fields.get("Pss_Anon", 0) / 1024


def halves(names):
    names = sorted(names)
    return names[: len(names) // 2], names[len(names) // 2 :]


def probe_forever(port, path, interval, stop):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    while not stop.is_set():
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        stop.wait(interval)


def ksmd_pid():
    """The pid of the kernel's KSM thread, or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "ksmd":
                    return int(pid)
        except OSError:
            pass
    return None


def ksm(name):
    """A KSM setting or counter (/sys/kernel/mm/ksm/NAME), or None."""
    try:
        with open(f"/sys/kernel/mm/ksm/{name}") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def measure(seconds, probe=None):
    servers = apiservers()
    a, b = halves(servers)
    stop = threading.Event()
    if probe:
        path, interval = probe
        for name in a:
            threading.Thread(target=probe_forever, args=(servers[name][1], path, interval, stop), daemon=True).start()
    etcd = shared_etcd()
    ksmd = ksmd_pid()
    ksmd_before = ticks(ksmd) if ksmd else 0
    before = {n: ticks(servers[n][0]) for n in servers}
    etcd_before = ticks(etcd) if etcd else 0
    start = time.time()
    time.sleep(seconds)
    elapsed = time.time() - start
    after = {n: ticks(servers[n][0]) for n in servers}
    etcd_after = ticks(etcd) if etcd else 0
    ksmd_after = ticks(ksmd) if ksmd else 0
    stop.set()

    def mcpu(n):
        return (after[n] - before[n]) / HZ / elapsed * 1000

    mean_a = sum(map(mcpu, a)) / len(a)
    mean_b = sum(map(mcpu, b)) / len(b)
    print(
        f"window {elapsed:.0f} s  A ({len(a)}): {mean_a:.2f} mCPU per apiserver  B ({len(b)}): {mean_b:.2f}"
        f"  A/B {mean_a / mean_b:.3f}  shared etcd {(etcd_after - etcd_before) / HZ / elapsed * 1000:.1f} mCPU"
    )
    pss = {n: pss_mib(servers[n][0]) for n in servers}
    for label, group in (("A", a), ("B", b)):
        print(
            f"{label}: PSS {sum(pss[n][0] for n in group) / len(group):.1f} MiB per apiserver"
            f" (anon {sum(pss[n][1] for n in group) / len(group):.1f})"
        )
    if etcd:
        print("shared etcd:", etcd_gauges(etcd))
    if ksm("run") == 1:
        sharing = ksm("pages_sharing") or 0
        print(
            f"KSM: {sharing * 4 / 1024:.1f} MiB shared ({sharing * 4 / 1024 / len(servers):.1f} per apiserver),"
            f" ksmd {(ksmd_after - ksmd_before) / HZ / elapsed * 1000:.1f} mCPU"
        )
    print("A:", " ".join(f"{mcpu(n):.1f}" for n in a))
    print("B:", " ".join(f"{mcpu(n):.1f}" for n in b))


def patch(workdir, how):
    clusters = os.path.join(workdir, "clusters")
    a, _ = halves(os.listdir(clusters))
    for name in a:
        config = os.path.join(clusters, name, "kwok.yaml")
        original = config + ".orig"
        if not os.path.exists(original):
            with open(config) as f, open(original, "w") as o:
                o.write(f.read())
        with open(original if how[0] == "revert" else config) as f:
            text = f.read()
        # Only the `components:` list (what kwokctl runs), not the patches that made it.
        components, sep, rest = text.partition("componentsPatches:")
        if how[0] == "env":
            gogc = "  envs:\n  - name: GOGC\n    value: '15'\n"
            components = components.replace(gogc, gogc + f"  - name: {how[1]}\n    value: '{how[2]}'\n", 1)
        elif how[0] == "arg":
            # A flag the apiserver already has is replaced (pflag would take the last of two).
            flag_name = how[1].split("=", 1)[0]
            present = re.search(rf"^  - --{re.escape(flag_name)}=.*$", components, flags=re.M)
            if present:
                components = components.replace(present.group(0), f"  - --{how[1]}", 1)
            else:
                components = components.replace("  - --etcd-prefix=", f"  - --{how[1]}\n  - --etcd-prefix=", 1)
        with open(config, "w") as f:
            f.write(components + sep + rest)
        with open(os.path.join(clusters, name, "pids", "kube-apiserver.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGKILL)
        print(f"{name}: apiserver {pid} killed, the agent restarts it with {' '.join(how)}")


def main(argv):
    if len(argv) >= 2 and argv[0] == "measure":
        measure(float(argv[1]))
    elif len(argv) >= 4 and argv[0] == "probe":
        measure(float(argv[1]), (argv[2], float(argv[3])))
    elif len(argv) >= 3 and argv[0] == "compact":
        compact(float(argv[1]), float(argv[2]))
    elif len(argv) >= 3 and argv[0] == "patch":
        patch(argv[1], argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
