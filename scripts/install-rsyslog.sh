#!/usr/bin/env bash
# Ships the audit log off the host through rsyslog RELP, or receives a fleet's (docs/deployment.md,
# "A fleet"). Each side is a dedicated rsyslogd with its own config, work directory and pid file,
# beside any system syslog:
#   install-rsyslog.sh forwarder HOST:PORT      this host's day files -> the collector at HOST:PORT
#   install-rsyslog.sh collector PORT [ADDRESS] receive on PORT (all addresses unless ADDRESS)
#   install-rsyslog.sh uninstall forwarder|collector
#   install-rsyslog.sh render forwarder OUT COLLECTOR_HOST COLLECTOR_PORT LOG_DIR SERVER_ID WORK_DIR
#   install-rsyslog.sh render collector OUT PORT ADDRESS LOG_DIR OWN_SERVER_ID WORK_DIR
# TLS for RELP when TLS_CA, TLS_CERT and TLS_KEY are set (PEM files): the peer must present a
# certificate signed by TLS_CA whose name is TLS_PEER (the collector's for a forwarder, a host's
# name or a wildcard like *.example.com for a collector); TLS_LIB picks librelp's openssl
# (default) or gnutls.
# The config is rendered and checked with `rsyslogd -N1` before anything changes; a check that
# fails leaves everything as it was. Without systemd the daemon is (re)started here; with
# systemd through its unit. Root only; never prompts.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv_python="${ENHREC_VENV:-/opt/enhrec-wrap/venv}/bin/python3"
confdir=/etc/enhrec-wrap
spool=/var/spool/enhrec-wrap
rsyslogd=/usr/sbin/rsyslogd
uuid_re='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'

say() { printf 'install-rsyslog: %s\n' "$*"; }
die() { printf 'install-rsyslog: %s\n' "$*" >&2; exit 1; }

# Every value ends up inside a quoted rsyslog string (and a sed replacement): only plain characters.
check_value() {
    local what="$1" value="$2" pattern="$3" shown
    printf -v shown '%q' "$value"   # a newline or a quote in it stays on this one line
    [[ "$value" =~ $pattern ]] || die "$what $shown is not valid (allowed: $pattern)"
}
check_port() {
    check_value "port" "$1" '^[0-9]{1,5}$'
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ] || die "port $1 is not from 1 to 65535"
}
check_path() { check_value "$1" "$2" '^/[A-Za-z0-9._/-]*$'; }

tls_settings() {
    # Sets tls_module, tls_action and tls_input from TLS_*; all empty without TLS.
    tls_module="" tls_action="" tls_input=""
    if [ -z "${TLS_CA:-}${TLS_CERT:-}${TLS_KEY:-}" ]; then
        return
    fi
    local f
    for f in TLS_CA TLS_CERT TLS_KEY; do
        [ -n "${!f:-}" ] || die "$f is not set: TLS needs TLS_CA, TLS_CERT and TLS_KEY"
        check_path "$f" "${!f}"
        [ -r "${!f}" ] || die "$f ${!f} is not a readable file"
    done
    local lib="${TLS_LIB:-openssl}" peer="${TLS_PEER:-}"
    check_value TLS_LIB "$lib" '^(openssl|gnutls)$'
    [ -n "$peer" ] || die "TLS_PEER is not set: the certificate name the other side must present"
    check_value TLS_PEER "$peer" '^[A-Za-z0-9*._-]+$'
    local common=" tls=\"on\" tls.cacert=\"$TLS_CA\" tls.mycert=\"$TLS_CERT\" tls.myprivkey=\"$TLS_KEY\" tls.authmode=\"name\" tls.permittedpeer=[\"$peer\"]"
    tls_module=" tls.tlslib=\"$lib\""
    tls_action="$common"
    tls_input="$common"
}

