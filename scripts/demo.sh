#!/usr/bin/env bash
# Records one real interactive session through enhrec-wrap in which the user tries three classic ways
# around command auditing, then prints what the kernel-level recording saw:
#   (a) an obfuscated command:  echo <base64> | base64 --decode | sh   (it runs curl http://www.example.com)
#   (b) a script file, so the commands never appear on a command line:  bash <tmp>/script.sh  (id, cat)
#   (c) a command typed after `stty -echo`, so it never appears on the screen:  uname -a
# Fails unless session.command events for curl, id and uname were recorded.
# Environment: ENHREC_WRAP (default /usr/local/bin/enhrec-wrap), ENHREC_EVENTS_LOG
# (default /var/lib/teleport/log/events.log), ENHREC_CONFIG (optional, passed as --config).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wrapper="${ENHREC_WRAP:-/usr/local/bin/enhrec-wrap}"
events_log="${ENHREC_EVENTS_LOG:-/var/lib/teleport/log/events.log}"
inspector=/usr/local/bin/enhrec
python=/usr/bin/python3

die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the wrapper loads BPF programs): sudo make demo"
[ -x "$wrapper" ] || die "$wrapper is missing: run make install"
command -v curl >/dev/null || die "curl is missing: run make install"

work="$(mktemp -d /tmp/enhrec-demo.XXXXXX)"
trap 'rm -rf "$work"' EXIT

cat >"$work/script.sh" <<'EOF'
#!/bin/sh
id
cat /etc/hostname
EOF

# The lines typed into the session, in order. The proxy keeps curl's traffic on this machine: it
# connects to a closed local port (a failed connect, which must be recorded too) instead of
# resolving www.example.com and going out.
cat >"$work/steps" <<EOF
echo "\$ENHREC_SESSION_ID" > $work/sid
export http_proxy=http://127.0.0.1:9
echo Y3VybCBodHRwOi8vd3d3LmV4YW1wbGUuY29tCg== | base64 --decode | sh
bash $work/script.sh
stty -echo
uname -a
stty echo
exit
EOF

session=("$wrapper")
if [ -n "${ENHREC_CONFIG:-}" ]; then
    session+=(--config "$ENHREC_CONFIG")
fi
session+=(-- bash -i)

echo "demo: recording: ${session[*]}"
echo "----------------------------------------------------------------------"
status=0
"$python" "$repo/scripts/pty_session.py" --steps "$work/steps" -- "${session[@]}" </dev/null || status=$?
echo "----------------------------------------------------------------------"
[ "$status" -eq 0 ] || die "the recorded session failed (exit status $status)"

sid="$(cat "$work/sid" 2>/dev/null || true)"
[ -n "$sid" ] || die "the session had no ENHREC_SESSION_ID: the wrapper must export it into the session"
echo "demo: session $sid, events from $events_log:"
echo

check=("$python" "$repo/scripts/demo_events.py" --expect curl --expect id --expect uname "$events_log" "$sid")
if [ -x "$inspector" ] && "$inspector" show --help >/dev/null 2>&1; then
    "$inspector" show "$sid"
    "${check[@]}" --no-print
else
    "${check[@]}"
fi
