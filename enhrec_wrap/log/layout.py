"""Where the audit log's files are, and how their names are read back: the one place that knows.

    <data_dir>/host_uuid                                         the server id (Teleport's file)
    <data_dir>/enhrec_chain                                      ours: the chain's seq, key (chainstate.py)
    <data_dir>/log/                                              the log dir
      events.log -> <server_id>/YYYY-MM-DD.00:00:00.log          the current UTC day's file
      <server_id>/                                               a server dir, one per server id
        YYYY-MM-DD.00:00:00.log                                  every event of every session that UTC day
        sessions/default/<sid>.index                             the session's files, one JSON line each
        sessions/default/<sid>-<part>.events.gz                  every event of the session
        sessions/default/<sid>-<part>.<kind>-events.gz           its events of one kernel kind
        sessions/default/<sid>-<part>.tty.gz                     what its terminal showed (ours)
        open-sessions/<sid>.lock                                 a session not (yet) properly ended

The layout is Teleport's file backend's (docs/log-layout.md), so that its tools read our log; the
open-sessions directory is ours. A new kind of file gets its path and its parser here, beside
these, and the writers and readers ask for it.
"""

import collections
import os
import re
import time

from enhrec_wrap.events.kinds import NAMESPACE

HOST_UUID = "host_uuid"
CHAIN_STATE = "enhrec_chain"
LOG = "log"
CURRENT_LINK = "events.log"
SESSION_FILES = os.path.join("sessions", NAMESPACE)
OPEN_SESSIONS = "open-sessions"
LOCK_SUFFIX = ".lock"
INDEX_SUFFIX = ".index"
# The session files' stream of every event; the other streams are named after an event kind.
ALL_EVENTS = "events"

_DAY_FORMAT = "%Y-%m-%d"
_DAY_FILE_SUFFIX = ".00:00:00.log"
_DAY_FILE_RE = re.compile(r"(\d{4}-\d{2}-\d{2})\.00:00:00\.log")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_TERMINAL_RECORDING_RE = re.compile(r"(?P<sid>[0-9a-fA-F-]{36})-(?P<part>\d+)\.tty\.gz")
_STREAM_FILE_RE = re.compile(
    r"(?P<sid>[0-9a-fA-F-]{36})-(?P<part>\d+)\.(?:(?P<kind>session\.[a-z]+)-)?events\.gz")


def is_uuid(text: str) -> bool:
    """Server ids and session ids are UUIDs; so are the names of their directories and files."""
    return _UUID_RE.fullmatch(text) is not None


# --- <data_dir> -----------------------------------------------------------------------------

def host_uuid_path(data_dir: str) -> str:
    return os.path.join(data_dir, HOST_UUID)


def chain_state_path(data_dir: str) -> str:
    return os.path.join(data_dir, CHAIN_STATE)


def log_dir(data_dir: str) -> str:
    return os.path.join(data_dir, LOG)


# --- <log_dir> ------------------------------------------------------------------------------

def current_link(log_dir: str) -> str:
    return os.path.join(log_dir, CURRENT_LINK)


def server_dir(log_dir: str, server_id: str) -> str:
    return os.path.join(log_dir, server_id)


# --- the daily files ------------------------------------------------------------------------

def day_of(epoch: float) -> str:
    """The UTC day (YYYY-MM-DD) of a moment: the day whose file a line written then goes to."""
    return time.strftime(_DAY_FORMAT, time.gmtime(epoch))


def day_start(day: str) -> int:
    """The epoch second a UTC day starts at (calendar.timegm without importing calendar, which
    brings locale: 6 ms of every session's start)."""
    year, month, date = time.strptime(day, _DAY_FORMAT)[:3]
    # Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's days_from_civil).
    year -= month <= 2
    era = year // 400
    of_era = year - era * 400
    of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + date - 1
    of_era_days = of_era * 365 + of_era // 4 - of_era // 100 + of_year
    return (era * 146097 + of_era_days - 719468) * 86400


def day_file(log_dir: str, server_id: str, epoch: float) -> str:
    return os.path.join(log_dir, server_id, f"{day_of(epoch)}{_DAY_FILE_SUFFIX}")


def day_of_file(name: str) -> str | None:
    """The day of a daily file's name, or None for any other name."""
    m = _DAY_FILE_RE.fullmatch(name)
    return m.group(1) if m else None


# --- the session files ----------------------------------------------------------------------

def session_files_dir(log_dir: str, server_id: str) -> str:
    return os.path.join(log_dir, server_id, SESSION_FILES)


def stream_file_name(sid: str, part: int, stream: str) -> str:
    if stream == ALL_EVENTS:
        return f"{sid}-{part}.{ALL_EVENTS}.gz"
    return f"{sid}-{part}.{stream}-{ALL_EVENTS}.gz"


# A session file's name, parsed (typing.NamedTuple would import typing for it).
StreamFile = collections.namedtuple("StreamFile", "sid part stream")


def parse_stream_file(name: str) -> StreamFile | None:
    """What a session file's name says, or None for any other name."""
    m = _STREAM_FILE_RE.fullmatch(name)
    if m is None:
        return None
    return StreamFile(m.group("sid"), int(m.group("part")), m.group("kind") or ALL_EVENTS)


def terminal_recording_file_name(sid: str, part: int) -> str:
    """A part of the session's terminal recording (log/terminal_recording.py); not in the
    index, which lists the event streams as the reference does."""
    return f"{sid}-{part}.tty.gz"


RecordingFile = collections.namedtuple("RecordingFile", "sid part")


def parse_terminal_recording_file(name: str) -> RecordingFile | None:
    m = _TERMINAL_RECORDING_RE.fullmatch(name)
    return RecordingFile(m.group("sid"), int(m.group("part"))) if m else None


def index_file_name(sid: str) -> str:
    return f"{sid}{INDEX_SUFFIX}"


def sid_of_index_file(name: str) -> str | None:
    """The session id an index file's name carries, or None for any other name."""
    if not name.endswith(INDEX_SUFFIX):
        return None
    sid = name[:-len(INDEX_SUFFIX)]
    return sid if is_uuid(sid) else None


# --- the open-session locks -----------------------------------------------------------------

def open_sessions_dir(log_dir: str, server_id: str) -> str:
    return os.path.join(log_dir, server_id, OPEN_SESSIONS)


def lock_path(log_dir: str, server_id: str, sid: str) -> str:
    return os.path.join(open_sessions_dir(log_dir, server_id), f"{sid}{LOCK_SUFFIX}")


def hidden_lock_path(log_dir: str, server_id: str, sid: str) -> str:
    """Where a lock file is made and locked before it gets its name (session_lock.OpenLock)."""
    return os.path.join(open_sessions_dir(log_dir, server_id), f".{sid}{LOCK_SUFFIX}")


def sid_of_lock_file(name: str) -> str | None:
    """The session id a lock file's name carries, or None for any other name (hidden ones too)."""
    if not name.endswith(LOCK_SUFFIX):
        return None
    sid = name[:-len(LOCK_SUFFIX)]
    return sid if is_uuid(sid) else None


def is_hidden_lock_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(LOCK_SUFFIX)
