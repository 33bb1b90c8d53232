#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kubectl, the node binaries kubelet,
# kube-scheduler and kube-proxy (and helm v3) for the e2e harness from the Go
# module proxy, into a cache directory outside the repo keyed by the
# Kubernetes version. Only missing binaries are built. It also fetches the Argo CD and
# Flux CRDs the e2e tests install (into gitops-crds/ there), and the Gateway API's
# standard-channel GatewayClass, Gateway and HTTPRoute CRDs (into gateway-crds/).
#
#   bash tools/k8s-testbin/build.sh            # build, or reuse what is there
#   bash tools/k8s-testbin/build.sh --print-dir
#   GARRET_TESTBIN_SKIP_HELM=1 bash tools/k8s-testbin/build.sh
#
# Output: ${GARRET_TESTBIN_DIR:-$HOME/.cache/garret/k8s-testbin/v<k8s version>}
# The Kubernetes version comes from the `require k8s.io/kubernetes` line of
# go.mod next to this script; the Rust harness (e2e/) uses the same default.
#
# Environment:
#   GARRET_TESTBIN_DIR     output directory (default above)
#   GARRET_TESTBIN_JOBS    go build -p and GOMAXPROCS (default 2)
#   GARRET_TESTBIN_SKIP_HELM=1   do not install helm
#   GARRET_TESTBIN_SKIP_NODE=1   do not build kubelet, kube-scheduler, kube-proxy
#   GO                     go binary (default: /usr/local/go/bin/go, else `go` on PATH)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELM_VERSION=v3.20.2
# CRDs of the GitOps tools whose objects docs/examples/ holds (e2e/tests/chart.rs dry-runs
# them): taken from the tools' own Go modules (the newest these Go 1.26 proxies serve).
ARGOCD_MODULE=github.com/argoproj/argo-cd/v3@v3.2.0
FLUX_HELM_MODULE=github.com/fluxcd/helm-controller@v1.4.0
FLUX_KUSTOMIZE_MODULE=github.com/fluxcd/kustomize-controller@v1.6.0
FLUX_SOURCE_MODULE=github.com/fluxcd/source-controller@v1.7.0
GITOPS_CRDS_STAMP=".complete-argocd-v3.2.0-helm-v1.4.0-kustomize-v1.6.0-source-v1.7.0"
# The kinds a BinaryCache's spec.gateway touches (e2e/tests/gateway.rs), from the project's
# own module: the standard channel, as `kubectl apply -f standard-install.yaml` installs it.
GATEWAY_API_MODULE=sigs.k8s.io/gateway-api@v1.6.3
GATEWAY_CRDS_STAMP=".complete-gateway-api-v1.6.3-standard"

K8S_VERSION=$(sed -n 's/^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}k8s\.io\/kubernetes v\([0-9][0-9.]*\).*/\2/p' "$HERE/go.mod" | head -n1)
if [ -z "$K8S_VERSION" ]; then
	echo "build.sh: cannot find the k8s.io/kubernetes requirement in $HERE/go.mod" >&2
	exit 1
fi
K8S_MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
OUT=${GARRET_TESTBIN_DIR:-$HOME/.cache/garret/k8s-testbin/v$K8S_VERSION}
# kubectl: the story test drives the cluster as users do, and a new machine may have none.
BINS=(kube-apiserver kube-controller-manager kubectl)
# For e2e/src/node.rs (real pods); the same go.mod lists them as tools.
if [ "${GARRET_TESTBIN_SKIP_NODE:-0}" != 1 ]; then BINS+=(kubelet kube-scheduler kube-proxy); fi

case "${1:-}" in
--print-dir)
	echo "$OUT"
	exit 0
	;;
--print-replaces)
	# Print the replace block for another release, generated from the real
	# k8s.io/kubernetes go.mod fetched through the module proxy.
	v=${2:?usage: build.sh --print-replaces 1.35.4}
	gomod=$(GOTOOLCHAIN=local go mod download -json "k8s.io/kubernetes@v$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	echo "replace ("
	sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod" |
		while read -r m; do printf '\t%s => %s v0.%s\n' "$m" "$m" "${v#*.}"; done
	echo ")"
	exit 0
	;;
"") ;;
*)
	echo "usage: build.sh [--print-dir | --print-replaces VERSION]" >&2
	exit 2
	;;
esac

