#!/usr/bin/env bash
# Puts enhrec-wrap behind sshd (docs/deployment.md), or takes it away again:
#   install-sshd.sh install     the sudoers rule, then the sshd drop-in, each checked before it stays
#   install-sshd.sh uninstall   the drop-in, then the rule
# A check that fails leaves everything as it was and says why. A running sshd is reloaded so that
# the change applies to new logins (existing ones keep running); none is started.
# Usage: install-sshd.sh install|uninstall [REPO]. Root only; never prompts.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
wrapper=/usr/local/bin/enhrec-wrap
sudoers_src="$repo/conf/sudoers.d/enhrec-wrap"
sudoers_dest=/etc/sudoers.d/enhrec-wrap
dropin_src="$repo/conf/sshd_config.d/enhrec-wrap.conf"
dropin_dest=/etc/ssh/sshd_config.d/enhrec-wrap.conf
sshd=/usr/sbin/sshd
forced="/usr/bin/sudo -n $wrapper --ssh"

say() { printf 'install-sshd: %s\n' "$*"; }
die() { printf 'install-sshd: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
umask 022

# The file at $2 is put back as it was before (or removed when there was none), from backup $1.
restore() {
    local backup="$1" dest="$2"
    if [ -e "$backup" ]; then
        mv -f "$backup" "$dest"
    else
        rm -f "$dest"
    fi
}

# Copies $1 to $2 with mode $3, keeping the previous file in $4 (when there was one).
stage() {
    local src="$1" dest="$2" mode="$3" backup="$4"
    rm -f "$backup"
    [ ! -e "$dest" ] || cp -a "$dest" "$backup"
    install -m "$mode" -o root -g root "$src" "$dest.new.$$"
    mv -f "$dest.new.$$" "$dest"
}

running_sshd() {
    local pid
    pid="$(cat /run/sshd.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$sshd" ]; then
        echo "$pid"
    fi
}

reload_sshd() {
    local pid
    pid="$(running_sshd)"
    if [ -d /run/systemd/system ] && systemctl is-active --quiet ssh 2>/dev/null; then
        systemctl reload ssh
        say "reloaded sshd (systemctl reload ssh): new logins get the change"
    elif [ -n "$pid" ]; then
        kill -HUP "$pid"
        say "reloaded sshd (SIGHUP to pid $pid): new logins get the change"
    else
        say "no running sshd found (/run/sshd.pid): the change applies when it starts" \
            "(systemctl start ssh, or: mkdir -p /run/sshd && $sshd)"
    fi
}

install_all() {
    [ -x "$wrapper" ] || die "$wrapper is missing: run make install first"
    [ -x "$sshd" ] || die "$sshd is missing: run make install first (it installs openssh-server)"
    command -v visudo >/dev/null || die "visudo is missing: run make install first (it installs sudo)"
    local out
    out="$(visudo -cf "$sudoers_src" 2>&1)" || die "nothing changed: visudo rejects $sudoers_src: $out"
    grep -Eq '^[@#]includedir[[:space:]]+/etc/sudoers.d[[:space:]]*$' /etc/sudoers ||
        die "nothing changed: /etc/sudoers does not read /etc/sudoers.d (add: @includedir /etc/sudoers.d)"

    backups="$(mktemp -d)"
    trap 'rm -rf "$backups"' EXIT
    local sudoers_backup="$backups/sudoers" dropin_backup="$backups/dropin"
    stage "$sudoers_src" "$sudoers_dest" 0440 "$sudoers_backup"
    if ! out="$(visudo -c 2>&1)"; then
        restore "$sudoers_backup" "$sudoers_dest"
        die "nothing changed: sudo's whole configuration fails with the rule: $out"
    fi
    if [ "$(sudo -n -l -U nobody "$wrapper" --ssh 2>/dev/null)" != "$wrapper --ssh" ] ||
        sudo -n -l -U nobody "$wrapper" --ssh --config /dev/null >/dev/null 2>&1; then
        restore "$sudoers_backup" "$sudoers_dest"
        die "nothing changed: with $sudoers_dest, sudo does not allow exactly \`$wrapper --ssh\` (check the other sudoers rules)"
    fi

    mkdir -p "$(dirname "$dropin_dest")"
    stage "$dropin_src" "$dropin_dest" 0644 "$dropin_backup"
    local reason=""
    if ! out="$("$sshd" -t 2>&1)"; then
        reason="sshd -t fails with the drop-in: $out"
    elif ! out="$("$sshd" -T 2>&1 | grep -i '^forcecommand ')" || [ "${out#* }" != "$forced" ]; then
        reason="the drop-in does not take effect (sshd -T says: ${out:-no forcecommand}): check that /etc/ssh/sshd_config has 'Include /etc/ssh/sshd_config.d/*.conf' near its top and that no earlier file sets ForceCommand"
    fi
    if [ -n "$reason" ]; then
        restore "$dropin_backup" "$dropin_dest"
        restore "$sudoers_backup" "$sudoers_dest"
        die "nothing changed: $reason"
    fi
    say "installed $sudoers_dest and $dropin_dest: every SSH login runs \`$forced\`"
    reload_sshd
}

uninstall_all() {
    # The drop-in first: without the rule, a login still forced through sudo would fail.
    rm -f "$dropin_dest"
    rm -f "$sudoers_dest"
    say "removed $dropin_dest and $sudoers_dest"
    reload_sshd
}

case "${1:-}" in
    install) install_all ;;
    uninstall) uninstall_all ;;
    *) die "usage: $0 install|uninstall" ;;
esac
