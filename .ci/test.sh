#!/usr/bin/env bash
# The test command the README gives: the whole workspace, then the server suite once more
# on PostgreSQL when a test database is configured (GARRET_TEST_POSTGRES_URL).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Tests run other packages' binaries (garretd's tests drive the `garret` client; the e2e
# tests put all three into images), which cargo builds only for their own package.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast
if [ -n "${CI:-}" ] && [ -z "${GARRET_TEST_POSTGRES_URL:-}" ]; then
    echo "CI is set but GARRET_TEST_POSTGRES_URL is not: .ci/run starts PostgreSQL first" >&2
    exit 1
fi
if [ -n "${GARRET_TEST_POSTGRES_URL:-}" ]; then
    echo "==> server tests on PostgreSQL"
    GARRET_TEST_DATABASE=postgres cargo test -p garretd --locked --no-fail-fast --tests
fi
bash .ci/fuzz.sh
