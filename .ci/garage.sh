#!/usr/bin/env bash
# A real S3 server on loopback for the storage tests: single-node Garage (what Attic users
# self-host), or s3s-fs as a faster-to-build fallback. See ../shared/testing/real-s3.md.
#
#   eval "$(bash .ci/garage.sh start)"     # install if missing, start, print `export S3_*=…`
#   bash .ci/garage.sh start FILE          # same, but write the export lines to FILE
#   bash .ci/garage.sh install             # only build the server if missing (CI does it early)
#   bash .ci/garage.sh halt                # kill the server, keep its data (outage drills)
#   bash .ci/garage.sh stop                # kill the server and delete its data
#
# Idempotent: `start` on a running instance only prints its variables; `start` after `halt`
# restarts it on the same data. Binaries are built once into $GARRET_TEST_BIN_CACHE.
#
# Knobs (environment):
#   GARRET_TEST_S3_SERVER   garage (default) | s3s-fs
#   GARRET_TEST_S3_DIR      state dir (default $TMPDIR/garret-s3-server); config, data, log, pid live here
#   GARRET_TEST_S3_PORT     S3 API port (default 3900); Garage also uses PORT+1 (RPC), PORT+3 (admin)
#   GARRET_TEST_BIN_CACHE   where built servers are kept (default ~/.cache/garret/bin)
set -euo pipefail

GARAGE_VERSION=2.5.0
S3S_FS_VERSION=0.14.1 # 0.15+ needs rustc 1.96

SERVER=${GARRET_TEST_S3_SERVER:-garage}
DIR=${GARRET_TEST_S3_DIR:-${TMPDIR:-/tmp}/garret-s3-server}
PORT=${GARRET_TEST_S3_PORT:-3900}
BIN_CACHE=${GARRET_TEST_BIN_CACHE:-$HOME/.cache/garret/bin}
export PATH="$HOME/.cargo/bin:$PATH"

# Fixed test credentials: Garage only needs an id of ≥ 8 chars and a secret of ≥ 16.
ACCESS_KEY=GKgarret0000000000000000000
SECRET_KEY=garret-ci-secret-0000000000000000000000000000000000000000000000
BUCKET=garret
REGION=garage

log() { printf 'garage.sh: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

# Builds the server into the cache unless the right version is already there.
install_server() {
    local root t0
    root=$(dirname "$BIN_CACHE")
    mkdir -p "$BIN_CACHE"
    t0=$SECONDS
    case $SERVER in
    garage)
        if "$BIN_CACHE/garage" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION"; then
            return
        fi
        log "building garage $GARAGE_VERSION (reduced features; ~10-30 min on 2 cores)"
        # opt-level 1 and no default features: a third of the default build time.
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install garage --version "$GARAGE_VERSION" \
            --locked --no-default-features --features bundled-libs,lmdb \
            --root "$root" >&2
        ;;
    s3s-fs)
        if [ -x "$BIN_CACHE/s3s-fs" ] &&
            grep -qs "^$S3S_FS_VERSION\$" "$BIN_CACHE/.s3s-fs.version"; then
            return
        fi
        log "building s3s-fs $S3S_FS_VERSION"
        cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary \
            --root "$root" >&2
        echo "$S3S_FS_VERSION" >"$BIN_CACHE/.s3s-fs.version"
        ;;
    *) die "unknown GARRET_TEST_S3_SERVER=$SERVER (garage or s3s-fs)" ;;
    esac
    log "built $SERVER in $((SECONDS - t0)) s"
}

running() {
    [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null
}

# Garage has a health endpoint on its admin port; s3s-fs answers any request once up.
healthy() {
    case $(cat "$DIR/kind") in
    garage) curl -fs "http://127.0.0.1:$(cat "$DIR/admin_port")/health" >/dev/null ;;
    *) [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(cat "$DIR/port")/")" != 000 ] ;;
    esac
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# First start: write the config. Later starts (after `halt`) reuse it, data included.
configure() {
    mkdir -p "$DIR"
    [ -f "$DIR/kind" ] && return
    echo "$SERVER" >"$DIR/kind"
    echo "$PORT" >"$DIR/port"
    echo $((PORT + 3)) >"$DIR/admin_port"
    if [ "$SERVER" = garage ]; then
        cat >"$DIR/garage.toml" <<TOML
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((PORT + 1))"
rpc_public_addr = "127.0.0.1:$((PORT + 1))"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$PORT"

[admin]
api_bind_addr = "127.0.0.1:$((PORT + 3))"
TOML
    else
        mkdir -p "$DIR/root/$BUCKET" # a bucket is a directory
    fi
    cat >"$DIR/env" <<ENV
export S3_ENDPOINT=http://127.0.0.1:$PORT S3_REGION=$REGION S3_BUCKET=$BUCKET
export S3_ACCESS_KEY=$ACCESS_KEY S3_SECRET_KEY=$SECRET_KEY
export GARRET_TEST_S3_DIR=$DIR GARRET_TEST_S3_SERVER=$SERVER
ENV
}

launch() {
    local port server
    port=$(cat "$DIR/port")
    server=$(cat "$DIR/kind")
    port_free "$port" || die "port $port is taken; set GARRET_TEST_S3_PORT or run stop"
    case $server in
    garage)
        # --single-node --default-bucket: layout, key import and bucket creation happen
        # before the S3 port opens, so /health answering means the bucket is usable.
        GARAGE_DEFAULT_ACCESS_KEY=$ACCESS_KEY GARAGE_DEFAULT_SECRET_KEY=$SECRET_KEY \
            GARAGE_DEFAULT_BUCKET=$BUCKET RUST_LOG=${RUST_LOG:-warn} \
            setsid "$BIN_CACHE/garage" -c "$DIR/garage.toml" server --single-node --default-bucket \
            >>"$DIR/server.log" 2>&1 </dev/null 9>&- &
        ;;
    s3s-fs)
        setsid "$BIN_CACHE/s3s-fs" --host 127.0.0.1 --port "$port" \
            --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" "$DIR/root" \
            >>"$DIR/server.log" 2>&1 </dev/null 9>&- &
        ;;
    esac
    echo $! >"$DIR/pid"
    local t0=$SECONDS
    for _ in $(seq 300); do
        healthy && { log "$server up on 127.0.0.1:$port (pid $(cat "$DIR/pid"))"; return; }
        running || break
        sleep 0.1
    done
    tail -n 30 "$DIR/server.log" >&2
    die "$server did not become healthy after $((SECONDS - t0)) s (log: $DIR/server.log)"
}

halt() {
    if running; then
        local pid
        pid=$(cat "$DIR/pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped pid $pid"
    fi
    rm -f "$DIR/pid"
}

cmd=${1:-}
case $cmd in
start)
    mkdir -p "$DIR"
    exec 9>"$DIR.lock"
    flock 9
    if [ -f "$DIR/kind" ]; then SERVER=$(cat "$DIR/kind"); fi
    install_server
    configure
    if running && healthy; then
        log "already running (pid $(cat "$DIR/pid"))"
    else
        halt
        launch
    fi
    if [ -n "${2:-}" ]; then cp "$DIR/env" "$2"; else cat "$DIR/env"; fi
    ;;
install)
    install_server
    ;;
halt)
    exec 9>"$DIR.lock"
    flock 9
    halt
    ;;
stop)
    exec 9>"$DIR.lock"
    flock 9
    halt
    rm -rf "$DIR"
    rm -f "$DIR.lock"
    ;;
*)
    echo "usage: $0 start [ENV_FILE] | install | halt | stop" >&2
    exit 2
    ;;
esac
