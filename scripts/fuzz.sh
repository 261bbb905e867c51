#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (one per decoder of sohofs-format) for
# SECONDS_PER_TARGET seconds each, one after the other, and prints how many
# inputs each one ran.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20)
#
# Exits non-zero if a target crashed (the input is kept in
# fuzz/artifacts/<target>/: make it a regression test in format/) or if a
# target did not run at all.
#
# cargo-fuzz needs nightly-only rustc flags (a sanitizer, coverage passes);
# the only toolchain here is stable, so the build runs with RUSTC_BOOTSTRAP=1.
# Builds and the corpus each target grows live outside the clone, in
# ${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}/fuzz, so reruns reuse them.
# The golden vectors in format/tests/vectors/ seed every target, and
# fuzz/seeds/<target>/ seeds one target.
set -euo pipefail

seconds_per_target="${1:-20}"
if ! [[ "$seconds_per_target" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi
# One input taking this long counts as a crash (a hang); with
# -max_total_time this bounds how long a target can run.
input_timeout_s=10

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$repo_dir/fuzz"
seed_dir="$repo_dir/format/tests/vectors"
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}/fuzz"
corpus_root="$target_dir/corpus"
log_dir="$target_dir/logs"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; installing it"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$target_dir"
fuzz_args=(--fuzz-dir "$fuzz_dir" --target-dir "$target_dir")
# cargo fuzz keeps crash artifacts relative to the working directory.
cd "$repo_dir"

mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
if ((${#targets[@]} == 0)); then
  echo "fuzz.sh: no fuzz targets found in $fuzz_dir" >&2
  exit 1
fi

echo "fuzz.sh: building ${#targets[@]} targets in $target_dir"
cargo fuzz build "${fuzz_args[@]}"

seed_args=()
if [[ -d "$seed_dir" ]]; then
  seed_args=("$seed_dir")
fi

mkdir -p "$log_dir"
failed=()
summary=()
for target in "${targets[@]}"; do
  corpus_dir="$corpus_root/$target"
  log="$log_dir/$target.log"
  mkdir -p "$corpus_dir"
  echo "fuzz.sh: fuzzing $target for ${seconds_per_target}s (log: $log)"
  # New inputs go to the first corpus directory; the seeds are only read.
  # Inputs that are not our own layouts (an NFS call record) have their
  # seeds in fuzz/seeds/<target>/.
  target_seed_args=("${seed_args[@]}")
  if [[ -d "$fuzz_dir/seeds/$target" ]]; then
    target_seed_args+=("$fuzz_dir/seeds/$target")
  fi
  status=0
  cargo fuzz run "${fuzz_args[@]}" "$target" "$corpus_dir" "${target_seed_args[@]}" -- \
    -max_total_time="$seconds_per_target" -timeout="$input_timeout_s" \
    >"$log" 2>&1 || status=$?

  # libFuzzer ends a clean run with "Done <runs> runs in <s> second(s)".
  runs="$(sed -n 's/^Done \([0-9][0-9]*\) runs in .*/\1/p' "$log" | tail -n 1)"
  coverage="$(sed -n 's/.*DONE *cov: \([0-9][0-9]*\).*corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/cov \1, corpus \2/p' "$log" | tail -n 1)"
  if ((status != 0)); then
    result="FAILED (exit $status)"
  elif [[ -z "$runs" || "$runs" == 0 ]]; then
    result="FAILED (ran no input)"
  else
    result="ok"
  fi
  summary+=("$(printf '%-16s %12s runs  %-28s %s' "$target" "${runs:-?}" "${coverage:-}" "$result")")
  if [[ "$result" != ok ]]; then
    failed+=("$target")
    echo "fuzz.sh: $target failed (full log: $log):" >&2
    grep -E -A 3 'panicked at|==[0-9]+==ERROR|^SUMMARY:|ERROR: libFuzzer' "$log" | head -n 30 >&2 || true
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    if [[ -n "$artifact" ]]; then
      echo "fuzz.sh: crashing input: $artifact; reproduce with" >&2
      echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --target-dir $target_dir $target $artifact" >&2
    else
      tail -n 20 "$log" >&2
    fi
  fi
done

echo
echo "fuzz.sh: ${seconds_per_target}s per target"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: FAILED: ${failed[*]} (logs in $log_dir, crash inputs in $fuzz_dir/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran without a crash"
