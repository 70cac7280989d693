"""Sessions whose recorder died (SIGKILL, OOM, power loss): finding them and ending them.

A session is stale when its lock file (session_lock.OpenLock) exists and nobody holds it: a
recorder holds it from before its cgroup exists until after session.end is written, so a lock
that can be taken belongs to a recorder that is gone. For each stale session, repair:
  - takes the lock (so that two repairs never end the same session twice),
  - writes session.end with `incomplete: true` and `session_stop` = the last event seen, numbered
    after the last `ei` found, to the daily log and the session files where it is missing; when
    one of the two has the session's own session.end (it ended while the disk was full), that
    one is copied to the other instead, so that a session never has two,
  - kills and removes the session's cgroup, unless someone still holds it,
  - removes the lock file.
Cgroups below <cgroup_path>/enhrec/ that no recorder holds (see watchdog.Watchdog) and that are
older than a grace period are removed too, whatever data_dir their session was written to. A
live session is never touched: its recorder holds both locks.
"""

import fcntl
import os
import time

import orjson

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events import kinds
from enhrec_wrap.events import teleport as events
from enhrec_wrap.host.cgroup import SessionCgroup, is_cgroup2_mount, leaf_dir, parent_dir
from enhrec_wrap.kernel.host import (PIN_ROOT, HostLock, drop_sessions, pinned_versions,
                                     sessions_of)
from enhrec_wrap.log import layout, session_lock, store
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.server_id import read_server_id

# A cgroup is created a moment before its recorder locks it; younger ones are left alone.
CGROUP_GRACE_SECONDS = 30.0
INCOMPLETE_REASON = "the recorder stopped without ending the session (killed, crashed or power lost)"
# session.start in the daily file and nothing at all in the session files: the session files
# refused session.start (no inode left, a FIFO or file where their directory belongs), and a
# start that cannot be written runs nothing. Called a crash, it read as a session that ran.
NOT_STARTED = "not_started"
NOT_STARTED_REASON = ("session.start reached the daily file but not the session files, so the "
                      "session was refused at its start and nothing was run (exit 125)")
# What session.end repeats of its session.start, as Teleport's does: the SSH connection.
CONNECTION_FIELDS = ("addr.remote", "addr.local", "server_addr", "proto")


class Report:
    """What a check or a repair found and did. Not a dataclass: that would import dataclasses
    into every start (host/privileges.py)."""

    def __init__(self):
        self.stale = []                  # sids found without session.end
        self.repaired = []               # sids given an incomplete session.end
        self.copied = []                 # sids whose session.end was copied
        self.cgroups_removed = []        # cgroup paths killed and removed
        self.stale_cgroups = []          # cgroup paths found unheld
        self.registrations_dropped = []  # cgroup ids taken out of the programs
        self.errors = []                 # one line each


def check(config) -> Report:
    """Finds stale sessions and cgroups, changing nothing."""
    report = Report()
    for _, sid, lock in _stale_sessions(config):
        report.stale.append(sid)
        lock.release(ended=False)
    for leaf in _cgroup_leaves(config.cgroup_path):
        fd = _take_cgroup(leaf, grace=CGROUP_GRACE_SECONDS)
        if fd is not None:
            os.close(fd)
            report.stale_cgroups.append(leaf)
    return report


def repair(config) -> Report:
    """Ends every stale session and removes every stale cgroup; errors are collected, one line
    each, so that one damaged session does not stop the others from being repaired."""
    report = Report()
    for server_id, sid, lock in _stale_sessions(config):
        report.stale.append(sid)
        # Its processes first: if its watchdog failed, they are running unrecorded.
        leaf = leaf_dir(config.cgroup_path, sid)
        if os.path.isdir(leaf):
            _remove_cgroup(leaf, 0.0, report)
        ended = False
        try:
            outcome = end_session(config, server_id, sid)
            if outcome == ENDED:
                report.repaired.append(sid)
            elif outcome == COPIED:
                report.copied.append(sid)
            ended = True
        except (EnhrecError, OSError) as e:
            report.errors.append(f"session {sid}: {e}")
        finally:
            lock.release(ended=ended)
    for leaf in _cgroup_leaves(config.cgroup_path):
        _remove_cgroup(leaf, CGROUP_GRACE_SECONDS, report)
    _drop_stale_registrations(config, report)
    return report


