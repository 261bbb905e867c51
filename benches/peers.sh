#!/usr/bin/env bash
# sohofs against its peers, side by side in one run, on the same disk:
#   (a) a plain folder, (b) gocryptfs over a folder, (c) the FUSE mount of a
#   local 6-node 4+2 sohofs cluster whose nodes and meta live on that disk.
# Each figure runs on each target in turn; the page cache is dropped before
# every read phase. Prints a table with sohofs relative to gocryptfs and
# writes it to $CARGO_TARGET_DIR/bench-results/peers.md.
#
#   benches/peers.sh                     everything (~15 min on 2 cores)
#   SOHOFS_BENCH_MIB=256 SOHOFS_BENCH_FILES=2000 benches/peers.sh   shorter
#
# Needs root (drop_caches, mounts), gocryptfs, perl and a built sohofs.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../scripts/lib/cluster.sh
source "$repo_root/scripts/lib/cluster.sh"

SEQ_MIB=${SOHOFS_BENCH_MIB:-1024}
SMALL_FILES=${SOHOFS_BENCH_FILES:-10000}
SMALL_FILE_BYTES=4096
# A source tree every machine with build-essential has: kernel and C++ headers.
SOURCE_TREE_DIRS=(/usr/include/linux /usr/include/c++)
TARGETS=(plain gocryptfs sohofs)

