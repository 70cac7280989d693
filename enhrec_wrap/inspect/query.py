"""Which events a question is about: the filters of search, tail and sessions, and the reads
that apply them to the log (its daily files, or events.log as it grows).

A new way to pick events (a new option) is a new field of Filters: its test in match(), and, when
it can, a needle that lets the reader skip lines before parsing them.
"""

import fnmatch
import ipaddress
import os
import re
import time


from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events.kinds import COMMAND, DISK, END, IO_URING, NETWORK, REFUSED, START
from enhrec_wrap.events.timestamps import rfc3339_from_seconds
from enhrec_wrap.inspect import gaps
from enhrec_wrap.inspect.text import KIND_WORDS
from enhrec_wrap.inspect.times import parse_time
from enhrec_wrap.log import file_lines, layout, reader

EVENT_ALIASES = {
    "start": START, "end": END,
    "command": COMMAND, "exec": COMMAND, "commands": COMMAND,
    "disk": DISK, "open": DISK, "file": DISK, "files": DISK,
    "network": NETWORK, "connect": NETWORK, "net": NETWORK, "connection": NETWORK,
    "refused": REFUSED, "refusal": REFUSED, "io_uring": IO_URING, "uring": IO_URING,
}
# The fields --path matches: the file the kernel opened or executed, what the caller asked for,
# and schema 1's abs_path.
PATH_FIELDS = ("path", "requested_path", "executable", "abs_path")
_GLOB_CHARS = re.compile(r"[*?\[\]]")
# How long `tail -f` waits when events.log has nothing new.
FOLLOW_IDLE_SECONDS = 0.25


class Filters:
    """The event filters shared by search and tail; every one given must match."""

    def __init__(self, login=None, program=None, path=None, dst=None, event=(), since=None,
                 until=None, sid=None, now=None):
        self.login = login
        self.program = program
        self.path = path
        self.dst = _parse_dst(dst) if dst else None
        self.events = {_event_type(e) for e in event}
        self.since = parse_time(since, "--since", now) if since else None
        self.until = parse_time(until, "--until", now) if until else None
        if self.since and self.until and self.since > self.until:
            raise EnhrecError(f"--since {since!r} is after --until {until!r}: swap them")
        self.sid = sid.lower() if sid else None
        if self.sid is not None and not re.fullmatch(r"[0-9a-f-]+", self.sid):
            raise EnhrecError(f"--sid {sid!r}: not a session id (or a prefix of one): "
                              "list them with `enhrec sessions`")

    def days(self) -> tuple[str | None, str | None]:
        """The daily files that can hold matches: an event is written at or after its time, so
        to a file of its day or (just after midnight) of the next."""
        first = self.since[:10] if self.since else None
        last = None
        if self.until:
            last = layout.day_of(layout.day_start(self.until[:10]) + 86400)
        return first, last

    def match(self, e: dict) -> bool:
        if self.sid and not str(e.get("sid", "")).startswith(self.sid):
            return False
        if self.login is not None and e.get("login") != self.login:
            return False
        if self.events and e.get("event") not in self.events:
            return False
        if self.since or self.until:
            t = e.get("time")
            if not isinstance(t, str) or (self.since and t < self.since) or (self.until and t > self.until):
                return False
        if self.program and not any(fnmatch.fnmatchcase(name, self.program) for name in _program_names(e)):
            return False
        if self.path and not any(isinstance(p, str) and fnmatch.fnmatchcase(p, self.path)
                                 for p in map(e.get, PATH_FIELDS)):
            return False
        if self.dst and not _dst_matches(e, self.dst):
            return False
        return True


def _event_type(word: str) -> str:
    key = word.strip().lower()
    if key in KIND_WORDS:
        return key
    if key in EVENT_ALIASES:
        return EVENT_ALIASES[key]
    raise EnhrecError(f"--event {word!r}: unknown event type: give one of start, end, exec, open, "
                      "connect, refused, io_uring (or session.start, session.end, "
                      "session.command, session.disk, session.network, session.refused, "
                      "session.io_uring)")


