"""The wrapper's side of the terminal relay's process (session/terminal.py): forking it, its
status messages, its end; and the relay's start in its own process before it runs
(session/terminal_relay.py)."""

import json
import os
import select
import signal

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.session.terminal_relay import END_TIMEOUT_SECONDS

# Signals the relay leaves to the session: terminal signals are the pty's business, a hangup is
# seen as the real terminal's end of file.
RELAY_IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                 signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE)


class RelayProcess:
    """The wrapper's side of a relay process: forking it, its status messages, its end. The
    relay says `ready` (its recording's first part is on disk), each write failure, and at the
    end its recording's summary, one JSON line each."""

    def __init__(self):
        self.relay_pid = None
        self.status_fd = -1
        self.go_fd = -1
        self.status = b""
        self.failed = []            # write failures the wrapper has not heard of yet
        self.summary = {}           # the recording's, from the relay's last message

    def start_relay(self, make_writer, record_input: bool, on_failure: str) -> None:
        """Forks the relay; returns once it has its recording's first part on disk.
        `make_writer()` runs in the relay and returns its terminal_recording.Writer."""
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(status_r)
                os.close(go_w)
                code = relay_main(self, make_writer, record_input, on_failure, status_w, go_r)
            finally:
                os._exit(code)
        os.close(status_w)
        os.close(go_r)
        self.go_fd = go_w
        self._forked()
        self.relay_pid, self.status_fd = pid, status_r
        message = self._next_message(END_TIMEOUT_SECONDS)
        if not message or "ready" not in message:
            self._stop_relay()
            raise EnhrecError((message or {}).get("failure")
                              or "the terminal relay did not start: run `enhrec doctor`")
        os.set_blocking(self.status_fd, False)

    def failures(self) -> list[str]:
        """The relay's write failures since the last call, without waiting."""
        while self._take_message(0):
            pass
        found, self.failed = self.failed, []
        return found

    def finish(self) -> dict:
        """Waits for the relay's end (the session's processes are gone, so its ends of the pty
        or the pipes are) and returns its recording's summary; the real terminal is as it was."""
        try:
            while self._take_message(END_TIMEOUT_SECONDS):
                pass
        finally:
            self._stop_relay()
            self.restore()
        return self.summary

    def close(self) -> None:
        self.after_spawn()
        self._stop_relay()
        self.restore()

    def restore(self) -> None:
        """The real terminal as it was (Terminal)."""

    def restore_after_relay(self) -> None:
        """In the relay, at its end: the same, for when the wrapper is gone (Terminal)."""

    def _stop_relay(self) -> None:
        if self.relay_pid is None:
            return
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        pid, _ = os.waitpid(self.relay_pid, os.WNOHANG)
        if not pid:
            os.kill(self.relay_pid, signal.SIGKILL)
            os.waitpid(self.relay_pid, 0)
        self.relay_pid = None
        os.close(self.status_fd)
        os.close(self.go_fd)
        self.status_fd = self.go_fd = -1

    def _take_message(self, timeout: float) -> bool:
        message = self._next_message(timeout)
        if message is None:
            return False
        if "failure" in message:
            self.failed.append(message["failure"])
        if "end" in message:
            self.summary = message["end"]
        return True

    def _next_message(self, timeout: float) -> dict | None:
        """The relay's next status line; None at its end (or none within timeout)."""
        while b"\n" not in self.status:
            if self.status_fd < 0:
                return None
            if not select.select([self.status_fd], [], [], timeout)[0]:
                return None
            try:
                data = os.read(self.status_fd, 4096)
            except BlockingIOError:
                return None
            if not data:
                return None
            self.status += data
        line, _, self.status = self.status.partition(b"\n")
        return json.loads(line)


def relay_main(relayed, make_writer, record_input, on_failure, status_fd, go_fd) -> int:
    """The forked relay's life, from the fork to its exit code: the wrapper's signals and files
    left behind, its recording's first part on disk (or the failure said), then the relay."""
    for sig in RELAY_IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    _close_all_but(relayed._relay_fds() | {status_fd, go_fd})
    relay = relayed._in_relay(record_input, on_failure, status_fd, go_fd)
    try:
        relay.writer = make_writer()
        relay.writer.start()
    except EnhrecError as e:
        relay.tell({"failure": str(e)})
        return 1
    relay.tell({"ready": True})
    relay.run()
    relayed.restore_after_relay()
    return 0


def _close_all_but(keep) -> None:
    """Nothing of the wrapper's (the session's lock, the audit log) may live on in the relay: a
    flock held here would outlive a dead wrapper."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))

