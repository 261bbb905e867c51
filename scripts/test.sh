#!/usr/bin/env bash
# The whole check that CI runs (through .ci/run): formatting, lints, the build of
# the `sohofs` binary, every unit and end-to-end test, then a short fuzz run.
# Stops at the first failing step and prints which steps passed, failed and
# were not reached.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}"
# The end-to-end tests run this binary; naming it keeps them from guessing.
export SOHOFS_BIN="${SOHOFS_BIN:-$CARGO_TARGET_DIR/debug/sohofs}"

FUZZ_SECONDS_PER_TARGET=20

steps=(install-deps fmt clippy build tools test fuzz)
declare -A outcome=()
current=""
started_at=$SECONDS

summary() {
    local status=$? step
    echo
    echo "==================== scripts/test.sh summary ===================="
    for step in "${steps[@]}"; do
        if [[ -n ${outcome[$step]:-} ]]; then
            printf '  %-13s %s\n' "$step" "${outcome[$step]}"
        elif [[ $step == "$current" ]]; then
            printf '  %-13s FAILED (exit %d)\n' "$step" "$status"
        else
            printf '  %-13s not run\n' "$step"
        fi
    done
    printf '  total time    %ds\n' $((SECONDS - started_at))
    if ((status == 0)); then
        echo "  result        ALL STEPS PASSED"
    else
        echo "  result        FAILED at step '$current'"
    fi
    echo "================================================================="
}
trap summary EXIT

# run_step NAME COMMAND...: runs one step; on failure `set -e` ends the script
# and the EXIT trap reports NAME as the failed step.
run_step() {
    local name=$1 step_started_at=$SECONDS
    shift
    current=$name
    echo
    echo "==> [$name] $*"
    "$@"
    outcome[$name]="ok ($((SECONDS - step_started_at))s)"
    current=""
}

run_step install-deps scripts/install-deps.sh
run_step fmt cargo fmt --all --check
run_step clippy cargo clippy --workspace --all-targets -- -D warnings
run_step build cargo build -p sohofs-control --bin sohofs
# pjdfstest and fsx from crates.io, which tests/tests/posix_suites.rs runs.
run_step tools scripts/install-tools.sh
# --no-fail-fast: one failing test binary must not hide the others.
run_step test cargo test --workspace --no-fail-fast
if [[ -f scripts/fuzz.sh ]]; then
    run_step fuzz bash scripts/fuzz.sh "$FUZZ_SECONDS_PER_TARGET"
else
    outcome[fuzz]="skipped (no scripts/fuzz.sh)"
fi
