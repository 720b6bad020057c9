#!/bin/bash
# Lean kube-apiservers started by hand, outside the agent, to time their start-up and to see what
# KSM shares between them (docs/benchmarks.md: "What the apiserver's GOGC=15 costs at start-up",
# "Memory merging (KSM)").
#
# CLUSTER_DIR is a lean cluster made KWOK-only (no agent running), e.g.
#   SCA_DATA_DIR=/tmp/sa/data SCA_KWOK_WORKDIR=/tmp/sa/kwok SCA_PORT_BASE=30600 \
#     scale-cluster-agent cluster create base --profile lean
#   CLUSTER_DIR=/tmp/sa/kwok/clusters/base
# Its kwok.yaml gives the apiserver's flags; each apiserver started here gets a fresh etcd prefix
# of the same shared etcd (a new cluster) and its own port from 30700 up. APISERVER_BIN, when set,
# is the binary to start instead of the cluster's own kube-apiserver.
#
#   apiserver-standalone.sh CLUSTER_DIR start IDLE "ENV ..." ...
#       one apiserver per ENV list (e.g. "GOGC=15 GOMAXPROCS=1"), one after the other: seconds to
#       the first /readyz = ok, CPU-seconds until then, idle mCPU over IDLE s (after 20 s), PSS
#   apiserver-standalone.sh CLUSTER_DIR merge K MARK WAIT
#       K apiservers (GOGC=15 GOMAXPROCS=1), MARK=1 through prctl(PR_SET_MEMORY_MERGE) as the agent
#       starts kwokctl; after WAIT s: PSS and mCPU per apiserver, KSM's counters, ksmd's CPU time
set -euo pipefail
C=$1; MODE=$2; shift 2
CERT=(--cert "$C/pki/admin.crt" --key "$C/pki/admin.key")
# The apiserver's flags from kwok.yaml: the first component's args list that sets --etcd-prefix.
FLAGS=$(awk '/^- args:/{f=1;next} f&&/^  - /{print substr($0,5)} f&&!/^  - /{f=0}' "$C/kwok.yaml" |
  sed -n '/^--etcd-prefix/,/^--feature-gates/p')
PORT0=$(grep -o -- '--secure-port=[0-9]*' <<<"$FLAGS" | cut -d= -f2)

# start_apiserver PORT WRAP ENV...: starts one on a fresh prefix, prints its pid once /readyz is ok
start_apiserver() {
  local port=$1 wrap=$2; shift 2
  local prefix="standalone-$(date +%s%N)" args
  args=$(sed "s#^--etcd-prefix=.*#--etcd-prefix=/clusters/$prefix#; s#^--secure-port=$PORT0\$#--secure-port=$port#" <<<"$FLAGS")
  local mark=()
  [ "$wrap" = 1 ] && mark=(python3 -c 'import ctypes,os,sys
if ctypes.CDLL(None).prctl(67, 1, 0, 0, 0) != 0: sys.exit("PR_SET_MEMORY_MERGE failed")
os.execv(sys.argv[1], sys.argv[1:])')
  # shellcheck disable=SC2086
  env "$@" "${mark[@]}" "${APISERVER_BIN:-$C/bin/kube-apiserver}" $args >"/tmp/$prefix.log" 2>&1 &
  local pid=$!
  until curl -sk "https://127.0.0.1:$port/readyz" "${CERT[@]}" 2>/dev/null | grep -q '^ok'; do sleep 0.05; done
  echo "$pid"
}
# Started in command substitutions, the apiservers are not this shell's children: wait by name.
gone() { while pgrep -f 'etcd-prefix=/clusters/standalone-' >/dev/null; do sleep 0.1; done; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
pss() { awk '/^Pss_Anon/{a=$2} /^Pss_File/{f=$2} END{printf "%.1f %.1f\n", a/1024, f/1024}' "/proc/$1/smaps_rollup"; }

case $MODE in
start)
  IDLE=$1; shift
  for cfg in "$@"; do
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    pid=$(start_apiserver 30700 0 $cfg)
    t1=$(date +%s.%N)
    c0=$(ticks "$pid"); sleep 20; c1=$(ticks "$pid"); sleep "$IDLE"; c2=$(ticks "$pid")
    read -r anon file < <(pss "$pid")
    printf '%-40s ready %.2f s  CPU to ready %.2f s  idle %.2f mCPU  Pss_Anon %s  Pss_File %s MiB\n' \
      "$cfg" "$(echo "$t1 - $t0" | bc)" "$(echo "$c0/100" | bc -l)" "$(echo "($c2-$c1)*10/$IDLE" | bc -l)" "$anon" "$file"
    kill "$pid"; gone
  done ;;
merge)
  K=$1; MARK=$2; WAIT=$3; pids=()
  for i in $(seq 1 "$K"); do pids+=("$(start_apiserver $((30700 + i)) "$MARK" GOGC=15 GOMAXPROCS=1)"); done
  k0=$(ps -o cputime= -C ksmd | head -1)
  c0=0; for p in "${pids[@]}"; do c0=$((c0 + $(ticks "$p"))); done
  sleep "$WAIT"
  c1=0; for p in "${pids[@]}"; do c1=$((c1 + $(ticks "$p"))); done
  for p in "${pids[@]}"; do pss "$p"; done |
    awk '{a+=$1; f+=$2; n++} END {printf "per apiserver: Pss_Anon %.1f  Pss_File %.1f MiB (%d)\n", a/n, f/n, n}'
  echo "apiserver mCPU each over ${WAIT} s: $(echo "($c1-$c0)*10/$WAIT/$K" | bc -l | cut -c1-6)"
  k=/sys/kernel/mm/ksm
  echo "KSM run $(cat $k/run): pages_sharing $(cat $k/pages_sharing), pages_shared $(cat $k/pages_shared); ksmd CPU time $k0 -> $(ps -o cputime= -C ksmd | head -1)"
  kill "${pids[@]}"; gone ;;
*) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
