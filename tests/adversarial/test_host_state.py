"""What the host keeps for every session, out of a session user's reach: the caches root loads
programs and settings from (/var/cache/enhrec-wrap), the pinned set of programs (whose pin
directory's mtime is the idle timer's clock: a user who could set it would keep the programs
loaded, or have them unloaded under the next login), and the idle timer itself. Each attempt is
made from a recorded session as `nobody`, must be refused, and must be recorded."""

import os

from enhrec_wrap.kernel import host as kernel
from enhrec_wrap.kernel import idle

ATTEMPTS = r"""
try() { if "$@" 2>/dev/null; then echo "ALLOWED $*"; else echo "refused $*"; fi; }
try ls /var/cache/enhrec-wrap
try touch /var/cache/enhrec-wrap/config/planted.json
try touch /var/cache/enhrec-wrap/planted.json
try touch -d '+1 hour' "$1"
try ls "$1"
try kill -TERM "$2"
try kill -STOP "$2"
"""


def timer_of_our_set() -> int:
    groups = idle._timers_of(os.path.join(kernel.PIN_ROOT, kernel.program_version()))
    assert len(groups) == 1, f"expected the set's one idle timer, found {groups}"
    return next(iter(groups))   # its process group is its shell's pid (setsid)


def test_a_session_user_cannot_touch_the_caches_the_pins_or_the_idle_timer(recorder):
    recorder.configure("enhrec:\n  idle_unload_seconds: 600\n")
    assert recorder.run(["/bin/true"]).returncode == 0   # the set pinned, its timer started
    pin_dir = os.path.join(kernel.PIN_ROOT, kernel.program_version())
    mtime = os.stat(pin_dir).st_mtime_ns
    timer = timer_of_our_set()
    cache = sorted(os.listdir("/var/cache/enhrec-wrap"))
    result = recorder.run(["sh", "-c", ATTEMPTS, "sh", pin_dir, str(timer)],
                          options=["--user", "nobody"])
    lines = result.stdout.splitlines()
    assert len(lines) == 7 and all(line.startswith("refused ") for line in lines), lines
    assert os.path.exists(f"/proc/{timer}"), "the idle timer was stopped"
    assert sorted(os.listdir("/var/cache/enhrec-wrap")) == cache
    assert not os.path.exists("/var/cache/enhrec-wrap/config/planted.json")
    # the session's own registration and end set the mtime, forward, never an hour ahead
    assert mtime <= os.stat(pin_dir).st_mtime_ns <= mtime + 600 * 10**9
    sessions = [s for s in recorder.sessions().values() if s.start.get("login") == "nobody"]
    assert len(sessions) == 1
    touched = [e for e in sessions[0].commands if os.path.basename(e.get("path", "")) == "touch"]
    assert len(touched) == 3, sessions[0].summary()