render_forwarder() {
    local out="$1" host="$2" port="$3" log_dir="$4" server_id="$5" work="$6"
    check_value "collector host" "$host" '^[A-Za-z0-9.:-]+$'
    check_port "$port"
    check_path "log directory" "$log_dir"
    check_value "server id" "$server_id" "$uuid_re"
    check_path "work directory" "$work"
    tls_settings
    sed -e "s|@WORK_DIR@|$work|g" -e "s|@LOG_DIR@|$log_dir|g" -e "s|@SERVER_ID@|$server_id|g" \
        -e "s|@COLLECTOR_HOST@|$host|g" -e "s|@COLLECTOR_PORT@|$port|g" \
        -e "s|@TLS_MODULE@|$tls_module|g" -e "s|@TLS_ACTION@|$tls_action|g" \
        "$repo/conf/rsyslog/enhrec-forwarder.conf.in" > "$out"
}

render_collector() {
    local out="$1" port="$2" address="$3" log_dir="$4" own_id="$5" work="$6"
    check_port "$port"
    [ -z "$address" ] || check_value "address" "$address" '^[A-Za-z0-9.:-]+$'
    check_path "log directory" "$log_dir"
    check_value "own server id" "$own_id" "$uuid_re"
    check_path "work directory" "$work"
    tls_settings
    local address_param=""
    [ -z "$address" ] || address_param=" address=\"$address\""
    sed -e "s|@WORK_DIR@|$work|g" -e "s|@LOG_DIR@|$log_dir|g" -e "s|@OWN_SERVER_ID@|$own_id|g" \
        -e "s|@PORT@|$port|g" -e "s|@ADDRESS@|$address_param|g" \
        -e "s|@TLS_MODULE@|$tls_module|g" -e "s|@TLS_INPUT@|$tls_input|g" \
        "$repo/conf/rsyslog/enhrec-collector.conf.in" > "$out"
}

# Prints data_dir and server id (made now if there is none yet) of the installed config.
host_identity() {
    [ -x "$venv_python" ] || die "$venv_python is missing: run make install first"
    "$venv_python" -I -c '
import sys
from enhrec_wrap.config import load_config
from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log.server_id import load_or_create_server_id
try:
    config = load_config(None)
    print(config.data_dir)
    print(load_or_create_server_id(config.data_dir))
except EnhrecError as e:
    sys.exit(f"install-rsyslog: {e}")
'
}

need_rsyslog() {
    [ -x "$rsyslogd" ] || die "$rsyslogd is missing: apt-get install rsyslog rsyslog-relp (make deps)"
    local module="$1" dir
    dir="$(dirname "$(find /usr/lib -name "$module" -path '*rsyslog*' 2>/dev/null | head -n 1)")"
    [ -e "$dir/$module" ] || die "rsyslog's $module is missing: apt-get install rsyslog-relp (make deps)"
}

check_config() {
    local conf="$1" output
    if ! output="$("$rsyslogd" -N1 -f "$conf" 2>&1)"; then
        printf '%s\n' "$output" >&2
        die "rsyslogd -N1 rejects the rendered config; nothing was changed"
    fi
}

running_pid() {
    local pid
    pid="$(cat "$1" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$rsyslogd" ]; then
        echo "$pid"
    fi
}

# Stops the side's rsyslogd (SIGTERM: its queue is saved), waiting as long as its unit would.
stop_daemon() {
    local pidfile="$1" pid i
    pid="$(running_pid "$pidfile")"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid"
    for i in $(seq 1 600); do
        [ -d "/proc/$pid" ] || { say "stopped rsyslogd (pid $pid)"; return 0; }
        sleep 0.1
    done
    die "rsyslogd (pid $pid) did not stop within 60 s"
}

start() {
    local side="$1" conf="$2" pidfile="$3" unit="enhrec-$1"
    if [ -d /run/systemd/system ]; then
        install -m 0644 -o root -g root "$repo/conf/systemd/$unit.service" "/etc/systemd/system/$unit.service"
        systemctl daemon-reload
        systemctl enable --quiet "$unit"
        systemctl restart "$unit"
        say "started $unit.service (systemctl)"
        return
    fi
    stop_daemon "$pidfile"
    "$rsyslogd" -f "$conf" -i "$pidfile"
    local i
    for i in $(seq 1 50); do
        [ -z "$(running_pid "$pidfile")" ] || { say "started rsyslogd for the $side (pid $(running_pid "$pidfile"); no systemd here: start it again after a reboot)"; return; }
        sleep 0.1
    done
    die "rsyslogd for the $side did not start: see its messages above"
}