def _parse_dst(text: str):
    """ADDR, ADDR:PORT, [IPv6]:PORT, :PORT, or a network (10.0.0.0/8) -> (address|network, port)."""
    raw = text.strip()
    addr, port = raw, None
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0:
            raise EnhrecError(f"--dst {text!r}: missing ]: write an IPv6 address with a port as [::1]:22")
        addr, rest = raw[1:close], raw[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise EnhrecError(f"--dst {text!r}: expected :PORT after ]")
            port = rest[1:]
    elif raw.count(":") == 1:
        addr, port = raw.split(":")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise EnhrecError(f"--dst {text!r}: the port must be a number from 1 to 65535")
        port = int(port)
    if addr == "":
        if port is None:
            raise EnhrecError("--dst: give an address, ADDR:PORT or :PORT")
        return None, port
    try:
        if "/" in addr:
            return ipaddress.ip_network(addr, strict=False), port
        return str(ipaddress.ip_address(addr)), port
    except ValueError:
        raise EnhrecError(f"--dst {text!r}: not an IP address: give e.g. 10.0.0.5, 10.0.0.5:443, "
                          "[2001:db8::1]:443, :22 or 10.0.0.0/8 (names are not resolved)") from None


def _dst_matches(e: dict, dst) -> bool:
    if e.get("event") != NETWORK:
        return False
    addr, port = dst
    if port is not None and e.get("dst_port") != port:
        return False
    if addr is None:
        return True
    if isinstance(addr, str):
        return e.get("dst_addr") == addr
    try:
        return ipaddress.ip_address(e.get("dst_addr", "")) in addr
    except ValueError:
        return False


def _program_names(e: dict) -> list[str]:
    names = [e["program"]] if isinstance(e.get("program"), str) else []
    if e.get("event") == COMMAND and isinstance(e.get("path"), str):
        names.append(os.path.basename(e["path"]))
    return names


# --- reading the log with them ----------------------------------------------------------------

def search(log: reader.LogDir, filters: Filters, stats: reader.Stats, progress=None,
           missing: dict | None = None):
    """(event, line, the address its session came from or None) of every match: from the
    daily files, oldest first, then, session by session, what only the session files hold (a
    daily file removed or renamed, a write that failed there). `missing` gets, for each session
    with events missing from both, their `ei` ranges.

    Every line is parsed, matching or not: that is how a damaged line is counted and a hole in
    a session found. It costs 1.6 s per million lines where skipping lines without the filter's
    words cost 0.7 s (measured here, 440-byte lines)."""
    remotes, seen, ends = {}, {}, {}

    def note(e):
        """Takes the event in; False when it was read already."""
        sid = e.get("sid")
        if not isinstance(sid, str):
            return True
        if not seen.setdefault(sid, gaps.Eis()).add(e.get("ei")) and isinstance(e.get("ei"), int):
            return False
        if e.get("event") == END and isinstance(e.get("ei"), int):
            ends[sid] = e["ei"]
        if e.get("event") == START and e.get("addr.remote"):
            remotes[sid] = e["addr.remote"]
        return True

    first_day, last_day = filters.days()
    for e, line in reader.day_events(log, first_day, last_day, stats, progress=progress):
        if note(e) and filters.match(e):
            yield e, line, remotes.get(e.get("sid"))
    from_zero = not filters.since   # else a session's first events may be before the range
    for sid, directory in log.stored_sids().items():
        if filters.sid and not sid.startswith(filters.sid):
            continue
        if sid in seen:
            if not seen[sid].gaps(ends.get(sid), from_zero):
                continue
        elif not _may_have_events_within(log, sid, directory, filters, stats):
            continue
        for e, line in reader.session_lines(log, sid, stats, directory):
            if note(e) and filters.match(e):
                yield e, line, remotes.get(sid)
    if missing is not None:
        for sid, eis in seen.items():
            holes = eis.gaps(ends.get(sid), from_zero)
            if holes:
                missing[sid] = holes


def _may_have_events_within(log, sid, directory, filters: Filters, stats) -> bool:
    """For a session the daily files do not name at all: whether its events can be within
    --since/--until, from when its files were last written and when it started."""
    if filters.since and rfc3339_from_seconds(log.last_change(sid, directory)) < filters.since:
        return False
    if filters.until:
        started = log.start_time(sid, directory, stats)
        return started is not None and started <= filters.until
    return True


def newest(path: str, end: int, filters: Filters, count: int, stats: reader.Stats,
           missing: dict | None = None, duplicates: reader.Duplicates | None = None
           ) -> tuple[list[tuple[dict, bytes]], dict]:
    """The last `count` matches in the file before byte `end`, oldest first, each line once,
    and the last `ei` read of each session. `missing` gets the holes in what was read (between
    a session's first and last event read: its others may be in an earlier file)."""
    found = []
    seen = {}
    if count:
        for line in file_lines.reverse_lines(path, end, stats=stats):
            e = reader.parse(line, stats)
            if e is None:
                continue
            if isinstance(e.get("sid"), str):
                seen.setdefault(e["sid"], gaps.Eis()).add(e.get("ei"))
            if filters.match(e) and (duplicates is None or duplicates.fresh(path, line)):
                found.append((e, line))
                if len(found) == count:
                    break
    found.reverse()
    if missing is not None:
        for sid, eis in seen.items():
            holes = eis.gaps(from_zero=False)
            if holes:
                missing[sid] = holes
    return found, {sid: eis.last for sid, eis in seen.items()}


def follow(follower: reader.Follower, filters: Filters, last: dict | None = None,
           missing: dict | None = None, duplicates: reader.Duplicates | None = None):
    """Forever: the matches among the lines appended since the last step (often none), each line
    once; waits a moment before the next step when nothing at all was appended. `last` is the
    last `ei` of each session so far; a session's next event with a higher number than the one
    after it puts the numbers skipped into `missing`."""
    last = {} if last is None else last
    while True:
        lines = follower.poll()
        matches = []
        for line in lines:
            e = reader.parse(line, follower.stats)
            if e is None:
                continue
            _note_jump(e, last, missing)
            if filters.match(e) and (duplicates is None or duplicates.fresh(
                    str(e.get("server_id", "")).lower(), line)):
                matches.append((e, line))
        yield matches
        if not lines:
            time.sleep(FOLLOW_IDLE_SECONDS)


def _note_jump(e: dict, last: dict, missing: dict | None) -> None:
    sid, ei = e.get("sid"), e.get("ei")
    if not isinstance(sid, str) or not isinstance(ei, int):
        return
    before = last.get(sid)
    if before is not None and ei > before + 1 and missing is not None:
        missing.setdefault(sid, []).append((before + 1, ei - 1))
    if before is None or ei > before:
        last[sid] = ei
