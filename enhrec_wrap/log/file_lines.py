"""Lines out of one file of the audit log: a daily file (forwards from a byte, or backwards), a
session's gzip file, and the JSON object of each line.

Nothing here loads a whole file: lines are read, decompressed and parsed one at a time, so the
commands that use these work on logs of any size, and on hostile ones. Readers are tolerant,
because the files they read may be cut short by a crash or a full disk, or be damaged: a line
that is not a JSON object is counted and skipped, and so is a line longer than MAX_LINE_BYTES
(without ever being held whole); a line still being written (no newline yet) is left for later;
a gzip stream that ends early (a recorder that died never writes the trailer) ends where its
data ends; a file that is not a regular file (a FIFO would block the reader forever), not gzip,
or damaged is named in Stats.skipped_files, with what was done about it.
"""

import os
import stat
import zlib
from dataclasses import dataclass, field

import orjson

from enhrec_wrap.log.files import kind_of

_CHUNK = 1 << 20
# The longest event line the recorder writes is an exec with 32 KiB of arguments, each byte
# escaped (\\xNN in JSON, 5 bytes): about 170 KB; session.start's command is cut at 64 KiB
# (lifecycle.py), about 520 KB at worst. Anything longer is not an event of ours.
MAX_LINE_BYTES = 1 << 20
# What one zlib call may produce: a gzip bomb inflates 1,000 times, and is read in pieces.
_INFLATE_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Stats:
    """What was read, and what had to be skipped."""
    bytes_read: int = 0
    corrupt_lines: int = 0          # lines that are not a JSON object
    long_lines: int = 0             # lines longer than MAX_LINE_BYTES, skipped unread
    duplicates: int = 0             # lines delivered twice (reader.Duplicates), dropped
    truncated_files: list = field(default_factory=list)   # ending in an unfinished line or stream
    skipped_files: list = field(default_factory=list)     # (path, what was wrong and done)


