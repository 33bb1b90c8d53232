#!/usr/bin/env bash
# Smoke-test the image archives tools/images/build.sh writes: start a throwaway containerd
# (own root, state and socket under a temporary directory, not the system one), import
# both archives, check their names and configuration, and run each image's binaries as
# they will run in a cluster (image user, read-only root filesystem). Stops containerd and
# removes its directory and mounts on exit.
#
#   bash tools/images/smoke.sh [--out DIR]
#
#   --out DIR   build.sh's output directory (default: ${CARGO_TARGET_DIR:-<repo>/target}/images)
#
# Needs root; installs containerd, runc and busybox-static (an `id` to run inside the
# images, which have no shell) from Debian when missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/images
case "${1:-}" in
--out) OUT=${2:?--out needs a directory} ;;
"") ;;
*)
	echo "usage: smoke.sh [--out DIR]" >&2
	exit 2
	;;
esac

log() { echo "smoke.sh: $*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}
[ "$(id -u)" = 0 ] || fail "needs root"

pkgs=()
command -v containerd >/dev/null || pkgs+=(containerd)
command -v runc >/dev/null || pkgs+=(runc)
[ -x /bin/busybox ] || pkgs+=(busybox-static)
if [ ${#pkgs[@]} -gt 0 ]; then
	log "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 || {
		apt-get update -qq >/dev/null
		apt-get install -y -qq "${pkgs[@]}" >/dev/null
	}
fi

VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
GARRETD=ghcr.io/garret-dev/garretd:$VERSION
OPERATOR=ghcr.io/garret-dev/garret-operator:$VERSION
for f in garretd garret-operator; do
	[ -f "$OUT/$f.tar" ] || fail "$OUT/$f.tar not found: run tools/images/build.sh first"
done

T=$(mktemp -d /tmp/garret-images-smoke.XXXXXX)
CONTAINERD_PID=
cleanup() {
	local rc=$? m
	if [ -n "$CONTAINERD_PID" ]; then
		kill "$CONTAINERD_PID" 2>/dev/null || true
		wait "$CONTAINERD_PID" 2>/dev/null || true
	fi
	# Snapshot and task mounts under $T, deepest first.
	while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
		awk -v t="$T" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r
	)
	rm -rf "$T"
	if awk -v t="$T" 'index($2, t) == 1 {found = 1} END {exit !found}' /proc/mounts; then
		log "mounts under $T remain"
		rc=1
	fi
	[ "$rc" = 0 ] && log "all checks passed"
	exit "$rc"
}
trap cleanup EXIT

SOCK=$T/containerd.sock
cat >"$T/config.toml" <<EOF
version = 2
root = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$T/debug.sock"
EOF
containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 &
CONTAINERD_PID=$!
ctr() { command ctr --address "$SOCK" --namespace k8s.io "$@"; }
for _ in $(seq 100); do
	ctr version >/dev/null 2>&1 && break
	kill -0 "$CONTAINERD_PID" 2>/dev/null || fail "containerd exited: $(tail -5 "$T/containerd.log")"
	sleep 0.1
done
ctr version >/dev/null || fail "containerd did not start: $(tail -5 "$T/containerd.log")"

# Import without any naming flag: the archives name themselves.
for f in garretd garret-operator; do
	ctr images import "$OUT/$f.tar" >&2
done
ctr images ls >&2
for image in "$GARRETD" "$OPERATOR"; do
	ctr images ls -q | grep -qx "$image" || fail "$image was not imported under its name"
done

# Image configuration, read back from containerd's content store.
config_of() {
	local manifest
	manifest=$(ctr images ls | awk -v n="$1" '$1 == n {print $3}')
	ctr content get "$(ctr content get "$manifest" | jq -r .config.digest)"
}
check_config() {
	local image=$1 entrypoint=$2 cfg
	cfg=$(config_of "$image")
	jq -e --arg e "$entrypoint" --arg v "$VERSION" '
		.config.User == "65532:65532" and .config.Entrypoint == [$e] and (.config.Cmd // []) == [] and
		.config.Labels["org.opencontainers.image.version"] == $v and
		.config.Labels["org.opencontainers.image.licenses"] == "Apache-2.0" and
		(.config.Labels["org.opencontainers.image.source"] | startswith("https://")) and
		(.config.Env | index("PATH=/usr/local/bin")) != null' <<<"$cfg" >/dev/null ||
		fail "$image has an unexpected configuration: $(jq -c .config <<<"$cfg")"
	log "ok: $image config $(jq -c '.config | {User, Entrypoint, WorkingDir, StopSignal}' <<<"$cfg")"
}
check_config "$GARRETD" /usr/local/bin/garretd
check_config "$OPERATOR" /usr/local/bin/garret-operator

# run IMAGE ARGS...: run in the image as a cluster would (image user, env and working
# directory, read-only root filesystem, no network), /bin/busybox mounted at /busybox.
n=0
run() {
	local image=$1
	shift
	n=$((n + 1))
	ctr run --rm --read-only --mount type=bind,src=/bin/busybox,dst=/busybox,options=rbind:ro \
		"$image" "garret-smoke-$n" "$@" 2>&1
}
expect() {
	local what=$1 pattern=$2 out=$3
	grep -q -- "$pattern" <<<"$out" || fail "$what: expected '$pattern' in: $out"
	log "ok: $what"
}

for image in "$GARRETD" "$OPERATOR"; do
	expect "$image runs as 65532" 'uid=65532(nonroot) gid=65532(nonroot)' "$(run "$image" /busybox id)"
	expect "$image has a read-only root" 'Read-only file system' "$(run "$image" /busybox touch /x || true)"
done
expect "garretd --version" "garretd $VERSION" "$(run "$GARRETD" garretd --version)"
expect "garretd --help" 'serve' "$(run "$GARRETD" garretd --help)"
expect "garret --help" 'Usage: garret' "$(run "$GARRETD" garret --help)"
expect "garretd entrypoint" 'Usage: garretd' "$(run "$GARRETD" || true)"
# garret-operator has no --help: it connects to a cluster at once. Outside one it must
# start (all libraries found) and fail to find a kubeconfig.
out=$(run "$OPERATOR" garret-operator || true)
expect "garret-operator starts" 'failed to infer config' "$out"
