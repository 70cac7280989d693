"""A terminal recording as asciicast v2 (`enhrec export --format asciicast`) and replayed in the
terminal (`enhrec play`), each with the session's kernel events beside it.

asciicast's "o" data is text. Output is decoded as asciinema 2.2 records it: one incremental
UTF-8 decoder with errors="replace" over the whole output stream, so a character split
between two reads comes out whole, and each byte that is not UTF-8 becomes U+FFFD (that, and
a sequence cut off at the very end, is what the export loses; the recording keeps the bytes,
and `enhrec play` replays them as they were).
"""

import codecs
import contextlib
import datetime
import json
import os
import re
import termios
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import layout, terminal_recording as rec

MARKER_WIDTH = 60
EVENT_TIME_STEP = 0.001      # the events' `time` is cut to the millisecond
EVENT_WIDTH = 100
# Writes the replay does not show: terminals and the bit bucket.
QUIET_WRITES = ("/dev/null", "/dev/tty", "/dev/pts/", "/dev/ptmx")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# A full-screen program switches to the alternate screen and back (xterm's 1049, 1047, 47).
_ALT_ON = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_OFF = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")
_TRAILING_CONTROLS = re.compile(rb"(?:\x1b\[[0-9;?]*[A-Za-z]|\r)+$")


def epoch_seconds(stamp) -> float | None:
    """An event's `time` (RFC 3339, ms, Z) as epoch seconds."""
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def _offset(e: dict, origin: float) -> float | None:
    """An event's place in the recording: the end of the millisecond its `time` names (it is
    cut to the millisecond), so never before it happened and at most 1 ms after. Output read
    in that millisecond comes before it: the echo of a command line before the command."""
    t = epoch_seconds(e.get("time"))
    return None if t is None else max(0.0, t + EVENT_TIME_STEP - origin)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def exec_label(e: dict) -> str:
    """The executed file and its arguments, shortened: a marker's label."""
    words = [str(e.get("path", ""))] + [str(a) for a in e.get("argv") or []]
    label = " ".join(w if w and " " not in w else json.dumps(w) for w in words)
    rc = e.get("return_code")
    if isinstance(rc, int) and rc < 0:
        label += f" (failed: {os.strerror(-rc)})"
    return shorten(label, MARKER_WIDTH)


# -- asciicast v2 ---------------------------------------------------------------------------

def asciicast_lines(frames, start: dict | None, events: list[dict]):
    """The lines of an asciicast v2 file. `frames`: the recording's; `start`: session.start;
    `events`: the session's events (its session.command ones become "m" markers)."""
    frames = iter(frames)
    header_frame = next(frames, None)
    if header_frame is None or header_frame.kind != rec.HEADER:
        raise ValueError("the recording has no header")
    head = header_frame.json()
    origin = head["time_ns"] / 1e9
    start = start or {}
    # A session without a terminal (tty_recording: all) had no size: asciicast needs one.
    header = {"version": 2, "width": head.get("width") or 80, "height": head.get("height") or 24,
              "timestamp": int(origin),
              "title": _title(start),
              "env": {"TERM": head.get("term", "")},
              "enhrec": {k: v for k, v in (("sid", head.get("sid")),
                                           ("login", start.get("login")),
                                           ("user", start.get("user")),
                                           ("host", start.get("server_hostname")),
                                           ("remote", start.get("addr.remote")))
                         if v is not None}}
    yield _dump(header)
    markers = sorted((_offset(e, origin), exec_label(e)) for e in events
                     if e.get("event") == "session.command" and _offset(e, origin) is not None)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    last = 0.0
    for frame in frames:
        t = frame.time / 1e6
        while markers and markers[0][0] <= t:
            last = max(last, markers[0][0])
            yield _dump([round(last, 6), "m", markers.pop(0)[1]])
        last = max(last, t)
        if frame.kind == rec.OUTPUT:
            text = decoder.decode(frame.data)
            if text:
                yield _dump([round(last, 6), "o", text])
        elif frame.kind == rec.INPUT:
            yield _dump([round(last, 6), "i", frame.data.decode("utf-8", "replace")])
        elif frame.kind == rec.RESIZE:
            yield _dump([round(last, 6), "r", frame.data.decode("ascii", "replace")])
        elif frame.kind == rec.TRUNCATED:
            limit = frame.json().get("limit")
            yield _dump([round(last, 6), "m", f"recording truncated at {limit} bytes"])
    tail = decoder.decode(b"", final=True)
    if tail:
        yield _dump([round(last, 6), "o", tail])
    for t, label in markers:   # execs after the last output
        last = max(last, t)
        yield _dump([round(last, 6), "m", label])


def _title(start: dict) -> str:
    who = f"{start.get('login', '?')}@{start.get('server_hostname', '?')}"
    remote = start.get("addr.remote")
    return f"{who} from {remote}" if remote else who


def _dump(obj) -> str:
    # As asciinema 2.2 writes its lines.
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


# -- replay -------------------------------------------------------------------------------------

def shown_event(e: dict) -> str | None:
    """The one line `play --events` shows for an event, or None for the noise."""
    kind = e.get("event")
    if kind == "session.command":
        return "exec " + exec_label(e)
    if kind == "session.network":
        rc = e.get("return_code")
        err = f" ({os.strerror(-rc)})" if isinstance(rc, int) and rc < 0 and rc != -115 else ""
        addr = e.get("dst_addr", "?")
        addr = f"[{addr}]" if ":" in addr else addr
        return f"connect {addr}:{e.get('dst_port')} {e.get('protocol', '')}{err} ({e.get('program')})"
    if kind == "session.disk":
        flags = e.get("flags", 0)
        path = e.get("abs_path") or e.get("path", "")
        if not flags & _WRITE_FLAGS or path.startswith(QUIET_WRITES):
            return None
        rc = e.get("return_code")
        err = f" ({os.strerror(-rc)})" if isinstance(rc, int) and rc < 0 else ""
        return f"write {path}{err} ({e.get('program')})"
    return None


