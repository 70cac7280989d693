"""Sessions whose recorder died (SIGKILL, OOM, power loss): finding them and ending them.

A session is stale when its lock file (store.OpenLock) exists and nobody holds it: a recorder
holds it from before its cgroup exists until after session.end is written, so a lock that can
be taken belongs to a recorder that is gone. For each stale session, repair:
  - takes the lock (so that two repairs never end the same session twice),
  - writes session.end with `incomplete: true` and `session_stop` = the last event seen, numbered
    after the last `ei` found, to the daily log and the session files where it is missing,
  - kills and removes the session's cgroup, unless someone still holds it,
  - removes the lock file.
Cgroups below <cgroup_path>/enhrec/ that no recorder holds (see watchdog.Watchdog) and that are
older than a grace period are removed too, whatever data_dir their session was written to. A
live session is never touched: its recorder holds both locks.
"""

import fcntl
import os
import time
from dataclasses import dataclass, field

from enhrec_wrap.events import teleport as events
from enhrec_wrap.log import reader
from enhrec_wrap.log import store
from enhrec_wrap.log.auditlog import AuditLog, _read_id
from enhrec_wrap.host.cgroup import SESSIONS_DIR as CGROUP_SESSIONS_DIR
from enhrec_wrap.host.cgroup import SessionCgroup
from enhrec_wrap.errors import EnhrecError

# A cgroup is created a moment before its recorder locks it; younger ones are left alone.
CGROUP_GRACE_SECONDS = 30.0
KILL_WAIT_SECONDS = 5.0
INCOMPLETE_REASON = "the recorder stopped without ending the session (killed, crashed or power lost)"
# What session.end repeats of its session.start, as Teleport's does: the SSH connection.
CONNECTION_FIELDS = ("addr.remote", "addr.local", "server_addr", "proto")


@dataclass
class Report:
    stale: list = field(default_factory=list)           # sids found without session.end
    repaired: list = field(default_factory=list)        # sids given their session.end
    cgroups_removed: list = field(default_factory=list)  # cgroup paths killed and removed
    stale_cgroups: list = field(default_factory=list)   # cgroup paths found unheld
    errors: list = field(default_factory=list)          # one line each


