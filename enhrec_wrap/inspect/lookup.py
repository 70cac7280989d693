"""Finding a session from what the user typed (a sid, or a unique prefix of one), and reading
all of its events: from its session files, with the daily files filling in what they miss."""

import os
import re

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events.kinds import END
from enhrec_wrap.inspect.output import Progress
from enhrec_wrap.inspect.sessions import missing_events
from enhrec_wrap.log import reader


def open_log(config) -> reader.LogDir:
    """The audit log of `config`, once it is there and readable."""
    log = reader.LogDir(config.log_dir)
    if not os.path.isdir(config.log_dir):
        if os.path.exists(config.log_dir) or not os.access(os.path.dirname(config.log_dir) or "/", os.X_OK):
            raise EnhrecError(f"cannot read {config.log_dir}: run as root")
        raise EnhrecError(f"no audit log at {config.log_dir} (from {config.source}): nothing was "
                          "recorded there yet, or give --config with the wrapper's config")
    if not os.access(config.log_dir, os.R_OK | os.X_OK):
        raise EnhrecError(f"cannot read the audit log {config.log_dir}: permission denied: "
                          "run as root (sudo enhrec ...)")
    return log


def session(log: reader.LogDir, text: str, stats: reader.Stats) -> list[dict]:
    """The events of the session `text` names, in `ei` order."""
    full, directory, events = resolve_sid(log, text, stats)
    if events is None:
        events = load_session(log, full, directory, stats)
    events.sort(key=lambda e: e.get("ei") if isinstance(e.get("ei"), int) else -1)
    if not events:
        raise EnhrecError(f"session {full} has no readable events: check its files with "
                          "`enhrec doctor` and the daily logs")
    return events


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
