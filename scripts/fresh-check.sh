#!/usr/bin/env bash
# Proves that a new user's minimal Debian 12 can install and test enhrec-wrap: builds a bookworm root
# with debootstrap (variant minbase, plus python3, make and git only), clones the committed tree
# into it (uncommitted changes do not count) and runs `make demo`, then `make test`, inside it as
# root, with no stdin. Prints each step as it runs, then which step failed, if one did.
#
# The debootstrap'd base is kept as a tarball in FRESH_CACHE, so only the first run downloads it;
# every run unpacks a pristine copy. Debian packages that `make install` downloads are kept in
# FRESH_CACHE/apt-archives (apt still resolves and installs them in each run); PyPI packages are
# downloaded each time.
#
# The root runs in a mount namespace of its own, as that namespace's root (pivot_root, not a
# chroot, see enter()): /proc, /sys, a private /dev with its own devpts, /run, and whatever the
# tests mount are visible only there, and the kernel unmounts all of them when the last process in
# it exits, on every exit path. It still shares this machine's kernel: BPF programs, cgroups,
# processes and the network are the host's.
#
# Environment: FRESH_CACHE (default /var/cache/enhrec-wrap-fresh), FRESH_WORK (where the run's root
# is unpacked, default /var/tmp), FRESH_MIRROR (default: the bookworm URI of
# /etc/apt/sources.list.d/debian.sources), FRESH_REV (the commit to check, default HEAD),
# FRESH_TIMEOUT (seconds each make step may take, default 3600). Root only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FRESH_CACHE:-/var/cache/enhrec-wrap-fresh}"
work_parent="${FRESH_WORK:-/var/tmp}"
rev="${FRESH_REV:-HEAD}"
step_timeout="${FRESH_TIMEOUT:-3600}"
suite=bookworm
includes=python3,make,git
arch="$(dpkg --print-architecture)"
base="$cache/debian12-$suite-$arch-minbase+${includes//,/+}.tar"
sources=/etc/apt/sources.list.d/debian.sources
clone_dir=/root/enhrec-wrap   # where a new user, root, would clone it
# Users made inside the chroot (the tests make some) get ids far from the host's: both see all
# processes, and the tests kill the processes of their users by uid.
chroot_uid_min=70000
chroot_uid_max=70999

say() { printf 'fresh-check: %s\n' "$*"; }
die() { printf 'fresh-check: FAILED: %s\n' "$*" >&2; exit 1; }

# --- inside the mount namespace ------------------------------------------------------------------

# Mounts what sshd, sudo, PAM, BCC and the tests need, then runs make demo and make test in the
# root (enter).
# Runs in a private mount namespace: nothing mounted here is seen outside it.
inside() {
    local target
    readlink /proc/self/ns/mnt >"$root.mntns"
    run_step "mount /proc /sys /dev /run" mount_all
    [ "$step_status" -eq 0 ] || exit "$step_status"
    run_step "make demo, then make test" timeout --kill-after=30 "$((2 * step_timeout))" \
        unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" --enter "$root"
    [ "$step_status" -eq 0 ] || exit "$step_status"
}

# Runs `make demo`, then `make test`, with the root as the root of a mount namespace of its own
# (pivot_root), not as a chroot: as on a booted machine. In a chroot the kernel refuses user
# namespaces (unshare -U: EPERM), which the adversarial tests make, and the recorder rightly marks
# every file a chrooted process opens with the path from its filesystem's root (fs_path). Both in
# one namespace, so that the test step finds what the demo mounted and left loaded, as a user would.
enter() {
    readlink /proc/self/ns/mnt >>"$root.mntns"   # its processes are the check's too
    mount --rbind "$root" "$root"                # pivot_root needs a mount point, with the mounts
    mkdir -p "$root/.fresh-host"
    cd "$root"
    pivot_root . .fresh-host
    exec chroot . /usr/bin/env -i HOME=/root TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        bash -c "umount -l /.fresh-host && rmdir /.fresh-host && cd $clone_dir &&
                 echo 'fresh-check: == make demo' && make demo &&
                 echo 'fresh-check: == make test' && make test"
}

mount_all() {
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount_dev "$root/dev"
    mount -t tmpfs -o mode=0755,nosuid,nodev run "$root/run"
    mkdir -p "$cache/apt-archives/partial"
    mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
}

