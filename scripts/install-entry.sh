#!/usr/bin/env bash
# Writes one root-owned entry script from packaging/entry-script.in, replacing it atomically and
# only when its content, owner or mode differ (so a re-run changes nothing).
# Usage: install-entry.sh NAME MODULE VENV [BINDIR]   e.g. install-entry.sh enhrec-wrap enhrec_wrap.cli.wrap /opt/enhrec-wrap/venv
set -euo pipefail

[ "$#" -ge 3 ] || { echo "usage: $0 NAME MODULE VENV [BINDIR]" >&2; exit 2; }
name="$1"
module="$2"
venv="$3"
bindir="${4:-/usr/local/bin}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
template="$repo/packaging/entry-script.in"
dest="$bindir/$name"

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
sed -e "s|@PYTHON@|$venv/bin/python3|g" -e "s|@MODULE@|$module|g" -e "s|@NAME@|$name|g" \
    "$template" >"$rendered"

if cmp -s "$rendered" "$dest" && [ "$(stat -c '%u:%g %a' "$dest")" = "0:0 755" ]; then
    echo "install-entry: $dest unchanged"
    exit 0
fi
install -d -m 0755 -o root -g root "$bindir"
install -m 0755 -o root -g root "$rendered" "$dest.new.$$"
mv -f "$dest.new.$$" "$dest"
echo "install-entry: wrote $dest (runs $module:main)"
