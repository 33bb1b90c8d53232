#!/usr/bin/env bash
# Build health-check (kstatus + Argo CD's Lua VM, see main.go) into a cache directory outside
# the repo, keyed by a hash of its sources, and print the binary's path. Idempotent: with the
# binary present it only prints the path. The e2e tests (e2e/tests/health.rs) and the
# operator's Argo CD test run it, so no CI step is needed.
#
#   bash tools/health-check/build.sh          # build if missing; prints the path
#   GARRET_HEALTH_CHECK_DIR=...               # output root (default $HOME/.cache/garret/health-check)
#   GO=...                                    # go binary (default /usr/local/go/bin/go, else go on PATH)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KEY=$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE"/*.go | sha256sum | cut -c1-16)
OUT=${GARRET_HEALTH_CHECK_DIR:-$HOME/.cache/garret/health-check}/$KEY
BIN=$OUT/health-check
if [ -x "$BIN" ]; then
	echo "$BIN"
	exit 0
fi
GO=${GO:-}
if [ -z "$GO" ]; then
	if [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; else GO=$(command -v go || true); fi
fi
if [ -z "$GO" ] || ! [ -x "$GO" ]; then
	echo "build.sh: no Go toolchain found (expected /usr/local/go/bin/go, Go >= 1.25)" >&2
	exit 1
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
mkdir -p "$OUT"
exec 9>"$OUT/.build.lock"
flock 9
if ! [ -x "$BIN" ]; then
	TMP=$(mktemp -d "$OUT/.tmp.XXXXXX")
	trap 'rm -rf "$TMP"' EXIT
	(cd "$HERE" && nice -n 10 "$GO" build -p 2 -trimpath -ldflags "-s -w" -o "$TMP/health-check" .)
	mv -f "$TMP/health-check" "$BIN"
fi
echo "$BIN"