def _drop_stale_registrations(config, report: Report) -> None:
    """Sessions still registered with the host's programs whose cgroup no longer exists: their
    recorder and watchdog both died (a watchdog takes its dead recorder's session out itself).
    Their rings would only fill. A cgroup's id is its directory's inode number; sessions of
    other configs may use other cgroup paths, so any cgroup of the hierarchy counts as alive."""
    if not os.path.isdir(PIN_ROOT) or not is_cgroup2_mount(config.cgroup_path):
        return   # without the hierarchy in sight, no cgroup can be told dead
    alive = None
    # Shared, as sessions registering beside it: a session is registered only after its cgroup
    # exists, so every id listed here was alive before the hierarchy was walked.
    with HostLock(shared=True):
        for version in pinned_versions():
            dead = []
            for cgroup_id in sessions_of(version) or []:
                if alive is None:
                    alive = _cgroup_ids(config.cgroup_path)
                if cgroup_id not in alive:
                    dead.append(cgroup_id)
            drop_sessions(version, dead)
            report.registrations_dropped.extend(dead)


def _cgroup_ids(cgroup_path: str) -> set[int]:
    """The id of every cgroup in the hierarchy mounted at cgroup_path."""
    ids = set()
    for directory, _, _ in os.walk(cgroup_path):
        try:
            ids.add(os.stat(directory).st_ino)
        except OSError:
            pass
    return ids


def repair_at_start(config) -> Report | None:
    """What a starting wrapper does: repair, and never let a failed repair stop the login
    (`enhrec doctor` reports what is left)."""
    try:
        return repair(config)
    except (EnhrecError, OSError):
        return None


# --- one session ----------------------------------------------------------------------------

class _Seen:
    """What one sink holds of a session."""

    def __init__(self):
        self.first = None        # session.start, else the first event seen
        self.last_ei = -1
        self.last_time = ""
        self.has_end = False
        self.end_line = b""      # the session's session.end, as its line
        self.last_part = -1

    def add(self, event: dict, line: bytes):
        start = kinds.START
        if self.first is None or (event.get("event") == start and self.first.get("event") != start):
            self.first = event
        ei = event.get("ei")
        if isinstance(ei, int) and ei > self.last_ei:
            self.last_ei = ei
        t = event.get("time")
        if isinstance(t, str) and t > self.last_time:
            self.last_time = t
        if event.get("event") == kinds.END:
            self.has_end = True
            self.end_line = line


ENDED = "ended"     # given a session.end {incomplete: true}
COPIED = "copied"   # its own session.end copied where it was missing


def end_session(config, server_id: str, sid: str, clock=time.time) -> str | None:
    """Writes session.end where it is missing: the session's own, when one sink has it, else
    one with {incomplete: true}. The caller holds the lock. Returns ENDED, COPIED, or None when
    there was nothing to end (no session.start, or both sinks have session.end)."""
    # Only a stale session is read back: not imported by every start (1.5 ms, 0.14 MB).
    from enhrec_wrap.log import reader
    log = reader.LogDir(config.log_dir)
    directory = layout.session_files_dir(config.log_dir, server_id)
    stored = _Seen()
    for path in log.event_parts(sid, directory):
        stored.last_part = max(stored.last_part, _part_number(path))
        for event, line in reader.events_of(reader.gz_lines(path)):
            if event.get("sid") == sid:
                stored.add(event, line)
    daily = _Seen()
    needle = sid.encode()
    for event, line in reader.day_events(log, *_days_to_scan(config, server_id, sid, stored, clock),
                                      must_contain=(needle,)):
        if event.get("sid") == sid:
            daily.add(event, line)
    first = stored.first or daily.first
    if first is None or (stored.has_end and daily.has_end):
        return None
    own = stored.end_line or daily.end_line
    if own:
        _write_end(config, server_id, sid, stored, daily, orjson.loads(own), own, clock)
        return COPIED
    start = first if first.get("event") == kinds.START else {}
    refused = stored.first is None and start and daily.last_ei == start.get("ei") == 0
    factory = events.EventFactory(sid, server_id, first.get("server_hostname", config.nodename),
                                  first.get("login", ""), first.get("user", ""),
                                  first.get("cluster_name", config.cluster))
    factory.next_ei = max(stored.last_ei, daily.last_ei) + 1
    fields = {
        "enhanced_recording": start.get("enhanced_recording", config.enabled),
        "session_recording": start.get("session_recording", events.SESSION_RECORDING),
        "interactive": start.get("interactive", False),
        "participants": [first.get("user", "")],
        "session_start": start.get("time", first.get("time")),
        "session_stop": max(stored.last_time, daily.last_time),
        "incomplete": True,
        "incomplete_reason": NOT_STARTED_REASON if refused else INCOMPLETE_REASON,
        "schema_version": events.SCHEMA_VERSION,
        **{key: start[key] for key in CONNECTION_FIELDS if key in start},
    }
    if refused:
        fields["end_reason"] = NOT_STARTED
    end = factory.make(events.SESSION_END, int(clock() * 1e9), **fields)
    # A refused session never had session files: none are made for its end.
    _write_end(config, server_id, sid, stored, daily, end, events.encode(end), clock,
               to_session_files=not refused)
    return ENDED


