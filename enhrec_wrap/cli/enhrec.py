"""`enhrec`: find and read what recorded sessions did (docs/inspecting.md).

    enhrec sessions                 one row per session, newest first
    enhrec show SID                 one session as a process tree, with its files and connections
    enhrec search [filters]         matching events across all sessions
    enhrec tail [-f] [filters]      the newest events, and then the new ones as they come
    enhrec doctor [--repair]        can this host record? (and end sessions left open)

Every command streams through the files, so logs of any size work; a long read shows progress
on stderr when that is a terminal. Errors are one line, `enhrec: <what>: <how to fix it>`, and a
non-zero exit; this module is the only place that prints them.
"""

import calendar
import datetime
import errno
import fnmatch
import ipaddress
import os
import re
import shlex
import sys
import time

import click
import orjson

from enhrec_wrap import __version__
from enhrec_wrap.log import reader
from enhrec_wrap.session import recovery
from enhrec_wrap.config import load_config
from enhrec_wrap.errors import EnhrecError

PROG = "enhrec"
EXIT_NO_MATCH = 1
EXIT_ERROR = 2

START, END = "session.start", "session.end"
COMMAND, DISK, NETWORK = "session.command", "session.disk", "session.network"
KIND_WORDS = {START: "start", END: "end", COMMAND: "exec", DISK: "open", NETWORK: "connect"}
EVENT_ALIASES = {
    "start": START, "end": END,
    "command": COMMAND, "exec": COMMAND, "commands": COMMAND,
    "disk": DISK, "open": DISK, "file": DISK, "files": DISK,
    "network": NETWORK, "connect": NETWORK, "net": NETWORK, "connection": NETWORK,
}
_RELATIVE_RE = re.compile(r"^(\d+)\s*(s|sec|m|min|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_GLOB_CHARS = re.compile(r"[*?\[\]]")
# Terminal control characters from the log (a user can put ESC in argv) must never reach the
# admin's terminal as they are.
_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + list(range(0x7f, 0xa0))}
_CONTROL.update({0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r"})
_O_ACCMODE, _O_CREAT, _O_TRUNC, _O_APPEND, _O_DIRECTORY = 0o3, 0o100, 0o1000, 0o2000, 0o200000
_ROUTINE_RE = re.compile(r"^/etc/ld\.so\.cache$|^/(usr/)?lib(32|64|x32)?/.*\.so(\.[0-9.]+)?$"
                         r"|^/usr/(lib|share)/locale/|/gconv/gconv-modules")


# --- times ----------------------------------------------------------------------------------

def rfc3339(epoch: float) -> str:
    """The log's own time format, which sorts as text."""
    whole = int(epoch // 1)
    millis = int(round((epoch - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def parse_time(text: str, option: str, now: float | None = None) -> str:
    """A relative time ("90s", "30m", "1h", "2d", "1w": that long ago), `now`, `today`,
    `yesterday` (UTC midnight), or an ISO time (UTC unless it gives an offset)."""
    now = time.time() if now is None else now
    value = text.strip().lower()
    m = _RELATIVE_RE.match(value)
    if m:
        return rfc3339(now - int(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    midnight = calendar.timegm(time.gmtime(now)[:3] + (0, 0, 0))
    named = {"now": now, "today": midnight, "yesterday": midnight - 86400}
    if value in named:
        return rfc3339(named[value])
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise EnhrecError(f"{option} {text!r}: not a time: give a relative time (30m, 1h, 2d, 1w), "
                          "today, yesterday, or an ISO time (2026-11-28, 2026-11-28T14:05, "
                          "2026-11-28T14:05:00+01:00; UTC unless an offset is given)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return rfc3339(moment.timestamp())


def epoch_of(stamp) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def human_time(stamp) -> str:
    """2026-11-28T05:49:07.883Z -> 2026-11-28 05:49:07.883"""
    return safe(stamp).replace("T", " ").rstrip("Z") if stamp else "?"


def duration_text(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


# --- filters --------------------------------------------------------------------------------

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
            last = reader.day_of(reader.day_start(self.until[:10]) + 86400)
        return first, last

    def needles(self) -> tuple[bytes, ...]:
        """Byte strings every matching line must contain: a cheap test before parsing."""
        found = []
        if self.sid:
            found.append(self.sid.encode())
        if self.login is not None:
            found.append(orjson.dumps(self.login))
        if len(self.events) == 1:
            found.append(orjson.dumps(next(iter(self.events))))
        for pattern in (self.program, self.path):
            if pattern:
                literal = max(_GLOB_CHARS.split(pattern), key=len)
                if len(literal) >= 2:
                    found.append(orjson.dumps(literal)[1:-1])
        if self.dst and isinstance(self.dst[0], str):
            found.append(self.dst[0].encode())
        return tuple(found)

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
                                 for p in (e.get("path"), e.get("abs_path"))):
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
                      "connect (or session.start, session.end, session.command, session.disk, "
                      "session.network)")


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


# --- text -----------------------------------------------------------------------------------

def safe(text) -> str:
    return str(text).translate(_CONTROL)


def command_line(e: dict) -> str:
    argv = e.get("argv") if isinstance(e.get("argv"), list) else []
    words = [safe(e.get("path", "?"))] + [safe(a) for a in argv]
    line = shlex.join(words)
    if e.get("argv_truncated"):
        line += " ..."
    return line


def result_of(e: dict):
    """A kernel event's syscall result (0, an fd, or a negative errno); None when not known.
    Schema 1 wrote a connect's as `return_code` and an exec's unknown result as null."""
    if e.get("event") == NETWORK:
        return e.get("connect_return_code", e.get("return_code"))
    if e.get("return_code_unknown"):
        return None
    return e.get("return_code")


def result_text(rc) -> str:
    if rc is None:
        return "result unknown"
    if isinstance(rc, int) and rc < 0:
        return errno.errorcode.get(-rc, f"error {-rc}")
    return ""


def open_mode(flags) -> str:
    if not isinstance(flags, int):
        return "?"
    mode = {0: "r", 1: "w", 2: "rw"}.get(flags & _O_ACCMODE, "?")
    extra = [name for bit, name in ((_O_CREAT, "creat"), (_O_TRUNC, "trunc"), (_O_APPEND, "append"),
                                    (_O_DIRECTORY, "dir")) if flags & bit]
    return "+".join([mode] + extra)


def endpoint(addr, port) -> str:
    addr = safe(addr)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def describe(e: dict) -> tuple[str, str, bool]:
    """(kind word, detail, failed) for one event, as one line of text."""
    kind = e.get("event", "?")
    word = KIND_WORDS.get(kind, safe(kind))
    rc = result_of(e)
    failed = isinstance(rc, int) and rc < 0
    proc = f"[{e.get('pid', '?')}<{e.get('ppid', '?')}]"
    if kind == COMMAND:
        detail = f"{proc} {command_line(e)}"
    elif kind == DISK:
        detail = f"{proc} {safe(e.get('program', '?'))} {open_mode(e.get('flags'))} {safe(e.get('abs_path') or e.get('path', '?'))}"
    elif kind == NETWORK:
        detail = f"{proc} {safe(e.get('program', '?'))} -> {endpoint(e.get('dst_addr', '?'), e.get('dst_port', '?'))} {e.get('protocol', '')}".rstrip()
    elif kind == START:
        cmd = e.get("initial_command") or []
        detail = f"user {safe(e.get('user', '?'))} from {_remote(e)}" + (
            f": {shlex.join([safe(a) for a in cmd])}" if cmd else ": login shell")
    elif kind == END:
        parts = []
        if "exit_status" in e:
            parts.append(f"exit {e['exit_status']}")
        parts.append(duration_text(_span(e.get("session_start"), e.get("session_stop"))))
        if e.get("incomplete"):
            parts.append("incomplete")
        detail = ", ".join(parts)
    else:
        detail = ""
    if failed or rc is None and kind == COMMAND:
        detail += f" -> {result_text(rc)}"
    return word, detail, failed


def _remote(e: dict) -> str:
    remote = e.get("addr.remote")
    return safe(remote) if remote else "local"


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _span(start, stop) -> float | None:
    a, b = epoch_of(start), epoch_of(stop)
    return None if a is None or b is None else b - a


_KIND_COLOURS = {"exec": "green", "open": "blue", "connect": "magenta", "start": "cyan", "end": "cyan"}


def event_line(e: dict, remote: str | None = None) -> str:
    """One event as a line; `remote`, where known, is the address its session came from."""
    word, detail, failed = describe(e)
    stamp = click.style(safe(e.get("time", "?")), dim=True)
    sid = click.style(safe(str(e.get("sid", "?"))[:8]), fg="yellow")
    kind = click.style(f"{word:<7}", fg="red" if failed else _KIND_COLOURS.get(word), bold=word == "exec")
    who = safe(e.get("login", "?")) + (f"@{safe(host_of(remote))}" if remote else "")
    return f"{stamp} {sid} {who:<8} {kind} {detail}"


def host_of(address: str) -> str:
    """10.1.2.3:5555 -> 10.1.2.3, [2001:db8::1]:22 -> 2001:db8::1"""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


# --- output helpers -------------------------------------------------------------------------

class Progress:
    """"reading <file> 42%" on stderr, only on a terminal and only once a read takes a while."""

    DELAY = 1.0

    def __init__(self):
        self.enabled = sys.stderr.isatty()
        self.began = time.monotonic()
        self.total = 0
        self.shown = False
        self.last = 0.0

    def start(self, total: int):
        self.total = max(total, 1)

    def update(self, done: int, label: str):
        now = time.monotonic()
        if not self.enabled or now - self.began < self.DELAY or now - self.last < 0.2:
            return
        self.last = now
        self.shown = True
        sys.stderr.write(f"\r\x1b[K{PROG}: reading {label} {min(100, done * 100 // self.total)}%")
        sys.stderr.flush()

    def finish(self):
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def note(message: str):
    """A remark on stderr that is not an error (skipped lines, totals)."""
    click.echo(f"{PROG}: {message}", err=True)


def report_skipped(stats: reader.Stats):
    if stats.corrupt_lines:
        note(f"skipped {stats.corrupt_lines} line(s) that are not JSON events")


def write_json_line(data: bytes):
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")


def json_line(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


# --- sessions -------------------------------------------------------------------------------

class Summary:
    """One session, as `enhrec sessions` lists it."""

    def __init__(self, sid: str):
        self.sid = sid
        self.start = None
        self.end = None
        self.first = None
        self.commands = self.files = self.connections = 0
        self.first_time = self.last_time = None
        self.server_id = None

    def add(self, e: dict):
        kind = e.get("event")
        if self.first is None:
            self.first = e
            self.server_id = e.get("server_id")
        if kind == START:
            self.start = e
        elif kind == END:
            self.end = e
        elif kind == COMMAND:
            self.commands += 1
        elif kind == DISK:
            self.files += 1
        elif kind == NETWORK:
            self.connections += 1
        t = e.get("time")
        if isinstance(t, str):
            self.first_time = t if self.first_time is None or t < self.first_time else self.first_time
            self.last_time = t if self.last_time is None or t > self.last_time else self.last_time

    @property
    def started(self) -> str:
        return (self.start or {}).get("time") or self.first_time or ""

    def state(self, log_dir: str) -> str:
        if self.end is not None:
            return "incomplete" if self.end.get("incomplete") else "complete"
        if self.server_id and recovery.is_live(log_dir, self.server_id, self.sid):
            return "live"
        return "incomplete"

    def stopped(self) -> str | None:
        if self.end is not None:
            return self.end.get("session_stop") or self.end.get("time")
        return self.last_time

    def as_dict(self, log_dir: str) -> dict:
        who = self.start or self.first or {}
        end = self.end or {}
        return {
            "sid": self.sid, "login": who.get("login"), "user": who.get("user"),
            "server_hostname": who.get("server_hostname"),
            "remote": (self.start or {}).get("addr.remote"),
            "start": self.started, "stop": self.stopped(),
            "duration_seconds": _rounded(_span(self.started, self.stopped())),
            "commands": self.commands, "files": self.files, "connections": self.connections,
            "exit_status": end.get("exit_status"), "state": self.state(log_dir),
            "lost_events": end.get("lost_events"),
            "initial_command": (self.start or {}).get("initial_command"),
        }


def summarize(log: reader.LogDir, filters: Filters, stats: reader.Stats) -> list[Summary]:
    summaries = {}
    first_day, last_day = filters.days()
    progress = Progress()
    for e, _ in reader.day_events(log, first_day, last_day, stats, progress=progress):
        sid = e.get("sid")
        if isinstance(sid, str):
            summaries.setdefault(sid, Summary(sid)).add(e)
    found = []
    for s in summaries.values():
        who = s.start or s.first or {}
        if filters.login is not None and who.get("login") != filters.login:
            continue
        if (filters.since and s.started < filters.since) or (filters.until and s.started > filters.until):
            continue
        found.append(s)
    found.sort(key=lambda s: s.started, reverse=True)
    return found


# --- show: one session as a process tree ----------------------------------------------------

class Process:
    def __init__(self, pid, ppid, first_ei):
        self.pid = pid
        self.ppid = ppid
        self.first_ei = first_ei
        self.program = None
        self.images = []        # [command event or None, [file events], [connection events]]
        self.children = []

    def current(self):
        if not self.images:
            self.images.append([None, [], []])
        return self.images[-1]


def build_tree(events: list[dict]) -> list[Process]:
    """Processes keyed by pid, each with the images it ran (a successful exec starts a new
    one), the files and connections of each image, and its children by ppid."""
    procs = {}
    for e in events:
        kind = e.get("event")
        if kind not in (COMMAND, DISK, NETWORK) or not isinstance(e.get("pid"), int):
            continue
        p = procs.get(e["pid"])
        if p is None:
            p = procs[e["pid"]] = Process(e["pid"], e.get("ppid"), e.get("ei", 0))
        if not p.ppid and e.get("ppid"):
            p.ppid = e["ppid"]
        p.program = p.program or e.get("program")
        if kind == COMMAND:
            rc = result_of(e)
            image = p.current()
            if image[0] is None and not image[1] and not image[2]:
                image[0] = e
            elif rc is None or rc >= 0:
                p.images.append([e, [], []])
            else:
                image[1].append(e)   # a failed exec: the image goes on; listed with its files
        elif kind == DISK:
            p.current()[1].append(e)
        else:
            p.current()[2].append(e)
    ordered = sorted(procs.values(), key=lambda p: p.first_ei)
    first = ordered[0] if ordered else None
    # A parent that left no event of its own (a subshell that only forked): every process of
    # the session descends from its first one, so the parent is shown under that one.
    for p in ordered[1:]:
        if p.ppid and p.ppid not in procs and p.ppid != first.ppid:
            procs[p.ppid] = Process(p.ppid, None, p.first_ei)
            procs[p.ppid].ppid = first.pid
    roots = []
    for p in sorted(procs.values(), key=lambda p: p.first_ei):
        parent = procs.get(p.ppid)
        if parent is None or parent is p or _is_descendant(parent, p, procs):
            roots.append(p)
        else:
            parent.children.append(p)
    return roots


def _is_descendant(candidate: Process, ancestor: Process, procs: dict) -> bool:
    """Whether linking ancestor under candidate would make a cycle (pids reused)."""
    seen = set()
    node = candidate
    while node is not None and node.pid not in seen:
        if node is ancestor:
            return True
        seen.add(node.pid)
        node = procs.get(node.ppid)
    return False


def session_header(events: list[dict], log_dir: str) -> dict:
    summary = Summary(events[0]["sid"])
    for e in events:
        summary.add(e)
    head = summary.as_dict(log_dir)
    start, end = summary.start or {}, summary.end or {}
    head.update({
        "local": start.get("addr.local"),
        "interactive": start.get("interactive"),
        "enhanced_recording": start.get("enhanced_recording"),
        "lost_return_codes": end.get("lost_return_codes"),
        "killed_processes": end.get("killed_processes"),
        "unwritten_events": end.get("unwritten_events"),
        "incomplete_reason": end.get("incomplete_reason"),
        "missing_events": missing_events(events),
        "events": len(events),
    })
    return head


def missing_events(events: list[dict]) -> int:
    """How many `ei` numbers between the first and the last are not in the files read."""
    eis = sorted({e["ei"] for e in events if isinstance(e.get("ei"), int)})
    return (eis[-1] - eis[0] + 1 - len(eis)) if eis else 0


# The fields `show --json` gives of each exec and connection: both schemas' result fields.
EXEC_KEYS = ("path", "argv", "return_code", "return_code_unknown", "argv_truncated")
CONNECT_KEYS = ("dst_addr", "dst_port", "src_addr", "src_port", "protocol", "version",
                "connect_return_code", "return_code")


def tree_as_dict(p: Process, t0: float | None) -> dict:
    def offset(e):
        t = epoch_of(e.get("time"))
        return None if t is None or t0 is None else round(t - t0, 3)

    def brief(e, keys):
        d = {"time": e.get("time"), "offset": offset(e), "ei": e.get("ei")}
        d.update({k: e[k] for k in keys if k in e})
        return d

    execs, files, conns = [], [], []
    for command, opened, connected in p.images:
        if command is not None:
            execs.append(brief(command, EXEC_KEYS))
        for e in opened:
            if e.get("event") == COMMAND:
                execs.append(brief(e, EXEC_KEYS))
            else:
                files.append(brief(e, ("path", "abs_path", "flags", "return_code")))
        conns += [brief(e, CONNECT_KEYS) for e in connected]
    return {"pid": p.pid, "ppid": p.ppid, "program": p.program, "execs": execs, "files": files,
            "connections": conns, "children": [tree_as_dict(c, t0) for c in p.children]}


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def render_header(head: dict) -> list[str]:
    state_colour = {"complete": "green", "live": "yellow", "incomplete": "red"}[head["state"]]
    lines = [click.style("session ", bold=True) + click.style(head["sid"], fg="yellow", bold=True)
             + "  " + click.style(head["state"], fg=state_colour, bold=True)]
    who = f"{safe(head['login'])} (logged in as {safe(head['user'])}) on {safe(head['server_hostname'])}"
    lines.append(f"  who    {who}")
    where = safe(head["remote"]) if head["remote"] else "local (no remote address)"
    if head.get("local"):
        where += f" -> {safe(head['local'])}"
    lines.append(f"  from   {where}")
    stop = human_time(head["stop"]) if head["stop"] else "?"
    lines.append(f"  when   {human_time(head['start'])} UTC, {duration_text(head['duration_seconds'])} "
                 f"(until {stop})")
    cmd = head.get("initial_command")
    lines.append("  ran    " + (shlex.join([safe(a) for a in cmd]) if cmd else "login shell")
                 + ("  (interactive)" if head.get("interactive") else ""))
    status = f"exit {head['exit_status']}" if head["exit_status"] is not None else "exit status unknown"
    lines.append(f"  result {status}; {counted(head['commands'], 'command')}, "
                 f"{counted(head['files'], 'file open')}, {counted(head['connections'], 'connection')}")
    lost = head.get("lost_events") or {}
    lost_total = sum(v for v in lost.values() if isinstance(v, int)) + (head.get("lost_return_codes") or 0)
    if head["state"] == "complete" and head.get("enhanced_recording") is not False:
        text = "none" if not lost_total else ", ".join(f"{k} {v}" for k, v in lost.items() if v)
        if head.get("lost_return_codes"):
            text += f", return codes {head['lost_return_codes']}"
        lines.append("  lost   " + (click.style(text, fg="red") if lost_total else text))
    elif head.get("enhanced_recording") is False:
        lines.append("  lost   " + click.style("everything: recording was disabled", fg="red"))
    else:
        lines.append("  lost   " + click.style("unknown (the session has no regular end)", fg="red"))
    problems = []
    if head.get("unwritten_events"):
        problems.append("not written: " + ", ".join(f"{k} {v}" for k, v in head["unwritten_events"].items()))
    if head.get("missing_events"):
        problems.append(f"{head['missing_events']} event(s) missing from the files read")
    if head.get("killed_processes"):
        problems.append(f"{head['killed_processes']} background process(es) killed at the end")
    if head.get("incomplete_reason"):
        problems.append(safe(head["incomplete_reason"]))
    for p in problems:
        lines.append("  note   " + click.style(p, fg="red"))
    return lines


def is_routine(e: dict) -> bool:
    """A read-only open every program makes (the loader, shared libraries, locale data): noise
    in a session's story, hidden unless asked for. Writes, and anything else, always show."""
    flags, path = e.get("flags"), e.get("abs_path") or e.get("path")
    if not isinstance(flags, int) or flags & _O_ACCMODE or not isinstance(path, str):
        return False
    return bool(_ROUTINE_RE.search(path))


def render_tree(roots: list[Process], t0: float | None, all_files: bool = False) -> list[str]:
    lines = []

    def offset(e) -> str:
        t = epoch_of(e.get("time"))
        return f"+{t - t0:.3f}s" if t is not None and t0 is not None else "?"

    def walk(p: Process, depth: int):
        images = p.images or [[None, [], []]]
        children = sorted(p.children, key=lambda c: c.first_ei)
        for n, image in enumerate(images):
            show_image(p, n, image, "  " * depth)
            # Children started before the process's next exec come under this image.
            until = images[n + 1][0].get("ei", 0) if n + 1 < len(images) else None
            while children and (until is None or children[0].first_ei < until):
                walk(children.pop(0), depth + 1)

    def show_image(p: Process, n: int, image, pad: str):
        command, opened, connected = image
        if command is not None:
            rc = result_of(command)
            tail = f"  {click.style(result_text(rc), fg='red')}" if rc is None or rc < 0 else ""
            arrow = "" if n == 0 else click.style("exec ", dim=True)
            lines.append(f"{pad}{click.style(offset(command), dim=True)} {arrow}"
                         f"{click.style(command_line(command), bold=True)}"
                         f"  {click.style(f'pid {p.pid}', dim=True)}{tail}")
        elif not opened and not connected:
            lines.append(f"{pad}{click.style('(no events)', dim=True)}"
                         f"  {click.style(f'pid {p.pid}', dim=True)}")
        else:
            first = (opened + connected)[0]
            lines.append(f"{pad}{click.style(offset(first), dim=True)} "
                         f"{click.style('(fork of ' + safe(p.program or '?') + ')', dim=True)}"
                         f"  {click.style(f'pid {p.pid}', dim=True)}")
        seen = {}
        hidden = 0
        for e in opened:
            if e.get("event") == COMMAND:   # failed exec: the image goes on
                lines.append(f"{pad}    {click.style(offset(e), dim=True)} "
                             f"{click.style('exec failed', fg='red')} {command_line(e)}  "
                             f"{click.style(result_text(result_of(e)), fg='red')}")
                continue
            if not all_files and is_routine(e):
                hidden += 1
                continue
            rc = result_of(e)
            key = (e.get("abs_path") or e.get("path"), open_mode(e.get("flags")),
                   isinstance(rc, int) and rc < 0)
            if key in seen:
                seen[key][1] += 1
                continue
            seen[key] = [e, 1]
        for (path, mode, failed), (e, count) in seen.items():
            times = f" (x{count})" if count > 1 else ""
            err = f"  {click.style(result_text(result_of(e)), fg='red')}" if failed else ""
            lines.append(f"{pad}    {click.style('open', fg='blue')} {mode:<5} {safe(path)}{times}{err}")
        if hidden:
            note_text = f"({hidden} library and locale reads; --all-files shows them)"
            lines.append(f"{pad}    {click.style(note_text, dim=True)}")
        for e in connected:
            rc = result_of(e)
            err = ""
            if rc is None or rc < 0:
                err = f"  {click.style(result_text(rc), fg=None if rc == -errno.EINPROGRESS else 'red')}"
            lines.append(f"{pad}    {click.style('connect', fg='magenta')} "
                         f"{endpoint(e.get('dst_addr', '?'), e.get('dst_port', '?'))} "
                         f"{safe(e.get('protocol', ''))}{err}  {click.style(f'({offset(e)})', dim=True)}")

    for root in roots:
        walk(root, 0)
    return lines


def resolve_sid(log: reader.LogDir, text: str, stats: reader.Stats) -> tuple[str, str | None, list | None]:
    """(sid, its session directory or None, its events when they had to be read to find it)
    for a sid or a unique prefix of one."""
    prefix = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f][0-9a-f-]*", prefix) or len(prefix) > 36:
        raise EnhrecError(f"{text!r} is not a session id (or a prefix of one): list them with "
                          "`enhrec sessions`")
    stored = log.stored_sids()
    matches = sorted(s for s in stored if s.startswith(prefix))
    found = {}
    if not matches:
        # Sessions without session files (written before there were any): the daily files.
        for e, _ in reader.day_events(log, stats=stats, must_contain=(prefix.encode(),),
                                      progress=Progress()):
            sid = e.get("sid")
            if isinstance(sid, str) and sid.startswith(prefix):
                found.setdefault(sid, []).append(e)
        matches = sorted(found)
    if not matches:
        raise EnhrecError(f"no session {text!r} in {log.path}: list them with `enhrec sessions` "
                          "(or give --config for another data_dir)")
    if len(matches) > 1:
        shown = ", ".join(m[:max(len(prefix) + 4, 8)] for m in matches[:5])
        raise EnhrecError(f"session id {text!r} is ambiguous: it starts {len(matches)} sessions "
                          f"({shown}{', ...' if len(matches) > 5 else ''}): give more of it")
    return matches[0], stored.get(matches[0]), found.get(matches[0])


def load_session(log: reader.LogDir, sid: str, directory: str | None, stats: reader.Stats) -> list[dict]:
    """The session from its files; the daily files, from the day it started, fill in what they
    miss (a live session's last events, or events lost to a failed write there)."""
    events = reader.session_events(log, sid, stats, directory) if directory else []
    if not events or missing_events(events) or events[-1].get("event") != END:
        by_ei = {e.get("ei"): e for e in events}
        first_day = None   # an event is in the file of its day, or of a later one
        if events and isinstance(events[0].get("time"), str):
            first_day = events[0]["time"][:10]
        for e, _ in reader.day_events(log, first_day, stats=stats, must_contain=(sid.encode(),),
                                      progress=Progress()):
            if e.get("sid") == sid:
                by_ei.setdefault(e.get("ei"), e)
        events = sorted(by_ei.values(), key=lambda e: e.get("ei") if isinstance(e.get("ei"), int) else -1)
    return events


# --- the command line -----------------------------------------------------------------------

class Context:
    def __init__(self, config_path):
        self.config_path = config_path

    def log(self, config_path) -> tuple[reader.LogDir, object]:
        """The audit log of the config given to the command, else to `enhrec`, else the default."""
        config = load_config(config_path or self.config_path)
        log = reader.LogDir(config.log_dir)
        if not os.path.isdir(config.log_dir):
            if os.path.exists(config.log_dir) or not os.access(os.path.dirname(config.log_dir) or "/", os.X_OK):
                raise EnhrecError(f"cannot read {config.log_dir}: run as root")
            raise EnhrecError(f"no audit log at {config.log_dir} (from {config.source}): nothing was "
                              "recorded there yet, or give --config with the wrapper's config")
        if not os.access(config.log_dir, os.R_OK | os.X_OK):
            raise EnhrecError(f"cannot read the audit log {config.log_dir}: permission denied: "
                              "run as root (sudo enhrec ...)")
        return log, config


def config_option(f):
    return click.option("--config", "config_path", metavar="FILE",
                        help="The wrapper's config (default /etc/enhrec-wrap/enhrec.yaml).")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="JSON, one object per line (for jq).")(f)


def filter_options(f):
    options = [
        click.option("--login", metavar="U", help="Sessions of the OS account U."),
        click.option("--program", metavar="P", help="Events of program P (its name, a glob)."),
        click.option("--path", metavar="GLOB", help="Files opened or executed matching GLOB."),
        click.option("--dst", metavar="ADDR[:PORT]", help="Connections to ADDR[:PORT], :PORT or a network."),
        click.option("--event", multiple=True, metavar="TYPE",
                     help="start, end, exec, open or connect (repeatable)."),
        click.option("--since", metavar="T", help="At or after T: 30m, 1h, 2d, today, yesterday, ISO."),
        click.option("--until", metavar="T", help="At or before T (same forms)."),
        click.option("--sid", metavar="S", help="Session S (or a prefix of its id)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _filters(login, program, path, dst, event, since, until, sid) -> Filters:
    return Filters(login=login, program=program, path=path, dst=dst, event=event, since=since,
                   until=until, sid=sid)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.version_option(__version__, prog_name=PROG)
@click.pass_context
def enhrec(ctx, config_path):
    """Find and read recorded sessions (the audit log enhrec-wrap writes).

    \b
    Who ran curl yesterday, from where, and what else did that session do?
      enhrec search --program curl --since yesterday
      enhrec show 3f2a            (a session id, or a unique prefix of one)
    """
    ctx.obj = Context(config_path)


@enhrec.command()
@config_option
@json_option
@click.option("--login", metavar="U", help="Only sessions of the OS account U.")
@click.option("--since", metavar="T", help="Only sessions started at or after T.")
@click.option("--until", metavar="T", help="Only sessions started at or before T.")
@click.pass_obj
def sessions(obj, config_path, as_json, login, since, until):
    """One row per session, newest first."""
    log, config = obj.log(config_path)
    stats = reader.Stats()
    found = summarize(log, Filters(login=login, since=since, until=until), stats)
    if as_json:
        for s in found:
            write_json_line(json_line(s.as_dict(config.log_dir)))
    else:
        rows = [("SID", "LOGIN", "FROM", "START (UTC)", "DURATION", "CMDS", "FILES", "CONNS", "EXIT", "STATE")]
        for s in found:
            d = s.as_dict(config.log_dir)
            rows.append((s.sid[:8], safe(d["login"] or "?"), safe(d["remote"] or "local"),
                         d["start"][:19].replace("T", " "), duration_text(d["duration_seconds"]),
                         str(s.commands), str(s.files), str(s.connections),
                         "-" if d["exit_status"] is None else str(d["exit_status"]), d["state"]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        numeric = {4, 5, 6, 7, 8}
        colours = {"complete": "green", "live": "yellow", "incomplete": "red"}
        for n, row in enumerate(rows):
            cells = [c.rjust(w) if i in numeric and n else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            cells[-1] = row[-1]
            if n == 0:
                click.echo(click.style("  ".join(cells).rstrip(), bold=True))
            else:
                cells[-1] = click.style(cells[-1], fg=colours.get(row[-1]))
                cells[0] = click.style(cells[0], fg="yellow")
                click.echo("  ".join(cells).rstrip())
    report_skipped(stats)
    if not found:
        note(f"no sessions in {config.log_dir}")


@enhrec.command()
@config_option
@json_option
@click.option("--all-files", is_flag=True, help="Also list the shared library and locale reads.")
@click.argument("sid")
@click.pass_obj
def show(obj, config_path, as_json, all_files, sid):
    """One session: a header, then the process tree with each command's time offset, argv and
    return code, and the files and connections of each process under it. SID may be a unique
    prefix."""
    log, config = obj.log(config_path)
    stats = reader.Stats()
    full, directory, events = resolve_sid(log, sid, stats)
    if events is None:
        events = load_session(log, full, directory, stats)
    events.sort(key=lambda e: e.get("ei") if isinstance(e.get("ei"), int) else -1)
    if not events:
        raise EnhrecError(f"session {full} has no readable events: check its files with "
                          "`enhrec doctor` and the daily logs")
    head = session_header(events, config.log_dir)
    t0 = epoch_of(head["start"])
    roots = build_tree(events)
    if as_json:
        write_json_line(json_line({"session": head, "processes": [tree_as_dict(r, t0) for r in roots]}))
    else:
        for line in render_header(head):
            click.echo(line)
        click.echo()
        for line in render_tree(roots, t0, all_files):
            click.echo(line)
    report_skipped(stats)


@enhrec.command()
@config_option
@json_option
@filter_options
@click.pass_obj
def search(obj, config_path, as_json, login, program, path, dst, event, since, until, sid):
    """Matching events across all sessions, oldest first. Every filter given must match;
    PROGRAM and PATH are globs (* matches across /). Exit status 1 when nothing matches."""
    filters = _filters(login, program, path, dst, event, since, until, sid)
    log, _ = obj.log(config_path)
    stats = reader.Stats()
    count, sids, remotes = 0, {}, {}
    first_day, last_day = filters.days()
    # Every session.start is read too, to tell where each match's session came from.
    for e, line in reader.day_events(log, first_day, last_day, stats, filters.needles(), Progress(),
                                     also_keep=b'"session.start"'):
        if e.get("event") == START and e.get("addr.remote"):
            remotes[e.get("sid")] = e["addr.remote"]
        if not filters.match(e):
            continue
        count += 1
        sids.setdefault(e.get("sid"), None)
        if as_json:
            write_json_line(line)
        else:
            click.echo(event_line(e, remotes.get(e.get("sid"))))
    report_skipped(stats)
    if not count:
        raise NoMatch("no matching events")
    if sys.stderr.isatty() and not as_json:
        first = next(iter(sids))
        note(f"{count} event(s) in {len(sids)} session(s); read one with `enhrec show "
             f"{str(first)[:8]}`")


@enhrec.command()
@config_option
@json_option
@click.option("-f", "--follow", is_flag=True, help="Go on printing new events as they are logged.")
@click.option("-n", "--lines", "count", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many of the newest matching events to print first.")
@filter_options
@click.pass_obj
def tail(obj, config_path, as_json, follow, count, login, program, path, dst, event, since, until, sid):
    """The newest events of events.log (today's file), and with -f the new ones as they come,
    following events.log to the next day's file at midnight."""
    filters = _filters(login, program, path, dst, event, since, until, sid)
    log, _ = obj.log(config_path)

    def emit(e, line):
        if as_json:
            write_json_line(line)
        else:
            click.echo(event_line(e))

    follower = reader.Follower(log)
    current = log.current_file()
    if current is not None:
        end = os.path.getsize(current)
        backlog = []
        if count:
            for line in reader.reverse_lines(current, end):
                e = reader.parse(line)
                if e is not None and filters.match(e):
                    backlog.append((e, line))
                    if len(backlog) == count:
                        break
        for e, line in reversed(backlog):
            emit(e, line)
        follower.path, follower.offset = current, end
    elif not follow:
        raise EnhrecError(f"no events.log in {log.path} yet: nothing was recorded there "
                          "(or give --config with the wrapper's config)")
    if not follow:
        return
    sys.stdout.flush()
    while True:
        lines = follower.poll()
        for line in lines:
            e = reader.parse(line)
            if e is not None and filters.match(e):
                emit(e, line)
        sys.stdout.flush()
        if not lines:
            time.sleep(0.25)


@enhrec.command()
@config_option
@click.option("--repair", is_flag=True,
              help="End sessions left without session.end and remove their cgroups (root).")
@click.pass_obj
def doctor(obj, config_path, repair):
    """Can this host record sessions? One line per check, with the fix when one fails; exit
    status 1 when recording cannot work."""
    from enhrec_wrap.inspect import doctor as checks

    results = checks.run(config_path or obj.config_path, repair=repair)
    colours = {"ok": "green", "warn": "yellow", "FAIL": "red"}
    for r in results:
        click.echo(f"{click.style(f'{r.status:<5}', fg=colours[r.status], bold=r.status == 'FAIL')} "
                   f"{r.name}: {r.detail}" + (f": {r.fix}" if r.fix else ""))
    failed = [r for r in results if r.status == "FAIL"]
    if failed:
        raise EnhrecError(f"recording cannot work on this host: {len(failed)} check(s) failed "
                          f"({', '.join(r.name for r in failed)})", 1)
    click.echo("recording works on this host")


class NoMatch(EnhrecError):
    def __init__(self, message):
        super().__init__(message, EXIT_NO_MATCH)


def _fail(message: str, code: int):
    Progress().finish()
    sys.stderr.write(f"\r\x1b[K{PROG}: {message}\n" if sys.stderr.isatty() else f"{PROG}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv=None):
    try:
        enhrec.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.UsageError as e:
        _fail(f"{e.format_message()}: see `{e.ctx.command_path if e.ctx else PROG} --help`", EXIT_ERROR)
    except EnhrecError as e:
        _fail(str(e), e.exit_code if e.exit_code != 125 else EXIT_ERROR)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("\n" if sys.stderr.isatty() else "")
        sys.exit(130)
    except BrokenPipeError:
        # The reader (head, less) is gone: stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    except PermissionError as e:
        _fail(f"cannot read {e.filename}: permission denied: run as root (sudo {PROG} ...)", EXIT_ERROR)
    except OSError as e:
        _fail(f"cannot read {e.filename or 'the audit log'}: {e.strerror or e}: check the file and "
              "the disk", EXIT_ERROR)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        _fail(f"internal error: {type(e).__name__}: {e}: please report this", EXIT_ERROR)
    sys.exit(0)


if __name__ == "__main__":
    main()
