#!/usr/bin/env bash
# Check that crushcell installs and runs on arm64 (the Raspberry Pi boards) without a board:
# build the wheel here, install it into a Debian bookworm arm64 root file system and run
# `crushcell check-config` and a short `crushcell simulate` under qemu-user emulation.
#
# Why: the boards are arm64; a dependency without an arm64 wheel, or code that only works on
# x86_64, should show up before anyone flashes a board. Not run in CI (it downloads a Debian
# system and is slow under emulation); run it by hand before a release.
#
# Needs root and Debian's packages: apt-get install debootstrap qemu-user-static binfmt-support
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/check-arm64.sh [options]

  --rootfs DIR        arm64 root file system to create or reuse
                      (default /var/tmp/crushcell-arm64-rootfs)
  --suite NAME        Debian suite (default bookworm, as Raspberry Pi OS 12)
  --mirror URL        Debian mirror (default http://deb.debian.org/debian)
  --extras LIST       also install these extras of the wheel, e.g. "hardware"
                      (builds C extensions under emulation: slow; adds build-essential)
  --rootfs-only       create the root file system, check python3 runs in it, stop
  --sim-timeout SEC   limit for `crushcell simulate` under emulation (default 900)
  -h, --help          this text
EOF
}

die() { echo "check-arm64: $*" >&2; exit 1; }
log() { echo "check-arm64: $*" >&2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rootfs=/var/tmp/crushcell-arm64-rootfs
suite=bookworm
mirror=http://deb.debian.org/debian
extras=""
rootfs_only=0
sim_timeout=900

while [ $# -gt 0 ]; do
    case "$1" in
        --rootfs) [ $# -ge 2 ] || { usage >&2; exit 2; }; rootfs="$2"; shift 2 ;;
        --suite) [ $# -ge 2 ] || { usage >&2; exit 2; }; suite="$2"; shift 2 ;;
        --mirror) [ $# -ge 2 ] || { usage >&2; exit 2; }; mirror="$2"; shift 2 ;;
        --extras) [ $# -ge 2 ] || { usage >&2; exit 2; }; extras="$2"; shift 2 ;;
        --sim-timeout) [ $# -ge 2 ] || { usage >&2; exit 2; }; sim_timeout="$2"; shift 2 ;;
        --rootfs-only) rootfs_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "check-arm64: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$sim_timeout" in ''|*[!0-9]*) die "--sim-timeout wants whole seconds, got '$sim_timeout'" ;; esac
