"""One gzip file of a session (store.py), written by one writer, a member per batch."""

import os
import zlib

from enhrec_wrap.log.files import open_private_file, write_all

# Fast over small: every event is compressed once or twice (all events, and its kind's file),
# for a busy session on the store's thread beside the recorder's; JSON lines still shrink
# several times.
_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# A batch this big is compressed by ISA-L (isal_zlib: zlib's interface and the same gzip stream,
# so every reader still reads it with zlib), at its level 1 (of 0 to 3). Measured here, 100,000
# open events of 680 bytes in batches of 512 lines: 0.61 us a line against zlib level 1's 3.0,
# and smaller (ratio 6.1 against 5.3). A smaller batch stays with zlib: importing isal costs
# 1.3 ms, which a session that never has a big batch (most) should not pay at its start.
_ISAL_FROM = 64 * 1024
_isal_compress = None


def gzip_member(data: bytes) -> bytes:
    """One batch as a whole gzip member: gzip files may hold any number of them, one after the
    other (RFC 1952; zcat, Go's reader and ours read them all)."""
    if len(data) < _ISAL_FROM:
        return zlib.compress(data, _LEVEL, _GZIP_WBITS)
    global _isal_compress
    if _isal_compress is None:
        from isal import isal_zlib
        _isal_compress = isal_zlib.compress
    return _isal_compress(data, _LEVEL, _GZIP_WBITS)


class GzStream:
    """One gzip file written by one writer, a member per batch: each batch is complete on disk
    once written (a recorder that dies leaves only whole members, and at most a torn last one),
    and a batch of one kind of event is compressed once for events.gz and for its kind's file."""

    def __init__(self, path: str, stream: str, part: int, first_ei: int):
        self.path = path
        self.stream = stream
        self.part = part
        self.first_ei = first_ei   # its index line's `index`
        self.events = 0            # for the file of every event: how many it holds
        self.fd = open_private_file(path)
        self.size = self.opened_at = os.lseek(self.fd, 0, os.SEEK_END)
        self.broken = False
        if self.size == 0:
            try:
                self._put(gzip_member(b""))   # a valid gzip file from the start, even if empty
            except OSError:
                self.discard()
                raise

    def append(self, member: bytes) -> None:
        self._put(member)

    def cut_back(self, size: int) -> None:
        """Back to `size`, the end of an earlier batch: what is there stays a readable file.
        It is written no more (broken): the stream goes on in a new part."""
        self.broken = True
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            pass   # best effort while already failing; the caller reports the write error
        self.size = size

    def finish(self) -> None:
        os.close(self.fd)

    def discard(self) -> None:
        """Made for a batch that failed: it goes, as if never made (a file that was already
        there is only cut back: what it held is not ours to remove)."""
        if self.opened_at:
            self.cut_back(self.opened_at)
            os.close(self.fd)
            return
        os.close(self.fd)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _put(self, chunk: bytes) -> None:
        try:
            write_all(self.fd, chunk)
        except OSError:
            self.cut_back(self.size)
            raise
        self.size += len(chunk)
