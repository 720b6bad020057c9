#!/usr/bin/env bash
# Steve host memory (docs/benchmarks.md): PSS fresh, per browsed cluster, and after the idle
# release, for ROUNDS rounds (a leak shows as growth per round). QUIT=1 dumps goroutines at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# Uses the toolchain's cache (SCA_CACHE_DIR, SCA_*_BINARY) from the environment.
B=/tmp/stvbench; rm -rf $B; mkdir -p $B/run; chmod 700 $B $B/run
export SCA_DATA_DIR=$B/data SCA_KWOK_WORKDIR=$B/kwok SCA_PORT_BASE=25900 SCA_PORT_BLOCKS=5
BIN=target/debug/scale-cluster-agent
N=${N:-4}
for i in $(seq 1 $N); do $BIN cluster create bench-$i --nodes 3 >/dev/null; done
HOST=${HOST:-$(ls -t ${SCA_CACHE_DIR:-$HOME/.cache/scale-cluster-agent}/steve-host/*/steve-host | head -1)}
$HOST --socket $B/run/s.sock --clusters-dir $B/kwok/clusters --idle-timeout 15s ${VERBOSE:-} 2>$B/host.log &
HP=$!
trap 'kill $HP 2>/dev/null; $BIN cluster delete --all >/dev/null 2>&1 || true' EXIT
sleep 2
pss() { awk '/^Pss:/{print int($2/1024)}' /proc/$HP/smaps_rollup; }
get() { curl -s -o /dev/null -w '%{http_code}' --unix-socket $B/run/s.sock -H "X-Scale-Cluster: $1" -H 'Impersonate-User: admin' -H 'Impersonate-Group: system:masters' "http://steve$2"; }
echo "fresh: $(pss) MiB $(curl -s --unix-socket $B/run/s.sock http://steve/debug/stats)"
for round in $(seq 1 ${ROUNDS:-2}); do
  for i in $(seq 1 $N); do
    for p in /v1/schemas /v1/nodes /v1/pods /v1/namespaces /v1/counts /v1/events; do get bench-$i $p >/dev/null; done
    sleep 3
    echo "round $round: $i browsed: $(pss) MiB"
  done
  sleep 22  # idle timeout 15 s + reaper tick + the 2 s FreeOSMemory delay
  echo "round $round: after idle release: $(pss) MiB ($(grep -c released $B/host.log) releases) $(curl -s --unix-socket $B/run/s.sock http://steve/debug/stats)"
  [ -n "${QUIT:-}" ] && [ $round = ${ROUNDS:-2} ] && kill -QUIT $HP && sleep 1 && cp $B/host.log /tmp/host-quit.log
done
