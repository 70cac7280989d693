"""Sessions as enhrec lists them: one summary per session, from its events in the daily files,
and the header `enhrec show` puts above a session's process tree.

A new fact about a session (a new column, a new header line) is a field of as_dict() or of
session_header(), from the events Summary.add() has seen.
"""

import os

from enhrec_wrap.events.kinds import COMMAND, DISK, END, NETWORK, START
from enhrec_wrap.events.timestamps import seconds_between
from enhrec_wrap.inspect.output import Progress
from enhrec_wrap.inspect.query import Filters
from enhrec_wrap.log import layout, reader, store


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
        if self.server_id and not os.path.isdir(layout.open_sessions_dir(log_dir, self.server_id)):
            return "open"   # a collector's copy: only its host knows whether it still runs
        if self.server_id and store.is_live(log_dir, self.server_id, self.sid):
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
            "server_hostname": who.get("server_hostname"), "server_id": self.server_id,
            "remote": (self.start or {}).get("addr.remote"),
            "start": self.started, "stop": self.stopped(),
            "duration_seconds": _rounded(seconds_between(self.started, self.stopped())),
            "commands": self.commands, "files": self.files, "connections": self.connections,
            "exit_status": end.get("exit_status"), "state": self.state(log_dir),
            "lost_events": end.get("lost_events"),
            "initial_command": (self.start or {}).get("initial_command"),
        }


def summarize(log: reader.LogDir, filters: Filters, stats: reader.Stats) -> list[Summary]:
    summaries = {}
    first_day, last_day = filters.days()
    for e, _ in reader.day_events(log, first_day, last_day, stats, progress=Progress()):
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


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


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
