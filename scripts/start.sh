#!/usr/bin/env bash
# Builds sohofs and runs a development cluster in the foreground: meta and six
# storage nodes as child processes under ./sohofs-data, erasure-coded 4+2, with
# the volume mounted at ./sohofs-mnt. Ctrl-C unmounts and stops everything.
#
# Extra arguments go to `sohofs up` and replace the defaults they name, e.g.
#   scripts/start.sh --nodes 8 --k 5 --m 3
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

scripts/install-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sohofs/target}"
cargo build -p sohofs-control --bin sohofs

# clap refuses a flag given twice, so a default is passed only when the caller
# did not give that flag (as `--flag value` or `--flag=value`).
given() {
    local flag=$1 arg
    for arg in "${extra_args[@]}"; do
        [[ $arg == "$flag" || $arg == "$flag="* ]] && return 0
    done
    return 1
}
extra_args=("$@")
defaults=()
for pair in --nodes=6 --k=4 --m=2 --dir=./sohofs-data --mount=./sohofs-mnt; do
    given "${pair%%=*}" || defaults+=("${pair%%=*}" "${pair#*=}")
done

exec "$CARGO_TARGET_DIR/debug/sohofs" up "${defaults[@]}" "${extra_args[@]}"