# A /dev of the chroot's own, as on a booted system: device nodes, a new devpts instance (ptys for
# sshd and the demo), /dev/shm. The host's /dev is never mounted into the chroot.
mount_dev() {
    local dev="$1"
    mount -t tmpfs -o mode=0755,nosuid dev "$dev"
    mknod -m 0666 "$dev/null" c 1 3
    mknod -m 0666 "$dev/zero" c 1 5
    mknod -m 0666 "$dev/full" c 1 7
    mknod -m 0666 "$dev/random" c 1 8
    mknod -m 0666 "$dev/urandom" c 1 9
    mknod -m 0666 "$dev/tty" c 5 0
    ln -s /proc/self/fd "$dev/fd"
    ln -s /proc/self/fd/0 "$dev/stdin"
    ln -s /proc/self/fd/1 "$dev/stdout"
    ln -s /proc/self/fd/2 "$dev/stderr"
    mkdir "$dev/pts" "$dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$dev/pts"
    ln -s pts/ptmx "$dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$dev/shm"
}

# --- steps ---------------------------------------------------------------------------------------

# run_step NAME COMMAND...: runs COMMAND (no stdin) in a subshell with errexit, sets step_status
# and appends "NAME: ok|FAILED (exit N), SECONDS s" to $results. Never called in an `if` or `||`:
# there bash would ignore errexit inside the step.
run_step() {
    local name="$1" start
    shift
    say "== $name"
    start=$SECONDS
    set +e
    ( set -e; "$@" ) </dev/null
    step_status=$?
    set -e
    if [ "$step_status" -eq 0 ]; then
        printf '%s: ok, %d s\n' "$name" "$((SECONDS - start))" >>"$results"
    else
        printf '%s: FAILED (exit %d), %d s\n' "$name" "$step_status" "$((SECONDS - start))" >>"$results"
    fi
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return
    say "installing debootstrap on this host"
    local log
    log="$(mktemp /tmp/enhrec-fresh-apt.XXXXXX.log)"
    { DEBIAN_FRONTEND=noninteractive apt-get update &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap; } \
        </dev/null >"$log" 2>&1 ||
        die "cannot install debootstrap: $(grep -m 1 -E '^(E|W|Err):' "$log" || echo "see the log") (apt output: $log)"
    rm -f "$log"
}

# The first bookworm URI of the host's deb822 sources.
host_mirror() {
    [ -r "$sources" ] || return 1
    awk -v suite="$suite" '
        /^[[:space:]]*$/ { if (uri != "" && found) { print uri; exit } uri = ""; found = 0; next }
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) found = 1 }
        END { if (uri != "" && found) print uri }' "$sources" | head -n 1
}

# The cached base, built once: debootstrap into a temporary directory, packed, renamed into place.
build_base() {
    if [ -f "$base" ]; then
        say "base: cached $base"
        return
    fi
    local mirror="${FRESH_MIRROR:-$(host_mirror || true)}"
    [ -n "$mirror" ] || die "no $suite URI in $sources: set FRESH_MIRROR=http://deb.debian.org/debian"
    mkdir -p "$cache"
    chmod 0700 "$cache"
    local build log
    build="$(mktemp -d "$cache/.build.XXXXXX")"
    log="$cache/debootstrap.log"
    say "base: debootstrap --variant=minbase --include=$includes $suite from $mirror (log: $log)"
    # In a mount namespace of its own, so that the /proc and /sys debootstrap mounts in the target
    # never outlive it, even when it fails.
    if ! unshare --mount --propagation private \
            debootstrap --variant=minbase --include="$includes" "$suite" "$build" "$mirror" \
            </dev/null >"$log" 2>&1; then
        rm -rf --one-file-system "$build"
        die "debootstrap failed: $(grep -m 1 -E '^E:' "$log" || tail -n 1 "$log") (log: $log)"
    fi
    rm -f "$build"/var/cache/apt/archives/*.deb   # debootstrap's downloads, not part of the system
    tar --numeric-owner -C "$build" -cf "$base.tmp" .
    mv -f "$base.tmp" "$base"
    rm -rf --one-file-system "$build"
    say "base: cached as $base ($(du -h "$base" | cut -f1))"
}

# A pristine copy of the base, set up as a freshly installed machine would be.
unpack_root() {
    tar --numeric-owner -C "$root" -xpf "$base"
    chmod 0755 "$root"   # the chroot's /: tar gave it the 0700 of debootstrap's mktemp directory
    # apt sources and name resolution as on this host (a Debian 12 install has bookworm-updates and
    # bookworm-security too, not only debootstrap's one line).
    rm -f "$root/etc/apt/sources.list"
    cp "$sources" "$root/etc/apt/sources.list.d/debian.sources"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    # The installer writes /etc/hosts with the machine's name, debootstrap does not; without it,
    # sudo warns "unable to resolve host" on every call. The name is the kernel's, shared with us.
    hostname >"$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
        "$(hostname)" >"$root/etc/hosts"
    # This host's own CA certificates (an HTTPS proxy's, say): ca-certificates, which make install
    # brings, adds them to the trust store pip uses for PyPI.
    mkdir -p "$root/usr/local/share/ca-certificates"
    find /usr/local/share/ca-certificates -maxdepth 1 -type f -name '*.crt' \
        -exec cp -t "$root/usr/local/share/ca-certificates" {} +
    # A chroot is not a booted system: no package may start a daemon in it (openssh-server would
    # start sshd on port 22), which would also outlive the check.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    sed -i -e "s/^UID_MIN.*/UID_MIN $chroot_uid_min/" -e "s/^UID_MAX.*/UID_MAX $chroot_uid_max/" \
        -e "s/^GID_MIN.*/GID_MIN $chroot_uid_min/" -e "s/^GID_MAX.*/GID_MAX $chroot_uid_max/" \
        "$root/etc/login.defs"
}

