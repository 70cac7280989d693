"""The session's own terminal: a pty the session runs on, and the relay between it and the user's
real terminal, which records what the session showed.

Three processes share the work:
  - the wrapper (root) opens the pty with the real terminal's settings and size, forks the relay
    early (before the BPF programs and the heavy imports, so their pages are shared), puts the
    real terminal in raw mode and gives the pty's slave to the session's child;
  - the child makes a session of its own with the slave as its controlling terminal (setsid,
    TIOCSCTTY), so job control, Ctrl-C/Ctrl-Z and SIGWINCH happen between it and the pty's line
    discipline exactly as on a real terminal;
  - the relay (a forked copy of the wrapper, root) copies bytes both ways, writes the recording
    itself and tells the wrapper how it ended.

The relay is a process of its own because the wrapper's loop writes kernel events in batches of up
to ~12 ms and a thread of it waits for the GIL while they are built (measured in
docs/PERFORMANCE.md): a keystroke's echo would wait as long.

Hangups keep their meaning: when the real terminal hangs up (the ssh client is gone), the relay
closes the pty's master, which hangs up the pty, so the kernel sends SIGHUP to the session's
controlling process and foreground group as the real terminal's hangup did before; the wrapper
still gets its own SIGHUP and forwards it as always. When the relay dies, the same happens: its
master is the only one.
"""

import errno
import fcntl
import json
import os
import select
import signal
import struct
import termios
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import layout, terminal_recording

READ_SIZE = 1 << 16
PTY_CHUNK = 4095          # the most one read of a pty master returns (N_TTY_BUF_SIZE - 1)
# Stop reading a side while this much is waiting to be written to the other: the writer then
# blocks as it would on a real terminal.
HIGH_WATER = 1 << 18
END_TIMEOUT_SECONDS = 5.0
# Signals the relay leaves to the session: terminal signals are the pty's business, a hangup is
# seen as the real terminal's end of file.
RELAY_IGNORED = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
                 signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE)
_WINSIZE = struct.Struct("HHHH")
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def window_size(fd: int) -> tuple[int, int] | None:
    """(columns, rows) of the terminal on fd, or None."""
    try:
        rows, cols, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (cols, rows) if cols and rows else None


def raw_mode(mode: list) -> list:
    """cfmakeraw(3) of a termios list (Python 3.11's tty module lacks it)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = mode
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def set_window_size(fd: int, size: tuple[int, int]) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(size[1], size[0], 0, 0))


def has_terminal(in_fd: int = 0, out_fd: int = 1) -> bool:
    """The session has a terminal when what it reads and what it writes are one: output sent
    to a file or a pipe (`enhrec-wrap -- cmd > file`) stays the exact bytes, with no pty."""
    try:
        return os.isatty(in_fd) and os.isatty(out_fd) and \
            os.path.samestat(os.fstat(in_fd), os.fstat(out_fd))
    except OSError:
        return False


def open_for_session(config, log_dir: str, server_id: str, sid: str, term: str):
    """The session's Terminal, its relay running; None when the session gets no pty (it has no
    terminal, or `tty_recording: off`)."""
    if config.tty_recording == "off" or not has_terminal():
        return None
    try:
        terminal = Terminal(0, 1)
    except (OSError, termios.error) as e:
        raise EnhrecError(f"cannot open a terminal for the session: {e}: run `enhrec doctor`") from None
    header = {"sid": sid, "width": terminal.size[0], "height": terminal.size[1], "term": term,
              "input_recorded": config.record_input}
    directory = layout.session_files_dir(log_dir, server_id)

    def make_writer():
        return terminal_recording.Writer(directory, sid, header, config.tty_recording_max_bytes)
    try:
        terminal.start_relay(make_writer, config.record_input, config.on_log_failure)
    except BaseException:
        terminal.close()
        raise
    return terminal


class Terminal:
    """The wrapper's side of the session's pty."""

    def __init__(self, in_fd: int, out_fd: int):
        self.in_fd, self.out_fd = in_fd, out_fd
        self.saved = termios.tcgetattr(in_fd)
        self.size = window_size(out_fd) or (80, 24)
        self.master, self.slave = os.openpty()   # both close-on-exec
        termios.tcsetattr(self.slave, termios.TCSANOW, self.saved)
        set_window_size(self.master, self.size)
        self.relay_pid = None
        self.status_fd = -1
        self.go_fd = -1
        self.status = b""
        self.failed = []            # write failures the wrapper has not heard of yet
        self.summary = {}           # the recording's, from the relay's last message
        self.raw = False

    # -- the relay ---------------------------------------------------------------------------

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
                os.close(self.slave)
                code = _relay_main(self, make_writer, record_input, on_failure, status_w, go_r)
            finally:
                os._exit(code)
        os.close(status_w)
        os.close(go_r)
        self.go_fd = go_w
        os.close(self.master)   # the relay's is the only one: if it dies, the pty hangs up
        self.master = -1
        self.relay_pid, self.status_fd = pid, status_r
        message = self._next_message(END_TIMEOUT_SECONDS)
        if not message or "ready" not in message:
            self._stop_relay()
            raise EnhrecError((message or {}).get("failure")
                              or "the terminal relay did not start: run `enhrec doctor`")
        os.set_blocking(self.status_fd, False)

    def hand_over(self) -> None:
        """As the session's child starts: the real terminal goes raw, passing every byte on
        (the pty's line discipline does the work), and the relay starts reading it (in the
        terminal's own mode a ^D would read as its end). A resize the wrapper is told of (sudo
        passes SIGWINCH on to its command) goes to the relay too; it ignores repeats."""
        termios.tcsetattr(self.in_fd, termios.TCSADRAIN, raw_mode(self.saved))
        self.raw = True
        os.write(self.go_fd, b"g")
        relay = self.relay_pid
        signal.signal(signal.SIGWINCH, lambda *_: _signal_quietly(relay, signal.SIGWINCH))

    def restore(self) -> None:
        if self.raw:
            try:
                termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self.saved)
            except termios.error:
                pass   # hung up: nothing left to restore
            self.raw = False

    def child_side(self) -> None:
        """In the session's child, before it execs: the slave is its controlling terminal."""
        os.setsid()
        fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(self.slave, fd)
        if self.slave > 2:
            os.close(self.slave)

    def after_spawn(self) -> None:
        """The wrapper keeps no end of the pty: only the session's processes hold the slave."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def failures(self) -> list[str]:
        """The relay's write failures since the last call, without waiting."""
        while self._take_message(0):
            pass
        found, self.failed = self.failed, []
        return found

    def finish(self) -> dict:
        """Waits for the relay's end (the session's processes are gone, so the pty is) and
        returns its recording's summary; the real terminal is as it was."""
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


