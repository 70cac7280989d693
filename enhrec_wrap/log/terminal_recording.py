"""The terminal recording of a session: a small versioned binary framing, gzip-compressed and
sync-flushed as it goes.

    <log_dir>/<server_id>/sessions/default/<sid>-<part>.tty.gz

Why not asciicast (JSON lines) on disk: a terminal's output is bytes, not text. asciicast's
"o" data is a JSON string, so invalid UTF-8 must be replaced and a sequence split across two
reads re-joined before it can be written; the log would no longer hold what was sent, and
every chunk would cost a decode and a JSON escape (control characters grow sixfold) on the
relay's hot path. A frame here is a 13-byte header and the bytes as read. The export turns it
into asciicast once, when asked.

A file is a sequence of frames:

    kind   1 byte   b"h" header, b"o" output, b"i" input, b"r" resize, b"t" truncated, b"e" end
    length 4 bytes  little-endian, of the payload
    time   8 bytes  little-endian, microseconds since the recording started (monotonic clock)
    payload

b"h" (first in every part) and b"t", b"e" carry a JSON object; b"r" carries b"COLSxROWS";
b"o" and b"i" carry the bytes as read. The header's "version" is FORMAT_VERSION: a reader
refuses a newer one. A recorder that dies leaves a gzip stream without its trailer whose
frames, up to the last flush (a few ms before), are all readable; the reader stops at the
last whole frame.
"""

import json
import os
import struct
import time
import zlib

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import files, layout

FORMAT = "enhrec-tty"
FORMAT_VERSION = 1
FRAME = struct.Struct("<cIQ")
HEADER, OUTPUT, INPUT, RESIZE, TRUNCATED, END = b"h", b"o", b"i", b"r", b"t", b"e"
# What the bound counts: what the user saw (and typed, when input is recorded).
PAYLOAD_KINDS = (OUTPUT, INPUT)
# A reader sees a live (or crashed) session's recording up to this long ago.
FLUSH_SECONDS = 0.005
# Compressed by ISA-L (isal_zlib: zlib's interface, and the same deflate and gzip stream, so
# every reader, here and elsewhere, reads it with zlib), at its level 1 (of 0 to 3): on the
# relay's path the compression was most of what its own code cost. Measured here, 16 KiB calls:
# the terminal benchmark's 20 MB text 0.45 ms/MB against zlib level 1's 1.7 (ratio 29 against
# 28), the GPL and Apache licence texts 2.1 against 9.4 (2.7 against 2.6), `ls -laR` 1.3
# against 5.4 (7.7 against 7.3).
_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def _compressor():
    """A part's gzip stream (ISA-L's deflate; its flush modes are zlib's). Imported here, in the
    relay: 1.4 ms of every wrapper's start otherwise, sessions without a terminal included."""
    from isal import isal_zlib
    return isal_zlib.compressobj(_LEVEL, zlib.DEFLATED, _GZIP_WBITS)


def recording_error(path: str, err: OSError, unwritten: int) -> EnhrecError:
    """A write to the recording failed; `unwritten` counts the payload bytes it lost."""
    error = files.error(f"cannot write the terminal recording {path}", err, os.path.dirname(path))
    error.unwritten = unwritten
    return error


