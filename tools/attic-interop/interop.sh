#!/usr/bin/env bash
# Interop check: Garret client + real Nix 2.8 against a stock atticd, and atticd vs garretd
# wire comparison. Everything runs on 127.0.0.1 with random ports; servers are stopped at exit.
#
#   ATTIC_BIN=/path/to/dir/with/atticd bash tools/attic-interop/interop.sh [WORKDIR]
#
# Needs: stock atticd/atticadm in $ATTIC_BIN (required; e.g. from nixpkgs' attic-server),
#        garret/garretd in $GARRET_BIN (default: this checkout's release build),
#        nix-bin (Debian 2.8), python3, zstd, curl.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=${1:-$(mktemp -d /tmp/interop.XXXXXX)}
AB=${ATTIC_BIN:?set ATTIC_BIN to a directory holding stock atticd and atticadm}
GB=${GARRET_BIN:-${CARGO_TARGET_DIR:-$HERE/../../target}/release}
T=$W/nixenv
mkdir -p "$W/attic" "$W/garret" "$T"/{conf,cache,home,xdg}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
PA=$(port); PG=$(port); echo "$PA $PG" > "$W/ports"

SECRET_RAW=$(head -c 48 /dev/urandom | base64 -w0 | tr -d '+/=' | head -c 64)
export ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64=$(printf %s "$SECRET_RAW" | base64 -w0)
echo "$ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64" > "$W/secret.b64"
cat > "$W/attic/server.toml" <<EOF
listen = "127.0.0.1:$PA"
[database]
url = "sqlite://$W/attic/server.db?mode=rwc"
[storage]
type = "local"
path = "$W/attic/storage"
[chunking]
nar-size-threshold = 65536
min-size = 16384
avg-size = 65536
max-size = 262144
[compression]
type = "zstd"
EOF
"$AB/atticd" -f "$W/attic/server.toml" --mode monolithic > "$W/attic/atticd.log" 2>&1 & PIDS+=($!)
"$GB/garretd" serve --listen "127.0.0.1:$PG" --data-dir "$W/garret/data" > "$W/garret/garretd.log" 2>&1 & PIDS+=($!)
for p in $PA $PG; do for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/" >/dev/null && break; sleep 0.1; done; done

set -f
ALL="--pull * --push * --delete * --create-cache * --configure-cache * --configure-cache-retention * --destroy-cache *"
mk() { "$AB/atticadm" -f "$W/attic/server.toml" make-token "$@"; }
mk --sub admin --validity '1 day' $ALL > "$W/tok.attic"
mk --sub puller --validity '1 day' --pull cmp > "$W/tok.pull"
mk --sub other --validity '1 day' --pull 'other-*' --push 'other-*' > "$W/tok.other"
mk --sub short --validity '1s' --pull '*' --push '*' > "$W/tok.expired"
ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64=$(printf wrongsecretwrongsecret | base64 -w0) mk --sub forged --validity '1 day' --pull '*' --push '*' > "$W/tok.forged"
"$GB/garretd" make-token --data-dir "$W/garret/data" --sub admin --validity '1 day' $ALL > "$W/tok.garret"
set +f

cat > "$T/conf/nix.conf" <<'EOF'
build-users-group =
sandbox = false
substituters =
trusted-public-keys =
require-sigs = true
experimental-features = nix-command
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
download-attempts = 1
stalled-download-timeout = 15
fsync-metadata = false
gc-reserved-space = 0
extra-sandbox-paths = /bin /usr /lib /lib64?
EOF
cat > "$T/two.nix" <<'EOF'
{ nonce }:
let
  dep = derivation {
    name = "dep-${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; PATH = "/usr/bin:/bin";
    args = [ "-c" "echo dependency ${nonce} > $out" ];
  };
