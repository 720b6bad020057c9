#!/usr/bin/env bash
# Builds the scale-cluster-agent container image with buildah (chroot isolation, vfs storage: no
# daemon, no privileges beyond root in this sandbox) FROM scratch, and saves it as an OCI archive.
#
#   deploy/build-image.sh [--agent-binary PATH] [--output FILE] [--tag NAME]
#
# Without --agent-binary it builds the release binary (cargo build --release). The toolchain comes
# from the versioned cache (`scale-cluster-agent toolchain install` fills it when missing).
# Environment: BUILDAH_ROOT (image storage, default target/image/storage), SCA_CACHE_DIR.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

agent=""
output="target/image/scale-cluster-agent.oci.tar"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' crates/scale-cluster-agent/Cargo.toml | head -1)
tag="localhost/scale-cluster-agent:${version}"
while [ $# -gt 0 ]; do
  case "$1" in
    --agent-binary) agent=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v buildah >/dev/null || {
  echo "build-image.sh: buildah is not installed (Debian: apt-get install -y buildah)" >&2
  exit 1
}

if [ -z "$agent" ]; then
  cargo build --release --locked -p scale-cluster-agent
  agent=target/release/scale-cluster-agent
fi
[ -x "$agent" ] || { echo "build-image.sh: $agent is not an executable" >&2; exit 1; }
# The toolchain is built from the pinned Go modules unless the cache already has it.
"$agent" toolchain install --plain >&2

storage=${BUILDAH_ROOT:-$repo/target/image/storage}
context=$(mktemp -d "${TMPDIR:-/tmp}/sca-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/toolchain" "$context/rootfs/usr/local/bin" "$context/rootfs/etc" \
  "$context/rootfs/tmp" "$context/rootfs/var/lib" "$context/home"

# Every component the toolchain resolves, at <component>/<version>/<binary> (the cache layout the
# agent looks in). `toolchain status` prints a table made for awk.
"$agent" toolchain status | awk 'NR > 1 { print $1, $2, $4 }' |
  while read -r component version path; do
    [ -x "$path" ] || { echo "build-image.sh: $component is missing ($path)" >&2; exit 1; }
    mkdir -p "$context/toolchain/$component/$version"
    cp "$path" "$context/toolchain/$component/$version/"
  done

# The agent, without debug symbols, and exactly the shared libraries it links (glibc: the
# toolchain has no musl target here). The Go binaries are static.
objcopy --strip-debug "$agent" "$context/rootfs/usr/local/bin/scale-cluster-agent"
ldd "$agent" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u |
  while read -r lib; do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
  done

printf 'root:x:0:0:root:/root:/sbin/nologin\nsca:x:10001:10001:scale-cluster-agent:/var/lib/scale-cluster-agent:/sbin/nologin\n' \
  >"$context/rootfs/etc/passwd"
printf 'root:x:0:\nsca:x:10001:\n' >"$context/rootfs/etc/group"
chmod 1777 "$context/rootfs/tmp"
chmod 0700 "$context/home"

buildah() { command buildah --root "$storage" --runroot "$storage/run" --storage-driver vfs "$@"; }
buildah build --isolation chroot --layers=false -f deploy/Containerfile -t "$tag" "$context" >&2
mkdir -p "$(dirname "$output")"
rm -f "$output"
buildah push "$tag" "oci-archive:$output:$tag" >&2
echo "image $tag saved to $output ($(du -h "$output" | cut -f1))"
