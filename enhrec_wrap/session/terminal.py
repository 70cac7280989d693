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

This module is the wrapper's side of the pty and the pipes; terminal_process.py forks the relay
and hears from it, terminal_relay.py is the relay's loop, terminal_modes.py the terminal's modes
and sizes, log/terminal_recording.py the recording's format and writer.
"""

import fcntl
import os
import signal
import termios

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import layout, terminal_recording
from enhrec_wrap.session.terminal_modes import raw_mode, set_window_size, window_size
from enhrec_wrap.session.terminal_process import RelayProcess
from enhrec_wrap.session.terminal_relay import PipeRelay, PtyRelay


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


class Terminal(RelayProcess):
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


class Pipes(RelayProcess):
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

