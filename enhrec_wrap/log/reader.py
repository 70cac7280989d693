"""Streaming readers over the audit log: the daily files and the per-session gzip files.

Nothing here loads a whole file: lines are read, decompressed and parsed one at a time, so the
commands that use these work on logs of any size. Readers are tolerant, because the files they
read may be cut short by a crash or a full disk: a line that is not a JSON object is counted and
skipped, a line still being written (no newline yet) is left for later, and a gzip stream that
ends early (a recorder that died never writes the trailer) ends where its data ends.
"""

import bisect
import os
import zlib
from dataclasses import dataclass, field

import orjson

from enhrec_wrap.log import chain, layout

_CHUNK = 1 << 20
_DAY = 86400


@dataclass
class Stats:
    """What was read, and what had to be skipped."""
    bytes_read: int = 0
    corrupt_lines: int = 0
    truncated_files: list = field(default_factory=list)
    duplicates: int = 0


# --- lines ----------------------------------------------------------------------------------

def day_file_lines(path: str, stats: Stats | None = None, start: int = 0):
    """Whole lines of a daily file from byte `start`; a last line without its newline is a
    write in progress (or one cut by a crash) and is not returned."""
    stats = stats if stats is not None else Stats()
    with open(path, "rb") as f:
        if start:
            f.seek(start)
        for line in f:
            stats.bytes_read += len(line)
            if line.endswith(b"\n"):
                yield line
            else:
                stats.truncated_files.append(path)


def gz_lines(path: str, stats: Stats | None = None):
    """Whole lines of a gzip file, which may hold several members and may end early."""
    stats = stats if stats is not None else Stats()
    pending = b""
    unzip = None
    cut = False
    with open(path, "rb") as f:
        while not cut:
            data = f.read(_CHUNK)
            if not data:
                break
            stats.bytes_read += len(data)
            while data:
                if unzip is None:
                    unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
                saved = unzip.copy()
                try:
                    pending += unzip.decompress(data)
                    data = unzip.unused_data if unzip.eof else b""
                    if unzip.eof:
                        unzip = None   # the next member, if any, starts in `data`
                except zlib.error:
                    # A damaged tail: what came before it is still good, but zlib dropped the
                    # output of the whole call, so feed it again in small pieces.
                    pending += _salvage(saved, data)
                    cut, data = True, b""
                end = pending.rfind(b"\n")
                if end >= 0:
                    yield from pending[:end + 1].splitlines(keepends=True)
                    pending = pending[end + 1:]
    if cut or pending or unzip is not None:
        # An unfinished member (no trailer): a live session, or one whose recorder died.
        stats.truncated_files.append(path)


def _salvage(unzip, data: bytes) -> bytes:
    """What `data` decompresses to up to the first byte that is not valid."""
    out = bytearray()
    for start in range(0, len(data), 4096):
        piece = data[start:start + 4096]
        saved = unzip.copy()
        try:
            out += unzip.decompress(piece)
        except zlib.error:
            unzip = saved
            for i in range(len(piece)):
                try:
                    out += unzip.decompress(piece[i:i + 1])
                except zlib.error:
                    break
            break
        if unzip.eof:
            break
    return bytes(out)


def parse(line: bytes, stats: Stats | None = None) -> dict | None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        if stats is not None and line.strip():
            stats.corrupt_lines += 1
        return None
    return event


def events_of(lines, stats: Stats | None = None):
    """(event, line) for every line that parses."""
    for line in lines:
        event = parse(line, stats)
        if event is not None:
            yield event, line


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
            seen = self.seen[key] = (_SeqSet(), {})
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


