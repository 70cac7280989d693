"""Sessions as enhrec lists them: one summary per session, from its events in the daily files
and, where those lack any (a daily file removed or renamed, a write that failed), from its own
session files; and the header `enhrec show` puts above a session's process tree.

A new fact about a session (a new column, a new header line) is a field of as_dict() or of
session_header(), from the events Summary.add() has seen.
"""

import os

from enhrec_wrap.events.kinds import COMMAND, DISK, END, NETWORK, START
from enhrec_wrap.events.timestamps import rfc3339_from_seconds, seconds_between
from enhrec_wrap.inspect import gaps
from enhrec_wrap.inspect.output import Progress
from enhrec_wrap.inspect.query import Filters
from enhrec_wrap.log import layout, reader, session_lock


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
        self.eis = gaps.Eis()

    def add(self, e: dict):
        """Counts the event, once: an event read from both sinks is one event."""
        ei = e.get("ei")
        if not self.eis.add(ei) and isinstance(ei, int):
            return
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
        if self.server_id and not os.path.isdir(layout.open_sessions_dir(log_dir, self.server_id)):
            return "open"   # a collector's copy: only its host knows whether it still runs
        if self.server_id and session_lock.is_live(log_dir, self.server_id, self.sid):
            return "live"
        return "incomplete"

    def missing(self) -> list[tuple[int, int]]:
        """The `ei` ranges not read, up to session.end (or the last event read)."""
        end = self.end.get("ei") if self.end is not None else None
        return self.eis.gaps(end if isinstance(end, int) else None)

    def wants_session_files(self, log_dir: str) -> bool:
        """Whether the daily files left something out that its session files may hold."""
        if self.start is None or self.missing():
            return True
        return self.end is None and self.state(log_dir) != "live"

    def stopped(self) -> str | None:
        if self.end is not None:
            return self.end.get("session_stop") or self.end.get("time")
        return self.last_time

    def as_dict(self, log_dir: str) -> dict:
        who = self.start or self.first or {}
        end = self.end or {}
        return {
            "sid": self.sid, "login": who.get("login"), "user": who.get("user"),
            "server_hostname": who.get("server_hostname"), "server_id": self.server_id,
            "remote": (self.start or {}).get("addr.remote"),
            "start": self.started, "stop": self.stopped(),
            "duration_seconds": _rounded(seconds_between(self.started, self.stopped())),
            "commands": self.commands, "files": self.files, "connections": self.connections,
            "exit_status": end.get("exit_status"), "state": self.state(log_dir),
            "missing_events": gaps.count(self.missing()),
            "lost_events": end.get("lost_events"),
            "initial_command": (self.start or {}).get("initial_command"),
        }


def summarize(log: reader.LogDir, filters: Filters, stats: reader.Stats) -> list[Summary]:
    """The daily files first (one pass over everything); then the session files of the
    sessions those leave incomplete, or do not have at all: a session never vanishes or
    shrinks because a daily file was removed or renamed (logrotate)."""
    summaries = {}
    first_day, last_day = filters.days()
    for e, _ in reader.day_events(log, first_day, last_day, stats, progress=Progress()):
        sid = e.get("sid")
        if isinstance(sid, str):
            summaries.setdefault(sid, Summary(sid)).add(e)
    for sid, directory in log.stored_sids().items():
        summary = summaries.get(sid)
        if summary is None:
            if not may_have_started_within(log, sid, directory, filters, stats):
                continue
            summary = summaries[sid] = Summary(sid)
        elif not summary.wants_session_files(log.path):
            continue
        for e in reader.session_events(log, sid, stats, directory):
            summary.add(e)
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


def may_have_started_within(log: reader.LogDir, sid: str, directory: str, filters: Filters,
                            stats: reader.Stats) -> bool:
    """For a session the daily files read do not name: whether it can have started within
    --since/--until, from when its files were last written and, if need be, the first line."""
    if not filters.since and not filters.until:
        return True
    changed = rfc3339_from_seconds(log.last_change(sid, directory))
    if filters.since and changed < filters.since:
        return False   # its last event is older
    started = log.start_time(sid, directory, stats)
    return started is not None and (not filters.since or started >= filters.since) and \
        (not filters.until or started <= filters.until)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def session_header(events: list[dict], log_dir: str) -> dict:
    summary = Summary(events[0]["sid"])
    for e in events:
        summary.add(e)
    head = summary.as_dict(log_dir)
    start, end = summary.start or {}, summary.end or {}
    holes = missing_ranges(events)
    head.update({
        "local": start.get("addr.local"),
        "interactive": start.get("interactive"),
        "enhanced_recording": start.get("enhanced_recording"),
        "lost_return_codes": end.get("lost_return_codes"),
        "killed_processes": end.get("killed_processes"),
        "unwritten_events": end.get("unwritten_events"),
        "removed_events": end.get("removed_events"),
        "incomplete_reason": end.get("incomplete_reason"),
        "start_missing": summary.start is None,
        "missing_events": gaps.count(holes),
        "missing": gaps.text(holes) if holes else None,
        "events": len(events),
    })
    return head


def missing_ranges(events: list[dict]) -> list[tuple[int, int]]:
    """The `ei` ranges the events read lack, from session.start (0) to session.end, or to the
    last one read while there is no end."""
    seen = gaps.Eis()
    end = None
    for e in events:
        seen.add(e.get("ei"))
        if e.get("event") == END and isinstance(e.get("ei"), int):
            end = e["ei"]
    return seen.gaps(end)


def missing_events(events: list[dict]) -> int:
    return gaps.count(missing_ranges(events))
