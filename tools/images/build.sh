#!/usr/bin/env bash
# Build the garretd and garret-operator images as OCI image archives from binaries that are
# already built (the debug binaries the tests build), without a registry or a daemon:
# tools/images/rootfs.sh assembles each root filesystem, umoci (Debian package) turns it
# into an OCI image, tar packs the layout.
#
#   bash tools/images/build.sh [--bin-dir DIR] [--out DIR]
#
#   --bin-dir DIR  where garretd, garret and garret-operator are
#                  (default: ${CARGO_TARGET_DIR:-<repo>/target}/debug; build them with
#                  `cargo build --workspace --bins`)
#   --out DIR      where the archives go (default: ${CARGO_TARGET_DIR:-<repo>/target}/images)
#
# Output: DIR/garretd.tar and DIR/garret-operator.tar, each naming its image
# ghcr.io/garret-dev/<image>:<workspace version> (`ctr -n k8s.io images import FILE`,
# `docker load -i FILE`). Stdout gets one line per image, "<archive path><TAB><image name>";
# everything else goes to stderr. An image whose inputs did not change (same binaries,
# scripts, libraries, CA bundle, settings) is not rebuilt. Concurrent runs on one --out
# directory wait for each other.
#
# Environment:
#   GARRET_IMAGE_REGISTRY  image name prefix (default ghcr.io/garret-dev)
#   SOURCE_DATE_EPOCH      image creation time and file times (default 0, so that an image
#                          depends on its contents only)
#   STRIP                  passed to rootfs.sh (default debug: remove debug info only)
#
# Needs root (file ownership in the layers) and umoci, which it installs with apt-get when
# missing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() { echo "usage: build.sh [--bin-dir DIR] [--out DIR]" >&2; }
log() { echo "build.sh: $*" >&2; }
die() {
	log "$*"
	exit 1
}

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=$TARGET/debug
OUT=$TARGET/images
while [ $# -gt 0 ]; do
	case $1 in
	--bin-dir)
		BIN_DIR=${2:?--bin-dir needs a directory}
		shift 2
		;;
	--bin-dir=*)
		BIN_DIR=${1#*=}
		shift
		;;
	--out)
		OUT=${2:?--out needs a directory}
		shift 2
		;;
	--out=*)
		OUT=${1#*=}
		shift
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		usage
		exit 2
		;;
	esac
done

VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
[ -n "$VERSION" ] || die "cannot read the workspace version from $ROOT/Cargo.toml"
REGISTRY=${GARRET_IMAGE_REGISTRY:-ghcr.io/garret-dev}
EPOCH=${SOURCE_DATE_EPOCH:-0}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
export STRIP=${STRIP:-debug}
SOURCE_URL=https://github.com/garret-dev/garret

for b in garretd garret garret-operator; do
	[ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b not found: build the binaries with \`cargo build --workspace --bins\` (or pass --bin-dir)"
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)

# A tool, installed from Debian when missing (CI runs as root on a fresh machine).
need() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null && return 0
	[ "$(id -u)" = 0 ] || die "$cmd not found; install the Debian package $pkg"
	log "installing $pkg"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
		apt-get update -qq >/dev/null
		apt-get install -y -qq "$pkg" >/dev/null
	fi
}
need umoci umoci
need jq jq
need objcopy binutils
need sha256sum coreutils
[ "$(id -u)" = 0 ] || die "needs root: the images' files must be owned by root and 65532"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec 9>"$OUT/.build.lock"
flock 9

# Cheap fingerprint of everything an image is made of: files by path, size, mtime and
# inode (cargo replaces a binary it rebuilds), plus the settings. Equal fingerprints
# mean the archive on disk is current.
fingerprint() {
	local f
	{
		echo "version=$VERSION registry=$REGISTRY epoch=$EPOCH strip=$STRIP"
		umoci --version
		for f in "$@"; do stat -L -c '%n %s %Y %i' "$f"; done
		for f in "$@"; do
			[ "${f#"$BIN_DIR"/}" != "$f" ] || continue
			ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
				xargs -r stat -L -c '%n %s %Y %i'
		done
	} | sha256sum | cut -d' ' -f1
}

# build_image NAME DESCRIPTION WORKDIR STOPSIGNAL -- ROOTFS_ARGS... -- BINARIES...
# The image configuration here and in tools/images/Dockerfile must stay the same.
build_image() {
	local name=$1 description=$2 workdir=$3 stopsignal=$4
	shift 5
	local rootfs_args=()
	while [ "$1" != -- ]; do
		rootfs_args+=("$1")
		shift
	done
	shift
	local bins=() b
	for b in "$@"; do bins+=("$BIN_DIR/$b"); done
	local image="$REGISTRY/$name:$VERSION" archive="$OUT/$name.tar"
	local entrypoint="/usr/local/bin/$1"

	local fp
	fp=$({
		fingerprint "$HERE/build.sh" "$HERE/rootfs.sh" /etc/ssl/certs/ca-certificates.crt "${bins[@]}"
		echo "$name $description $workdir $stopsignal ${rootfs_args[*]}"
	} | sha256sum | cut -d' ' -f1)
	if [ -f "$archive" ] && [ "$(cat "$OUT/$name.fingerprint" 2>/dev/null)" = "$fp" ]; then
		log "$image is up to date ($archive)"
		printf '%s\t%s\n' "$archive" "$image"
		return 0
	fi

	# The binaries must be this version's: a stale target dir would give a wrong image.
	# (garret-operator has no --version: it connects to a cluster straight away.)
	local v
	for b in "${bins[@]}"; do
		case $b in */garret-operator) continue ;; esac
		v=$("$b" --version 2>/dev/null || true)
		case " $v " in
		*" $VERSION "*) ;;
		*) die "$b --version says '$v', expected version $VERSION: rebuild the binaries" ;;
		esac
	done

	log "building $image from $BIN_DIR"
	local tmp
	tmp=$(mktemp -d "$OUT/.tmp-$name.XXXXXX")
	# shellcheck disable=SC2064 # expand now: tmp is local
	trap "rm -rf '$tmp'" EXIT

	# One layer: the root filesystem, unpacked over the empty image and repacked.
	local layout="$tmp/layout" ref="$tmp/layout:$VERSION"
	umoci init --layout "$layout"
	umoci new --image "$ref"
	umoci unpack --image "$ref" "$tmp/bundle"
	bash "$HERE/rootfs.sh" "${rootfs_args[@]}" "$tmp/rootfs" "${bins[@]}"
	cp -a "$tmp/rootfs/." "$tmp/bundle/rootfs/"
	find "$tmp/bundle/rootfs" -exec touch -h -d "@$EPOCH" {} +
	umoci repack --image "$ref" --history.created "$CREATED" \
		--history.created_by "tools/images/rootfs.sh ${rootfs_args[*]} $*" \
		--history.comment "binaries from the build output, STRIP=$STRIP" "$tmp/bundle"
	local cfg=(
		--created "$CREATED" --os linux --architecture amd64
		--config.user 65532:65532
		--config.entrypoint "$entrypoint"
		--config.workingdir "$workdir"
		--config.env PATH=/usr/local/bin
		--config.env HOME=/nonexistent
		--config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
		--config.label "org.opencontainers.image.source=$SOURCE_URL"
		--config.label "org.opencontainers.image.version=$VERSION"
		--config.label org.opencontainers.image.licenses=Apache-2.0
		--config.label "org.opencontainers.image.title=$name"
		--config.label "org.opencontainers.image.description=$description"
		--history.created "$CREATED" --history.created_by "tools/images/build.sh (image config)"
	)
	[ -n "$stopsignal" ] && cfg+=(--config.stopsignal "$stopsignal")
	if [ "$name" = garretd ]; then
		cfg+=(--config.env XDG_CONFIG_HOME=/tmp/.config)
	fi
	umoci config --image "$ref" "${cfg[@]}"
	umoci gc --layout "$layout"

	# index.json: the full name for containerd (`ctr import` names the image after
	# io.containerd.image.name) and the tag for OCI tools; manifest.json: the same image
	# for `docker load` (the layout `docker save` writes since Docker 25).
	local manifest
	manifest=$(jq -r '.manifests[0].digest' "$layout/index.json")
	jq --arg name "$image" --arg tag "$VERSION" \
		'.manifests[0].annotations = {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}' \
		"$layout/index.json" >"$tmp/index.json"
	mv "$tmp/index.json" "$layout/index.json"
	jq --arg name "$image" \
		'[{Config: ("blobs/" + (.config.digest | sub(":"; "/"))), RepoTags: [$name],
		   Layers: [.layers[].digest | "blobs/" + sub(":"; "/")]}]' \
		"$layout/blobs/${manifest/://}" >"$layout/manifest.json"

	find "$layout" -exec touch -h -d "@$EPOCH" {} +
	tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" \
		-C "$layout" -cf "$tmp/$name.tar" oci-layout index.json manifest.json blobs
	mv -f "$tmp/$name.tar" "$archive"
	echo "$fp" >"$OUT/$name.fingerprint"
	rm -rf "$tmp"
	trap - EXIT
	log "built $image: $archive ($(du -h "$archive" | cut -f1), manifest $manifest)"
	printf '%s\t%s\n' "$archive" "$image"
}

build_image garretd "Garret: a self-hosted, Attic-compatible Nix binary cache server (garretd), with the garret client" \
	/var/lib/garret "" \
	-- --dir /etc/garret --dir /run/garret --owned-dir /var/lib/garret \
	-- garretd garret
build_image garret-operator "Kubernetes operator for Garret binary caches (BinaryCache, CacheToken)" \
	/ "" \
	-- \
	-- garret-operator