def part_paths(directory: str, sid: str) -> list[str]:
    """The recording's parts on disk, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = sorted(parsed.part for parsed in map(layout.parse_terminal_recording_file, names)
                   if parsed and parsed.sid == sid)
    return [os.path.join(directory, layout.terminal_recording_file_name(sid, part))
            for part in found]


class Writer:
    """Writes one session's recording. Not thread-safe: one relay owns it.

    `limit` bounds the payload bytes kept (output, and input when recorded): past it they are
    counted in `not_kept` and no longer written, and one b"t" frame says where it stopped.

    A write failure is raised (EnhrecError, with the payload bytes it lost as `unwritten`) from
    the call that flushed. The part is cut back to its last whole flush, which stays readable.
    Then either the caller stops the recording (on_log_failure `close`), or, for `continue`,
    the frames of the next RETRY_SECONDS are counted as unwritten and the one after them starts
    a new part (so recording resumes once there is room, without a part per attempt)."""

    RETRY_SECONDS = 1.0

    def __init__(self, directory: str, sid: str, header: dict, limit: int,
                 clock=time.monotonic_ns):
        self.directory = directory   # the session store's directory (sessions/default)
        self.sid = sid
        self.header = dict(header, format=FORMAT, version=FORMAT_VERSION)
        self.limit = limit
        self.clock = clock
        self.origin = clock()
        self.kept = 0            # payload bytes written, or compressed and due within ms
        self.not_kept = 0        # payload bytes past the bound
        self.unwritten = 0       # payload bytes lost to write failures
        self.truncated = False
        self.stopped = False
        self.retry_at = 0.0
        self.part = -1
        self.fd = -1
        self.zip = None
        self.size = 0            # bytes of the current part on disk, all flushed
        self.pending = []        # compressed, not yet written
        self.pending_payload = 0
        self.flush_at = None     # monotonic seconds by which pending frames must be on disk

    # -- frames ------------------------------------------------------------------------------

    def start(self) -> None:
        """The first part and its header, on disk before the session's program runs."""
        self._open_part()
        self.flush()

    def output(self, data: bytes) -> None:
        self._payload(OUTPUT, data)

    def input(self, data: bytes) -> None:
        self._payload(INPUT, data)

    def resize(self, columns: int, rows: int) -> None:
        if self._writable():
            self._frame(RESIZE, f"{columns}x{rows}".encode())

    def _writable(self) -> bool:
        if self.truncated or self.stopped:
            return False
        return self.zip is not None or time.monotonic() >= self.retry_at

    def _payload(self, kind: bytes, data: bytes) -> None:
        if self.truncated:
            self.not_kept += len(data)
            return
        if not self._writable():
            self.unwritten += len(data)
            return
        room = self.limit - self.kept
        if len(data) > room:
            self.not_kept += len(data) - room
            data = data[:room]
            self.truncated = True
        try:
            if data:
                self._frame(kind, data)
            if self.truncated:
                self._frame(TRUNCATED, json.dumps({"limit": self.limit}).encode())
        except EnhrecError:
            self.unwritten += len(data)
            raise
        self.kept += len(data)
        self.pending_payload += len(data)
        if self.truncated:
            self.flush()

    def _frame(self, kind: bytes, payload: bytes) -> None:
        if self.zip is None:
            self._open_part()
        now_us = (self.clock() - self.origin) // 1000
        # Header and payload apart: joining them copied every byte once more.
        for part in (FRAME.pack(kind, len(payload), now_us), payload):
            out = self.zip.compress(part)
            if out:
                self.pending.append(out)
        if self.flush_at is None:
            self.flush_at = time.monotonic() + FLUSH_SECONDS

    # -- the file ----------------------------------------------------------------------------

    def _open_part(self) -> None:
        self.part += 1
        path = self._path()
        try:
            # <server_id>/ exists (the session's lock is below it); sessions/default may not yet.
            files.ensure_private_dirs(os.path.dirname(os.path.dirname(self.directory)),
                                      self.directory)
            self.fd = files.open_private_file(path)
        except OSError as err:
            self.fd = -1
            self.retry_at = time.monotonic() + self.RETRY_SECONDS
            raise recording_error(path, err, 0) from None
        self.size = os.lseek(self.fd, 0, os.SEEK_END)
        self.zip = _compressor()
        header = dict(self.header, part=self.part,
                      time_ns=time.time_ns() - (self.clock() - self.origin))
        self._frame(HEADER, json.dumps(header).encode())

    def flush_due(self) -> bool:
        return self.flush_at is not None and time.monotonic() >= self.flush_at

    def flush(self) -> None:
        if self.zip is None or self.flush_at is None:
            return
        self.pending.append(self.zip.flush(zlib.Z_SYNC_FLUSH))
        self._write_pending()

    def _write_pending(self) -> None:
        chunk = b"".join(self.pending)
        lost = self.pending_payload
        self.pending, self.pending_payload, self.flush_at = [], 0, None
        try:
            files.write_all(self.fd, chunk)
        except OSError as err:
            # Back to the last whole flush: what is there stays readable. The compressor has
            # consumed the frames, so this part cannot go on.
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            os.close(self.fd)
            self.fd, self.zip = -1, None
            self.kept -= lost
            self.unwritten += lost
            self.retry_at = time.monotonic() + self.RETRY_SECONDS
            raise recording_error(self._path(), err, lost) from None
        self.size += len(chunk)

    def _path(self) -> str:
        return os.path.join(self.directory, layout.terminal_recording_file_name(self.sid, self.part))

    def stop(self) -> None:
        """After a failure under on_log_failure `close`: nothing more is written (the session
        is being ended); what still comes is counted as unwritten."""
        self.stopped = True

    def close(self) -> None:
        """The end frame and the gzip trailer (not after a failure: that part is cut short)."""
        if self.zip is None:
            return
        self._frame(END, json.dumps(self.summary()).encode())
        self.pending.append(self.zip.flush(zlib.Z_FINISH))
        self.flush_at = time.monotonic()
        try:
            self._write_pending()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            self.zip = None

    def summary(self) -> dict:
        """What session.end says of the recording (docs/events.md)."""
        return {"recorded_bytes": self.kept, "truncated": self.truncated,
                "bytes_not_kept": self.not_kept, "unwritten_bytes": self.unwritten,
                "input_recorded": bool(self.header.get("input_recorded"))}


# -- reading -----------------------------------------------------------------------------------

class Frame:
    __slots__ = ("kind", "time", "data")

    def __init__(self, kind, time_us, data):
        self.kind, self.time, self.data = kind, time_us, data

    def json(self) -> dict:
        return json.loads(self.data)


def read_frames(paths, chunk_size=1 << 16):
    """Every whole frame of the parts, in order. A part cut short (a crash) ends at its last
    whole frame; a part whose header is of a newer version raises ValueError."""
    for path in paths:
        yield from _part_frames(path, chunk_size)


def _part_frames(path, chunk_size):
    unzip = zlib.decompressobj(_GZIP_WBITS)
    buffer = b""
    first = True
    with open(path, "rb") as f:
        while True:
            raw = f.read(chunk_size)
            try:
                buffer += unzip.decompress(raw) if raw else unzip.flush()
            except zlib.error:
                raw = b""   # damaged past here: keep what came before
            while len(buffer) >= FRAME.size:
                kind, length, when = FRAME.unpack_from(buffer)
                if len(buffer) < FRAME.size + length:
                    break
                data = buffer[FRAME.size:FRAME.size + length]
                buffer = buffer[FRAME.size + length:]
                if first:
                    _check_header(path, kind, data)
                    first = False
                yield Frame(kind, when, data)
            if not raw or unzip.eof:
                return


def _check_header(path, kind, data):
    try:
        header = json.loads(data) if kind == HEADER else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not an enhrec terminal recording")
    if not isinstance(header.get("version"), int) or header["version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: recording format version {header.get('version')} is newer "
                         f"than this enhrec reads ({FORMAT_VERSION}): upgrade enhrec")
