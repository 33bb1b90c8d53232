#!/usr/bin/env bash
# Assemble the root filesystem of a Garret image (no shell, no package manager): the given
# binaries, exactly the shared libraries they link (from `ldd`, plus the ELF interpreter),
# CA certificates, a `nonroot` user and group (65532), /tmp, and the directories asked for.
# Both image builds use it: tools/images/build.sh (registry-free, from built binaries) and
# the Dockerfile's rootfs stages, so both produce the same layout.
#
#   bash tools/images/rootfs.sh [--dir PATH]... [--owned-dir PATH]... DEST BINARY...
#
#   --dir PATH        an empty directory, root-owned, mode 0755 (e.g. a mount point)
#   --owned-dir PATH  an empty directory owned by 65532:65532, mode 0750 (state a volume
#                     mounted there inherits with Docker named volumes); needs root
#   DEST              output directory; it must not exist yet
#   BINARY            an executable, installed as /usr/local/bin/<name> with its debug
#                     info removed (`objcopy --strip-debug`; symbols stay for backtraces)
#
# Environment:
#   STRIP=all         strip symbols too (`strip --strip-all`); STRIP=none keeps the file
#   CA_BUNDLE         CA certificates (default /etc/ssl/certs/ca-certificates.crt)
#
# The libraries and certificates come from the machine running this script: run it on the
# machine (or in the builder stage) that built the binaries, so that they match.
set -euo pipefail

RUN_AS=65532
dirs=()
owned_dirs=()
while [ $# -gt 0 ]; do
	case $1 in
	--dir)
		dirs+=("${2:?--dir needs a path}")
		shift 2
		;;
	--owned-dir)
		owned_dirs+=("${2:?--owned-dir needs a path}")
		shift 2
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	--)
		shift
		break
		;;
	-*)
		echo "rootfs.sh: unknown option $1" >&2
		exit 2
		;;
	*) break ;;
	esac
done
if [ $# -lt 2 ]; then
	echo "usage: rootfs.sh [--dir PATH]... [--owned-dir PATH]... DEST BINARY..." >&2
	exit 2
fi
DEST=$1
shift
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
STRIP=${STRIP:-debug}

for tool in ldd objcopy strip; do
	command -v "$tool" >/dev/null || {
		echo "rootfs.sh: $tool not found (Debian: apt-get install libc-bin binutils)" >&2
		exit 1
	}
done
[ -s "$CA_BUNDLE" ] || {
	echo "rootfs.sh: no CA bundle at $CA_BUNDLE (Debian: apt-get install ca-certificates)" >&2
	exit 1
}
if [ -e "$DEST" ]; then
	echo "rootfs.sh: $DEST already exists" >&2
	exit 1
fi

umask 022
mkdir -p "$DEST"/{etc/ssl/certs,usr/local/bin,tmp}
chmod 1777 "$DEST/tmp"

# Binaries.
libs=()
for bin in "$@"; do
	[ -x "$bin" ] || {
		echo "rootfs.sh: $bin is not an executable file" >&2
		exit 1
	}
	out="$DEST/usr/local/bin/$(basename "$bin")"
	case $STRIP in
	debug) objcopy --strip-debug "$bin" "$out" ;;
	all) strip --strip-all -o "$out" "$bin" ;;
	none) cp "$bin" "$out" ;;
	*)
		echo "rootfs.sh: STRIP must be debug, all or none" >&2
		exit 2
		;;
	esac
	chmod 0755 "$out"
	# `ldd` lines: "libx.so.1 => /path/libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)".
	# A library it cannot find is an error, not something to leave out.
	if ldd_out=$(ldd "$bin" 2>&1); then :; else
		case $ldd_out in
		*"not a dynamic executable"*) ldd_out="" ;; # static: nothing to copy
		*)
			echo "rootfs.sh: ldd $bin failed: $ldd_out" >&2
			exit 1
			;;
		esac
	fi
	if grep -q 'not found' <<<"$ldd_out"; then
		echo "rootfs.sh: $bin links libraries that are not installed:" >&2
		grep 'not found' <<<"$ldd_out" >&2
		exit 1
	fi
	while read -r lib; do libs+=("$lib"); done < <(
		awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$ldd_out"
	)
done

# Shared libraries, as regular files at the paths the loader resolved them to (its
# default search path, so no ld.so.cache is needed), and their copyright files.
docs=()
if [ ${#libs[@]} -gt 0 ]; then
	while read -r lib; do
		mkdir -p "$DEST$(dirname "$lib")"
		cp -L "$lib" "$DEST$lib"
		chmod 0755 "$DEST$lib"
		# dpkg knows /lib/... or /usr/lib/... depending on the package (merged /usr).
		pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true)
		pkg=${pkg%%:*}
		[ -n "$pkg" ] && docs+=("$pkg")
	done < <(printf '%s\n' "${libs[@]}" | sort -u)
fi
if command -v dpkg >/dev/null; then
	docs+=(ca-certificates)
	while read -r pkg; do
		src="/usr/share/doc/$pkg/copyright"
		if [ -f "$src" ]; then
			mkdir -p "$DEST/usr/share/doc/$pkg"
			cp "$src" "$DEST/usr/share/doc/$pkg/copyright"
		fi
	done < <(printf '%s\n' "${docs[@]}" | sort -u)
fi

# CA certificates (the path rustls-native-certs, OpenSSL and Go look at on Debian).
cp -L "$CA_BUNDLE" "$DEST/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$DEST/etc/ssl/certs/ca-certificates.crt"

# Users: root (owner of every file) and nonroot, which the images run as. No home
# directory: nothing in the images writes to $HOME.
cat >"$DEST/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$RUN_AS:$RUN_AS:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$DEST/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
nonroot:x:$RUN_AS:
EOF
# glibc's built-in default is the same; having the file makes it explicit.
echo 'hosts: files dns' >"$DEST/etc/nsswitch.conf"
chmod 0644 "$DEST/etc/passwd" "$DEST/etc/group" "$DEST/etc/nsswitch.conf"

for d in "${dirs[@]}"; do
	mkdir -p "$DEST$d"
	chmod 0755 "$DEST$d"
done
for d in "${owned_dirs[@]}"; do
	mkdir -p "$DEST$d"
	chmod 0750 "$DEST$d"
	chown "$RUN_AS:$RUN_AS" "$DEST$d"
done