def _signal_quietly(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- the relay process ---------------------------------------------------------------------------

def _relay_main(terminal, make_writer, record_input, on_failure, status_fd, go_fd) -> int:
    for sig in RELAY_IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    _close_all_but({terminal.master, terminal.in_fd, status_fd, go_fd})
    relay = Relay(terminal.master, terminal.in_fd, record_input, on_failure, status_fd, go_fd)
    try:
        relay.writer = make_writer()
        relay.writer.start()
    except EnhrecError as e:
        relay.tell({"failure": str(e)})
        return 1
    relay.tell({"ready": True})
    relay.run()
    try:
        termios.tcsetattr(terminal.in_fd, termios.TCSADRAIN, terminal.saved)
    except termios.error:
        pass   # hung up
    return 0


def _close_all_but(keep) -> None:
    """Nothing of the wrapper's (the session's lock, the audit log) may live on in the relay: a
    flock held here would outlive a dead wrapper."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


class Relay:
    """Copies the real terminal's input to the pty and the pty's output to the real terminal,
    recording the output (and, with record_input, the input except at no-echo prompts)."""

    def __init__(self, master, term_fd, record_input, on_failure, status_fd, go_fd):
        self.master = master
        self.writer = None
        self.record_input = record_input
        self.on_failure = on_failure
        self.status_fd = status_fd
        self.go_fd = go_fd          # the real terminal is read once this says b"g"
        self.to_pty = bytearray()
        self.to_term = bytearray()
        self.term_gone = True       # until the go
        self.pty_gone = False
        self.told_failure = False
        self.size = window_size(term_fd)
        # Its own open file of the real terminal, so that O_NONBLOCK is not forced on the one
        # the wrapper, sudo and the watchdog share.
        self.term = os.open(f"/proc/self/fd/{term_fd}",
                            os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(master, False)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGWINCH, lambda *_: None)   # seen through the wake-up pipe
        self.poller = select.poll()
        self.masks = {}

    def tell(self, message: dict) -> None:
        try:
            os.write(self.status_fd, json.dumps(message).encode() + b"\n")
        except OSError:
            pass   # the wrapper is gone; the session ends with the pty

    def run(self) -> None:
        while not self.pty_gone:
            self._step()
        self._drain_to_term()
        self._record(self.writer.close)
        self.tell({"end": self.writer.summary()})

    def _step(self) -> None:
        """One poll round: until something happens, or the recording's next flush is due."""
        self._update_poller()
        timeout = -1
        if self.writer.flush_at is not None:
            timeout = max(0, int((self.writer.flush_at - time.monotonic()) * 1000 + 0.999))
        try:
            ready = self.poller.poll(timeout)
        except InterruptedError:
            ready = ()
        for fd, ev in ready:
            if fd == self.master:
                if ev & select.POLLOUT:
                    self._write_pty()
                if ev & _READABLE:
                    self._from_pty()
            elif fd == self.term and not self.term_gone:
                if ev & select.POLLOUT:
                    self._write_term()
                if ev & _READABLE and not self.term_gone:
                    self._from_term()
            elif fd == self.wake_r:
                self._on_signal()
            elif fd == self.go_fd:
                self._on_go()
        if self.writer.flush_due():
            self._record(self.writer.flush)

    def _update_poller(self) -> None:
        """Registers what each fd waits for now: a side is not read while the other is behind,
        so a slow reader holds the writer up as a real terminal would."""
        masks = {self.wake_r: select.POLLIN}
        if self.go_fd >= 0:
            masks[self.go_fd] = select.POLLIN
        if not self.pty_gone:
            masks[self.master] = (select.POLLIN if len(self.to_term) < HIGH_WATER else 0) | \
                (select.POLLOUT if self.to_pty else 0)
        if not self.term_gone:
            masks[self.term] = (select.POLLIN if len(self.to_pty) < HIGH_WATER else 0) | \
                (select.POLLOUT if self.to_term else 0)
        if masks == self.masks:
            return
        for fd in self.masks.keys() - masks.keys():
            self.poller.unregister(fd)
        for fd, mask in masks.items():
            if self.masks.get(fd) != mask:
                self.poller.register(fd, mask)
        self.masks = masks

    # -- the two directions ------------------------------------------------------------------

    def _from_pty(self) -> None:
        data = self._read_pty()
        if not data:
            return
        try:
            self.writer.output(data)
        except EnhrecError as e:
            self._failed(e)
        if self.term_gone:
            return
        self.to_term += data
        self._write_term()

    def _read_pty(self) -> bytes:
        """What the pty has now. A pty hands out at most 4 KiB a read: what is already there is
        taken in one go (up to READ_SIZE, never waiting), for fewer and larger writes."""
        chunks, size = [], 0
        while size < READ_SIZE:
            try:
                data = os.read(self.master, READ_SIZE - size)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.EIO:   # EIO: the last of the session's processes closed it
                    raise
                data = b""
            if not data:
                self.pty_gone = True
                break
            chunks.append(data)
            size += len(data)
            if len(data) < PTY_CHUNK:
                break   # the pty is empty: save the EAGAIN
        return b"".join(chunks)

    def _from_term(self) -> None:
        try:
            data = os.read(self.term, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._hangup()
            return
        if self.record_input and not _no_echo_prompt(self.master):
            self._record(lambda: self.writer.input(data))
        self.to_pty += data
        self._write_pty()

    def _write_pty(self) -> None:
        try:
            del self.to_pty[:os.write(self.master, self.to_pty)]
        except BlockingIOError:
            pass
        except OSError:
            self.to_pty.clear()   # the pty is gone: its read sees EIO next

    def _write_term(self) -> None:
        try:
            del self.to_term[:os.write(self.term, self.to_term)]
        except BlockingIOError:
            pass
        except OSError:
            self._hangup()

    def _hangup(self) -> None:
        """The real terminal is gone (the client vanished): hang up the pty, as the real one
        was, so the kernel signals the session's processes as it did."""
        self.term_gone = True
        self.to_term.clear()
        if not self.pty_gone:
            os.close(self.master)
            self.pty_gone = True

    def _drain_to_term(self) -> None:
        while self.to_term and not self.term_gone:
            if not select.select([], [self.term], [], END_TIMEOUT_SECONDS)[1]:
                return
            self._write_term()

    def _on_go(self) -> None:
        if os.read(self.go_fd, 1) == b"g":
            self.term_gone = False
        os.close(self.go_fd)   # end of file: the wrapper is gone; the session ends with the pty
        self.go_fd = -1

    def _on_signal(self) -> None:
        try:
            os.read(self.wake_r, 512)
        except BlockingIOError:
            pass
        size = window_size(self.term)
        if size and size != self.size and not self.pty_gone:
            self.size = size
            set_window_size(self.master, size)   # the kernel sends the session its SIGWINCH
            self._record(lambda: self.writer.resize(*size))

    def _record(self, write) -> None:
        try:
            write()
        except EnhrecError as e:
            self._failed(e)

    def _failed(self, error) -> None:
        """on_log_failure `close`: nothing more is recorded and the wrapper ends the session;
        `continue`: recording goes on (Writer). The wrapper hears of the first failure."""
        if self.on_failure == "close":
            self.writer.stop()
        if not self.told_failure:
            self.tell({"failure": str(error)})
            self.told_failure = True


def _no_echo_prompt(master: int) -> bool:
    """Whether the pty reads a line without echoing it: how password prompts read (sudo, ssh,
    passwd, getpass(3), `read -s`, `stty -echo`). Line editors (readline) and full-screen
    programs read key by key without the pty's echo, and echo themselves: they are not this."""
    try:
        lflag = termios.tcgetattr(master)[3]
    except termios.error:
        return True
    return not lflag & termios.ECHO and bool(lflag & termios.ICANON)