case "$rootfs" in /*) ;; *) die "--rootfs wants an absolute path, got '$rootfs'" ;; esac
[ "$rootfs" != / ] || die "--rootfs must not be /"

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
for tool in debootstrap qemu-aarch64-static chroot mount python3; do
    command -v "$tool" >/dev/null || die "$tool not found; apt-get install debootstrap qemu-user-static binfmt-support"
done

# The kernel must hand arm64 ELF files to qemu. Inside containers binfmt_misc is often not
# mounted; the F (fix-binary) flag of Debian's registration makes it work inside the chroot.
ensure_binfmt() {
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc; arm64 binaries cannot run here"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        command -v update-binfmts >/dev/null || die "update-binfmts not found; apt-get install binfmt-support"
        update-binfmts --enable qemu-aarch64 || die "cannot register qemu-aarch64 with binfmt_misc"
    fi
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt qemu-aarch64 is disabled"
}

mounted=()
cleanup() {
    # Unmount in reverse order. Never delete the rootfs here: with /dev bound into it a
    # careless rm would reach the host's /dev.
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT

bind_mounts() {
    mkdir -p "$rootfs/proc" "$rootfs/dev" "$rootfs/sys"
    mount -t proc proc "$rootfs/proc"; mounted+=("$rootfs/proc")
    mount --bind /dev "$rootfs/dev"; mounted+=("$rootfs/dev")
    mount -t sysfs sysfs "$rootfs/sys"; mounted+=("$rootfs/sys")
    # pip inside the chroot needs name resolution.
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
}

# A clean environment inside, except the proxy settings pip may need to reach PyPI.
in_chroot() {
    local var pass=()
    for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [ -z "${!var:-}" ] || pass+=("$var=${!var}")
    done
    chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        "${pass[@]}" "$@"
}

# Networks that inspect TLS install their CA in /usr/local/share/ca-certificates (Debian's
# place for local CAs). Trust the same ones inside, or pip cannot reach PyPI from there.
trust_local_cas() {
    local crt found=0
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] || continue
        mkdir -p "$rootfs/usr/local/share/ca-certificates"
        cp "$crt" "$rootfs/usr/local/share/ca-certificates/"
        found=1
    done
    if [ "$found" -eq 1 ]; then
        in_chroot update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the chroot"
    fi
}

ensure_binfmt

wheel_dir=""
if [ "$rootfs_only" -eq 0 ]; then
    [ -f "$repo/config/cell.toml" ] || die "$repo/config/cell.toml missing; nothing to check"
    [ -f "$repo/config/scenarios/normal_shift.toml" ] || die "$repo/config/scenarios/normal_shift.toml missing"
    wheel_dir="$(mktemp -d)"
    log "building the wheel from $repo"
    python3 -m pip wheel --no-deps --quiet -w "$wheel_dir" "$repo"
    set -- "$wheel_dir"/crushcell-*.whl
    [ -f "$1" ] || die "no crushcell wheel was built in $wheel_dir"
    log "built $(basename "$1")"
fi

marker="$rootfs/.crushcell-rootfs-complete"
if [ -f "$marker" ]; then
    log "reusing $rootfs (delete it to start over)"
else
    [ ! -e "$rootfs" ] || [ -z "$(ls -A "$rootfs")" ] \
        || die "$rootfs exists but is incomplete; unmount anything in it and delete it, then rerun"
    log "debootstrap first stage ($suite arm64) into $rootfs"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,ca-certificates "$suite" "$rootfs" "$mirror"
    # Not needed with the F binfmt flag, but keeps the chroot usable where the flag is absent.
    cp /usr/bin/qemu-aarch64-static "$rootfs/usr/bin/"
    log "debootstrap second stage under emulation (several minutes)"
    chroot "$rootfs" /debootstrap/debootstrap --second-stage
    touch "$marker"
fi

bind_mounts
log "arm64 chroot: $(in_chroot uname -m), $(in_chroot python3 --version 2>&1)"
[ "$(in_chroot python3 -c 'import platform; print(platform.machine())')" = aarch64 ] \
    || die "python3 in the chroot does not report aarch64; emulation is not in use"

if [ "$rootfs_only" -eq 1 ]; then
    log "root file system ready: $rootfs"
    exit 0
fi

log "installing the wheel and its dependencies (pip from PyPI) under emulation"
trust_local_cas
rm -rf "$rootfs/opt/check"
mkdir -p "$rootfs/opt/check/dist"
cp "$wheel_dir"/crushcell-*.whl "$rootfs/opt/check/dist/"
cp -r "$repo/config" "$rootfs/opt/check/config"
wheel_name="$(basename "$(ls "$wheel_dir"/crushcell-*.whl)")"
spec="/opt/check/dist/$wheel_name"
if [ -n "$extras" ]; then
    # C extensions (e.g. for GPIO) have no arm64 wheels on PyPI; Raspberry Pi OS gets them
    # from piwheels. Here they are built from source, which needs a compiler.
    in_chroot apt-get update -q
    in_chroot apt-get install -y -q build-essential python3-dev
    spec="crushcell[$extras] @ file://$spec"
fi
in_chroot python3 -m venv /opt/check/venv
in_chroot /opt/check/venv/bin/pip install --quiet --disable-pip-version-check "$spec"

log "crushcell check-config config/cell.toml"
in_chroot /bin/sh -c 'cd /opt/check && venv/bin/crushcell check-config config/cell.toml'
log "crushcell simulate config/scenarios/normal_shift.toml (limit ${sim_timeout}s)"
in_chroot /bin/sh -c "cd /opt/check && timeout $sim_timeout venv/bin/crushcell simulate config/scenarios/normal_shift.toml"
log "OK: $wheel_name checks its config and simulates a normal shift on arm64"
rm -rf "$wheel_dir"
