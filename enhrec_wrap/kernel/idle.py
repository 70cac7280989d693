"""Unloading the host's programs when no session has used them for a while.

The session that leaves the programs without sessions starts the set's timer, unless it is
already running: one detached process per set, whatever the number of sessions that came and
went (a host running one short `ssh host cmd` after another starts one timer, not one each).
The timer sleeps, then looks under the HostLock: a set some session uses again ends the timer
(the next last session to leave starts it again); a set idle for `idle_unload_seconds` is
unloaded; else it sleeps for what is left of that. How long the set has been idle is the age of
its pin directory's mtime, which every session's opening, registration and leaving sets
(HostPrograms.mark_used). The timer holds a flock on the pin directory, which says it runs; it
lets it go under the HostLock when it ends, so that a session leaving at that moment finds it
free and starts another. Until the unload the programs stay attached, so the next session
starts without loading them, and afterwards an idle host runs none of them: every syscall on it
is back on its fast path.

Run as `python -I -m enhrec_wrap.kernel.idle timer VERSION SECONDS` (by the timer's shell,
which prints what it prints: the seconds to sleep before it looks again, or nothing when it is
done), or with `--now` to unload every set no session uses at once (`make uninstall`,
`enhrec doctor --unload`): exit status 1 when a set is left because sessions use it. The
session watchdog runs it as `... release VERSION CGROUP_ID IDLE_SECONDS` at a normal end.
"""

import fcntl
import os
import signal
import stat
import sys

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel.host import (PIN_ROOT, HostLock, HostPrograms, pinned_versions,
                                     remove_leftovers, unload, unload_if_unused)


# The fd of the timer's flock on its set's pin directory, in the timer's shell and its Python.
TIMER_LOCK_FD = 3
# The timer's shell: $0 the seconds to sleep first, $1 the interpreter, $2 the version. Each look
# prints how long to sleep before the next, or nothing when the timer is done.
TIMER_SCRIPT = ('cd / && s="$0" && while sleep "$s"; do '
                's=$("$1" -I -m enhrec_wrap.kernel.idle timer "$2" "$0") && [ -n "$s" ] || exit 0; '
                'done')
# A look that finds less than this left sleeps this long: no busy loop on a clock's rounding.
MIN_SLEEP = 0.1


