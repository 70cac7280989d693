#!/usr/bin/python3
"""Drive an interactive shell on a pseudo-terminal, typing one line at a time, as a person would.

Usage: pty_session.py --steps FILE [--timeout SECONDS] -- COMMAND [ARG]...

COMMAND must start an interactive POSIX shell (for example `enhrec-wrap -- bash -i`). Each line of
FILE is typed into it; after every line but the last, the driver types a marker command and waits
for the shell to print the marker, so the next line is typed only when the previous one has run.
The last line should end the shell (`exit`). The session's screen output is copied to stdout with
carriage returns and terminal escape sequences removed. The exit status is the command's own;
124 when a step timed out.

Runs with Debian's /usr/bin/python3 and the standard library only.
"""

import argparse
import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time

ROWS, COLS = 24, 80
SETTLE_SECONDS = 0.2
ESCAPES = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Za-z0-9]|[=>])")


class StepTimeout(Exception):
    pass


class Session:
    def __init__(self, argv: list[str]):
        pid, fd = pty.fork()
        if pid == 0:
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
                # A dumb terminal keeps readline from drawing; the transcript stays plain text.
                os.environ["TERM"] = "dumb"
                os.execvp(argv[0], argv)
            except OSError as exc:
                os.write(2, f"pty_session: cannot run {argv[0]}: {exc}\n".encode())
            os._exit(127)
        self.pid = pid
        self.fd = fd
        self.seen = b""
        self.eof = False

    def _read(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepTimeout
        ready, _, _ = select.select([self.fd], [], [], remaining)
        if not ready:
            raise StepTimeout
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the last process holding the terminal is gone
                raise
            data = b""
        if not data:
            self.eof = True
            return
        self.seen += data
        clean = ESCAPES.sub(b"", data).replace(b"\r", b"")
        sys.stdout.buffer.write(clean)
        sys.stdout.buffer.flush()

    def type(self, line: str, timeout: float) -> None:
        """Type a line once the screen has been still for a moment (the prompt is shown), so the
        transcript reads like a person's session rather than type-ahead."""
        deadline = time.monotonic() + timeout
        while not self.seen and not self.eof:  # the first prompt: the shell has started
            self._read(deadline)
        while not self.eof:
            try:
                self._read(min(deadline, time.monotonic() + SETTLE_SECONDS))
            except StepTimeout:
                if time.monotonic() >= deadline:
                    raise
                break
        os.write(self.fd, line.encode() + b"\n")

    def wait_for(self, text: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        while text not in self.seen[start:]:
            if self.eof:
                raise StepTimeout
            self._read(deadline)

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._read(deadline)
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                raise StepTimeout
            time.sleep(0.05)

    def kill(self) -> None:
        for sig in (signal.SIGHUP, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            time.sleep(1)
        os.waitpid(self.pid, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", required=True, help="file with one line to type per line")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per step")
    parser.add_argument("command", nargs="+", help="the command that starts the interactive shell")
    args = parser.parse_args()
    with open(args.steps, encoding="utf-8") as f:
        steps = [line.rstrip("\n") for line in f if line.strip()]
    if not steps:
        parser.error(f"{args.steps} has no lines")

    session = Session(args.command)
    try:
        for number, line in enumerate(steps, 1):
            session.type(line, args.timeout)
            if number < len(steps):
                # The marker is typed as two words and printed as one, so the echo of the typed
                # line never matches; printf is a builtin, so it adds no exec to the recording.
                session.type(f"printf '%s_%s\\n' ENHREC_PTY_STEP {number}", args.timeout)
                session.wait_for(f"ENHREC_PTY_STEP_{number}".encode(), args.timeout)
        status = session.wait_exit(args.timeout)
    except StepTimeout:
        where = "the session ended" if session.eof else f"no progress for {args.timeout:.0f}s"
        print(f"\npty_session: {where} before all steps ran", file=sys.stderr)
        if not session.eof:
            session.kill()
            return 124
        _, status = os.waitpid(session.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        return code if code != 0 else 124
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
