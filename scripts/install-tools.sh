#!/usr/bin/env bash
# Installs the test tools that come from crates.io rather than Debian, at
# pinned versions, into ${SOHOFS_TOOLS:-~/.cache/sohofs/tools}/bin:
#   pjdfstest  POSIX conformance suite (scripts/pjdfstest.sh)
#   fsx        File System eXerciser (scripts/fsx.sh)
# Idempotent: a tool already there at its version is not built again.
set -euo pipefail

PJDFSTEST_VERSION=0.2.2
FSX_VERSION=0.3.2

tools_root=${SOHOFS_TOOLS:-$HOME/.cache/sohofs/tools}

install_tool() {
    local name=$1 version=$2
    local bin=$tools_root/bin/$name
    if [[ -x $bin ]] && [[ $("$bin" --version 2>/dev/null) == *" $version"* ]]; then
        return 0
    fi
    printf 'install-tools: building %s %s into %s\n' "$name" "$version" "$tools_root" >&2
    # Its own target folder, so that the project's build cache is not touched.
    CARGO_TARGET_DIR=$tools_root/build cargo install --locked --quiet --force \
        "$name" --version "$version" --root "$tools_root"
}

install_tool pjdfstest "$PJDFSTEST_VERSION"
install_tool fsx "$FSX_VERSION"
