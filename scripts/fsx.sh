#!/usr/bin/env bash
# Runs fsx (crates.io `fsx`, the Rust port of the File System eXerciser)
# against the FUSE mount of a fresh local cluster (6 nodes, 4+2), one file
# per seed, the seeds side by side. The cluster is stopped at the end, also
# on failure or Ctrl-C.
#
#   scripts/fsx.sh [OPS_PER_SEED] [SEED...]     defaults: 25000 ops, seeds 1 2 3 4
#
# fsx checks every read against its own model of the file and stops at the
# first difference; this script exits non-zero if any seed failed, and
# prints one line `fsx: seed S: N ops ok` (or FAILED) per seed, then a total.
# SOHOFS_TEST_MOUNT=PATH runs against a mount that is already there instead.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/cluster.sh
source "$repo_root/scripts/lib/cluster.sh"

tools_root=${SOHOFS_TOOLS:-$HOME/.cache/sohofs/tools}
fsx=$tools_root/bin/fsx

ops=${1:-25000}
shift || true
seeds=("$@")
((${#seeds[@]} > 0)) || seeds=(1 2 3 4)

log() { printf 'fsx.sh: %s\n' "$*" >&2; }

"$repo_root/scripts/install-tools.sh"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sohofs-fsx.XXXXXX")
finish() {
    cluster_down
    rm -rf "$scratch"
}
trap finish EXIT
trap 'exit 130' INT TERM

if [[ -n ${SOHOFS_TEST_MOUNT:-} ]]; then
    # A mount someone else runs (the e2e test's cluster): use it as it is.
    cluster_is_mounted "$SOHOFS_TEST_MOUNT" || { log "nothing mounted at $SOHOFS_TEST_MOUNT"; exit 1; }
    CLUSTER_MOUNT=$SOHOFS_TEST_MOUNT
else
    cluster_up "$scratch" --nodes 6 --k 4 --m 2
fi

# Every operation fsx has that a Linux file system without hole punching
# supports: pread/pwrite, mmap reads and writes with msync, MS_INVALIDATE,
# truncate, fsync, fdatasync, posix_fallocate, sendfile, copy_file_range,
# posix_fadvise, and closing and reopening the file. Files up to 1 MiB so that
# operations also cross 64 KiB and sub-chunk boundaries.
config=$scratch/fsx.toml
cat >"$config" <<'CONFIG'
flen = 1048576

[opsize]
max = 131072
min = 0
align = 1

[weights]
close_open = 2
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 1
CONFIG

pids=()
for seed in "${seeds[@]}"; do
    mkdir "$scratch/artifacts-$seed"
    "$fsx" -f "$config" -N "$ops" -S "$seed" -P "$scratch/artifacts-$seed" \
        "$CLUSTER_MOUNT/fsx-$seed.bin" >"$scratch/fsx-$seed.log" 2>&1 &
    pids+=($!)
done

failed=0
for index in "${!seeds[@]}"; do
    seed=${seeds[$index]}
    if wait "${pids[$index]}"; then
        echo "fsx: seed $seed: $ops ops ok"
    else
        echo "fsx: seed $seed: FAILED; its log:"
        tail -n 60 "$scratch/fsx-$seed.log"
        failed=$((failed + 1))
    fi
done
echo "fsx: $((${#seeds[@]} - failed)) passed, $failed failed ($ops operations per seed)"
((failed == 0))
