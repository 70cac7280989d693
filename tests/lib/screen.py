"""A terminal this test holds: a pty whose master the test reads and writes, as a terminal
emulator or sshd does, running `argv` on its slave. Shared by the integration and e2e terminal
tests (importable as `screen`: setup.cfg's pytest pythonpath)."""

import errno
import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

import pytest


class Terminal:
    """`argv` on a fresh pty of `rows` x `cols`; `what` names it in failures ("the session"),
    `patience` is how long expect() waits by default."""

    def __init__(self, argv, env, rows=24, cols=80, what="the session", patience=60.0):
        pid, fd = pty.fork()
        if pid == 0:
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.what = what
        self.patience = patience
        self.seen = b""
        self.pos = 0
        self.status = None
        self.initial_mode = None

    def read(self, timeout=0.1):
        """What came within `timeout` (b"" for nothing), or None once the slave side is gone."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            return None
        self.seen += data
        return data

    def expect(self, needle: bytes, timeout=None):
        """Waits for needle after what the last expect matched."""
        deadline = time.monotonic() + (self.patience if timeout is None else timeout)
        while needle not in self.seen[self.pos:]:
            if time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} on the screen: {self.seen[self.pos:][-600:]!r}")
            if self.read() is None:
                pytest.fail(f"{self.what} ended before {needle!r}: {self.seen[self.pos:][-600:]!r}")
        self.pos = self.seen.index(needle, self.pos) + len(needle)

    def wait_raw(self, timeout=60.0):
        """Until the wrapper has put this terminal in raw mode: the session is about to run."""
        self.initial_mode = termios.tcgetattr(self.fd)
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.fd)[3] & termios.ECHO:
            if time.monotonic() > deadline:
                pytest.fail(f"the terminal never went raw: {self.seen[-600:]!r}")
            self.read(0.01)

    def type(self, text: bytes):
        os.write(self.fd, text)

    def resize(self, rows, cols):
        """As a terminal emulator does: the new size, and SIGWINCH to the foreground group."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.killpg(os.tcgetpgrp(self.fd), signal.SIGWINCH)

    def wait(self, timeout=60.0):
        """The exit status of argv, once it ended and everything it showed is read."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            self.read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                pytest.fail(f"{self.what} did not end; screen: {self.seen[-600:]!r}")
        while self.read(0.05):
            pass
        return self.status
