"""The per-session files of the reference layout (layout.py), written while the session runs.

    <server dir>/sessions/default/<sid>.index                              the parts, JSON lines
    <server dir>/sessions/default/<sid>-<part>.events.gz                    every event
    <server dir>/sessions/default/<sid>-<part>.session.command-events.gz    session.command only
    <server dir>/sessions/default/<sid>-<part>.session.disk-events.gz       session.disk only
    <server dir>/sessions/default/<sid>-<part>.session.network-events.gz    session.network only
    <server dir>/open-sessions/<sid>.lock                                   while not properly ended

Each batch is compressed and sync-flushed to the files as it arrives (by the store's writer
thread, milliseconds later), so a recorder that dies (SIGKILL, OOM) leaves gzip streams whose
every written event is readable; only the trailer is missing, and the readers (and Go's, and
`zcat`) stop at the end of what is there. A normal end writes the trailer. The daily file, which
the recorder writes first and directly, holds everything the store had not yet written.

Part 0 is the only part of a healthy session. A batch is in all of its files or in none: when a
write fails (disk full), every file the batch went to is cut back to its last complete batch, and
a stream cut back is never written again; the next batch for it goes to a new part, listed in the
index with the `ei` it starts at, as the reference lists its parts. A part (and its index line)
made for a batch that then failed is taken away again, so a disk that stays full makes no empty
parts, and what a failure costs is exactly the events of the batches that failed.

The store holds the session's lock file (session_lock.py), which says "this session has not been
ended"; each file is one GzStream (gz_stream.py).
"""

import collections
import os
import threading

import orjson

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events.kinds import COMMAND, DISK, NETWORK
from enhrec_wrap.log import layout
from enhrec_wrap.log.files import ensure_private_dirs, error, open_private_file, write_all
from enhrec_wrap.log.gz_stream import GzStream, gzip_member
from enhrec_wrap.log.layout import ALL_EVENTS
from enhrec_wrap.log.session_lock import OpenLock, still_there

# A file of its own for each kernel kind, beside the file of all events.
KIND_STREAMS = (COMMAND, DISK, NETWORK)

# Batches waiting for the writer thread; beyond this the recorder waits for it.
MAX_PENDING_BYTES = 16 << 20


def last_parts(log_dir: str, server_id: str, sid: str) -> dict[str, int]:
    """The highest part number on disk of each of the session's streams."""
    found = {}
    try:
        names = os.listdir(layout.session_files_dir(log_dir, server_id))
    except FileNotFoundError:
        return found
    for name in names:
        parsed = layout.parse_stream_file(name)
        if parsed is not None and parsed.sid == sid:
            found[parsed.stream] = max(found.get(parsed.stream, -1), parsed.part)
    return found


def index_line(sid: str, part: int, stream: str, first_ei: int) -> bytes:
    # Field names and types as in the reference's indexEntry.
    entry = {"file_name": layout.stream_file_name(sid, part, stream), "type": stream,
             "index": first_ei}
    return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)


