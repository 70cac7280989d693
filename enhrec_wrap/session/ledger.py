"""What the recorder has taken from its rings and what it has written, kept in a page of memory
it shares with its watchdog: if the recorder dies, the watchdog learns from it, exactly, which
records never reached the log.

The recorder copies records out of the kernel's rings as fast as they come and writes them as
events in batches, a few milliseconds later. Killed in between (SIGKILL, the OOM killer), it takes
what it held with it. So it reports here:
  - after each pass over a ring, before it gives the space back to the kernel: how far it has
    read that ring (the watchdog drains the rest) and how many records of each type it took;
  - before each batch is written to the daily log: where it is going (file, offset, length,
    CRC-32) and what the log will hold once it is there (records settled by type, next ei);
  - after the write: that it is there.
A record is settled once it is in the log as an event, or counted (unwritten, undecodable), or
part of nothing (an exec result whose arguments were lost). What was taken and is not settled when
the recorder dies is lost, and is counted as lost.

The page holds two copies of the state and the number of the valid one: a change is written to
the other copy, then that number is switched (one aligned 8-byte store), so a recorder killed in
the middle of an update leaves the previous state whole. Only the recorder writes; the watchdog
reads only once the recorder is dead.
"""

import mmap
import os
import struct
import zlib

from enhrec_wrap.kernel import abi
from enhrec_wrap.log import layout

RECORD_TYPES = 16
STREAMS = 3   # the rings: STREAM_COMMAND, STREAM_DISK, STREAM_NETWORK
PAGE_BYTES = 4096
IDLE, WRITING = 0, 1

# One copy of the state: names and how many u64 each takes.
_FIELDS = (
    ("positions", STREAMS),        # how far each ring was read
    ("taken", RECORD_TYPES),       # records copied out of the rings, by type
    ("settled", RECORD_TYPES),     # records accounted for by what the log holds, by type
    ("undecodable", STREAMS),      # records dropped in user space, by stream (reported lost)
    ("next_ei", 1),
    ("unwritten_log", 1),          # events the daily log could not take (on_log_failure)
    ("unwritten_files", 1),        # events the session files could not take
    ("ended", 1),                  # 1 once session.end is in the daily log
    ("state", 1),                  # IDLE, or WRITING the batch below
    ("batch_first_ei", 1),
    ("batch_next_ei", 1),
    ("batch_settled", RECORD_TYPES),
    ("batch_day", 1),              # YYYYMMDD of the daily file
    ("batch_dev", 1),
    ("batch_ino", 1),
    ("batch_offset", 1),
    ("batch_length", 1),
    ("batch_crc", 1),
)
_OFFSETS = {}
_at = 0
for _name, _count in _FIELDS:
    _OFFSETS[_name] = (_at, _count)
    _at += _count
_WORDS = _at
_SLOT = struct.Struct(f"={_WORDS}Q")
_ACTIVE = struct.Struct("=Q")
_SLOT_AT = (64, 64 + _SLOT.size)
assert _SLOT_AT[1] + _SLOT.size <= PAGE_BYTES


class State:
    """One copy of the ledger's state, as named fields (lists for the counted ones)."""

    def __init__(self, values=None):
        values = list(values) if values is not None else [0] * _WORDS
        for name, (at, count) in _OFFSETS.items():
            setattr(self, name, values[at:at + count] if count > 1 else values[at])

    def values(self) -> list:
        out = []
        for name, (_, count) in _OFFSETS.items():
            value = getattr(self, name)
            out.extend(value if count > 1 else [value])
        return out



def new_page() -> mmap.mmap:
    """A page of the recorder's own, for a session without a watchdog (nothing is recorded)."""
    return mmap.mmap(-1, PAGE_BYTES, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def map_page(fd: int) -> mmap.mmap:
    """The shared page, from the memfd the recorder and its watchdog both hold."""
    return mmap.mmap(fd, PAGE_BYTES, mmap.MAP_SHARED)


class Ledger:
    """The recorder's side: every report is committed to the page before it returns."""

    def __init__(self, page: mmap.mmap):
        self.page = page
        self.state = State()
        self._active = 0
        self._commit()

    def _commit(self):
        other = 1 - self._active
        _SLOT.pack_into(self.page, _SLOT_AT[other], *self.state.values())
        _ACTIVE.pack_into(self.page, 0, other)
        self._active = other

    # -- what the ring reader reports ------------------------------------------------------

    def taken(self, stream: int, position: int, taken: list):
        self.state.positions[stream] = position
        self.state.taken = list(taken)
        self._commit()

    # -- what the session reports around each batch ----------------------------------------

    def begin_batch(self, first_ei: int, next_ei: int, settled: list, undecodable: dict):
        """A batch of events is about to be written; once it is, `settled` records are."""
        s = self.state
        s.state, s.batch_first_ei, s.batch_next_ei = WRITING, first_ei, next_ei
        s.batch_settled = list(settled)
        s.batch_day = s.batch_dev = s.batch_ino = s.batch_offset = s.batch_length = 0
        s.batch_crc = 0
        for stream, count in undecodable.items():
            s.undecodable[stream] = count
        self._commit()

    def writing(self, path: str, dev: int, ino: int, offset: int, data: bytes):
        """Where the batch goes: from inside the daily log's lock, just before the write
        (AuditLog.write's announce)."""
        s = self.state
        s.batch_day = int(layout.day_of_file(os.path.basename(path)).replace("-", ""))
        s.batch_dev, s.batch_ino = dev, ino
        s.batch_offset, s.batch_length, s.batch_crc = offset, len(data), zlib.crc32(data)
        self._commit()

    def end_batch(self, unwritten_log: int, unwritten_files: int, ended: bool = False):
        """The batch is in the log, or counted as unwritten: settled either way. `ended`: it
        held session.end, and the daily log took it."""
        s = self.state
        s.settled, s.next_ei = s.batch_settled, s.batch_next_ei
        s.unwritten_log, s.unwritten_files = unwritten_log, unwritten_files
        s.ended = int(s.ended or ended)
        s.state = IDLE
        self._commit()


def read(page: mmap.mmap) -> State:
    """The valid copy of the state: the watchdog's side, once the recorder is dead."""
    active = _ACTIVE.unpack_from(page, 0)[0] & 1
    return State(_SLOT.unpack_from(page, _SLOT_AT[active]))




def lost_fields(kernel_lost: dict, undecodable: dict, unsettled: list) -> dict:
    """session.end's lost_events: what the kernel dropped (by stream number), what user space
    could not decode (by stream number) and what was taken and never settled (by record
    type)."""
    # Which stream a record type's loss is counted in: its ring's.
    lost_stream_of_type = {abi.RECORD_OPEN: "disk", abi.RECORD_CONNECT: "network",
                           abi.RECORD_SEND: "network"}
    lost = {"command": 0, "disk": 0, "network": 0}
    for stream, name in abi.RING_STREAM_NAMES.items():
        lost[name] += kernel_lost.get(stream, 0) + undecodable.get(stream, 0)
    for record_type, count in enumerate(unsettled):
        if count > 0:
            lost[lost_stream_of_type.get(record_type, "command")] += count
    return {"lost_events": lost}
