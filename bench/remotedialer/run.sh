#!/usr/bin/env bash
# remotedialer benchmark: our Rust client vs the upstream Go client (ClientConnect), both
# against the unmodified upstream server program, pinned in go.mod. Usage:
#   bash bench/remotedialer/run.sh [driver flags, e.g. -sessions 1000 -transfer-mib 256]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/target/bench-remotedialer"
mkdir -p "$out"
# 1,000 sessions need well over 1,024 descriptors in the server and in each client.
ulimit -n "$(ulimit -Hn)"

(cd "$here" && GOTOOLCHAIN=local go build -o "$out/remotedialer-server" github.com/rancher/remotedialer/server)
(cd "$here" && GOTOOLCHAIN=local go build -o "$out/goclient" ./goclient)
(cd "$here" && GOTOOLCHAIN=local go build -o "$out/driver" ./driver)
(cd "$repo" && cargo build --release -p remotedialer --example bench_client)

exec "$out/driver" \
  -server "$out/remotedialer-server" \
  -rust-client "$repo/target/release/examples/bench_client" \
  -go-client "$out/goclient" \
  "$@"