log() { printf 'peers.sh: %s\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "run as root (drop_caches and mounts)"; exit 1; }
command -v gocryptfs >/dev/null || { log "gocryptfs missing (scripts/install-deps.sh)"; exit 1; }

base=${SOHOFS_BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$base/sohofs-peers.XXXXXX")
gocrypt_mount=""
finish() {
    if [[ -n $gocrypt_mount ]] && mountpoint -q "$gocrypt_mount"; then
        fusermount3 -u "$gocrypt_mount" 2>/dev/null || fusermount3 -u -z "$gocrypt_mount" || true
    fi
    cluster_down
    rm -rf "$scratch"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- the three targets ---------------------------------------------------
declare -A dir_of
dir_of[plain]=$scratch/plain
mkdir -p "${dir_of[plain]}"

mkdir -p "$scratch/gocryptfs-cipher" "$scratch/gocryptfs-plain"
printf 'bench-password\n' >"$scratch/gocryptfs-password"
gocryptfs -init -quiet -passfile "$scratch/gocryptfs-password" "$scratch/gocryptfs-cipher" >/dev/null
gocryptfs -quiet -passfile "$scratch/gocryptfs-password" "$scratch/gocryptfs-cipher" "$scratch/gocryptfs-plain"
gocrypt_mount=$scratch/gocryptfs-plain
dir_of[gocryptfs]=$gocrypt_mount

cluster_up "$scratch/sohofs" --nodes 6 --k 4 --m 2
dir_of[sohofs]=$CLUSTER_MOUNT

tarball=$scratch/source-tree.tar
tar -cf "$tarball" "${SOURCE_TREE_DIRS[@]}" 2>/dev/null
tree_files=$(tar -tf "$tarball" | grep -vc '/$')
tree_mib=$(($(stat -c %s "$tarball") / 1048576))

# --- measuring -----------------------------------------------------------
declare -A result
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# The small-file phases in one perl process each, so that no process is
# started per file (that would measure fork+exec, not the file system).
small_files() {
    local phase=$1 dir=$2
    perl -e '
        my ($phase, $dir, $count, $bytes) = @ARGV;
        my $data = "x" x $bytes;
        for my $i (1 .. $count) {
            my $path = sprintf("%s/f%05d", $dir, $i);
            if ($phase eq "create") {
                open(my $f, ">", $path) or die "create $path: $!";
                print $f $data or die "write $path: $!";
                close($f) or die "close $path: $!";
            } elsif ($phase eq "stat") {
                my @st = lstat($path) or die "stat $path: $!";
                $st[7] == $bytes or die "size of $path is $st[7]";
            } elsif ($phase eq "read") {
                open(my $f, "<", $path) or die "open $path: $!";
                my $got = "";
                read($f, $got, $bytes + 1) == $bytes or die "short read of $path";
                close($f);
            } elsif ($phase eq "remove") {
                unlink($path) or die "unlink $path: $!";
            }
        }' "$phase" "$dir" "$SMALL_FILES" "$SMALL_FILE_BYTES"
}

run_target() {
    local target=$1 dir=${dir_of[$1]} start
    log "$target: sequential write of $SEQ_MIB MiB"
    start=$(now)
    dd if=/dev/zero of="$dir/seq.bin" bs=1M count="$SEQ_MIB" conv=fsync status=none
    result[$target,seq_write]=$(elapsed "$start" "$(now)")

    drop_caches
    log "$target: sequential read"
    start=$(now)
    dd if="$dir/seq.bin" of=/dev/null bs=1M status=none
    result[$target,seq_read]=$(elapsed "$start" "$(now)")
    rm -f "$dir/seq.bin"

    mkdir "$dir/small"
    log "$target: $SMALL_FILES files of $SMALL_FILE_BYTES bytes: create"
    start=$(now)
    small_files create "$dir/small"
    sync
    result[$target,create]=$(elapsed "$start" "$(now)")

    drop_caches
    log "$target: ls -l"
    start=$(now)
    local listed
    listed=$(ls -l "$dir/small" | grep -c '^-')
    result[$target,ls]=$(elapsed "$start" "$(now)")
    ((listed == SMALL_FILES)) || { log "$target: ls -l listed $listed files"; exit 1; }

    drop_caches
    log "$target: stat"
    start=$(now)
    small_files stat "$dir/small"
    result[$target,stat]=$(elapsed "$start" "$(now)")

    drop_caches
    log "$target: read"
    start=$(now)
    small_files read "$dir/small"
    result[$target,read]=$(elapsed "$start" "$(now)")

    log "$target: remove"
    start=$(now)
    small_files remove "$dir/small"
    sync
    result[$target,remove]=$(elapsed "$start" "$(now)")
    rmdir "$dir/small"

    log "$target: untar ($tree_files files, $tree_mib MiB)"
    mkdir "$dir/untar"
    start=$(now)
    tar -xf "$tarball" -C "$dir/untar"
    sync
    result[$target,untar]=$(elapsed "$start" "$(now)")
    rm -rf "$dir/untar"
}

for target in "${TARGETS[@]}"; do
    run_target "$target"
done

# --- the table -----------------------------------------------------------
# Throughput figures in MB/s, the others in seconds; the last column is
# sohofs's speed as a multiple of gocryptfs's (above 1: sohofs is faster).
figures=(seq_write seq_read create ls stat read remove untar)
declare -A label=(
    [seq_write]="sequential write $SEQ_MIB MiB + fsync (MB/s)"
    [seq_read]="sequential read $SEQ_MIB MiB, cold (MB/s)"
    [create]="create $SMALL_FILES × 4 KiB + sync (s)"
    [ls]="ls -l of $SMALL_FILES entries, cold (s)"
    [stat]="stat $SMALL_FILES files, cold (s)"
    [read]="read $SMALL_FILES files, cold (s)"
    [remove]="remove $SMALL_FILES files + sync (s)"
    [untar]="untar $tree_files files, $tree_mib MiB + sync (s)"
)
value() {
    local figure=$1 seconds=$2
    case $figure in
        seq_*) awk -v s="$seconds" -v mib="$SEQ_MIB" 'BEGIN { printf "%.0f", mib * 1.048576 / s }' ;;
        *) printf '%s' "$seconds" ;;
    esac
}
ratio() {
    # Both are times: gocryptfs's time over sohofs's is sohofs's relative speed.
    awk -v g="$1" -v s="$2" 'BEGIN { printf "%.2f×", g / s }'
}
results_dir=${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}/bench-results
mkdir -p "$results_dir"
{
    echo "benches/peers.sh, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r)"
    echo
    echo "| figure | plain disk | gocryptfs | sohofs 6 nodes 4+2 | sohofs vs gocryptfs |"
    echo "|---|---|---|---|---|"
    for figure in "${figures[@]}"; do
        printf '| %s | %s | %s | %s | %s |\n' "${label[$figure]}" \
            "$(value "$figure" "${result[plain,$figure]}")" \
            "$(value "$figure" "${result[gocryptfs,$figure]}")" \
            "$(value "$figure" "${result[sohofs,$figure]}")" \
            "$(ratio "${result[gocryptfs,$figure]}" "${result[sohofs,$figure]}")"
    done
} | tee "$results_dir/peers.md"
