#!/usr/bin/env bash
# Installs what enhrec-wrap needs from Debian 12 and prepares the kernel side for BCC:
#   - Debian packages (apt-get runs only when one is missing, so a re-run is fast),
#   - merged kernel headers under PREFIX when /lib/modules/$(uname -r)/build is missing,
#   - tracefs at /sys/kernel/tracing (BCC attaches tracepoints through it).
# Usage: install-deps.sh [--tests] [PREFIX]   (default /opt/enhrec-wrap). With --tests, also the
# packages that only the tests and the demo need. Root only; never prompts. When a package cannot
# be had, it stops with one line naming it (apt-get's output is kept in a log file).
set -euo pipefail

with_tests=0
if [ "${1:-}" = "--tests" ]; then
    with_tests=1
    shift
fi
prefix="${1:-/opt/enhrec-wrap}"
headers_dest="$prefix/kernel-headers"
kernel_build="/lib/modules/$(uname -r)/build"
arch="$(dpkg --print-architecture)"

# The Debian packages, one a line with what needs it. To add one, add a line to the right list.
# Packages the program needs, to install itself and to run:
program_packages=(
    python3-bpfcc    # BCC itself (never PyPI's unrelated "bcc")
    python3-seccomp  # the session's seccomp filter: io_uring and 32-bit syscalls refused
    python3-venv     # /usr/bin/python3 -m venv, with pip and setuptools
    python3-wheel    # setuptools' bdist_wheel, for `pip wheel` in install-into-venv.sh
    openssh-server   # sshd, behind which make install-sshd puts the wrapper
    sudo             # the one-command sudo rule of the ForceCommand
    libpam0g         # libpam.so.0, loaded by python-pam for --user
    rsyslog          # make install-forwarder / install-collector: ships the log off the host
    rsyslog-relp     # their RELP (imrelp, omrelp; librelp's TLS with openssl or gnutls)
)
# Packages only `make test` and `make demo` need (install-deps.sh --tests):
test_packages=(
    curl             # make demo: the obfuscated command it records
    rsync            # tests/e2e: rsync over ssh
    openssh-client   # tests/e2e: ssh, scp, sftp, ssh-keygen (openssh-server depends on it too)
    procps           # tests: ps, pgrep (openssh-server depends on it too)
    bpftool          # tests/integration: counts the programs the host's sessions share
    gcc              # tests/adversarial: builds the technique programs
    gcc-multilib     # tests/adversarial: the -m32 -static ones
    asciinema        # tests: reads `enhrec export`'s asciicast
    vim              # tests: a full-screen program through the session's terminal
    openssl          # tests/e2e: the self-signed certificates of the RELP TLS test
)

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mount and $prefix need it)"
umask 022

is_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

# apt-get's own output goes to a log file; on failure one line says which package and how to
# fix it, with the log kept for the details.
apt_log=""
apt_quiet() {
    apt_log="${apt_log:-$(mktemp /tmp/enhrec-install-deps.XXXXXX.log)}"
    printf '$ apt-get %s\n' "$*" >>"$apt_log"
    DEBIAN_FRONTEND=noninteractive apt-get "$@" </dev/null >>"$apt_log" 2>&1
}

# The first error apt-get reported, else the first failed fetch, else the first warning.
first_problem() {
    grep -m 1 '^E:' "$apt_log" || grep -m 1 '^Err:' "$apt_log" || grep -m 1 '^W:' "$apt_log" ||
        echo "no error line, see the log"
}

has_candidate() {
    local candidate
    candidate="$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

explain_install_failure() {
    local pkg
    for pkg in "$@"; do
        if ! has_candidate "$pkg"; then
            die "Debian package $pkg cannot be had: no apt source offers it ($(first_problem)); add Debian 12 (bookworm) main to /etc/apt/sources.list.d/debian.sources, check the network, and run make install again (apt output: $apt_log)"
        fi
    done
    die "apt-get install ${*} failed: $(first_problem) (apt output: $apt_log)"
}

install_packages() {
    local wanted=("${program_packages[@]}")
    if [ "$with_tests" -eq 1 ]; then
        wanted+=("${test_packages[@]}")
    fi
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
    # A failed update (network, a broken source) shows as a package without candidate below.
    apt_quiet update || true
    # No recommends: openssh-server would pull libpam-systemd, and this host runs without systemd.
    apt_quiet install -y --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" || explain_install_failure "${missing[@]}"
    rm -f "$apt_log"
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
