#!/usr/bin/env bash
# The story test (e2e/tests/story.rs) against a kind cluster, for machines with Docker and
# kind (this project's CI machines cannot pull kind's node image, so CI runs the same test
# on the harness's own node instead; see docs/testing.md).
#
#   bash e2e/kind/run.sh            # create cluster, build + load images, run, delete
#   KEEP_CLUSTER=1 bash e2e/kind/run.sh
#
# Needs: docker, kind, kubectl, helm, nix-store (Debian's nix-bin), nginx, curl, and root
# (the test bind-mounts a private /etc/hosts for its clients in a mount namespace).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CLUSTER=${CLUSTER:-garret-e2e}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

for tool in docker kind kubectl helm; do
	command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done

kind create cluster --name "$CLUSTER" --wait 120s
cleanup() { [ "${KEEP_CLUSTER:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT
KUBECONFIG_FILE=$(mktemp)
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"

# Release images from the Dockerfile, loaded into the kind node under their published names.
docker build -f tools/images/Dockerfile --target garretd -t "ghcr.io/garret-dev/garretd:$VERSION" .
docker build -f tools/images/Dockerfile --target garret-operator -t "ghcr.io/garret-dev/garret-operator:$VERSION" .
kind load docker-image --name "$CLUSTER" "ghcr.io/garret-dev/garretd:$VERSION" "ghcr.io/garret-dev/garret-operator:$VERSION"

# Clients run on this machine and reach the Service through a port-forward (kind's Service
# IPs are not routed to the host); the test starts it when GARRET_E2E_KUBECONFIG is set.
cargo build --workspace --bins --locked
GARRET_E2E_KUBECONFIG=$KUBECONFIG_FILE cargo test -p garret-e2e --test story --locked -- --nocapture
