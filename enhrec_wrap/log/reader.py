"""Streaming readers over the audit log's directory: its hosts and day files, a session's files
and events, every host's day files as one stream of events without duplicates, and the newest
day files followed as they grow (`enhrec tail`).

They read each file with log/file_lines.py, line by line and tolerant of damage (its docstring
says how), and find the files through the parsers of log/layout.py.
"""

import os

from enhrec_wrap.log import chain, layout
from enhrec_wrap.log.ranges import Ranges
from enhrec_wrap.log.file_lines import (LineSplitter, Stats, day_file_lines, events_of,
                                        gz_lines, open_regular, parse)


class Duplicates:
    """Drops a line whose seq was read before in the same day file: RELP delivers at least once,
    so a collector's copy can hold a line twice, and a line sent again goes to the same day file
    as its first copy. The same seq with other bytes is no duplicate but a sign of tampering
    (`enhrec verify` names it), so it is kept when the first copy is among the file's last RECENT
    lines, where resent lines are; older repeats are dropped by seq alone. Lines without a seq
    (written before the chain) always pass. `key` names the file (or, when following, the host)."""

    # RELP's window is 1024 lines, and imfile re-reads at most 1000 after a crash
    # (conf/rsyslog/enhrec-forwarder.conf.in).
    RECENT = 4096

    def __init__(self, stats: "Stats"):
        self.stats = stats
        self.seen = {}

    def fresh(self, key: str, line: bytes) -> bool:
        t = chain.trailer(line)
        if t is None:
            return True
        seen = self.seen.get(key)
        if seen is None:
            seen = self.seen[key] = (Ranges(), {})
        seqs, recent = seen
        if seqs.add(t.seq):
            recent[t.seq] = hash(line)
            if len(recent) > self.RECENT:
                del recent[next(iter(recent))]
            return True
        first = recent.get(t.seq)
        if first is not None and first != hash(line):
            return True
        self.stats.duplicates += 1
        return False

    def forget(self, key: str) -> None:
        self.seen.pop(key, None)


# --- the directory --------------------------------------------------------------------------

class LogDir:
    """The audit log under <data_dir>/log: one directory per server id (normally one)."""

    def __init__(self, log_dir: str):
        self.path = log_dir

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def server_ids(self) -> list[str]:
        """The ids that have a server dir here, in name order."""
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return []
        return [n for n in names if layout.is_uuid(n) and os.path.isdir(layout.server_dir(self.path, n))]

    def day_files(self, first_day: str | None = None, last_day: str | None = None) -> list[tuple[str, str]]:
        """(day, path) in day order, limited to [first_day, last_day] when given."""
        found = []
        for server_id in self.server_ids():
            server = layout.server_dir(self.path, server_id)
            for name in os.listdir(server):
                day = layout.day_of_file(name)
                if day is None:
                    continue
                if (first_day and day < first_day) or (last_day and day > last_day):
                    continue
                found.append((day, os.path.join(server, name)))
        found.sort()
        return found

    def current_file(self) -> str | None:
        """The file events.log points at, or None while there is none."""
        link = layout.current_link(self.path)
        try:
            target = os.readlink(link)
        except OSError:
            return None
        path = os.path.normpath(os.path.join(self.path, target))
        return path if os.path.isfile(path) else None

    def stored_sids(self) -> dict[str, str]:
        """sid -> its session directory, for every session that has session files."""
        sids = {}
        for directory in self._session_file_dirs():
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                sid = layout.sid_of_index_file(name) or _sid_of_events_part(name)
                if sid:
                    sids[sid] = directory
        return sids

    def event_parts(self, sid: str, directory: str | None = None,
                    stats: Stats | None = None) -> list[str]:
        """The session's events.gz parts in order: those on disk, whether or not its index
        lists them (an index line lost to a full disk, an index removed). A part the index
        lists that is not on disk is named in stats."""
        directories = [directory] if directory else self._session_file_dirs()
        parts = {}
        listed = {}
        for d in directories:
            for name in _listdir(d):
                found = layout.parse_stream_file(name)
                if found and found.sid == sid and found.stream == layout.ALL_EVENTS:
                    parts[found.part] = os.path.join(d, name)
            if stats is not None:
                listed.update(_indexed_parts(d, sid, stats))
        for part, path in sorted(listed.items()):
            if part not in parts:
                stats.skipped_files.append((path, "listed in the session's index, but not there"))
        return [parts[p] for p in sorted(parts)]

    def last_change(self, sid: str, directory: str | None = None) -> float:
        """When the session's events files were last written to (0 when it has none)."""
        return max((_mtime(p) for p in self.event_parts(sid, directory)), default=0.0)

    def start_time(self, sid: str, directory: str | None = None,
                   stats: Stats | None = None) -> str | None:
        """The `time` of the session's first stored event (its session.start), from the first
        lines of its first part only."""
        for path in self.event_parts(sid, directory)[:1]:
            for event, _ in events_of(gz_lines(path, stats), stats):
                t = event.get("time")
                return t if isinstance(t, str) else None
        return None

    def _session_file_dirs(self) -> list[str]:
        return [layout.session_files_dir(self.path, s) for s in self.server_ids()]


def _sid_of_events_part(name: str) -> str | None:
    found = layout.parse_stream_file(name)
    if found is None or found.stream != layout.ALL_EVENTS or not layout.is_uuid(found.sid):
        return None
    return found.sid