def _safe(text: str) -> str:
    """No control characters of the log's reach the replaying terminal from an event line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def play(frames, events, out_fd: int, speed=1.0, idle_limit=None, show_events=False,
         sleep=time.sleep) -> None:
    """Writes the recorded output to out_fd with its timing: gaps divided by `speed`, and none
    longer than `idle_limit` seconds (asciinema's -i). With show_events, each shown event is a
    dim line between the output, at its moment; while a full-screen program has the screen (the
    alternate screen) they wait and follow when it gives the screen back."""
    frames = iter(frames)
    origin = next(frames).json()["time_ns"] / 1e9
    shown = []
    if show_events:
        for e in events:
            line, t = shown_event(e), _offset(e, origin)
            if line and t is not None:
                shown.append((t, f"+{t:.3f}s {_safe(shorten(line, EVENT_WIDTH))}"))
        shown.sort()
    screen = _Screen(out_fd)
    previous = 0.0

    def wait_until(t):
        nonlocal previous
        gap = max(0.0, t - previous)
        previous = max(previous, t)
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        if gap > 0:
            sleep(gap / speed)
    for frame in frames:
        if frame.kind != rec.OUTPUT:
            continue
        t = frame.time / 1e6
        while shown and shown[0][0] <= t:
            when, line = shown.pop(0)
            wait_until(when)
            screen.event(line)
        wait_until(t)
        screen.output(frame.data)
    for when, line in shown:
        wait_until(when)
        screen.event(line)
    screen.flush_events()


ANSWERBACK_SECONDS = 0.05


@contextlib.contextmanager
def answerbacks_discarded(fd: int):
    """While a recording replays on the terminal `fd`: what the terminal answers to the
    session's output (a recorded session can ask it to report its title, its colours ...) is
    neither echoed nor left behind to be read by the shell after `enhrec play` as if typed, the
    way a hostile session's output could type commands for the one replaying it. Echo and line
    editing are off meanwhile (Ctrl-C still stops), and at the end, after a moment for late
    answers, pending input is dropped, as asciinema does."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | termios.ICANON)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        time.sleep(ANSWERBACK_SECONDS)
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


class _Screen:
    """The replaying terminal: output as recorded, event lines where they do not disturb it."""

    def __init__(self, fd):
        self.fd = fd
        self.full_screen = False
        self.waiting = []
        self.at_line_start = True

    def output(self, data: bytes) -> None:
        _write_all(self.fd, data)
        # at the start of a line even when a carriage return or a mode switch followed the
        # newline (bash ends a command line with both)
        self.at_line_start = _TRAILING_CONTROLS.sub(b"", data[-64:]).endswith(b"\n")
        if any(seq in data for seq in _ALT_ON + _ALT_OFF):
            self.full_screen = _last_switch(data)
            if not self.full_screen:
                self.flush_events()

    def event(self, line: str) -> None:
        self.waiting.append(line)
        if not self.full_screen:
            self.flush_events()

    def flush_events(self) -> None:
        if self.waiting:
            _write_all(self.fd, _event_bytes(self.waiting, self.at_line_start))
            self.waiting, self.at_line_start = [], True


def _last_switch(data: bytes) -> bool:
    on = max(data.rfind(seq) for seq in _ALT_ON)
    off = max(data.rfind(seq) for seq in _ALT_OFF)
    return on > off


def _event_bytes(lines, at_line_start) -> bytes:
    text = "".join(f"\x1b[2m▶ {line}\x1b[0m\r\n" for line in lines)
    return (b"" if at_line_start else b"\r\n") + text.encode()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def recording_summary(frames) -> dict:
    """What `enhrec show` says of a recording: its size at the start, length and bytes."""
    summary = {"width": None, "height": None, "duration_seconds": 0.0, "output_bytes": 0,
               "input_bytes": 0, "resizes": 0, "truncated": False}
    for frame in frames:
        if frame.kind == rec.HEADER and summary["width"] is None:
            head = frame.json()
            summary["width"], summary["height"] = head.get("width"), head.get("height")
        elif frame.kind == rec.OUTPUT:
            summary["output_bytes"] += len(frame.data)
        elif frame.kind == rec.INPUT:
            summary["input_bytes"] += len(frame.data)
        elif frame.kind == rec.RESIZE:
            summary["resizes"] += 1
        elif frame.kind == rec.TRUNCATED:
            summary["truncated"] = True
        summary["duration_seconds"] = frame.time / 1e6
    return summary


# -- finding it ----------------------------------------------------------------------------

def recording_paths(log_dir: str, events: list[dict]) -> list[str]:
    """The parts of the session's terminal recording, beside its session files."""
    first = events[0] if events else {}
    sid, server_id = first.get("sid"), first.get("server_id")
    if not isinstance(sid, str) or not isinstance(server_id, str) or "/" in server_id:
        return []
    return rec.part_paths(layout.session_files_dir(log_dir, server_id), sid)


def frames_of(paths: list[str]):
    """The recording's frames; what is wrong with it as one EnhrecError."""
    try:
        yield from rec.read_frames(paths)
    except ValueError as e:
        raise EnhrecError(str(e)) from None


def summary_of(log_dir: str, events: list[dict]) -> dict | None:
    """`enhrec show`'s account of the recording, or None when there is none."""
    paths = recording_paths(log_dir, events)
    return recording_summary(frames_of(paths)) if paths else None

