#!/usr/bin/env bash
# Installs the system packages that building and testing sohofs needs, and makes
# FUSE usable. Idempotent: when everything is present it changes nothing and
# touches no network. Runs as root, or through sudo when not root.
set -euo pipefail

PACKAGES=(
    clang libclang-dev pkg-config # bindgen for RocksDB
    fuse3 libfuse3-dev            # FUSE mounts (fusermount3) and fuser
    attr rsync git sqlite3        # tools the end-to-end tests drive
    build-essential               # make + cc: the C build on the mount (workloads)
    gocryptfs                     # the peer in benches/peers.sh
    slapd ldap-utils              # real OpenLDAP for keyring tests
    libnfs-utils                  # NFSv3 client for gateway tests
    age                           # key envelopes cross-checked with the age CLI
    libssl-dev                    # TLS to LDAP (ldaps://, StartTLS) via native-tls
    openssl                       # the test CA of the TLS slapd tests
    fonts-dejavu-core             # labels on the chart of `sohofs bench faults`
)

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    log "not root and no sudo: cannot install packages"
    exit 1
fi

# `dpkg -s` also succeeds for a package that was removed but left its config
# files behind, so look at the status line, not just the exit code.
is_installed() {
    dpkg -s "$1" 2>/dev/null | grep -qx 'Status: install ok installed'
}

missing=()
for package in "${PACKAGES[@]}"; do
    is_installed "$package" || missing+=("$package")
done

if ((${#missing[@]} > 0)); then
    log "installing: ${missing[*]}"
    # slapd would otherwise ask for a domain and an admin password. Tests run
    # their own slapd on a scratch config, so the system one needs no database.
    echo 'slapd slapd/no_configuration boolean true' |
        "${as_root[@]}" debconf-set-selections
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${missing[@]}" </dev/null
    # The keyring tests start their own slapd on a scratch config and a free
    # loopback port; a system slapd that the install just started is not
    # needed, so stop it (one that was there before is left alone).
    if [[ " ${missing[*]} " == *" slapd "* ]] && command -v systemctl >/dev/null 2>&1 &&
        systemctl is-active --quiet slapd 2>/dev/null; then
        "${as_root[@]}" systemctl disable --now slapd >/dev/null 2>&1 || true
        log "stopped the system slapd (tests run their own)"
    fi
else
    log "all packages present"
fi

# Containers often come without the fuse device node; it is always char 10:229.
if [[ ! -c /dev/fuse ]]; then
    "${as_root[@]}" modprobe fuse 2>/dev/null || true
    if [[ ! -c /dev/fuse ]]; then
        "${as_root[@]}" mknod -m 0666 /dev/fuse c 10 229 ||
            { log "cannot create /dev/fuse (container without CAP_MKNOD?)"; exit 1; }
    fi
    log "created /dev/fuse"
fi

# allow_other lets the second client and non-root test users see a mount.
if ! grep -qx '[[:space:]]*user_allow_other[[:space:]]*' /etc/fuse.conf 2>/dev/null; then
    # The leading newline guards against a file that lacks a final one.
    printf '\nuser_allow_other\n' | "${as_root[@]}" tee -a /etc/fuse.conf >/dev/null
    log "enabled user_allow_other in /etc/fuse.conf"
fi