def _indexed_parts(directory: str, sid: str, stats: Stats) -> dict[int, str]:
    """part -> path of the events parts the session's index lists (names checked: an index
    line never points outside the directory)."""
    listed = {}
    try:
        lines = list(day_file_lines(os.path.join(directory, layout.index_file_name(sid)), stats))
    except FileNotFoundError:
        return listed
    for event, _ in events_of(lines, stats):
        name = event.get("file_name")
        found = layout.parse_stream_file(name) if isinstance(name, str) else None
        if found and found.sid == sid and found.stream == layout.ALL_EVENTS:
            listed[found.part] = os.path.join(directory, name)
    return listed


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def session_events(log: LogDir, sid: str, stats: Stats | None = None, directory: str | None = None):
    """The session's events from its session files, in `ei` order."""
    return [event for event, _ in session_lines(log, sid, stats, directory)]


def session_lines(log: LogDir, sid: str, stats: Stats | None = None, directory: str | None = None):
    """(event, line) of the session's events from its session files, in `ei` order."""
    found = []
    for path in log.event_parts(sid, directory, stats):
        try:
            for event, line in events_of(gz_lines(path, stats), stats):
                if event.get("sid") == sid:
                    found.append((event, line))
        except FileNotFoundError:
            if stats is not None:
                stats.skipped_files.append((path, "removed while it was being read"))
    found.sort(key=lambda pair: _ei(pair[0]))
    return found


def day_events(log: LogDir, first_day=None, last_day=None, stats: Stats | None = None,
               must_contain: tuple[bytes, ...] = (), progress=None):
    """(event, line) from the daily files in [first_day, last_day] of every host, oldest file
    first, without duplicates (Duplicates). Lines lacking any of `must_contain` are skipped
    before they are parsed (a cheap pre-filter for the lines of one session: a damaged line is
    counted only when it names it)."""
    stats = stats if stats is not None else Stats()
    files = log.day_files(first_day, last_day)
    total = sum(_size(path) for _, path in files)
    if progress:
        progress.start(total)
    done = 0
    duplicates = Duplicates(stats)
    for _, path in files:
        before = stats.bytes_read
        try:
            for n, line in enumerate(day_file_lines(path, stats)):
                if progress and n % 4096 == 0:
                    progress.update(done + stats.bytes_read - before, os.path.basename(path))
                if must_contain and not all(needle in line for needle in must_contain):
                    continue
                if not duplicates.fresh(path, line):
                    continue
                event = parse(line, stats)
                if event is not None:
                    yield event, line
        except FileNotFoundError:
            continue   # removed (rotated away) since it was listed
        finally:
            duplicates.forget(path)
        done += stats.bytes_read - before
    if progress:
        progress.finish()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _ei(event: dict) -> int:
    ei = event.get("ei")
    return ei if isinstance(ei, int) else -1


def newest_day_file(server_dir: str) -> str | None:
    try:
        names = [n for n in os.listdir(server_dir) if layout.day_of_file(n)]
    except FileNotFoundError:
        return None
    return os.path.join(server_dir, max(names)) if names else None


class Follower:
    """The lines appended to each host's newest day file (a host's own log has one host, a
    collector's many), following each to the next day's file at midnight, and to a file made
    again under the same name (logrotate) from its start. The files there at the first poll are
    followed from their end (from_end) or start; hosts and days that appear later, from their
    start."""

    def __init__(self, log: LogDir, from_end: bool = True, stats: Stats | None = None):
        self.log = log
        self.from_end = from_end
        self.stats = stats if stats is not None else Stats()
        self.tails = {}
        self.polled = False

    def position(self, server_id: str, path: str, offset: int) -> None:
        """Follow `path` of that host from byte `offset` (where the caller stopped reading)."""
        self.tails[server_id] = _Tail(path, offset, self.stats)

    def poll(self) -> list[bytes]:
        lines = []
        for server in self.log.server_ids():
            newest = newest_day_file(layout.server_dir(self.log.path, server))
            if newest is None:
                continue
            tail = self.tails.get(server)
            if tail is None:
                start = _size(newest) if self.from_end and not self.polled else 0
                tail = self.tails[server] = _Tail(newest, start, self.stats)
            lines += tail.read_new()
            if newest != tail.path:
                # A new day: the old file may still get a last batch from a writer that opened
                # it before midnight, read just now; then start the new one.
                tail = self.tails[server] = _Tail(newest, 0, self.stats)
                lines += tail.read_new()
        self.polled = True
        return lines


class _Tail:
    """One file being followed, from byte `offset` of the file that has its name now."""

    # Read at most this much per poll, so that a huge append is taken in steps.
    MAX_READ = 16 << 20

    def __init__(self, path: str, offset: int, stats: Stats):
        self.path = path
        self.offset = offset
        self.stats = stats
        self.lines = LineSplitter(stats)
        self.file_id = None   # (st_dev, st_ino) of the file being read

    def read_new(self) -> list[bytes]:
        try:
            f = open_regular(self.path, self.stats)
        except FileNotFoundError:
            return []
        if f is None:
            return []
        with f:
            st = os.fstat(f.fileno())
            size = f.seek(0, os.SEEK_END)
            if size < self.offset or (st.st_dev, st.st_ino) != self.file_id:
                if self.file_id is not None or size < self.offset:
                    self.offset = 0   # truncated, or another file under the name (logrotate)
                self.lines = LineSplitter(self.stats)
                self.file_id = (st.st_dev, st.st_ino)
            f.seek(self.offset)
            data = f.read(self.MAX_READ)
        self.offset += len(data)
        return self.lines.feed(data)
