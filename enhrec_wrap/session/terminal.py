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

With `tty_recording: all`, a session without a terminal gets no pty but pipes for its standard
output and error, relayed (and recorded) the same way; its standard input stays what it was.
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
    """The session has a terminal when what it reads and what it writes are one, and we are
    its foreground: output sent to a file or a pipe (`enhrec-wrap -- cmd > file`) stays the
    exact bytes, with no pty; and a wrapper started in the background (`&`) may not read the
    terminal (it would read EIO as a hangup), so its session uses the terminal as before."""
    try:
        return os.isatty(in_fd) and os.isatty(out_fd) and \
            os.path.samestat(os.fstat(in_fd), os.fstat(out_fd)) and \
            os.tcgetpgrp(in_fd) == os.getpgrp()
    except OSError:
        return False


def open_for_session(config, log_dir: str, server_id: str, sid: str, term: str):
    """The session's Terminal (or, with `tty_recording: all` and no terminal, its Pipes), its
    relay running; None when nothing of its I/O is relayed."""
    if config.tty_recording == "off":
        return None
    if has_terminal():
        try:
            relayed = Terminal(0, 1)
        except (OSError, termios.error) as e:
            raise EnhrecError(f"cannot open a terminal for the session: {e}: "
                              "run `enhrec doctor`") from None
        header = {"sid": sid, "width": relayed.size[0], "height": relayed.size[1], "term": term,
                  "terminal": True, "input_recorded": config.record_input}
    elif config.tty_recording == "all":
        relayed = Pipes()
        header = {"sid": sid, "term": term, "terminal": False, "input_recorded": False}
    else:
        return None
    directory = layout.session_files_dir(log_dir, server_id)

    def make_writer():
        return terminal_recording.Writer(directory, sid, header, config.tty_recording_max_bytes)
    try:
        relayed.start_relay(make_writer, config.record_input, config.on_log_failure)
    except BaseException:
        relayed.close()
        raise
    return relayed


class _RelayProcess:
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
                code = _relay_main(self, make_writer, record_input, on_failure, status_w, go_r)
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


class Terminal(_RelayProcess):
    """The wrapper's side of the session's pty."""

    def __init__(self, in_fd: int, out_fd: int):
        super().__init__()
        self.in_fd, self.out_fd = in_fd, out_fd
        self.saved = termios.tcgetattr(in_fd)
        self.size = window_size(out_fd) or (80, 24)
        self.master, self.slave = os.openpty()   # both close-on-exec
        termios.tcsetattr(self.slave, termios.TCSANOW, self.saved)
        set_window_size(self.master, self.size)
        self.raw = False

    def _relay_fds(self) -> set:
        """What the relay keeps: everything else of the wrapper's (the slave too) is closed."""
        return {self.master, self.in_fd}

    def _in_relay(self, record_input, on_failure, status_fd, go_fd):
        return PtyRelay(self.master, self.in_fd, record_input, on_failure, status_fd, go_fd)

    def _forked(self) -> None:
        os.close(self.master)   # the relay's is the only one: if it dies, the pty hangs up
        self.master = -1

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

    def restore_after_relay(self) -> None:
        try:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self.saved)
        except termios.error:
            pass   # hung up

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


