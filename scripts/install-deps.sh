#!/usr/bin/env bash
# Installs what enhrec-wrap needs from Debian 12 and prepares the kernel side for BCC:
#   - Debian packages (apt-get runs only when one is missing, so a re-run is fast),
#   - merged kernel headers under PREFIX when /lib/modules/$(uname -r)/build is missing,
#   - tracefs at /sys/kernel/tracing (BCC attaches tracepoints through it).
# Usage: install-deps.sh [PREFIX]   (default /opt/enhrec-wrap). Root only; never prompts.
set -euo pipefail

prefix="${1:-/opt/enhrec-wrap}"
headers_dest="$prefix/kernel-headers"
kernel_build="/lib/modules/$(uname -r)/build"
arch="$(dpkg --print-architecture)"

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mount and $prefix need it)"
umask 022

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

install_packages() {
    # curl is only for `make demo`, rsync only for the sshd tests; python3-bpfcc is BCC itself
    # (never the PyPI package "bcc").
    local wanted=(python3-bpfcc python3-venv openssh-server sudo libpam0g curl rsync)
    if [ ! -e "$kernel_build" ]; then
        wanted+=("linux-headers-$arch")
    fi
    local missing=() pkg
    for pkg in "${wanted[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "Debian packages already installed"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No recommends: openssh-server would pull libpam-systemd, and this host runs without systemd.
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null >/dev/null
}

# Debian ships headers as two trees: -common (arch-independent) and -<arch> (config, generated files).
# BCC wants one tree, so merge them: copy common, then the arch tree over it. Built in a temporary
# directory and renamed into place, so a half-copied tree is never used.
merge_kernel_headers() {
    if [ -e "$kernel_build" ]; then
        say "kernel headers: using $kernel_build"
        return
    fi
    if [ -d "$headers_dest" ]; then
        say "kernel headers: $headers_dest already present"
        return
    fi
    local common arch_tree version name target
    common="$(find /usr/src -maxdepth 1 -type d -name 'linux-headers-*-common' | sort -V | tail -n 1)"
    [ -n "$common" ] || die "no /usr/src/linux-headers-*-common: apt-get install linux-headers-$arch"
    version="${common#/usr/src/linux-headers-}"
    version="${version%-common}"
    arch_tree="/usr/src/linux-headers-$version-$arch"
    [ -d "$arch_tree" ] || die "$arch_tree is missing: apt-get install linux-headers-$version-$arch"

    mkdir -p "$prefix"
    rm -rf "$prefix"/.kernel-headers.*   # left by an interrupted run
    headers_tmp="$(mktemp -d "$prefix/.kernel-headers.XXXXXX")"
    trap 'rm -rf "$headers_tmp"' EXIT
    local tmp="$headers_tmp"
    cp -a "$common/." "$tmp/"
    cp -a "$arch_tree/." "$tmp/"
    # The top-level scripts/ and tools/ links are relative to /usr/src; make them absolute.
    for name in scripts tools; do
        if [ -L "$arch_tree/$name" ]; then
            target="$(readlink -m "$arch_tree/$name")"
            rm -f "$tmp/$name"
            ln -s "$target" "$tmp/$name"
        fi
    done
    chmod 0755 "$tmp"
    mv -T "$tmp" "$headers_dest"
    trap - EXIT
    say "kernel headers: merged $common and $arch_tree into $headers_dest"
    say "kernel headers: they describe kernel $version, not $(uname -r): only for BPF code that reads no kernel structs"
}

mount_tracefs() {
    local dir=/sys/kernel/tracing
    if mountpoint -q "$dir"; then
        return
    fi
    # Not persistent across reboots; the wrapper mounts it too when it starts.
    if mount -t tracefs tracefs "$dir"; then
        say "mounted tracefs at $dir"
    else
        say "WARNING: could not mount tracefs at $dir; BCC cannot attach tracepoints until it is mounted"
    fi
}

install_packages
merge_kernel_headers
mount_tracefs
