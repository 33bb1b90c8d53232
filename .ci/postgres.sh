#!/usr/bin/env bash
# Starts (or stops) the machine's PostgreSQL cluster the way the Debian package does, and
# prints the variable the tests read:
#   eval "$(bash .ci/postgres.sh start)"   ->  GARRET_TEST_POSTGRES_URL=postgresql://…
#   bash .ci/postgres.sh stop
# Each test server then creates its own fresh database on that cluster.
set -euo pipefail
PASSWORD=garret-test

cluster() {
    pg_lsclusters --no-header | awk 'NR==1 {print $1, $2, $3}'
}

case "${1:-start}" in
start)
    if ! command -v pg_ctlcluster >/dev/null; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    read -r ver name port < <(cluster) || true
    if [ -z "${ver:-}" ]; then
        ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
        pg_createcluster "$ver" main >&2
        read -r ver name port < <(cluster)
    fi
    pg_ctlcluster "$ver" "$name" start >&2 || pg_ctlcluster "$ver" "$name" status >&2
    for _ in $(seq 1 50); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        sleep 0.2
    done
    su postgres -c "psql -q -p $port -c \"ALTER USER postgres PASSWORD '$PASSWORD'\"" >&2
    echo "export GARRET_TEST_POSTGRES_URL=postgresql://postgres:$PASSWORD@127.0.0.1:$port"
    echo "export GARRET_TEST_PG_CLUSTER='$ver $name'"
    ;;
stop)
    read -r ver name _ < <(cluster) || exit 0
    pg_ctlcluster "$ver" "$name" stop >&2 || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