have_all() {
	local b
	for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done
	if [ "${GARRET_TESTBIN_SKIP_HELM:-0}" != 1 ]; then [ -x "$OUT/helm" ] || return 1; fi
	[ -f "$OUT/gitops-crds/$GITOPS_CRDS_STAMP" ] || return 1
	[ -f "$OUT/gateway-crds/$GATEWAY_CRDS_STAMP" ] || return 1
	return 0
}

# Fast path: everything is there, cost nothing.
if have_all; then
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
export GOTOOLCHAIN=local CGO_ENABLED=0
JOBS=${GARRET_TESTBIN_JOBS:-2}
export GOMAXPROCS=$JOBS

mkdir -p "$OUT"
# One builder at a time per output directory.
exec 9>"$OUT/.build.lock"
flock 9
if have_all; then
	exit 0
fi

# A cold build needs roughly 5 GB (module cache + build cache + binaries).
avail_kb=$(df -Pk "$OUT" | awk 'NR==2 {print $4}')
if [ -n "$avail_kb" ] && [ "$avail_kb" -lt $((4 * 1024 * 1024)) ]; then
	echo "build.sh: only $((avail_kb / 1024)) MiB free under $OUT; a cold build needs about 5 GiB" >&2
	exit 1
fi

echo "build.sh: building Kubernetes v$K8S_VERSION (what is missing of ${BINS[*]}) into $OUT with $("$GO" version)" >&2
TMP=$(mktemp -d "$OUT/.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

missing=()
for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
	V="-X k8s.io/component-base/version.gitVersion=v$K8S_VERSION"
	V="$V -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$K8S_MINOR"
	V="$V -X k8s.io/component-base/version.gitTreeState=clean"
	V="$V -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
	V="$V -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$K8S_MINOR"
	pkgs=()
	for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
	echo "build.sh: missing: ${missing[*]}" >&2
	(
		cd "$HERE"
		# -mod=readonly: go.mod/go.sum are committed and must not change here.
		nice -n 10 "$GO" build -mod=readonly -p "$JOBS" -trimpath -ldflags "-s -w $V" -o "$TMP/" "${pkgs[@]}"
	)
	for b in "${missing[@]}"; do mv -f "$TMP/$b" "$OUT/$b"; done
fi

if [ "${GARRET_TESTBIN_SKIP_HELM:-0}" != 1 ] && ! [ -x "$OUT/helm" ]; then
	(
		cd "$TMP"
		GOBIN="$TMP" nice -n 10 "$GO" install -p "$JOBS" -trimpath \
			-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
			"helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
	)
	mv -f "$TMP/helm" "$OUT/helm"
fi

module_dir() { (cd "$TMP" && GOFLAGS=-mod=mod "$GO" mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'); }

if ! [ -f "$OUT/gitops-crds/$GITOPS_CRDS_STAMP" ]; then
	rm -rf "$OUT/gitops-crds" && mkdir -p "$TMP/gitops-crds"
	cp "$(module_dir "$ARGOCD_MODULE")/manifests/crds/application-crd.yaml" "$TMP/gitops-crds/"
	cp "$(module_dir "$FLUX_HELM_MODULE")/config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml" "$TMP/gitops-crds/"
	cp "$(module_dir "$FLUX_KUSTOMIZE_MODULE")/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml" "$TMP/gitops-crds/"
	src=$(module_dir "$FLUX_SOURCE_MODULE")/config/crd/bases
	cp "$src/source.toolkit.fluxcd.io_gitrepositories.yaml" "$src/source.toolkit.fluxcd.io_helmrepositories.yaml" "$TMP/gitops-crds/"
	chmod u+w "$TMP/gitops-crds/"*
	touch "$TMP/gitops-crds/$GITOPS_CRDS_STAMP"
	mv "$TMP/gitops-crds" "$OUT/gitops-crds"
fi

if ! [ -f "$OUT/gateway-crds/$GATEWAY_CRDS_STAMP" ]; then
	rm -rf "$OUT/gateway-crds" && mkdir -p "$TMP/gateway-crds"
	src=$(module_dir "$GATEWAY_API_MODULE")/config/crd/standard
	for kind in gatewayclasses gateways httproutes; do
		cp "$src/gateway.networking.k8s.io_$kind.yaml" "$TMP/gateway-crds/"
	done
	chmod u+w "$TMP/gateway-crds/"*
	touch "$TMP/gateway-crds/$GATEWAY_CRDS_STAMP"
	mv "$TMP/gateway-crds" "$OUT/gateway-crds"
fi

"$OUT/kube-apiserver" --version >&2
echo "build.sh: done: $OUT" >&2