def open_regular(path: str, stats: Stats):
    """A binary file object of `path`, or None (named in stats) when it is not a regular file.
    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        stats.skipped_files.append((path, f"{kind_of(mode)}, not a regular file: skipped"))
        return None
    return open(fd, "rb")


class LineSplitter:
    """Whole lines out of a stream of chunks. A line longer than MAX_LINE_BYTES is counted in
    stats.long_lines and dropped as it streams by, so no more than that is ever held."""

    def __init__(self, stats: Stats):
        self.stats = stats
        self.pending = bytearray()
        self.skipping = False   # inside a line already counted as too long

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        at = 0
        while True:
            end = data.find(b"\n", at)
            if end < 0:
                break
            if self.skipping:
                self.skipping = False
            elif len(self.pending) + end + 1 - at > MAX_LINE_BYTES:
                self.stats.long_lines += 1
            elif self.pending:
                lines.append(bytes(self.pending) + data[at:end + 1])
            else:
                lines.append(data[at:end + 1])
            self.pending.clear()
            at = end + 1
        if not self.skipping and at < len(data):
            if len(self.pending) + len(data) - at > MAX_LINE_BYTES:
                self.stats.long_lines += 1
                self.pending.clear()
                self.skipping = True
            else:
                self.pending += data[at:]
        return lines

    def unfinished(self) -> bool:
        """Whether the stream ended inside a line (a write in progress, or cut by a crash)."""
        return bool(self.pending) or self.skipping


def day_file_lines(path: str, stats: Stats | None = None, start: int = 0):
    """Whole lines of a daily file from byte `start`; a last line without its newline is a
    write in progress (or one cut by a crash) and is not returned."""
    stats = stats if stats is not None else Stats()
    f = open_regular(path, stats)
    if f is None:
        return
    lines = LineSplitter(stats)
    with f:
        if start:
            f.seek(start)
        while data := f.read(_CHUNK):
            stats.bytes_read += len(data)
            yield from lines.feed(data)
    if lines.unfinished():
        stats.truncated_files.append(path)


def gz_lines(path: str, stats: Stats | None = None):
    """Whole lines of a gzip file, which may hold several members and may end early."""
    stats = stats if stats is not None else Stats()
    f = open_regular(path, stats)
    if f is None:
        return
    lines = LineSplitter(stats)
    unzip = None
    offset = 0          # bytes of the file zlib has taken so far
    damaged = None      # where the data stopped being valid
    magic = b""
    with f:
        while damaged is None and (data := f.read(_CHUNK)):
            stats.bytes_read += len(data)
            magic = magic or data[:2]
            while damaged is None:
                if unzip is None:
                    if not data:
                        break
                    unzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
                saved = unzip.copy()
                try:
                    out = unzip.decompress(data, _INFLATE_BYTES)
                except zlib.error:
                    # What came before the damage is still good, but zlib dropped the output of
                    # the whole call: feed it again in small pieces.
                    good = [0]
                    for out in _salvage(saved, data, good):
                        yield from lines.feed(out)
                    damaged = offset + good[0]
                    break
                if unzip.eof:
                    offset += len(data) - len(unzip.unused_data)
                    data, unzip = unzip.unused_data, None   # the next member, if any
                else:
                    offset += len(data) - len(unzip.unconsumed_tail)
                    data = unzip.unconsumed_tail
                yield from lines.feed(out)
                # A full output may leave more inside zlib even when all input was taken.
                if not data and len(out) < _INFLATE_BYTES:
                    break
    if damaged is not None and magic != _GZIP_MAGIC:
        stats.skipped_files.append((path, "not a gzip file: skipped"))
    elif damaged is not None:
        stats.skipped_files.append(
            (path, f"damaged at byte {damaged}: read up to its last complete line before it"))
    elif lines.unfinished() or unzip is not None:
        # An unfinished member (no trailer): a live session, or one whose recorder died.
        stats.truncated_files.append(path)


def _salvage(unzip, data: bytes, good: list):
    """What `data` decompresses to up to the first byte that is not valid, in pieces of at most
    ~4 MiB (4 KiB of input); good[0] is set to how many bytes of `data` were valid."""
    for start in range(0, len(data), 4096):
        piece = data[start:start + 4096]
        saved = unzip.copy()
        try:
            out = _inflate_all(unzip, piece)
        except zlib.error:
            unzip = saved
            out = bytearray()
            for i in range(len(piece)):
                try:
                    out += _inflate_all(unzip, piece[i:i + 1])
                except zlib.error:
                    break
                good[0] += 1
            yield bytes(out)
            return
        good[0] += len(piece)
        yield out
        if unzip.eof:
            good[0] -= len(unzip.unused_data)
            return


def _inflate_all(unzip, data: bytes) -> bytes:
    out = bytearray()
    while not unzip.eof:
        piece = unzip.decompress(data, _INFLATE_BYTES)
        out += piece
        data = unzip.unconsumed_tail
        if not data and len(piece) < _INFLATE_BYTES:
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


def reverse_lines(path: str, end: int | None = None, block: int = 1 << 16,
                  stats: Stats | None = None):
    """Whole lines of a file before byte `end` (default: all), from the last to the first, read
    backwards block by block. A line longer than MAX_LINE_BYTES is counted and skipped as it is
    read, never held whole."""
    stats = stats if stats is not None else Stats()
    f = open_regular(path, stats)
    if f is None:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        end = size if end is None else min(end, size)
        # The end of the line whose start is in an earlier block: its bytes from there on, with
        # its newline; `terminated` is False while that is the unfinished last line of the file.
        suffix, terminated, skipping = b"", False, False
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start)
            end = start
            stats.bytes_read += len(data)
            parts = data.split(b"\n")
            if len(parts) > 1:
                last = _whole_line(parts[-1] + suffix, terminated, skipping, stats)
                if last:
                    yield last
                for part in reversed(parts[1:-1]):
                    line = _whole_line(part + b"\n", True, False, stats)
                    if line:
                        yield line
                suffix, terminated, skipping = parts[0] + b"\n", True, False
            elif not skipping:
                suffix = data + suffix
            if not skipping and len(suffix) > MAX_LINE_BYTES:
                suffix, skipping = b"", True
        if suffix or skipping:   # the file's first line
            first = _whole_line(suffix, terminated, skipping, stats)
            if first:
                yield first


def _whole_line(line: bytes, terminated: bool, skipped: bool, stats: Stats) -> bytes | None:
    """`line` when it is one to give: not the unfinished last one, not one too long."""
    if not terminated:
        return None
    if skipped or len(line) > MAX_LINE_BYTES:
        stats.long_lines += 1
        return None
    return line
