"""The terminal relay (a process of its own, session/terminal_process.py): it copies the
session's output to the real terminal and the real terminal's input to the session, and writes
the recording (log/terminal_recording.py) as it goes."""

import errno
import json
import mmap
import os
import select
import signal
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.session.terminal_modes import no_echo_prompt, set_window_size, window_size

READ_SIZE = 1 << 16
PTY_CHUNK = 4095          # the most one read of a pty master returns (N_TTY_BUF_SIZE - 1)
# Stop reading a side while this much is waiting to be written to the other: the writer then
# blocks as it would on a real terminal.
HIGH_WATER = 1 << 18
END_TIMEOUT_SECONDS = 5.0
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


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
        self.to_term = Backlog()
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
        # The pty even when neither is wanted: its hangup (the session's end) is seen. Not with
        # the backlog full, where a hangup could not be read and would wake every round.
        if not self.pty_gone and not self.to_term.full():
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
        if self.term_gone:
            self.to_term.clear()
        else:
            self._write_term()
        # Recorded once it is passed on: the terminal's reader goes on with it meanwhile.
        self._record(lambda: self.writer.output(data))

    def _read_pty(self) -> memoryview:
        """What the pty has now, read into the backlog (valid until the next read). A pty hands
        out at most 4 KiB a read: what is already there is taken in one go (up to READ_SIZE,
        never waiting), for fewer and larger writes."""
        room = self.to_term.room()
        size = 0
        while size < len(room):
            try:
                got = os.readv(self.master, [room[size:]])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.EIO:   # EIO: the last of the session's processes closed it
                    raise
                got = 0
            if not got:
                self.pty_gone = True
                break
            size += got
            if got < PTY_CHUNK:
                break   # the pty is empty: save the EAGAIN
        return self.to_term.added(size)

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
        # A resize made before these bytes were typed reaches the session first, though its
        # SIGWINCH may still be on its way to us (through sudo and the wrapper, under load):
        # `stty size` typed right after a resize must see the new size. One ioctl per read.
        self._follow_size()
        if self.record_input and not no_echo_prompt(self.master):
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
            self.to_term.taken(os.write(self.term, self.to_term.waiting()))
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
        self._follow_size()

    def _follow_size(self) -> None:
        """The real terminal's size onto the pty, when it changed."""
        size = window_size(self.term)
        if size and size != self.size and not self.pty_gone:
            self.size = size
            set_window_size(self.master, size)   # the kernel sends the session its SIGWINCH
            self._record(lambda: self.writer.resize(*size))


class Backlog:
    """The pty's output the real terminal has not taken yet, in one buffer made once: reads go
    straight into it, writes come straight from it. (A bytearray that grew by each read and
    shrank by each write was a fresh allocation each time the backlog came and went: 6,900 to
    8,900 page faults in the relay per 20 MB `cat`, 180 to 230 with this.)"""

    # Reads stop at HIGH_WATER waiting, so there is always room for one more; twice that makes
    # the move of what waits back to the start (in room()) rare: once per HIGH_WATER or more
    # passed on.
    CAPACITY = 2 * HIGH_WATER + READ_SIZE

    def __init__(self):
        # An anonymous mapping, not a bytearray (which zeroes, so touches, all of it): an idle
        # session's relay has only the pages its output reached; a burst leaves up to CAPACITY.
        self.view = memoryview(mmap.mmap(-1, self.CAPACITY))
        self.start = self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def full(self) -> bool:
        """No room at all. Past HIGH_WATER only the pty's last output after its hangup is read
        (tens of KiB), so in practice never."""
        return len(self) == self.CAPACITY

    def room(self) -> memoryview:
        """Where the next read goes: up to READ_SIZE after what waits, all of it while less than
        HIGH_WATER waits."""
        if self.start and self.CAPACITY - self.end < READ_SIZE:
            # One memmove, though the two may overlap (CPython's memoryview copies so): through
            # bytes() first, a second copy and an allocation, 256 KiB took 10.8 µs, now 3.3.
            size = len(self)
            self.view[:size] = self.view[self.start:self.end]
            self.start, self.end = 0, size
        return self.view[self.end:self.end + READ_SIZE]

    def added(self, size: int) -> memoryview:
        """`size` bytes were read into room(): they wait now; returns them."""
        self.end += size
        return self.view[self.end - size:self.end]

    def waiting(self) -> memoryview:
        return self.view[self.start:self.end]

    def taken(self, size: int) -> None:
        self.start += size
        if self.start == self.end:
            self.clear()

    def clear(self) -> None:
        self.start = self.end = 0
