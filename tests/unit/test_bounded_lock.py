"""log/bounded_lock.py: an exclusive flock that gives up after its timeout and names the holder."""

import fcntl
import os
import signal
import time

import pytest

from enhrec_wrap.log.bounded_lock import LockWaitTimeout, flock_within


def test_a_held_lock_is_waited_for_a_bounded_time_and_its_holder_named(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b"")
    holder = os.open(path, os.O_RDWR)
    waiter = os.open(path, os.O_RDWR)   # another open file: flock conflicts with it
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        handler = signal.getsignal(signal.SIGALRM)
        started = time.monotonic()
        with pytest.raises(LockWaitTimeout) as raised:
            flock_within(waiter, 0.2)
        assert 0.2 <= time.monotonic() - started < 2
        assert raised.value.holder == os.getpid()
        assert signal.getsignal(signal.SIGALRM) is handler           # put back
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)   # no timer left running
        fcntl.flock(holder, fcntl.LOCK_UN)
        flock_within(waiter, 0.2)                                    # free: taken at once
        with pytest.raises(BlockingIOError):
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(holder)
        os.close(waiter)
