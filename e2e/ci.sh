#!/usr/bin/env bash
# CI entry point for the control-plane harness tests (issue 5).
#
#   bash e2e/ci.sh [extra cargo test args...]
#
# 1. Builds kube-apiserver, kube-controller-manager and helm with
#    tools/k8s-testbin/build.sh, or reuses them (a no-op when they exist in
#    ${GARRET_TESTBIN_DIR:-$HOME/.cache/garret/k8s-testbin/v<version>}).
#    A cold build takes about 20 min on 2 cores (see docs/testing.md).
# 2. Runs `cargo test -p garret-e2e` against them (etcd comes from the
#    etcd-bin-vendored crate).
# Needs: Go >= 1.25 (/usr/local/go/bin/go) and the Go module proxy for a cold
# build, openssl, and about 5 GiB of free disk for a cold build.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

start=$(date +%s)
bash tools/k8s-testbin/build.sh
GARRET_TESTBIN_DIR=$(bash tools/k8s-testbin/build.sh --print-dir)
export GARRET_TESTBIN_DIR
echo "e2e/ci.sh: Kubernetes test binaries ready in $GARRET_TESTBIN_DIR ($(($(date +%s) - start)) s)"

cargo test -p garret-e2e "$@"