def _write_end(config, server_id, sid, stored: _Seen, daily: _Seen, end: dict, line: bytes, clock,
               to_session_files: bool = True):
    """session.end to each sink that lacks one."""
    if not daily.has_end:
        audit = AuditLog(config.log_dir, server_id, clock=clock,
                         epoch_seconds=config.key_epoch_seconds)
        try:
            [line] = audit.write([line])
        finally:
            audit.close()
    if to_session_files and not stored.has_end:
        # After the last part, which may end in an unfinished gzip stream.
        writer = store.SessionStore.continue_session(config.log_dir, server_id, sid,
                                                     {layout.ALL_EVENTS: stored.last_part})
        try:
            writer.write([end], [line])
        finally:
            writer.close(ended=True)


def _days_to_scan(config, server_id, sid, stored: _Seen, clock) -> tuple[str, str]:
    """The daily files that can hold the session: from the day it started (its lock file was
    made then) to the day after its last stored event, never past today."""
    try:
        began = os.stat(layout.lock_path(config.log_dir, server_id, sid)).st_mtime
    except OSError:
        began = clock()
    first_day = layout.day_of(began)
    last_seen = stored.last_time[:10] or first_day
    last_day = layout.day_of(layout.day_start(max(last_seen, first_day)) + 86400)
    return first_day, min(last_day, layout.day_of(clock()))


def _part_number(path: str) -> int:
    return layout.parse_stream_file(os.path.basename(path)).part


def _stale_sessions(config):
    """(server_id, sid, its lock, now ours) for each session nobody is writing; the caller
    releases the lock."""
    server_id = read_server_id(config.data_dir)
    if server_id:
        for sid, lock in session_lock.stale_locks(config.log_dir, server_id):
            yield server_id, sid, lock


# --- cgroups --------------------------------------------------------------------------------

def _cgroup_leaves(cgroup_path: str) -> list[str]:
    parent = parent_dir(cgroup_path)
    try:
        names = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(parent, n) for n in names
            if layout.is_uuid(n) and os.path.isdir(os.path.join(parent, n))]


def _take_cgroup(leaf: str, grace: float) -> int | None:
    """An fd holding the leaf's lock when no recorder holds it, else None."""
    try:
        fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if grace and time.time() - os.fstat(fd).st_ctime < grace:
            raise BlockingIOError
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _remove_cgroup(leaf: str, grace: float, report: Report) -> None:
    fd = _take_cgroup(leaf, grace)
    if fd is None:
        return
    report.stale_cgroups.append(leaf)
    try:
        cgroup = SessionCgroup(leaf)
        if not cgroup.kill_and_wait():
            report.errors.append(f"cgroup {leaf}: processes still running after cgroup.kill")
            return
        cgroup.remove()
        report.cgroups_removed.append(leaf)
    except FileNotFoundError:
        report.cgroups_removed.append(leaf)   # its watchdog removed it first
    except (EnhrecError, OSError) as e:
        report.errors.append(f"cgroup {leaf}: {e}")
    finally:
        os.close(fd)