class SessionStore:
    """Writes one session's files. Files appear with the first event (session.start), so a
    session that fails before it starts leaves nothing behind.

    The first batch is written before write() returns. Later ones are compressed and written by
    a thread of the store's own, so that compressing every event twice does not hold up the
    recorder: zlib runs without the GIL, on another core. Each batch is still flushed to its
    files as soon as it is compressed, a few milliseconds after it arrived, and a failure is
    raised by the next write(), flush() or close().
    """

    def __init__(self, log_dir: str, server_id: str, sid: str, lock: OpenLock | None):
        self.dir = layout.session_files_dir(log_dir, server_id)
        self.server_dir = layout.server_dir(log_dir, server_id)
        self.log_dir, self.server_id = log_dir, server_id
        self.sid = sid
        self.lock = lock
        self._streams: dict[str, GzStream] = {}
        self._parts: dict[str, int] = {}
        self._index_fd = -1
        self._index_size = 0
        self._started = False
        self._worker = None
        self._cond = threading.Condition()
        self._pending = collections.deque()
        self._pending_bytes = 0
        self._busy = False
        self._stopping = False
        self._failure = None        # the first failure not reported yet
        self._failed_events = 0     # the events it, and those after it, cost
        self._removed = 0           # events that went with an events file someone removed

    @classmethod
    def create(cls, log_dir: str, server_id: str, sid: str) -> "SessionStore":
        """The store of a new session, holding its lock file."""
        return cls(log_dir, server_id, sid, OpenLock.create(log_dir, server_id, sid))

    @classmethod
    def continue_session(cls, log_dir: str, server_id: str, sid: str,
                         last_parts: dict[str, int]) -> "SessionStore":
        """A writer for a session whose recorder is gone (the caller holds its lock): new parts
        after the ones on disk, whose last may end in an unfinished gzip stream."""
        store = cls(log_dir, server_id, sid, None)
        store._parts = {stream: part + 1 for stream, part in last_parts.items()}
        return store

    def write(self, events: list[dict], lines: list[bytes]) -> None:
        """events[i] is encoded as lines[i]. Raises EnhrecError for this batch when it is the
        first, else for earlier batches that failed; `unwritten` on it counts their events."""
        if not lines:
            return
        # Only each event's number and kind are needed to place its line: queuing the dicts
        # themselves held ~1.5 KB an event in a burst (docs/PERFORMANCE.md).
        kinds = [(e["ei"], e["event"]) for e in events]
        if not self._started:
            self._write_batch(kinds, lines)   # session.start: without it nothing may run
            self._started = True
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="session-store", daemon=True)
            self._worker.start()
        size = sum(map(len, lines))
        with self._cond:
            while self._pending_bytes > MAX_PENDING_BYTES:
                self._cond.wait()
            self._pending.append((kinds, lines, size))
            self._pending_bytes += size
            self._cond.notify_all()
        self._raise_failure()

    def flush(self) -> None:
        """Waits until every batch given so far is in its files; raises what failed."""
        with self._cond:
            while self._pending or self._busy:
                self._cond.wait()
        self._raise_failure()

    def removed_events(self) -> int:
        """After flush(): how many events were in events files someone removed (or replaced)
        under us; each time, the stream went on in a new part."""
        self._notice_removed()
        return self._removed

    def renew_lock(self) -> None:
        """A new lock file in place of ours, which someone removed (OpenLock.gone)."""
        old = self.lock
        self.lock = OpenLock.create(self.log_dir, self.server_id, self.sid)
        os.close(old.fd)
        old.fd = -1

    def _raise_failure(self) -> None:
        with self._cond:
            failure, count = self._failure, self._failed_events
            self._failure, self._failed_events = None, 0
        if failure is not None:
            failure.unwritten = count
            raise failure

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                kinds, lines, size = self._take_pending()
                self._busy = True
            failure = None
            try:
                self._write_batch(kinds, lines)
            except EnhrecError as e:
                failure = e
            with self._cond:
                self._busy = False
                self._pending_bytes -= size
                if failure is not None:
                    self._failure = self._failure or failure
                    self._failed_events += len(lines)
                self._cond.notify_all()

    def _take_pending(self) -> tuple[list, list, int]:
        """Every batch waiting, as one: the thread needs the GIL again after each compression
        and write, and a main thread that keeps it busy makes each of those waits up to the
        interpreter's switch interval (5 ms); so the thread's cost goes by what it takes at
        once, not by how many batches that is (docs/PERFORMANCE.md, "The consumer")."""
        if len(self._pending) == 1:
            return self._pending.popleft()
        kinds, lines, size = [], [], 0
        while self._pending:
            more_kinds, more_lines, more_size = self._pending.popleft()
            kinds += more_kinds
            lines += more_lines
            size += more_size
        return kinds, lines, size

    def _write_batch(self, kinds: list[tuple[int, str]], lines: list[bytes]) -> None:
        """kinds[i] is (ei, event type) of lines[i]. Each batch is compressed once for
        events.gz, and again only for the kinds that are not all of it (a burst of one kind,
        the bulk of a busy session, costs one compression, not two: docs/PERFORMANCE.md)."""
        self._notice_removed()
        batch_start = kinds[0][0]
        whole = gzip_member(b"".join(lines))
        batches = {ALL_EVENTS: (batch_start, whole)}
        for stream in KIND_STREAMS:
            picked = [(ei, line) for (ei, kind), line in zip(kinds, lines) if kind == stream]
            if len(picked) == len(lines):
                batches[stream] = (batch_start, whole)
            elif picked:
                batches[stream] = (picked[0][0], gzip_member(b"".join(l for _, l in picked)))
        if not self._streams and not self._parts:
            # All four files from the first event on, so every session has the same layout.
            for stream in KIND_STREAMS:
                batches.setdefault(stream, (batch_start, None))
        taken = []   # (stream, its file, its size before the batch, made for the batch)
        index_size = self._index_size
        try:
            for stream, (first_ei, member) in batches.items():
                gz, made = self._stream(stream, first_ei)
                taken.append((stream, gz, gz.size, made))
                if member is None:
                    continue
                try:
                    gz.append(member)
                except OSError as err:
                    raise self._error(gz.path, err) from None
            if self._index_fd < 0:   # removed alone: written again whole
                self._open_index()
        except EnhrecError:
            self._take_back(taken, index_size)
            raise
        for stream, gz, _, _ in taken:
            gz.events += len(lines) if stream == ALL_EVENTS else 0

    def _notice_removed(self) -> None:
        """Files of ours that someone removed (rm -rf of the log, a cleanup job) or replaced:
        appending to them would lose every later event without a word. Each stream goes on in
        a new part; what an events file held is counted (a renamed one still holds it)."""
        for stream, gz in list(self._streams.items()):
            if not still_there(gz.fd, gz.path):
                if stream == ALL_EVENTS and os.fstat(gz.fd).st_nlink == 0:
                    self._removed += gz.events
                self._streams.pop(stream)
                os.close(gz.fd)
                self._parts[stream] = gz.part + 1
        if self._index_fd >= 0 and not still_there(self._index_fd, self._index_path()):
            os.close(self._index_fd)
            self._index_fd, self._index_size = -1, 0

    def _open_index(self) -> None:
        try:
            self._ensure_index()
        except OSError as err:
            raise self._error(self._index_path(), err) from None

    def _take_back(self, taken: list, index_size: int) -> None:
        """Out of every file again, the batch that failed in one: each holds the same events,
        and the failure costs exactly the batch's."""
        for stream, gz, size, made in taken:
            if made:
                self._streams.pop(stream)
                gz.discard()
            else:
                gz.cut_back(size)
        self._cut_index(index_size)

    def close(self, ended: bool) -> None:
        """Writes what is pending and finishes every stream. `ended`: session.end is written (or
        session.start never was), so the lock file goes; otherwise, or when the last batches
        failed (session.end may be among them), it stays for recovery to write session.end."""
        failure = None
        if self._worker is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._worker.join()
            self._worker = None
        try:
            self._raise_failure()
        except EnhrecError as e:
            failure, ended = e, False
        for stream in list(self._streams.values()):
            try:
                stream.finish()
            except OSError as err:
                failure = failure or self._error(stream.path, err)
        self._streams.clear()
        if self._index_fd >= 0:
            os.close(self._index_fd)
            self._index_fd = -1
        if self.lock is not None:
            self.lock.release(ended)
        if failure:
            raise failure

    def _stream(self, stream: str, first_ei: int) -> tuple[GzStream, bool]:
        """The stream's current file, and whether it was made now (for this batch)."""
        current = self._streams.get(stream)
        if current is not None and not current.broken:
            return current, False
        if current is not None:
            self._streams.pop(stream).finish()
            self._parts[stream] = self._parts.get(stream, 0) + 1
        part = self._parts.setdefault(stream, 0)
        path = self._path(stream)
        # Part 0 starts the session (index 0); a later part where its first event is.
        first_ei = first_ei if part else 0
        try:
            self._ensure_index()
            new = GzStream(path, stream, part, first_ei)
        except OSError as err:
            raise self._error(path, err) from None
        try:
            write_all(self._index_fd, index_line(self.sid, part, stream, first_ei))
        except OSError as err:
            new.discard()
            self._cut_index(self._index_size)
            raise self._error(self._index_path(), err) from None
        self._index_size = os.lseek(self._index_fd, 0, os.SEEK_END)
        self._streams[stream] = new
        return new, True

    def _ensure_index(self) -> None:
        """The index open; made again when someone removed it, listing the parts being
        written (those before it went with it)."""
        if self._index_fd >= 0:
            return
        ensure_private_dirs(self.server_dir, self.dir)
        self._index_fd = open_private_file(self._index_path())
        for gz in self._streams.values():
            write_all(self._index_fd, index_line(self.sid, gz.part, gz.stream, gz.first_ei))
        self._index_size = os.lseek(self._index_fd, 0, os.SEEK_END)

    def _cut_index(self, size: int) -> None:
        """The index back to `size`: no line for a part that is not there, nor half of one."""
        if self._index_fd < 0:
            return
        try:
            os.ftruncate(self._index_fd, size)
        except OSError:
            return   # best effort while already failing
        self._index_size = size
        if size == 0:
            # Made for this batch: it goes, and is made again, whole, by the next one (a
            # session whose first batch failed, and never started, leaves nothing).
            os.close(self._index_fd)
            self._index_fd = -1
            _unlink_quietly(self._index_path())

    def _index_path(self) -> str:
        return os.path.join(self.dir, layout.index_file_name(self.sid))

    def _path(self, stream: str) -> str:
        return os.path.join(self.dir, layout.stream_file_name(self.sid, self._parts.get(stream, 0),
                                                              stream))

    def _error(self, path: str, err: OSError) -> EnhrecError:
        return error(f"cannot write the session file {path}", err, self.dir)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
