#!/usr/bin/env bash
# The NFSv3 gateway next to the FUSE mount of the same cluster, in one run:
# a file of SOHOFS_BENCH_MIB MiB (1024) of random bytes is copied into the
# volume and back out, once with `nfs-cp` through `sohofs nfs serve` and once
# with `dd conv=fsync` / `cp` through the FUSE mount. Every copy that comes back is compared
# with the source (md5), and the page cache is dropped before each read.
# Prints a table in MB/s (10^6 bytes) and writes it to
# $CARGO_TARGET_DIR/bench-results/nfs.md.
#
#   benches/nfs.sh                          1 GiB each way (~3 min on 2 cores)
#   SOHOFS_BENCH_MIB=256 benches/nfs.sh     shorter
#
# Needs root (drop_caches, the FUSE mount), libnfs-utils, a built sohofs.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib/cluster.sh
source "$repo_root/scripts/lib/cluster.sh"

SEQ_MIB=${SOHOFS_BENCH_MIB:-1024}
GATEWAY_READY_SECONDS=60

log() { printf 'nfs.sh: %s\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "run as root (drop_caches and mounts)"; exit 1; }
command -v nfs-cp >/dev/null || { log "nfs-cp missing (scripts/install-deps.sh installs libnfs-utils)"; exit 1; }

base=${SOHOFS_BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$base/sohofs-nfs-bench.XXXXXX")
gateway_pid=""
finish() {
    if [[ -n $gateway_pid ]]; then
        kill -TERM "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    cluster_down
    rm -rf "$scratch"
}
trap finish EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
now() { date +%s.%N; }
mb_per_s() { awk -v a="$1" -v b="$2" -v mib="$SEQ_MIB" 'BEGIN { printf "%.0f", mib * 1.048576 / (b - a) }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
md5_of() { md5sum "$1" | cut -d' ' -f1; }

cluster_up "$scratch/sohofs" --nodes 6 --k 4 --m 2
bin=$(cluster_sohofs_bin)
port=$(free_port)
# libnfs needs a folder below the export to copy a file into.
mkdir -m 0777 "$CLUSTER_MOUNT/bench"  # root squash: nfs-cp acts as 65534
"$bin" nfs serve --config "$CLUSTER_DIR/sohofs.toml" --listen "127.0.0.1:$port" \
    >"$scratch/gateway.log" 2>&1 </dev/null &
gateway_pid=$!
url() { printf 'nfs://127.0.0.1/bench/%s?nfsport=%s&mountport=%s&version=3' "$1" "$port" "$port"; }
waited=0
until nfs-ls "$(url '')" >/dev/null 2>&1; do
    kill -0 "$gateway_pid" 2>/dev/null || { log "the gateway exited:"; tail -n 20 "$scratch/gateway.log" >&2; exit 1; }
    ((waited < GATEWAY_READY_SECONDS * 10)) || { log "the gateway did not answer in ${GATEWAY_READY_SECONDS}s"; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
done

log "making $SEQ_MIB MiB of random bytes"
head -c "$((SEQ_MIB * 1048576))" /dev/urandom >"$scratch/source.bin"
source_md5=$(md5_of "$scratch/source.bin")
declare -A result

check_copy() {
    local what=$1 path=$2 got
    got=$(md5_of "$path")
    [[ $got == "$source_md5" ]] || { log "$what: md5 $got, the source's is $source_md5"; exit 1; }
    rm -f "$path"
}

drop_caches
log "nfs-cp in"
start=$(now)
nfs-cp "$scratch/source.bin" "$(url nfs.bin)"
result[nfs,in]=$(mb_per_s "$start" "$(now)")

drop_caches
log "nfs-cp out"
start=$(now)
nfs-cp "$(url nfs.bin)" "$scratch/from-nfs.bin"
result[nfs,out]=$(mb_per_s "$start" "$(now)")
check_copy "nfs-cp out" "$scratch/from-nfs.bin"
# What NFS wrote is what FUSE reads.
check_copy "nfs.bin read through FUSE" "$CLUSTER_MOUNT/bench/nfs.bin"

drop_caches
log "dd in through FUSE"
start=$(now)
# fsync before the clock stops: every NFS WRITE is durable before its reply.
dd if="$scratch/source.bin" of="$CLUSTER_MOUNT/bench/fuse.bin" bs=1M conv=fsync status=none
result[fuse,in]=$(mb_per_s "$start" "$(now)")

drop_caches
log "cp out through FUSE"
start=$(now)
cp "$CLUSTER_MOUNT/bench/fuse.bin" "$scratch/from-fuse.bin"
result[fuse,out]=$(mb_per_s "$start" "$(now)")
check_copy "cp out through FUSE" "$scratch/from-fuse.bin"

results_dir=${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}/bench-results
mkdir -p "$results_dir"
{
    echo "benches/nfs.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $SEQ_MIB MiB, one 6-node 4+2 cluster"
    echo
    echo "| path | into the volume (MB/s) | out of the volume (MB/s) |"
    echo "|---|---|---|"
    echo "| NFSv3 gateway, \`nfs-cp\` | ${result[nfs,in]} | ${result[nfs,out]} |"
    echo "| FUSE mount, \`dd conv=fsync\` in, \`cp\` out | ${result[fuse,in]} | ${result[fuse,out]} |"
} | tee "$results_dir/nfs.md"