def server_id_of(data_dir: str) -> str | None:
    """The host's server id without creating it (None on a host that never recorded)."""
    try:
        return _read_id(os.path.join(data_dir, "host_uuid"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def lock_path(log_dir: str, server_id: str, sid: str) -> str:
    return os.path.join(store.open_dir(log_dir, server_id), f"{sid}{store.LOCK_SUFFIX}")


def is_live(log_dir: str, server_id: str, sid: str) -> bool:
    """Whether a recorder is writing the session now."""
    try:
        fd = os.open(lock_path(log_dir, server_id, sid), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def check(config) -> Report:
    """Finds stale sessions and cgroups, changing nothing."""
    report = Report()
    server_id = server_id_of(config.data_dir)
    if server_id:
        for sid, path in _lock_files(config.log_dir, server_id):
            lock = store.OpenLock.try_take(path)
            if lock is not None:
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
    server_id = server_id_of(config.data_dir)
    if server_id:
        for sid, path in _lock_files(config.log_dir, server_id):
            lock = store.OpenLock.try_take(path)
            if lock is None:
                continue   # live, or just repaired by someone else
            report.stale.append(sid)
            # Its processes first: if its watchdog failed, they are running unrecorded.
            leaf = os.path.join(config.cgroup_path, CGROUP_SESSIONS_DIR, sid)
            if os.path.isdir(leaf):
                _remove_cgroup(leaf, 0.0, report)
            ended = False
            try:
                if end_session(config, server_id, sid):
                    report.repaired.append(sid)
                ended = True
            except (EnhrecError, OSError) as e:
                report.errors.append(f"session {sid}: {e}")
            finally:
                lock.release(ended=ended)
    for leaf in _cgroup_leaves(config.cgroup_path):
        _remove_cgroup(leaf, CGROUP_GRACE_SECONDS, report)
    return report


def repair_at_start(config) -> Report | None:
    """What a starting wrapper does: repair, and never let a failed repair stop the login
    (`enhrec doctor` reports what is left)."""
    try:
        return repair(config)
    except (EnhrecError, OSError):
        return None


# --- one session ----------------------------------------------------------------------------

@dataclass
class _Seen:
    """What one sink holds of a session."""
    first: dict | None = None      # session.start, else the first event seen
    last_ei: int = -1
    last_time: str = ""
    has_end: bool = False
    last_part: int = -1

    def add(self, event: dict):
        start = events.SESSION_START[0]
        if self.first is None or (event.get("event") == start and self.first.get("event") != start):
            self.first = event
        ei = event.get("ei")
        if isinstance(ei, int) and ei > self.last_ei:
            self.last_ei = ei
        t = event.get("time")
        if isinstance(t, str) and t > self.last_time:
            self.last_time = t
        if event.get("event") == events.SESSION_END[0]:
            self.has_end = True


def end_session(config, server_id: str, sid: str, clock=time.time) -> bool:
    """Writes session.end {incomplete: true} where it is missing. The caller holds the lock.
    Returns False when there was nothing to end (the session never wrote session.start)."""
    log = reader.LogDir(config.log_dir)
    directory = store.session_dir(config.log_dir, server_id)
    stored = _Seen()
    for path in log.event_parts(sid, directory):
        stored.last_part = max(stored.last_part, _part_number(path))
        for event, _ in reader.events_of(reader.gz_lines(path)):
            if event.get("sid") == sid:
                stored.add(event)
    daily = _Seen()
    needle = sid.encode()
    for event, _ in reader.day_events(log, *_days_to_scan(config, server_id, sid, stored, clock),
                                      must_contain=(needle,)):
        if event.get("sid") == sid:
            daily.add(event)
    first = stored.first or daily.first
    if first is None or (stored.has_end and daily.has_end):
        return False
    start = first if first.get("event") == events.SESSION_START[0] else {}
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
        "incomplete_reason": INCOMPLETE_REASON,
        "schema_version": events.SCHEMA_VERSION,
        **{key: start[key] for key in CONNECTION_FIELDS if key in start},
    }
    end = factory.make(events.SESSION_END, int(clock() * 1e9), **fields)
    line = events.encode(end)
    if not daily.has_end:
        audit = AuditLog(config.log_dir, server_id, clock=clock)
        try:
            audit.write([line])
        finally:
            audit.close()
    if not stored.has_end:
        # After the last part, which may end in an unfinished gzip stream.
        writer = store.SessionStore.continue_session(config.log_dir, server_id, sid,
                                                     {store.EVENTS: stored.last_part})
        try:
            writer.write([end], [line])
        finally:
            writer.close(ended=True)
    return True


def _days_to_scan(config, server_id, sid, stored: _Seen, clock) -> tuple[str, str]:
    """The daily files that can hold the session: from the day it started (its lock file was
    made then) to the day after its last stored event, never past today."""
    try:
        began = os.stat(lock_path(config.log_dir, server_id, sid)).st_mtime
    except OSError:
        began = clock()
    first_day = reader.day_of(began)
    last_seen = stored.last_time[:10] or first_day
    last_day = reader.day_of(reader.day_start(max(last_seen, first_day)) + 86400)
    return first_day, min(last_day, reader.day_of(clock()))


def _part_number(path: str) -> int:
    name = os.path.basename(path)
    return int(name[37:name.index(".")])


def _lock_files(log_dir: str, server_id: str):
    directory = store.open_dir(log_dir, server_id)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") and name.endswith(store.LOCK_SUFFIX):
            _drop_unused_hidden(os.path.join(directory, name))
            continue
        sid = name[:-len(store.LOCK_SUFFIX)]
        if name.endswith(store.LOCK_SUFFIX) and reader.UUID_RE.match(sid):
            yield sid, os.path.join(directory, name)


def _drop_unused_hidden(path: str) -> None:
    """A lock that never got its name (the recorder died within microseconds of making it)."""
    lock = store.OpenLock.try_take(path)
    if lock is not None:
        lock.release(ended=time.time() - os.fstat(lock.fd).st_mtime > CGROUP_GRACE_SECONDS)


# --- cgroups --------------------------------------------------------------------------------

def _cgroup_leaves(cgroup_path: str) -> list[str]:
    parent = os.path.join(cgroup_path, CGROUP_SESSIONS_DIR)
    try:
        names = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(parent, n) for n in names
            if reader.UUID_RE.match(n) and os.path.isdir(os.path.join(parent, n))]


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
        cgroup.kill()
        if not cgroup.wait_empty(KILL_WAIT_SECONDS):
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
