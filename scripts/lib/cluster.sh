# Sourced by scripts that need a running cluster: starts `sohofs up` (meta and
# N nodes, FUSE-mounted) under a scratch folder and stops it again. The caller
# installs `trap cluster_down EXIT` so that the cluster goes even on failure.
#
#   cluster_up SCRATCH [sohofs up options...]   sets CLUSTER_MOUNT, CLUSTER_PID
#   cluster_down                                 SIGTERM, wait, then SIGKILL

CLUSTER_READY_SECONDS=${CLUSTER_READY_SECONDS:-180}
CLUSTER_STOP_SECONDS=60
CLUSTER_PID=""
CLUSTER_MOUNT=""
CLUSTER_DIR=""

cluster_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

cluster_sohofs_bin() {
    local target=${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}
    printf '%s\n' "${SOHOFS_BIN:-$target/debug/sohofs}"
}

cluster_is_mounted() {
    # /proc/self/mounts escapes spaces; our scratch paths have none.
    awk -v point="$1" '$2 == point && $3 ~ /^fuse/ { found = 1 } END { exit !found }' /proc/self/mounts
}

cluster_up() {
    local scratch=$1
    shift
    local bin
    bin=$(cluster_sohofs_bin)
    [[ -x $bin ]] || { cluster_log "no sohofs binary at $bin (cargo build -p sohofs-control --bin sohofs)"; return 1; }
    CLUSTER_DIR=$scratch/cluster
    CLUSTER_MOUNT=$scratch/mnt
    mkdir -p "$CLUSTER_DIR"
    # setsid: its own process group, so that cluster_down reaches every child.
    setsid "$bin" up --dir "$CLUSTER_DIR" --mount "$CLUSTER_MOUNT" "$@" \
        >"$scratch/up.log" 2>&1 </dev/null &
    CLUSTER_PID=$!
    local waited=0
    until cluster_is_mounted "$CLUSTER_MOUNT"; do
        if ! kill -0 "$CLUSTER_PID" 2>/dev/null; then
            cluster_log "sohofs up exited before mounting; its log:"
            tail -n 40 "$scratch/up.log" >&2
            CLUSTER_PID=""
            return 1
        fi
        if ((waited >= CLUSTER_READY_SECONDS * 10)); then
            cluster_log "no mount at $CLUSTER_MOUNT after ${CLUSTER_READY_SECONDS}s"
            tail -n 40 "$scratch/up.log" >&2
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    cluster_log "cluster up, mounted at $CLUSTER_MOUNT (pid $CLUSTER_PID)"
}

cluster_down() {
    [[ -n $CLUSTER_PID ]] || return 0
    kill -TERM "$CLUSTER_PID" 2>/dev/null || true
    local waited=0
    while kill -0 "$CLUSTER_PID" 2>/dev/null && ((waited < CLUSTER_STOP_SECONDS * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    # Whatever is left of the group (the pid is the group id, see setsid).
    kill -KILL -- "-$CLUSTER_PID" 2>/dev/null || true
    wait "$CLUSTER_PID" 2>/dev/null || true
    if [[ -n $CLUSTER_MOUNT ]] && cluster_is_mounted "$CLUSTER_MOUNT"; then
        fusermount3 -u -z "$CLUSTER_MOUNT" 2>/dev/null || umount -l "$CLUSTER_MOUNT" 2>/dev/null || true
    fi
    CLUSTER_PID=""
}