class _SeqSet:
    """A set of integers kept as sorted, disjoint ranges: a host's seqs are one range or few."""

    def __init__(self):
        self.starts = []
        self.ends = []

    def add(self, n: int) -> bool:
        """False when n was in the set already."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, n) - 1
        if i >= 0 and n <= ends[i]:
            return False
        left = i >= 0 and ends[i] + 1 == n
        right = i + 1 < len(starts) and starts[i + 1] == n + 1
        if left and right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif left:
            ends[i] = n
        elif right:
            starts[i + 1] = n
        else:
            starts.insert(i + 1, n)
            ends.insert(i + 1, n)
        return True


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

    def event_parts(self, sid: str, directory: str | None = None) -> list[str]:
        """The session's events.gz parts in order: those in its index, and any on disk that the
        index misses (an index line lost to a full disk)."""
        directories = [directory] if directory else self._session_file_dirs()
        parts = {}
        for d in directories:
            for name in _listdir(d):
                found = layout.parse_stream_file(name)
                if found and found.sid == sid and found.stream == layout.ALL_EVENTS:
                    parts[found.part] = os.path.join(d, name)
        return [parts[p] for p in sorted(parts)]

    def _session_file_dirs(self) -> list[str]:
        return [layout.session_files_dir(self.path, s) for s in self.server_ids()]


def _sid_of_events_part(name: str) -> str | None:
    found = layout.parse_stream_file(name)
    if found is None or found.stream != layout.ALL_EVENTS or not layout.is_uuid(found.sid):
        return None
    return found.sid


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def session_events(log: LogDir, sid: str, stats: Stats | None = None, directory: str | None = None):
    """The session's events from its session files, in `ei` order."""
    events = []
    for path in log.event_parts(sid, directory):
        for event, _ in events_of(gz_lines(path, stats), stats):
            if event.get("sid") == sid:
                events.append(event)
    events.sort(key=_ei)
    return events


def day_events(log: LogDir, first_day=None, last_day=None, stats: Stats | None = None,
               must_contain: tuple[bytes, ...] = (), progress=None, also_keep: bytes | None = None):
    """(event, line) from the daily files in [first_day, last_day] of every host, oldest file
    first, without duplicates (Duplicates). Lines lacking any of `must_contain` are skipped
    before they are parsed (a cheap pre-filter), unless they contain `also_keep`."""
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
                    if also_keep is None or also_keep not in line:
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


def reverse_lines(path: str, end: int | None = None, block: int = 1 << 16):
    """Whole lines of a file before byte `end` (default: all), from the last to the first, read
    backwards block by block."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        end = size if end is None else min(end, size)
        tail = b""
        complete = False
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + tail
            end = start
            if not complete:
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = b""   # all of it belongs to a line still being written
                    continue
                data = data[:cut]
                complete = True
            lines = data.split(b"\n")
            # The first piece may have begun in the block before this one.
            tail = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                yield line + b"\n"


def newest_day_file(server_dir: str) -> str | None:
    try:
        names = [n for n in os.listdir(server_dir) if layout.day_of_file(n)]
    except FileNotFoundError:
        return None
    return os.path.join(server_dir, max(names)) if names else None


class Follower:
    """The lines appended to each host's newest day file (a host's own log has one host, a
    collector's many), following each to the next day's file at midnight. The files there at the
    first poll are followed from their end (from_end) or start; hosts and days that appear
    later, from their start."""

    def __init__(self, log: LogDir, from_end: bool = True):
        self.log = log
        self.from_end = from_end
        self.tails = {}
        self.polled = False

    def position(self, server_id: str, path: str, offset: int) -> None:
        """Follow `path` of that host from byte `offset` (where the caller stopped reading)."""
        self.tails[server_id] = _Tail(path, offset)

    def poll(self) -> list[bytes]:
        lines = []
        for server in self.log.server_ids():
            newest = newest_day_file(layout.server_dir(self.log.path, server))
            if newest is None:
                continue
            tail = self.tails.get(server)
            if tail is None:
                start = _size(newest) if self.from_end and not self.polled else 0
                tail = self.tails[server] = _Tail(newest, start)
            lines += tail.read_new()
            if newest != tail.path:
                # A new day: the old file may still get a last batch from a writer that opened
                # it before midnight, read just now; then start the new one.
                tail.path, tail.offset, tail.pending = newest, 0, b""
                lines += tail.read_new()
        self.polled = True
        return lines


class _Tail:
    def __init__(self, path: str, offset: int):
        self.path = path
        self.offset = offset
        self.pending = b""

    def read_new(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self.offset:
                    self.offset, self.pending = 0, b""   # truncated or replaced
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.pending + data
        end = data.rfind(b"\n")
        if end < 0:
            self.pending = data
            return []
        self.pending = data[end + 1:]
        return data[:end + 1].splitlines(keepends=True)
