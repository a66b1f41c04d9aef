# Shared helpers for vm/setup, vm/run, vm/chroot. Source, don't execute.
# shellcheck shell=bash

BTFR_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
BTFR_CACHE="${BTFRECONCILED_CACHE_ROOT:-$HOME/.cache/btfreconciled}"
BTFR_ROOTFS="$BTFR_CACHE/rootfs/trixie"
BTFR_BUILDROOT="$BTFR_CACHE/rootfs/bookworm"
BTFR_SIDROOT="$BTFR_CACHE/rootfs/sid"  # libbpf 1.7, bpftool 7.8, pahole 1.32, 7.2 headers
BTFR_STAMPS="$BTFR_CACHE/stamps"
BTFR_VENV="$BTFR_CACHE/venv"

die() { echo "${0##*/}: error: $*" >&2; exit 1; }
log() { echo "[${0##*/} $(date -u +%H:%M:%S)] $*" >&2; }

# The first Debian archive URI (not the security one) from the host's apt
# sources, and the first security URI. Never hard-coded: read at run time.
_apt_uris() {
    local f
    {
        [ -f /etc/apt/sources.list ] && awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' /etc/apt/sources.list
        for f in /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] && awk '$1=="deb"{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "$f"
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] && awk 'tolower($1)=="uris:"{for(i=2;i<=NF;i++) print $i}' "$f"
        done
    } 2>/dev/null
}
debian_mirror() {
    local u
    u=$(_apt_uris | grep -i 'debian' | grep -vi 'security' | grep -vi 'ports' | head -n1)
    [ -n "$u" ] || die "no Debian archive URI found in the host's apt sources"
    echo "${u%/}"
}
debian_security_mirror() {
    _apt_uris | grep -i 'debian' | grep -i 'security' | head -n1 | sed 's:/*$::'
}

# Run a command chrooted into ROOT inside a private mount namespace: /proc,
# /sys, /dev, the checkout, the cache root and /tmp are bind-mounted at the
# same paths as on the host; everything is unmounted when the namespace dies.
in_root() {
    local root="$1"; shift
    [ -x "$root/bin/sh" ] || die "root filesystem missing or incomplete: $root (run vm/setup)"
    [ -f /etc/resolv.conf ] && cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    unshare --mount --propagation private -- /bin/bash -c '
        set -e
        root="$1"; repo="$2"; cache="$3"; cwd="$4"; shift 4
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        for d in "$repo" "$cache" /tmp; do
            mkdir -p "$root$d"
            mount --bind "$d" "$root$d"
        done
        exec chroot "$root" /usr/bin/env -i \
            HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            PYTHONPATH="$repo" DEBIAN_FRONTEND=noninteractive \
            BTFRECONCILED_CACHE_ROOT="$cache" BTF_ORACLE_DEBUG="${BTF_ORACLE_DEBUG:-}" \
            /bin/sh -c '\''cd "$0" 2>/dev/null || cd /; exec "$@"'\'' "$cwd" "$@"
    ' in_root "$root" "$BTFR_REPO" "$BTFR_CACHE" "$PWD" "$@"
}