class Pipes(_RelayProcess):
    """The wrapper's side of a session without a terminal under `tty_recording: all`: a pipe
    for its standard output and one for its standard error (one for both when the wrapper's are
    one file, so that their order stays), whose read ends the relay holds."""

    def __init__(self):
        super().__init__()
        same = _same_file(1, 2)
        out = os.pipe2(os.O_CLOEXEC)
        err = out if same else os.pipe2(os.O_CLOEXEC)
        self.reads = {out[0]: 1} if same else {out[0]: 1, err[0]: 2}   # read end -> our fd
        self.out_w, self.err_w = out[1], err[1]

    def _relay_fds(self) -> set:
        return set(self.reads) | {1, 2}

    def _in_relay(self, record_input, on_failure, status_fd, go_fd):
        os.close(go_fd)   # nothing to wait for: output comes only once the session runs
        return PipeRelay(self.reads, on_failure, status_fd)

    def _forked(self) -> None:
        for fd in self.reads:
            os.close(fd)   # the relay's: if it dies, the session's next write gets EPIPE
        self.reads = {}

    def hand_over(self) -> None:
        pass

    def child_side(self) -> None:
        os.dup2(self.out_w, 1)
        os.dup2(self.err_w, 2)
        for fd in {self.out_w, self.err_w}:
            if fd > 2:
                os.close(fd)

    def after_spawn(self) -> None:
        for fd in {self.out_w, self.err_w} - {-1}:
            os.close(fd)
        self.out_w = self.err_w = -1


def _same_file(a: int, b: int) -> bool:
    try:
        return os.path.samestat(os.fstat(a), os.fstat(b))
    except OSError:
        return False


def _signal_quietly(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- the relay process ---------------------------------------------------------------------------

def _relay_main(relayed, make_writer, record_input, on_failure, status_fd, go_fd) -> int:
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


class _Relay:
    """What both relays share: the recording, and the status messages to the wrapper."""

    def __init__(self, on_failure, status_fd):
        self.writer = None
        self.on_failure = on_failure
        self.status_fd = status_fd
        self.told_failure = False

    def tell(self, message: dict) -> None:
        try:
            os.write(self.status_fd, json.dumps(message).encode() + b"\n")
        except OSError:
            pass   # the wrapper is gone; the session ends with the pty

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


class PipeRelay(_Relay):
    """Copies the session's standard output and error from their pipes to the wrapper's, as
    they come, recording both (in the order read) as output. Writes block: a slow reader holds
    the session up, as the pipes it had before would have."""

    def __init__(self, reads: dict, on_failure, status_fd):
        super().__init__(on_failure, status_fd)
        self.reads = dict(reads)    # read end -> the wrapper's fd it goes to

    def run(self) -> None:
        poller = select.poll()
        for fd in self.reads:
            poller.register(fd, select.POLLIN)
        while self.reads:
            timeout = -1
            if self.writer.flush_at is not None:
                timeout = max(0, int((self.writer.flush_at - time.monotonic()) * 1000 + 0.999))
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                ready = ()
            for fd, _ in ready:
                if not self._copy(fd):
                    poller.unregister(fd)
                    os.close(fd)
                    del self.reads[fd]
            if self.writer.flush_due():
                self._record(self.writer.flush)
        self._record(self.writer.close)
        self.tell({"end": self.writer.summary()})

    def _copy(self, fd) -> bool:
        """One read of fd passed on; False at its end, or when its reader is gone (closing
        the pipe then gives the session the EPIPE it got before)."""
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        if not data:
            return False
        self._record(lambda: self.writer.output(data))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.reads[fd], view):]
        except OSError:
            return False
        return True


class PtyRelay(_Relay):
    """Copies the real terminal's input to the pty and the pty's output to the real terminal,
    recording the output (and, with record_input, the input except at no-echo prompts)."""

    def __init__(self, master, term_fd, record_input, on_failure, status_fd, go_fd):
        super().__init__(on_failure, status_fd)
        self.master = master
        self.record_input = record_input
        self.go_fd = go_fd          # the real terminal is read once this says b"g"
        self.to_pty = bytearray()
        self.to_term = bytearray()
        self.term_gone = True       # until the go
        self.pty_gone = False
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

def _no_echo_prompt(master: int) -> bool:
    """Whether the pty reads a line without echoing it: how password prompts read (sudo, ssh,
    passwd, getpass(3), `read -s`, `stty -echo`). Line editors (readline) and full-screen
    programs read key by key without the pty's echo, and echo themselves: they are not this."""
    try:
        lflag = termios.tcgetattr(master)[3]
    except termios.error:
        return True
    return not lflag & termios.ECHO and bool(lflag & termios.ICANON)
