"""The watchdog: kills a session's processes the moment its recorder dies, then ends the session
itself, so that nothing runs on unrecorded and nothing recorded goes unaccounted for.

It is forked by the wrapper at its very start (cli/wrap.py), before the heavy imports: a fork
costs a millisecond where a new interpreter costs 30, and its pages are the few of a just-started
Python. It leaves the wrapper's session (terminal signals and hangups do not reach it), stays
outside the session's cgroup and root's (the session's user cannot signal it), and holds:
  - one end of a socket pair whose other end only the recorder has (close-on-exec, and closed in
    the session's child before it execs);
  - the ledger page it shares with the recorder (ledger.py).
On the socket it gets one message telling it which session to guard (arm), with the session's
lock file and cgroup directory, whose flocks it then holds with the recorder (the same open
files): recovery never takes a session the watchdog is still finishing. Then comes either STOP
(the recorder ended the session itself) or end of file: the recorder is gone, however it died,
since the kernel closes a dead process's descriptors - at once, because with the programs' links
pinned (kernel/host.py) a recorder holds nothing slow to release. The watchdog then writes "1" to
the session's cgroup.kill, waits for the cgroup to empty, and finishes the session from what the
rings still hold and what the ledger says (salvage.py).

The recorder watches the watchdog in turn, through a pidfd: if it dies, the recorder ends the
session (lifecycle.py), which never runs without something that would kill it.
"""

import os
import select
import signal
import struct
import sys

# The C module, not `socket`: whatever is imported before the fork becomes the watchdog's own
# memory as the recorder runs on, and `socket` (with selectors, enum classes ...) is 1 MB of
# it, `_socket` 48 KB. For the same reason json and the ledger's helpers come later.
import _socket

from enhrec_wrap.session import ledger

STOP = b"x"
ARM = b"a"
MAX_MESSAGE = 1 << 16
# A dying recorder must not take the watchdog with it through the terminal.
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN,
                   signal.SIGTTOU, signal.SIGPIPE, signal.SIGTERM)
RECORDER_DIED = "the recorder stopped, so the session was ended (its processes were killed)"
NAME = b"enhrec-watchdog"   # its comm, as ps and pgrep show it


class Watchdog:
    """The recorder's side of its watchdog."""

    def __init__(self, pid: int, pidfd: int, channel, page):
        self.pid = pid
        self.pidfd = pidfd          # readable once the watchdog has exited
        self.channel = channel
        self.ledger = ledger.Ledger(page)
        self.armed = False

    @classmethod
    def fork(cls) -> "Watchdog":
        page = ledger.new_page()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            status = 1
            try:
                status = _watchdog(theirs, page)
            finally:
                os._exit(status)
        theirs.close()
        return cls(pid, os.pidfd_open(pid), ours, page)

    def arm(self, session: dict, lock_fd: int, cgroup_fd: int):
        """Tells the watchdog which session to guard (its cgroup, log and envelope) and hands it
        the session's lock file and cgroup directory. Queued in the socket: if the recorder dies
        right after, the watchdog still gets it first."""
        import json
        fds = struct.pack("=2i", lock_fd, cgroup_fd)
        self.channel.sendmsg([ARM + json.dumps(session).encode()],
                             [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        self.armed = True

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def stop(self, release: dict | None = None):
        """The normal end (or no session at all): the watchdog exits without killing anything,
        after taking the session's rings out of the programs' maps when `release` says which
        (idle.release_session): that costs the kernel an RCU grace period, which the wrapper's exit
        need not wait for. Not waited for: init reaps it once we are gone."""
        if self.channel is None:
            return
        import json
        try:
            self.channel.send(STOP + (json.dumps(release).encode() if release else b""))
        except OSError:
            pass
        self.channel.close()
        self.channel = None
        os.close(self.pidfd)


# --- the watchdog process -------------------------------------------------------------------

def _watchdog(channel, page) -> int:
    _name_process(NAME)
    os.setsid()
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    keep = channel.fileno()   # and fd 2, the terminal, to tell the user
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    session = held = None
    while True:
        message, fds = _receive(channel)
        if message.startswith(STOP):
            if len(message) > 1:
                import json
                _release(json.loads(message[1:]))
            return 0
        if message.startswith(ARM):
            import json
            session, held = json.loads(message[1:]), fds
            continue
        if session is None:
            return 0   # the wrapper ended before any session existed
        return _recorder_died(session, page, held)


def _receive(channel) -> tuple[bytes, list[int]]:
    """One message and the fds sent with it; b"" once the recorder's end is closed."""
    try:
        # Close-on-exec: the session's lock must never reach a program the watchdog starts.
        message, ancillary, _, _ = channel.recvmsg(MAX_MESSAGE, _socket.CMSG_SPACE(4 * 4),
                                                   _socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return b"", []
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += struct.unpack(f"={len(data) // 4}i", data[:len(data) // 4 * 4])
    return message, fds


def _release(order: dict) -> None:
    try:
        from enhrec_wrap.kernel import idle
        idle.release_session(order["version"], order["cgroup_id"], order["idle_unload_seconds"])
    except Exception:  # noqa: BLE001 - left registered: the next start's recovery takes it out
        pass


def _recorder_died(session: dict, page, held: list[int]) -> int:
    """Kills the session's processes first (the 50 ms that count), then finishes it."""
    from enhrec_wrap.host.cgroup import SessionCgroup
    cgroup = SessionCgroup(session["cgroup_dir"])
    killed = len(cgroup.pids())
    emptied = cgroup.kill_and_wait()
    _tell_terminal(f"enhrec-wrap: {RECORDER_DIED}")
    try:
        from enhrec_wrap.session import salvage   # only now: the imports cost 50 ms
        salvage.finish(session, ledger.read(page), salvage.RECORDER_DIED, killed, lock_fd=held[0])
    except Exception as e:  # noqa: BLE001 - the next start's recovery ends it instead
        _tell_terminal(f"enhrec-wrap: could not end the session ({e}); the next session start "
                       "or `enhrec doctor --repair` ends it")
        return 1
    finally:
        if emptied:
            cgroup.remove()
        os.close(held[1])   # the cgroup directory; the lock file is salvage's to release
    return 1


def _name_process(name: bytes) -> None:
    """Its comm (what ps and pgrep show): written to /proc, which costs no ctypes import."""
    try:
        with open("/proc/self/comm", "wb") as comm:
            comm.write(name)
    except OSError:
        pass


def _tell_terminal(message: str) -> None:
    try:
        os.write(2, f"\r\n{message}\r\n".encode())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit("enhrec_wrap.session.watchdog is forked by enhrec-wrap, never run by hand")