install_side() {
    local side="$1" rendered="$2" conf="$confdir/rsyslog-$1.conf" pidfile="/run/enhrec-$1.pid"
    install -d -m 0755 -o root -g root "$confdir"
    install -m 0644 -o root -g root "$rendered" "$conf.new.$$"
    mv -f "$conf.new.$$" "$conf"
    say "installed $conf"
    start "$side" "$conf" "$pidfile"
}

cmd="${1:-}"
case "$cmd" in
render)
    side="${2:-}"
    shift 2 || die "usage: install-rsyslog.sh render forwarder|collector OUT ..."
    case "$side" in
    forwarder) [ $# -eq 6 ] || die "usage: render forwarder OUT COLLECTOR_HOST COLLECTOR_PORT LOG_DIR SERVER_ID WORK_DIR"
               render_forwarder "$@" ;;
    collector) [ $# -eq 6 ] || die "usage: render collector OUT PORT ADDRESS LOG_DIR OWN_SERVER_ID WORK_DIR"
               render_collector "$@" ;;
    *) die "usage: install-rsyslog.sh render forwarder|collector OUT ..." ;;
    esac
    ;;
forwarder)
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    target="${2:-}"
    [[ "$target" =~ ^(.+):([0-9]+)$ ]] || die "give the collector as COLLECTOR=host:port (e.g. make install-forwarder COLLECTOR=logs.example.com:20514)"
    collector_host="${BASH_REMATCH[1]}" collector_port="${BASH_REMATCH[2]}"
    need_rsyslog omrelp.so
    need_rsyslog imfile.so
    { read -r data_dir; read -r server_id; } < <(host_identity)
    [ -n "${server_id:-}" ] || die "could not read the server id"
    log_dir="$data_dir/log"
    work="$spool/forwarder"
    staged="$(mktemp)"
    trap 'rm -f "$staged"' EXIT
    render_forwarder "$staged" "$collector_host" "$collector_port" "$log_dir" "$server_id" "$work"
    install -d -m 0700 -o root -g root "$spool" "$work"
    check_config "$staged"
    # imfile watches this directory from its start: it must be there before the first session.
    install -d -m 0700 -o root -g root "$log_dir" "$log_dir/$server_id"
    install_side forwarder "$staged"
    say "shipping $log_dir/$server_id/*.log to $collector_host:$collector_port (server id $server_id)"
    ;;
collector)
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    port="${2:-}"
    [ -n "$port" ] || die "give the port as PORT=... (e.g. make install-collector PORT=20514)"
    need_rsyslog imrelp.so
    { read -r data_dir; read -r own_id; } < <(host_identity)
    [ -n "${own_id:-}" ] || die "could not read the server id"
    work="$spool/collector"
    staged="$(mktemp)"
    trap 'rm -f "$staged"' EXIT
    render_collector "$staged" "$port" "${3:-}" "$data_dir/log" "$own_id" "$work"
    install -d -m 0700 -o root -g root "$spool" "$work"
    check_config "$staged"
    install -d -m 0700 -o root -g root "$data_dir/log"
    install_side collector "$staged"
    say "receiving on port $port${3:+ of $3}; each host's lines go to $data_dir/log/<server id>/"
    ;;
uninstall)
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    side="${2:-}"
    [[ "$side" =~ ^(forwarder|collector)$ ]] || die "usage: install-rsyslog.sh uninstall forwarder|collector"
    if [ -d /run/systemd/system ] && [ -e "/etc/systemd/system/enhrec-$side.service" ]; then
        systemctl disable --now --quiet "enhrec-$side" || true
        rm -f "/etc/systemd/system/enhrec-$side.service"
        systemctl daemon-reload
    else
        stop_daemon "/run/enhrec-$side.pid"
    fi
    rm -f "$confdir/rsyslog-$side.conf"
    if [ "$side" = forwarder ]; then
        say "removed the forwarder; kept $spool/forwarder (its unsent queue and read offsets)"
    else
        say "removed the collector; kept $spool/collector and the hosts' logs"
    fi
    ;;
*)
    die "usage: install-rsyslog.sh forwarder HOST:PORT | collector PORT [ADDRESS] | uninstall forwarder|collector | render ..."
    ;;
esac
