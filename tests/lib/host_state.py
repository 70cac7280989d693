"""What the integration tests look at on the host: waiting for a condition, and the sessions
registered with the installed code's pinned set of programs (kernel/host.py)."""

import os
import time

import pytest

from enhrec_wrap.kernel import host as kernel


def wait_until(predicate, timeout, what, step=0.01):
    """Fails the test with `what` unless predicate() comes true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    pytest.fail(f"{what} within {timeout}s")


def our_set() -> str:
    """The pin directory of this code's set of programs."""
    return os.path.join(kernel.PIN_ROOT, kernel.program_version())


def registered() -> set[int]:
    """The cgroup ids registered with this code's set (empty when it is not pinned)."""
    with kernel.HostLock():
        host = kernel.HostPrograms.open(kernel.program_version())
        if host is None:
            return set()
        try:
            return set(host.sessions())
        finally:
            host.close()


def registered_anywhere() -> set[int]:
    """The cgroup ids registered with any pinned set of programs, of any version."""
    ids = set()
    with kernel.HostLock():
        for version in kernel.pinned_versions():
            host = kernel.HostPrograms.open(version)
            if host is not None:
                ids.update(host.sessions())
                host.close()
    return ids


def idle_timers() -> list[int]:
    """The pids of the idle timers (kernel/idle.py) of the set pinned now: those whose flock fd
    is on its pin directory (a timer of a set unloaded before sleeps on until it looks)."""
    try:
        ours = os.stat(our_set())
    except FileNotFoundError:
        return []
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            locked = os.stat(f"/proc/{pid}/fd/3")
        except OSError:
            continue
        if argv[:2] == [b"/bin/sh", b"-c"] and b"kernel.idle timer" in argv[2] \
                and (locked.st_dev, locked.st_ino) == (ours.st_dev, ours.st_ino):
            pids.append(int(pid))
    return pids
