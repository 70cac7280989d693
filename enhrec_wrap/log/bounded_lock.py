"""An exclusive flock whose wait is bounded: a holder that never lets go (stopped with SIGSTOP,
stuck) must not make every other writer on the host wait with it, without a word."""

import fcntl
import os
import signal
import threading


class LockWaitTimeout(Exception):
    """The lock was still held after the wait; `holder` is the pid that holds it, if known."""

    def __init__(self, holder: int | None):
        super().__init__(holder)
        self.holder = holder


def flock_within(fd: int, timeout: float) -> None:
    """flock(fd, LOCK_EX), giving up after `timeout` seconds with LockWaitTimeout. The wait is a
    blocking flock interrupted by SIGALRM (it costs nothing while it waits, where polling would
    cost every waiting session a syscall each millisecond); a timer can only interrupt the main
    thread, so another thread waits without a bound."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if threading.current_thread() is not threading.main_thread():
        fcntl.flock(fd, fcntl.LOCK_EX)
        return

    class _Expired(Exception):
        pass

    def expired(signum, frame):
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expired)
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Expired:
        raise LockWaitTimeout(lock_holder(fd)) from None
    finally:
        signal.signal(signal.SIGALRM, previous)


def lock_holder(fd: int) -> int | None:
    """The pid /proc/locks gives for the flock on fd's file (the process that took it)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if "->" not in fields and len(fields) >= 6 and fields[1] == "FLOCK" \
                        and fields[5] == inode:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None