def start_if_last(host: HostPrograms, seconds: float) -> bool:
    """Starts the set's timer when no session is registered any more and it is not running
    already (then it finds the new idle time when it looks); the caller holds the HostLock,
    shared will do. Of sessions that leave side by side, each looks after its own rings are
    out (a map's delete shows at once), so the last to look finds none and starts the timer
    if another did not; the timer ends only under the exclusive lock."""
    if host.sessions():
        return False
    host.mark_used()   # the idle time starts now
    lock = os.open(host.pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True   # the set's timer runs
        _spawn_timer(host.version, seconds, lock)
    finally:
        os.close(lock)   # the timer's copy holds the flock
    return True


def _spawn_timer(version: str, seconds: float, lock: int):
    # The sleep is a shell's, so that the timer costs a megabyte while it waits, not a Python;
    # posix_spawn, not subprocess: the watchdog runs this, and subprocess costs it 11 ms.
    # Every fd of ours is close-on-exec (Python's, bpf()'s, and the watchdog's received ones).
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.posix_spawn("/bin/sh", ["/bin/sh", "-c", TIMER_SCRIPT, str(seconds), sys.executable,
                                   version], _timer_environment(),
                       file_actions=[*((os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)),
                                     (os.POSIX_SPAWN_DUP2, lock, TIMER_LOCK_FD)],
                       setsid=True,
                       # the watchdog ignores these; a timer is stopped by a plain `kill`
                       setsigdef=(signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM))
    finally:
        os.close(null)


def timer_look(version: str, seconds: float) -> float | None:
    """The timer's look, under the HostLock: unloads the set once no session has used it for
    `seconds`. Returns how long to sleep before the next look, or None when the timer is done
    (its flock let go): the set is gone or unloaded, or sessions use it again."""
    with HostLock():
        left = _idle_left(version, seconds) if _still_ours(version) else None
        if left is not None and left > 0:
            return max(left, MIN_SLEEP)
        if left is not None:
            unload(version)
        _end_timer()
        return None


def _still_ours(version: str) -> bool:
    """The set pinned now is the one this timer was started for (its flock is on that pin
    directory): a set unloaded and loaded again has a timer of its own."""
    try:
        mine, pinned = os.fstat(TIMER_LOCK_FD), os.stat(os.path.join(PIN_ROOT, version))
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (pinned.st_dev, pinned.st_ino)


def _idle_left(version: str, seconds: float) -> float | None:
    """How long until the set has been idle for `seconds` (0 or less: it has), or None when
    there is nothing to wait for: no such set, or sessions use it."""
    host = HostPrograms.open(version)
    if host is None:
        return None
    try:
        if host.sessions():
            return None
        idle = host.idle_seconds()
        if idle < 0:   # the clock was set back since: the idle time starts again from now
            host.mark_used()
            idle = 0.0
        return seconds - idle
    finally:
        host.close()


def _end_timer():
    """Lets the timer's flock go (the shell's and ours are one open file), so that a session
    leaving once we let the HostLock go starts a new timer rather than count on this one."""
    try:
        if stat.S_ISDIR(os.fstat(TIMER_LOCK_FD).st_mode):
            fcntl.flock(TIMER_LOCK_FD, fcntl.LOCK_UN)
    except OSError:
        pass   # not run by a timer's shell: nothing to let go


def _timer_environment() -> dict:
    # The timer outlives the session: none of the session's environment, and no PYTHON*
    # variable (the interpreter runs in isolated mode anyway).
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def release_session(version: str, cgroup_id: int, idle_unload_seconds: float):
    """Takes a session's rings out of the programs' maps and starts the idle timer if it was
    the last: the watchdog's last act at a normal end, while the wrapper is already gone (so
    this imports nothing of the events or the log)."""
    from enhrec_wrap.kernel.rings import SessionRings
    with HostLock(shared=True):   # leaving, as registering, side by side (hold_for_session)
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
    """Unloads every set no session uses, and ends their idle timers (`make uninstall` leaves
    no process behind): (how many, the versions left loaded)."""
    with HostLock():
        unloaded = 0
        for version in pinned_versions():
            timers = _timers_of(os.path.join(PIN_ROOT, version))
            if unload_if_unused(version):
                unloaded += 1
                _end_processes(timers)
        remove_leftovers()
        return unloaded, pinned_versions()


def _timers_of(directory: str) -> set[int]:
    """The process groups of the timers whose flock is on this pin directory (each timer is a
    session of its own: its shell and its sleep)."""
    try:
        pinned = os.stat(directory)
    except OSError:
        return set()
    groups = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            locked = os.stat(f"/proc/{pid}/fd/{TIMER_LOCK_FD}")
            if (locked.st_dev, locked.st_ino) == (pinned.st_dev, pinned.st_ino):
                groups.add(os.getpgid(int(pid)))
        except OSError:
            continue
    groups.discard(os.getpgrp())
    return groups


def _end_processes(groups: set[int]):
    # SIGKILL: a timer keeps nothing to clean up (its flock goes with it), and one started by
    # an earlier release ignores SIGTERM as the watchdog that spawned it did.
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass   # gone already


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
    try:
        if argv[:1] == ["timer"]:
            left = timer_look(argv[1], float(argv[2]))
            if left is not None:
                print(f"{left:.3f}")
            return 0
        # A timer an earlier release started (VERSION GENERATION), woken after an upgrade.
        unload_if_idle(argv[0], int(argv[1]))
    except (EnhrecError, OSError, IndexError, ValueError):
        return 1   # left loaded: the next session's end, or `enhrec doctor --unload`, tries again
    return 0


if __name__ == "__main__":
    sys.exit(main())
