"""The watchdog: kills a session's processes the moment its recorder dies, then ends the session,
so that nothing runs on unrecorded and nothing recorded goes unaccounted for.

It is a shell (WATCHDOG_SCRIPT, run by /bin/sh: 0.1 MB, where a forked Python was 3.7 MB of
every session), started by the recorder once the session's cgroup and lock exist, and before
anything runs in the cgroup (Watchdog.arm). It leaves the wrapper's session (terminal signals and
hangups do not reach it), stays outside the session's cgroup and is root's (the session's user
cannot signal it), and holds, by inheritance:
  - fd 3, the read end of a pipe whose write end only the recorder has (close-on-exec, and
    closed in the session's child before it execs);
  - fd 4 the session's cgroup directory, fd 5 its lock file (their flocks are held with the
    recorder: recovery never takes a session the watchdog is still finishing), fd 6 the ledger
    page it shares with the recorder (ledger.py, a memfd), fd 7 a memfd with the session's
    brief (what salvage.py needs to end it), and fd 2, the terminal, to tell the user.
It blocks reading a line from fd 3. A line is the recorder's normal end: the watchdog takes the
session's rings out of the programs' maps (kernel/idle.py release_session, run by a Python it
execs, while the wrapper exits; with the terminal closed first, which sshd waits for before it
ends a session without a pty), or just exits ("quit": it was replaced by a new watchdog).
End of file without a line means the recorder is gone, however it died, since the kernel closes
a dead process's descriptors - at once, because with the programs' links pinned (kernel/host.py)
a recorder holds nothing slow to release. The shell then counts the cgroup's processes, writes
"1" to its cgroup.kill (a millisecond after the death), and execs Python to finish the session
from what the rings still hold and what the ledger says (salvage.py: `python -m
enhrec_wrap.session.salvage KILLED`).

The recorder watches the watchdog in turn, through a pidfd: if it dies, the recorder ends the
session (lifecycle.py), which never runs without something that would kill it.
"""

import fcntl
import os
import sys

import orjson

from enhrec_wrap.session import ledger

NAME = "enhrec-watchdog"   # its comm, as ps and pgrep show it
RECORDER_DIED = "the recorder stopped, so the session was ended (its processes were killed)"
# The fds the shell is given (see the module's docstring).
CHANNEL_FD, CGROUP_FD, LOCK_FD, LEDGER_FD, BRIEF_FD = 3, 4, 5, 6, 7
QUIT = "quit"
RELEASE = "release"

# Builtins only until the kill (read, printf, the counting loop, echo): no fork between the
# recorder's death and the session's. A dying recorder must not take the watchdog with it
# through the terminal, hence the trap. $1 is the Python to run, $2 its -m module path prefix.
WATCHDOG_SCRIPT = r'''
trap '' HUP INT QUIT TERM TSTP TTIN TTOU PIPE
printf %s enhrec-watchdog > /proc/$$/comm
if read -r order <&3; then
    case $order in
    release\ *) exec 2>/dev/null 3<&- 4<&- 5<&- 6<&- 7<&- "$1" -I -m enhrec_wrap.kernel.idle $order ;;
    esac
    exit 0
fi
killed=0
{ while read -r _; do killed=$((killed + 1)); done < /proc/self/fd/4/cgroup.procs; } 2>/dev/null
{ echo 1 > /proc/self/fd/4/cgroup.kill; } 2>/dev/null
exec 3<&- "$1" -I -m enhrec_wrap.session.salvage "$killed"
'''


class Watchdog:
    """The recorder's side of its watchdog."""

    def __init__(self):
        self.ledger_fd = os.memfd_create("enhrec-ledger", os.MFD_CLOEXEC)
        os.ftruncate(self.ledger_fd, ledger.PAGE_BYTES)
        self.ledger = ledger.Ledger(ledger.map_page(self.ledger_fd))
        self.pid = None
        self.pidfd = -1          # readable once the watchdog has exited
        self.channel = -1        # the write end of its pipe
        self.armed = False

    def arm(self, session: dict, lock_fd: int, cgroup_fd: int):
        """Starts the watchdog of this session: its cgroup, lock file and brief (`session`:
        what salvage.py needs). Armed again (a new lock file), a new watchdog takes over before
        the old one is told to quit, so that the session is never without one."""
        old_channel, old_pidfd = self.channel, self.pidfd
        brief = os.memfd_create("enhrec-brief", os.MFD_CLOEXEC)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            os.write(brief, orjson.dumps(session))
            self.pid = _spawn({CHANNEL_FD: read_end, CGROUP_FD: cgroup_fd, LOCK_FD: lock_fd,
                               LEDGER_FD: self.ledger_fd, BRIEF_FD: brief})
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
            os.close(brief)
        self.pidfd = os.pidfd_open(self.pid)
        self.channel = write_end
        self.armed = True
        if old_channel >= 0:
            _send(old_channel, QUIT)
            os.close(old_pidfd)

    def alive(self) -> bool:
        import select
        return self.pidfd < 0 or not select.select([self.pidfd], [], [], 0)[0]

    def stop(self, release: dict | None = None):
        """The normal end (or no session at all): the watchdog exits without killing anything,
        after taking the session's rings out of the programs' maps when `release` says which
        (kernel/idle.py release_session): that costs the kernel an RCU grace period, which the
        wrapper's exit need not wait for. Not waited for: init reaps it once we are gone."""
        if self.channel >= 0:
            order = QUIT
            if release:
                order = (f"{RELEASE} {release['version']} {release['cgroup_id']} "
                         f"{release['idle_unload_seconds']}")
            _send(self.channel, order)
            self.channel = -1
            os.close(self.pidfd)
            self.pidfd = -1
        if self.ledger_fd >= 0:
            os.close(self.ledger_fd)
            self.ledger_fd = -1


def _spawn(fds: dict) -> int:
    """The shell, with `fds` at their numbers ({number: fd}), its own session (setsid), / as
    its directory, and no environment but PATH. Each fd is placed from a close-on-exec copy
    above every number it is to take, so that none is overwritten before it is placed; the
    copies take the lowest free numbers there, so a low open-file limit of the caller's is no
    problem (fixed spare numbers at 200 failed every start under `ulimit -n 200`, EBADF)."""
    above = max(fds) + 1
    copies = []
    try:
        for fd in fds.values():
            copies.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above))
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        copies.append(null)
        # 0 and 1 first: null may have a number one of the fds is to take.
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
        actions += [(os.POSIX_SPAWN_DUP2, copy, number) for copy, number in zip(copies, fds)]
        return os.posix_spawn("/bin/sh", ["/bin/sh", "-c", f"cd / && {WATCHDOG_SCRIPT}",
                                          NAME, sys.executable], {"PATH": "/usr/bin:/bin"},
                              file_actions=actions, setsid=True)
    finally:
        for copy in copies:
            os.close(copy)


def _send(channel: int, order: str):
    try:
        os.write(channel, order.encode() + b"\n")
    except OSError:
        pass   # it is gone already: the recorder notices through its pidfd
    finally:
        os.close(channel)
