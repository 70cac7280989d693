"""Kills a session's processes when its recorder dies, so that nothing runs on unrecorded.

The watchdog is a small root process, started by the recorder before the session's first
process, outside the session's cgroup and in a session of its own (terminal signals and hangups
do not reach it; the session's user cannot signal a root process). It holds the read end of a
pipe whose only write end is the recorder's, close-on-exec and closed in the session's child
before it execs. Reading that pipe:
  - b"x": the recorder ended the session itself; the watchdog exits;
  - end of file: the recorder is gone, however it died (SIGKILL and the OOM killer included),
    since the kernel closes a dead process's descriptors. The watchdog writes "1" to the
    session's cgroup.kill, waits for the cgroup to empty, removes it, and tells the terminal.
The session's session.end is written by the next wrapper start or `enhrec doctor --repair`
(recovery.py).

The recorder also flock-s the cgroup directory for as long as it runs: that is how recovery
tells a live session's cgroup from a stale one, whatever data_dir the session writes to.

Run as `python -I -m enhrec_wrap.session.watchdog FD CGROUP_DIR` (by Watchdog.launch, never by hand).
"""

import fcntl
import os
import select
import signal
import subprocess
import sys

from enhrec_wrap.errors import EnhrecError

STOP = b"x"
READY = b"ready\n"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
KILL_WAIT_SECONDS = 10.0
# A dying recorder must not take the watchdog with it through the terminal.
IGNORED_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN,
                   signal.SIGTTOU, signal.SIGPIPE)
DOCTOR_HINT = "run `enhrec doctor`"


class Watchdog:
    """The recorder's side: starts the watchdog and, at a normal end, stops it."""

    def __init__(self, process, pipe_fd: int, lock_fd: int):
        self.process = process
        self.pipe_fd = pipe_fd
        self.lock_fd = lock_fd

    @classmethod
    def launch(cls, cgroup_dir: str) -> "Watchdog":
        """Starts the watchdog process without waiting for it: its Python start-up overlaps the
        recorder's own set-up. `wait_ready` must follow before the session's child runs."""
        lock_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            os.close(lock_fd)
            raise EnhrecError(f"cannot lock the session cgroup {cgroup_dir}: {e.strerror}: "
                              f"{DOCTOR_HINT}") from None
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-m", "enhrec_wrap.session.watchdog", str(read_fd), cgroup_dir],
                pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                start_new_session=True, env={}, cwd="/")
        except OSError as e:
            for fd in (lock_fd, read_fd, write_fd):
                os.close(fd)
            raise EnhrecError(f"cannot start the session watchdog: {e.strerror}: {DOCTOR_HINT}") from None
        os.close(read_fd)
        return cls(process, write_fd, lock_fd)

    def wait_ready(self) -> None:
        if not self._ready():
            status = self.process.poll()
            self._kill()
            raise EnhrecError(f"the session watchdog did not start (exit status {status}): "
                              f"{DOCTOR_HINT}")

    def _ready(self) -> bool:
        out = self.process.stdout
        ready, _, _ = select.select([out], [], [], START_TIMEOUT_SECONDS)
        line = out.readline() if ready else b""
        out.close()
        return line == READY

    def stop(self) -> None:
        """The normal end: the watchdog exits without killing anything."""
        if self.process is None:
            return
        try:
            os.write(self.pipe_fd, STOP)
        except OSError:
            pass
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

    def _kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for fd in (self.pipe_fd, self.lock_fd):
            os.close(fd)
        self.process = None


# --- the watchdog process -------------------------------------------------------------------

def kill_cgroup(cgroup_dir: str) -> bool:
    """SIGKILL to everything in the cgroup (forks included), then wait for it to empty."""
    try:
        with open(os.path.join(cgroup_dir, "cgroup.kill"), "w") as f:
            f.write("1")
    except FileNotFoundError:
        if not os.path.isdir(cgroup_dir):
            return True
        _kill_each(cgroup_dir)   # kernels before 5.14
    for _ in range(int(KILL_WAIT_SECONDS / 0.01)):
        if not _populated(cgroup_dir):
            return True
        _kill_each(cgroup_dir)
        select.select([], [], [], 0.01)
    return False


def _kill_each(cgroup_dir: str) -> None:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as procs:
            pids = [int(line) for line in procs if line.strip()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _populated(cgroup_dir: str) -> bool:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return False


def watch(pipe_fd: int, cgroup_dir: str) -> int:
    while True:
        data = os.read(pipe_fd, 1)
        if data == STOP:
            return 0
        if data:
            continue
        emptied = kill_cgroup(cgroup_dir)
        if emptied:
            try:
                os.rmdir(cgroup_dir)
            except OSError:
                pass   # recovery removes what is left
        _tell_terminal("enhrec-wrap: the recorder stopped, so the session was ended "
                       "(its processes were killed)")
        return 1


def _tell_terminal(message: str) -> None:
    try:
        os.write(2, f"\r\n{message}\r\n".encode())
    except OSError:
        pass


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for sig in IGNORED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    pipe_fd, cgroup_dir = int(argv[0]), argv[1]
    os.write(1, READY)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    return watch(pipe_fd, cgroup_dir)


if __name__ == "__main__":
    sys.exit(main())
