#!/usr/bin/env bash
# Installs this source tree, non-editable, into a venv made from Debian's /usr/bin/python3 with
# --system-site-packages (that is how the venv sees Debian's BCC; PyPI's "bcc" is unrelated).
# The venv is (re)created when missing or not made that way. Dependencies are installed only when
# missing; the package itself is reinstalled every time, so the venv holds the tree's current code.
# Usage: install-into-venv.sh VENV [EXTRAS]   e.g. install-into-venv.sh .venv test
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 VENV [EXTRAS]" >&2; exit 2; }
venv="$1"
extras="${2:-}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
sys_python=/usr/bin/python3

say() { printf 'install-into-venv: %s\n' "$*"; }
die() { printf 'install-into-venv: %s\n' "$*" >&2; exit 1; }
pip() { "$venv/bin/python3" -m pip --disable-pip-version-check --no-cache-dir -q "$@"; }

umask 022
[ -x "$sys_python" ] || die "$sys_python is missing: apt-get install python3 python3-venv"

venv_is_usable() {
    grep -qx 'include-system-site-packages = true' "$venv/pyvenv.cfg" 2>/dev/null &&
        "$venv/bin/python3" -I -c 'import sys, pip; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null
}

if ! venv_is_usable; then
    if [ -e "$venv" ]; then
        [ -f "$venv/pyvenv.cfg" ] || die "$venv exists and is not a venv; remove it yourself"
        say "recreating $venv (not made from $sys_python --system-site-packages, or broken)"
        rm -rf "$venv"
    fi
    "$sys_python" -m venv --system-site-packages "$venv"
    say "created $venv"
fi

# `pip wheel` builds with the venv's setuptools (Debian's 66, from python3-venv) and needs the
# `wheel` package for bdist_wheel; with --system-site-packages the venv sees Debian's python3-wheel.
# There is deliberately no pyproject.toml [build-system]: pip would then fetch setuptools and wheel
# from PyPI into an isolated build environment at every install, even when all else is installed.
"$venv/bin/python3" -c 'import setuptools, wheel' 2>/dev/null ||
    die "cannot build a wheel: Debian's python3-wheel is missing (run make deps as root, or apt-get install python3-wheel)"

# Build from a copy: setuptools writes build/ and *.egg-info next to the sources, and a stale
# build/lib (or one owned by another user) would leak old files into the wheel.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree" "$work/wheel"
tar -C "$repo" -cf - \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache . |
    tar -C "$work/tree" -xf -
pip wheel --no-deps -w "$work/wheel" "$work/tree"
wheels=("$work"/wheel/*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    die "expected one wheel, got: ${wheels[*]}"
fi
wheel="${wheels[0]}"

pip install "$wheel${extras:+[$extras]}"
pip install --force-reinstall --no-deps "$wheel"
say "installed $(basename "$wheel")${extras:+ with [$extras]} into $venv"