clone_tree() {
    git clone -q --no-checkout "$repo" "$root$clone_dir"
    git -C "$root$clone_dir" checkout -q --detach "$commit"
}

# The namespace's first process, before it may have written $root.mntns.
stop_inner() {
    [ -z "$inner" ] || kill -KILL "$inner" 2>/dev/null || true
}

# Kills what is still running in the check's mount namespace (all of it started by this check), so
# that the namespace, and with it every mount, ends.
kill_leftovers() {
    local mntns pid round found
    # The check's namespace, and the one of each make step inside it (enter).
    mntns="$(cat "$root.mntns" 2>/dev/null)" || return 0
    for round in 1 2 3 4 5 6 7 8 9 10; do
        found=0
        for pid in /proc/[0-9]*; do
            if grep -qxF -- "$(readlink "$pid/ns/mnt" 2>/dev/null)" <<<"$mntns"; then
                found=1
                kill -KILL "${pid#/proc/}" 2>/dev/null || true
            fi
        done
        [ "$found" -eq 1 ] || return 0
        sleep 0.5
    done
    say "WARNING: processes in the check's mount namespaces ($(echo $mntns)) survived SIGKILL"
    return 1
}

# Removes the run's root. In this (the host's) mount namespace nothing is mounted below it, so
# rm --one-file-system cannot reach anything else; checked first all the same.
remove_root() {
    if awk -v r="$root" '$5 == r || index($5, r "/") == 1 { found = 1 } END { exit !found }' \
            /proc/self/mountinfo; then
        say "WARNING: something is mounted below $root in the host's namespace; left it in place"
        return 1
    fi
    rm -rf --one-file-system "$root"
}

main() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot and make test need it): sudo make fresh-check"
    commit="$(git -C "$repo" rev-parse --verify "$rev^{commit}")" || die "$rev is not a commit in $repo"
    if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
        say "note: $repo has uncommitted changes; they are not checked"
    fi
    say "checking $(git -C "$repo" log -1 --format='%h %s' "$commit")"

    local status=0 started=$SECONDS
    mkdir -p "$work_parent"
    root="$(mktemp -d "$work_parent/enhrec-wrap-fresh.XXXXXX")"
    results="$root.steps"
    : >"$results"
    inner=""
    trap 'stop_inner; kill_leftovers || true; remove_root || true; rm -f "$results" "$root.mntns"' EXIT
    trap 'say "stopped by SIGINT"; exit 130' INT
    trap 'say "stopped by SIGTERM or SIGHUP"; exit 143' TERM HUP

    step_status=0
    local step
    for step in "debootstrap on the host:ensure_debootstrap" "base:build_base" \
            "unpack the base:unpack_root" "git clone:clone_tree"; do
        run_step "${step%%:*}" "${step#*:}"
        [ "$step_status" -eq 0 ] || break
    done
    status="$step_status"
    if [ "$status" -eq 0 ]; then
        # In the background, so that a signal to this script is handled at once (bash runs a trap
        # only after a foreground command ends) and the EXIT trap kills the chroot's processes.
        unshare --mount --propagation private -- \
            env FRESH_CACHE="$cache" FRESH_TIMEOUT="$step_timeout" \
            bash "${BASH_SOURCE[0]}" --inside "$root" "$results" &
        inner=$!
        wait "$inner" || status=$?
    fi

    echo
    say "summary (root $root, $((SECONDS - started)) s in all):"
    sed 's/^/  /' "$results"
    if [ "$status" -ne 0 ]; then
        local failed
        failed="$(grep -m 1 ': FAILED' "$results" | cut -d: -f1)"
        die "step '${failed:-in the chroot}' failed (exit $status), see its output above"
    fi
    say "ok: make demo && make test pass on a minimal Debian 12"
}

if [ "${1:-}" = "--inside" ]; then
    root="$2"
    results="$3"
    inside
elif [ "${1:-}" = "--enter" ]; then
    root="$2"
    enter
else
    main
fi
