#!/usr/bin/env bash
# Bounded fuzzing of garret-core's parsers (issue 11): every cargo-fuzz target in
# server/fuzz runs for GARRET_FUZZ_SECONDS (default 30) starting from its committed corpus
# (server/fuzz/corpus/<target>/, which includes every input that once crashed). A crash,
# panic, failed assertion, timeout or out-of-memory in any target fails the run.
#
# Stable toolchain only: `--sanitizer none` keeps cargo-fuzz from passing `-Zsanitizer`, so
# no nightly is needed (garret-core has no `unsafe`; panics, overflow checks and debug
# assertions are what catch its bugs). New inputs found go to a temporary directory, never
# into the repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${GARRET_FUZZ_SECONDS:-30}
FUZZ_DIR=server/fuzz
export CARGO_TARGET_DIR=${GARRET_FUZZ_TARGET_DIR:-$HOME/.cache/garret/fuzz-target}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install, about 2-3 minutes)"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

fuzz() {
    local cmd=$1
    shift
    cargo fuzz "$cmd" --fuzz-dir "$FUZZ_DIR" --sanitizer none "$@"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# cargo-fuzz has no --locked: check here that the committed lock file needs no change.
cargo metadata --locked --format-version 1 --manifest-path "$FUZZ_DIR/Cargo.toml" >/dev/null
echo "==> fuzz: building the targets ($CARGO_TARGET_DIR)"
fuzz build
mapfile -t targets < <(cargo fuzz list --fuzz-dir "$FUZZ_DIR")
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz: no targets found in $FUZZ_DIR" >&2
    exit 1
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    log="$work/$t.log"
    echo "==> fuzz: $t for ${SECONDS_PER_TARGET}s"
    if fuzz run "$t" "$work/corpus/$t" "$FUZZ_DIR/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
        echo "    ok: ${execs:-?} runs, ${rate:-?} exec/s, ${cov:-no coverage line}"
    else
        echo "fuzz: $t FAILED; the end of libFuzzer's output:" >&2
        tail -n 60 "$log" >&2
        for a in "$work/artifacts/$t"/*; do
            [ -e "$a" ] || continue
            echo "fuzz: crashing input $(basename "$a") (base64; keep it in $FUZZ_DIR/corpus/$t/):" >&2
            base64 -w 0 "$a" >&2
            echo >&2
        done
        failed+=("$t")
    fi
done

# One line per target above; the total in the form CI reads ("N passed, N failed").
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]}" >&2
    exit 1
fi
