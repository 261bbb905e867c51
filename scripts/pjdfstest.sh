#!/usr/bin/env bash
# Runs pjdfstest (the Rust port, crates.io `pjdfstest`) against the FUSE mount
# of a fresh local cluster: 6 nodes, 4+2 erasure coding, started under a
# scratch folder and stopped at the end, also on failure or Ctrl-C.
#
#   scripts/pjdfstest.sh                 every test
#   scripts/pjdfstest.sh chmod rename    only tests whose names match
#
# Prints pjdfstest's report and, last, one line `pjdfstest: N passed, N failed,
# N skipped`. Exits non-zero when a test failed that is not listed in
# scripts/pjdfstest/expected-failures (each one explained in README.md).
# Needs root (pjdfstest switches users) and the `sohofs` binary
# ($SOHOFS_BIN, else $CARGO_TARGET_DIR/debug/sohofs).
# SOHOFS_TEST_MOUNT=PATH runs against a mount that is already there instead.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/cluster.sh
source "$repo_root/scripts/lib/cluster.sh"

tools_root=${SOHOFS_TOOLS:-$HOME/.cache/sohofs/tools}
pjdfstest=$tools_root/bin/pjdfstest

log() { printf 'pjdfstest.sh: %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "run as root: pjdfstest switches users"; exit 1; }

"$repo_root/scripts/install-tools.sh"

# The users pjdfstest switches to: `nobody` comes with Debian, `tests` not.
if ! getent passwd tests >/dev/null; then
    groupadd --system tests 2>/dev/null || true
    useradd --system --gid tests --no-create-home --home-dir / --shell /usr/sbin/nologin tests
    log "created user tests"
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sohofs-pjdfstest.XXXXXX")
# mktemp makes it 0700: the users pjdfstest switches to must reach the mount.
chmod 0755 "$scratch"
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

# Failures we know of and explain in README.md: one test name a line, `#`
# starts a comment. pjdfstest counts them apart and does not fail on them.
expected_file=$repo_root/scripts/pjdfstest/expected-failures
expected=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' -e 's/.*/    "&",/' "$expected_file")

config=$scratch/pjdfstest.toml
cat >"$config" <<CONFIG
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
# Longer than our timestamp granularity (nanoseconds); the ctime and mtime
# tests sleep this long between the steps they compare.
naptime = 0.01
allow_remount = false
expected_failures = [
$expected
]

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
CONFIG

workdir=$CLUSTER_MOUNT/pjdfstest
mkdir "$workdir"
# The EXDEV tests link and rename across file systems: the scratch folder is
# on the local disk, not on the mount.
secondary=$scratch/secondary
mkdir "$secondary"
report=$scratch/report.txt
set +e
(cd "$workdir" && NO_COLOR=1 CLICOLOR=0 "$pjdfstest" -c "$config" -p "$workdir" -s "$secondary" "$@") >"$report" 2>&1
status=$?
set -e
cat "$report"

# pjdfstest's last line: `Summary: F failed, S skipped, P passed, E expected
# failures, T total`.
summary=$(grep -E '^Summary: ' "$report" | tail -n 1 || true)
[[ -n $summary ]] || { log "pjdfstest printed no summary (exit $status)"; exit 1; }
count() { sed -nE "s/.* ([0-9]+) $1.*/\\1/p" <<<"$summary"; }
echo
echo "pjdfstest: $(count passed) passed, $(count failed) failed, $(count skipped) skipped," \
    "$(count 'expected failures') expected failures (listed in README.md), $(count total) total"
exit "$status"
