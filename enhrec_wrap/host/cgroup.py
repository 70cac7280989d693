"""The session's cgroup v2 leaf: `<cgroup_path>/enhrec/<sid>`.

Its id (the directory's inode number) is what the BPF programs filter on. Every process of the
session, and every process it starts, lives in it; the leaf is root-owned, so the session's user
cannot move a process out of it.
"""

import ctypes as ct
import fcntl
import os
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.host import paths

# The cgroup below the mount that holds one leaf per session (and nothing else).
PARENT = "enhrec"
# How long a killed leaf may take to empty before its killer gives up on it.
KILL_WAIT_SECONDS = 5.0


def parent_dir(cgroup_path: str) -> str:
    return os.path.join(cgroup_path, PARENT)


def leaf_dir(cgroup_path: str, sid: str) -> str:
    return os.path.join(cgroup_path, PARENT, sid)


def is_cgroup2_mount(path: str) -> bool:
    """True when `path` is itself a cgroup2 mount point (from /proc/self/mountinfo)."""
    return paths.mount_of(path) == (os.path.realpath(path), "cgroup2")


def ensure_mounted(path: str) -> None:
    """Mounts the cgroup2 hierarchy at `path` when nothing is mounted there.

    The mount is left in place: other sessions may be using it, and unmounting a shared /cgroup2
    is a bug the reference had. We never unmount anything.
    """
    if is_cgroup2_mount(path):
        return
    blocker = paths.not_a_directory(path)
    if blocker:
        raise EnhrecError(f"cannot use {path} as the cgroup mount point: {blocker[0]} is "
                          f"{blocker[1]}, not a directory: set "
                          "ssh_service.enhanced_recording.cgroup_path to a cgroup2 mount or an "
                          "empty directory")
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except OSError as e:
        raise EnhrecError(f"cannot create the cgroup mount point {path}: {e.strerror}: "
                          "set ssh_service.enhanced_recording.cgroup_path to a usable directory")
    if os.listdir(path):
        raise EnhrecError(f"{path} is not a cgroup2 mount and not empty: set "
                          "ssh_service.enhanced_recording.cgroup_path to an empty directory "
                          "or to a cgroup2 mount")
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"none", path.encode(), b"cgroup2", 0, None) != 0:
        err = ct.get_errno()
        raise EnhrecError(f"cannot mount cgroup2 on {path}: {os.strerror(err)}: "
                          "the kernel needs cgroup v2 (CONFIG_CGROUPS, cgroup2 filesystem); "
                          "`enhrec doctor` checks it")


class SessionCgroup:
    def __init__(self, path: str, lock_fd: int = -1):
        self.path = path
        self.id = os.stat(path).st_ino
        # flock-ed for as long as its session is being recorded (by the recorder, and by its
        # watchdog, which shares the open file): how recovery tells a live cgroup from a stale one.
        self.lock_fd = lock_fd

    @classmethod
    def create(cls, cgroup_path: str, sid: str) -> "SessionCgroup":
        ensure_mounted(cgroup_path)
        parent = parent_dir(cgroup_path)
        leaf = leaf_dir(cgroup_path, sid)
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
            os.mkdir(leaf, 0o755)
            lock_fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise EnhrecError(f"cannot create the session cgroup {leaf}: {e.strerror}: "
                              f"check that {cgroup_path} is a writable cgroup2 mount "
                              "(`enhrec doctor` checks it)")
        fcntl.flock(lock_fd, fcntl.LOCK_EX)   # new and ours: nobody else can hold it
        return cls(leaf, lock_fd)

    def close(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as procs:
                return [int(line) for line in procs if line.strip()]
        except FileNotFoundError:
            return []

    def populated(self) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.events")) as events:
                return "populated 1" in events.read()
        except FileNotFoundError:
            return False

    def kill(self) -> None:
        """SIGKILL to every process in the leaf, including ones forked while it runs."""
        if os.path.exists(os.path.join(self.path, "cgroup.kill")):
            self._write("cgroup.kill", "1")
            return
        for pid in self.pids():   # kernels before 5.14 have no cgroup.kill
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass

    def freeze(self, frozen: bool) -> None:
        """Pauses (or resumes) every process in the leaf, as the cgroup v2 freezer does it:
        each stops on its way back to user space, within a fraction of a millisecond, and no
        parent sees a stop (job control is not involved). A fatal signal still kills a frozen
        process, so kill() works on a frozen leaf."""
        self._write("cgroup.freeze", "1" if frozen else "0")

    def kill_and_wait(self, timeout: float = KILL_WAIT_SECONDS) -> bool:
        """kill(), then wait until the leaf is empty; False when it is not within `timeout`."""
        self.kill()
        return self.wait_empty(timeout)

    def wait_empty(self, timeout: float) -> bool:
        """Waits for the last process to go, polling every 2 ms: a killed session must be dead
        within 50 ms of its recorder's death (watchdog.py)."""
        deadline = time.monotonic() + timeout
        while self.populated():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass

    def _write(self, name: str, value: str) -> None:
        path = os.path.join(self.path, name)
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise EnhrecError(f"cannot write {path}: {e.strerror}: {_CGROUP_HINT}")


_CGROUP_HINT = "the session cgroup is not usable; run `enhrec doctor`"