in derivation {
  name = "top-${nonce}"; system = builtins.currentSystem;
  builder = "/bin/sh"; PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir $out; echo ${dep} > $out/ref; echo top > $out/data; head -c 3000000 /dev/urandom > $out/blob" ];
}
EOF
export NIX_CONF_DIR=$T/conf XDG_CACHE_HOME=$T/cache HOME=$T/home XDG_CONFIG_HOME=$T/xdg
unset NIX_REMOTE NIX_CONFIG GARRET_TOKEN GARRET_SERVER
build() { nix-build --store "$T/A" --no-out-link "$T/two.nix" --argstr nonce "$(date +%s%N)" 2>/dev/null; }
TOP=$(build); echo "$TOP" > "$T/top"
g() { echo "\$ garret $*"; NIX_REMOTE="local?root=$T/A" "$GB/garret" "$@"; }
PASS=0; FAIL=0
check() { if "$@"; then PASS=$((PASS+1)); else echo "FAILED: $*"; FAIL=$((FAIL+1)); fi; }

echo "### Garret client against stock atticd"
check g login attic "http://127.0.0.1:$PA/" "$(cat "$W/tok.attic")" >/dev/null
check g cache create interop
check g cache configure interop --priority 30 --retention-period '7 days'
check g cache configure interop --reset-retention-period --public
check g cache configure interop --private --upstream-cache-key-name cache.nixos.org-1 --upstream-cache-key-name foo-1
check g cache configure interop --regenerate-keypair
check g cache info interop
check g push interop "$TOP"
check g push interop "$TOP"
check g use interop
check nix-store --store "$T/B" --realise "$TOP"
check cmp "$T/A$TOP/blob" "$T/B$TOP/blob"
TOP2=$(build)
check g cache create pre
check g push pre "$TOP2" --force-preamble -j 2
PK=$("$GB/garret" cache info pre | sed -n 's/^Public key: //p')
check nix-store --store "$T/C" --realise "$TOP2" --option substituters "http://127.0.0.1:$PA/pre" --option trusted-public-keys "$PK"
check cmp "$T/A$TOP2/blob" "$T/C$TOP2/blob"
check g cache destroy pre --no-confirm
if g cache info pre 2>/dev/null; then FAIL=$((FAIL+1)); echo "FAILED: destroyed cache still there"; else PASS=$((PASS+1)); fi

echo "### Cross tokens"
check test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$W/tok.garret")" "http://127.0.0.1:$PA/_api/v1/cache-config/interop")" = 200
check g login garret "http://127.0.0.1:$PG/" "$(cat "$W/tok.attic")" >/dev/null
check g cache create garret:interop
check g push garret:interop "$TOP"
PKG=$("$GB/garret" cache info garret:interop | sed -n 's/^Public key: //p')
echo "machine 127.0.0.1 password $(cat "$W/tok.attic")" > "$T/netrc2"
check nix-store --store "$T/E" --realise "$TOP" --option substituters "http://127.0.0.1:$PG/interop" --option trusted-public-keys "$PKG" --option netrc-file "$T/netrc2"

echo "### Wire comparison"
for p in $(nix-store --store "$T/A" -qR "$TOP"); do nix store dump-path --store "$T/A" "$p" > "$W/$(basename "$p").nar"; done
TOP3=$(build)
for p in $(nix-store --store "$T/A" -qR "$TOP3"); do nix store dump-path --store "$T/A" "$p" > "$W/fresh-$(basename "$p").nar"; done
nix-store --generate-binary-cache-key cmp "$T/cmp.sk" "$T/cmp.pk"
python3 "$HERE/compare.py" "http://127.0.0.1:$PA" "http://127.0.0.1:$PG" "$W" > "$W/compare-output.txt"
python3 "$HERE/compare_upload.py" "http://127.0.0.1:$PA" "http://127.0.0.1:$PG" "$W" > "$W/compare-upload-output.txt"
tail -n +1 "$W/compare-output.txt" | sed -n '/^SUMMARY/,$p'
echo "client/nix checks: $PASS passed, $FAIL failed (workdir $W)"
test "$FAIL" = 0
