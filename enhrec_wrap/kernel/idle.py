"""Unloading the host's programs when no session has used them for a while.

The session that leaves the programs without sessions starts a timer: a detached process that
sleeps `idle_unload_seconds`, then, under the HostLock, unloads the set if it is still unused and
no session registered meanwhile (the set's generation is the one the timer was given). Each
ending last session starts one; the ones whose generation is stale do nothing. Until then the
programs stay attached, so the next session starts without loading them, and afterwards an idle
host runs none of them: every syscall on it is back on its fast path.

Run as `python -I -m enhrec_wrap.kernel.idle VERSION GENERATION` (after a `sleep`, by
start_if_last), or with `--now` to unload every set no session uses at once (`make uninstall`,
`enhrec doctor --unload`): exit status 1 when a set is left because sessions use it. The
session watchdog runs it as `... release VERSION CGROUP_ID IDLE_SECONDS` at a normal end.
"""

import os
import sys

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel.host import (HostLock, HostPrograms, pinned_versions, remove_leftovers,
                                     unload, unload_if_unused)


def start_if_last(host: HostPrograms, seconds: float) -> bool:
    """Starts the timer when no session is registered any more; the caller holds the HostLock."""
    if host.sessions():
        return False
    # The sleep is a shell's, so that the timer costs a megabyte while it waits, not a Python;
    # posix_spawn, not subprocess: the watchdog runs this, and subprocess costs it 11 ms.
    # Every fd of ours is close-on-exec (Python's, bpf()'s, and the watchdog's received ones).
    script = 'cd / && sleep "$0" && exec "$1" -I -m enhrec_wrap.kernel.idle "$2" "$3"'
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.posix_spawn("/bin/sh", ["/bin/sh", "-c", script, str(seconds), sys.executable,
                                   host.version, str(host.generation())], _timer_environment(),
                       file_actions=[(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)],
                       setsid=True)
    finally:
        os.close(null)
    return True


def _timer_environment() -> dict:
    # The timer outlives the session: none of the session's environment, and no PYTHON*
    # variable (the interpreter runs in isolated mode anyway).
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def release_session(version: str, cgroup_id: int, idle_unload_seconds: float):
    """Takes a session's rings out of the programs' maps and starts the idle timer if it was
    the last: the watchdog's last act at a normal end, while the wrapper is already gone (so
    this imports nothing of the events or the log)."""
    from enhrec_wrap.kernel.rings import SessionRings
    with HostLock():
        host = HostPrograms.open(version)
        if host is None:
            return
        try:
            SessionRings(host, cgroup_id, {}).unregister()
            start_if_last(host, idle_unload_seconds)
        finally:
            host.close()


def unload_if_idle(version: str, generation: int) -> bool:
    with HostLock():
        host = HostPrograms.open(version)
        if host is None:
            return True
        try:
            if host.sessions() or host.generation() != generation:
                return False
        finally:
            host.close()
        unload(version)
        return True


def unload_unused() -> tuple[int, list[str]]:
    """Unloads every set no session uses: (how many, the versions left loaded)."""
    with HostLock():
        unloaded = sum(unload_if_unused(version) for version in pinned_versions())
        remove_leftovers()
        return unloaded, pinned_versions()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--now"]:
        _, left = unload_unused()
        if left:
            print(f"enhrec-wrap: {len(left)} set(s) of kernel programs still used by sessions: "
                  "end them first (`enhrec doctor` lists them)", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["release"]:   # the watchdog, at a session's normal end
        try:
            release_session(argv[1], int(argv[2]), float(argv[3]))
        except (EnhrecError, OSError, IndexError, ValueError):
            return 1   # left registered: the next start's recovery takes it out
        return 0
    version, generation = argv[0], int(argv[1])
    try:
        unload_if_idle(version, generation)
    except EnhrecError:
        return 1   # left loaded: the next session's end, or `enhrec doctor --unload`, tries again
    return 0


if __name__ == "__main__":
    sys.exit(main())
