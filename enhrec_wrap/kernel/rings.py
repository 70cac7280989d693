"""A session's own ring buffers: created at its start, registered under its cgroup id with the
host's programs (host.py), read by its recorder, and removed at its end.

The recorder reads them with a RingReader: `batch = reader.poll(timeout)`. Each poll copies what
the rings hold into a user-space backlog at once - a copy costs 0.3 us a record, building and
writing an event 5 to 10 us - so a burst waits in user space instead of in the kernel's ring,
where it would soon be dropped; and the backlog is handed on decoded, in batches.

For the watchdog's sake (if the recorder dies, it must account for every record the recorder had
taken and not written), the reader reports each pass to a `ledger` before it gives the space back
to the kernel: ledger.taken(stream, position, type_counts). See session/ledger.py.
"""

import collections
import mmap
import operator
import os
import select
import struct
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel import abi
from enhrec_wrap.kernel.host import RING_KEY
from enhrec_wrap.kernel.syscalls import (BPF_MAP_TYPE_RINGBUF, map_create, map_delete,
                                         map_delete_batch, map_fd_by_id, map_info, map_lookup,
                                         map_update, map_update_batch)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# One exec record can be 34 KiB (argv up to EXEC_DATA_MAX in enhrec.h): the command ring must
# hold a few of them whatever the config says.
MIN_COMMAND_RING_PAGES = 32
# The kernel's ring buffer record header (include/uapi/linux/bpf.h): u32 length with these two
# flag bits, u32 page offset; records are 8-byte aligned.
RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SIZE = 8
_RECORD_HEADER = struct.Struct("=I")
# Records copied out of each ring per pass.
BATCH_RECORDS = 4096
# How long records read from the rings may wait to be handed on (see RingReader.poll), how many
# are handed on at once (built and written in ~5 ms, while the rings fill by ~3,000 records at
# most), and how many may wait in user space (about 110 bytes each: 110 MB) before the rings are
# left to fill and the kernel counts what it drops.
FLUSH_SECONDS = 0.02
HAND_RECORDS = 512
BACKLOG_RECORDS = 1 << 20
# Backpressure (session/backpressure.py): the session is paused while its records wait faster
# than the recorder writes them: when this many wait in user space, or a ring is as full as
# when it wakes the recorder (1/2^WAKE_SHIFT); it goes on once the backlog is down to
# BACKLOG_RESUME and every ring a quarter of that.
BACKLOG_PAUSE = 2048
BACKLOG_RESUME = 512
PAUSE_FILL = 1 / (1 << abi.WAKE_SHIFT)
RECORD_TYPES = 16   # record type numbers are below this (enhrec.h RECORD_*)
DOCTOR_HINT = "run `enhrec doctor` for a full check"


def ring_pages(setting_pages: int, cpus: int, minimum: int = 1) -> int:
    """Ring size in pages for a `*_buffer_size` setting.

    The reference gives every CPU its own perf buffer of that many pages; one ring buffer shared
    by all CPUs keeps the same total, rounded up to a power of two as the kernel requires.
    """
    pages = max(setting_pages * cpus, minimum)
    return 1 << (pages - 1).bit_length()


def ring_bytes(config, cpus: int) -> dict[int, int]:
    """Bytes of each stream's ring buffer, by stream number."""
    return {
        abi.STREAM_COMMAND: PAGE_SIZE * ring_pages(config.command_buffer_size, cpus,
                                                   MIN_COMMAND_RING_PAGES),
        abi.STREAM_DISK: PAGE_SIZE * ring_pages(config.disk_buffer_size, cpus),
        abi.STREAM_NETWORK: PAGE_SIZE * ring_pages(config.network_buffer_size, cpus),
    }


class Ring:
    """A BPF ring buffer read straight from its memory, as libbpf reads it, without a C callback
    per record: the consumer position page (read-write), then the producer position page and the
    data pages, mapped twice in a row by the kernel so a record that wraps is contiguous."""

    def __init__(self, map_fd: int, size: int):
        self.fd = map_fd
        self.size = size
        self.mask = size - 1
        self._consumer_map = mmap.mmap(map_fd, PAGE_SIZE, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE)
        self._data_map = mmap.mmap(map_fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=PAGE_SIZE)
        self._consumer = memoryview(self._consumer_map).cast("Q")
        self._producer = memoryview(self._data_map)[:8].cast("Q")

    @property
    def consumed(self) -> int:
        return self._consumer[0]

    def read(self, stream: int, records, limit: int, type_counts, type_at: int) -> int:
        """Copies committed records, up to `limit` of them, into `records` as (stream, bytes),
        and counts them by type in `type_counts`. Returns the position after the last one; the
        space stays the kernel's until release(position).

        x86-64 only (the session refuses other machines): the positions are plain 8-byte loads
        and stores, which x86's ordering makes the acquire and release that libbpf uses.

        A record is sliced from the mmap itself, which makes its bytes in one step: through a
        memoryview (a view, then bytes of it) a record cost 0.51 us here, this way 0.34."""
        position = self._consumer[0]
        producer = self._producer[0]
        data, mask, unpack_header = self._data_map, self.mask, _RECORD_HEADER.unpack_from
        append = records.append
        while position < producer and limit > 0:
            offset = PAGE_SIZE + (position & mask)   # the data pages follow the producer's
            length = unpack_header(data, offset)[0]
            if length & RINGBUF_BUSY_BIT:
                break   # still being written; the next read takes it
            if not length & RINGBUF_DISCARD_BIT:
                start = offset + RINGBUF_HDR_SIZE
                raw = data[start:start + length]
                append((stream, raw))
                limit -= 1
                if length > type_at:
                    type_counts[raw[type_at] % RECORD_TYPES] += 1
            length &= ~RINGBUF_DISCARD_BIT
            position += (length + RINGBUF_HDR_SIZE + 7) & ~7
        return position

    def release(self, position: int):
        self._consumer[0] = position

    def fill(self) -> float:
        """The share of the ring holding records not read yet."""
        return (self._producer[0] - self._consumer[0]) / self.size

    def close(self):
        for view in (self._consumer, self._producer):
            view.release()
        self._consumer_map.close()
        self._data_map.close()


class SessionRings:
    """One session's rings, one per stream, by stream number."""

    def __init__(self, host, cgroup_id: int, rings: dict[int, Ring]):
        self.host = host
        self.cgroup_id = cgroup_id
        self.rings = rings
        self.registered = False

    @classmethod
    def create(cls, host, cgroup_id: int, sizes: dict[int, int]) -> "SessionRings":
        rings = {}
        try:
            for stream, size in sizes.items():
                fd = map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, size, 0,
                                f"{abi.RING_STREAM_NAMES[stream]}_ring")
                try:
                    rings[stream] = Ring(fd, size)
                except BaseException:
                    os.close(fd)
                    raise
        except OSError as e:
            cls(host, cgroup_id, rings).close()
            raise EnhrecError(f"cannot create the session's ring buffers: {e.strerror}: "
                              f"{DOCTOR_HINT}") from None
        return cls(host, cgroup_id, rings)

    @classmethod
    def adopt(cls, host, cgroup_id: int) -> "SessionRings":
        """The rings a session registered, found by its cgroup id: for the watchdog and recovery,
        after the session's recorder is gone. Streams without a ring are left out."""
        rings = {}
        for stream in abi.RING_STREAM_NAMES:
            try:
                raw = map_lookup(host.maps["session_rings"], _ring_key(cgroup_id, stream), 4)
                fd = map_fd_by_id(struct.unpack("=I", raw)[0])
            except OSError:
                continue
            rings[stream] = Ring(fd, _ring_size(fd))
        adopted = cls(host, cgroup_id, rings)
        adopted.registered = True
        return adopted

    def register(self):
        """Puts the rings (and zeroed lost counters) under the session's cgroup id: from now on
        every traced call of the session's tasks lands in them. The caller holds the HostLock."""
        maps = self.host.maps
        try:
            map_update(maps["lost_events"], _key(self.cgroup_id),
                       bytes(8 * abi.STREAM_COUNT * self.host.cpus))
            map_update_batch(maps["session_rings"],
                             [_ring_key(self.cgroup_id, s) for s in self.rings],
                             [struct.pack("=I", ring.fd) for ring in self.rings.values()])
            self.registered = True
            self.host.next_generation()
        except OSError as e:
            self.unregister()
            raise EnhrecError(f"cannot register the session with the BPF programs: "
                              f"{e.strerror}: {DOCTOR_HINT}") from None

    def kernel_lost(self) -> dict[int, int]:
        """Records the kernel side could not deliver, by stream number: summed over the
        per-CPU counters."""
        cpus, count = self.host.cpus, abi.STREAM_COUNT
        try:
            raw = map_lookup(self.host.maps["lost_events"], _key(self.cgroup_id), 8 * count * cpus)
        except OSError:
            return dict.fromkeys(range(count), 0)
        values = struct.unpack(f"={count * cpus}Q", raw)
        return {stream: sum(values[cpu * count + stream] for cpu in range(cpus))
                for stream in range(count)}

    def unregister(self):
        """Takes the session out of the programs' maps (its lost counters too: read them first).
        The caller holds the HostLock."""
        maps = self.host.maps
        try:
            map_delete_batch(maps["session_rings"],
                             [_ring_key(self.cgroup_id, s) for s in abi.RING_STREAM_NAMES])
        except OSError:
            for stream in abi.RING_STREAM_NAMES:   # some were never put in: one by one
                try:
                    map_delete(maps["session_rings"], _ring_key(self.cgroup_id, stream))
                except OSError:
                    pass
        try:
            map_delete(maps["lost_events"], _key(self.cgroup_id))
        except OSError:
            pass   # never registered, or already taken out
        self.registered = False

    def close(self):
        for ring in self.rings.values():
            ring.close()
            os.close(ring.fd)
        self.rings = {}


def _key(cgroup_id: int) -> bytes:
    return struct.pack("=Q", cgroup_id)


def _ring_key(cgroup_id: int, stream: int) -> bytes:
    return RING_KEY.pack(cgroup_id, stream, 0)


_record_type = operator.itemgetter(1)   # of a decoded record (Decoder.raw_all)


def _ring_size(fd: int) -> int:
    """A ring map's data size (max_entries), from the kernel's map info."""
    return map_info(fd)["max_entries"]


class RingReader:
    """Reads one session's rings into batches of decoded records (decode.Decoder.raw_all
    tuples), as a pull API: `batch = reader.poll(timeout)`."""

    def __init__(self, rings: SessionRings, decoder, ledger=None):
        self.rings = rings
        self.decoder = decoder
        self.ledger = ledger
        self._type_at = decoder.type_offset
        # Every ring, and the wake-up fds. A ring wakes it only once it is 1/2^WAKE_SHIFT full
        # (recorder.c's send(): below, a record asks for no wake-up), so the poll's timeout
        # paces the quiet times and a filling ring is read at once.
        self._epoll = select.epoll()
        for ring in rings.rings.values():
            self._epoll.register(ring.fd, select.EPOLLIN)
        # Records copied out of the rings and not handed on yet: (stream, bytes).
        self._backlog = collections.deque()
        self._flush_due = 0.0     # when the backlog's first record must be handed on
        self.taken = [0] * RECORD_TYPES     # records copied out of the rings, by type
        self.handed = [0] * RECORD_TYPES    # records handed on decoded, by type
        # Records dropped in user space (undecodable): by stream, as they are reported lost, and
        # by the type they were counted under when taken.
        self.undecodable = dict.fromkeys(rings.rings, 0)
        self.dropped = [0] * RECORD_TYPES

    def wake_on(self, fd: int):
        """Also wake poll() when fd is readable (a child's or the watchdog's pidfd)."""
        self._epoll.register(fd, select.EPOLLIN)

    def poll(self, timeout: float, flush: bool = False) -> list:
        """Waits up to `timeout` seconds for records (or a wake-up fd), copies what the rings
        hold into the backlog, and returns up to HAND_RECORDS of it decoded when a batch is
        due: FLUSH_SECONDS after its first record came, when there is a batch's worth, or at
        once with `flush`. Else an empty list.

        Waiting per record would cost more than the records (figure 6's build woke 12,000 times
        for a few records each): records ask for no wake-up until their ring is 1/2^WAKE_SHIFT
        full, and a batch gathers for up to FLUSH_SECONDS."""
        if len(self._backlog) >= HAND_RECORDS:
            timeout = 0.0   # work is waiting: only take what the rings have meanwhile
        elif self._backlog:
            timeout = max(0.0, min(timeout, self._flush_due - time.monotonic()))
        try:
            self._epoll.poll(timeout)
        except InterruptedError:
            pass
        self._read_rings()
        if not self._backlog:
            return []
        if flush or len(self._backlog) >= HAND_RECORDS or time.monotonic() >= self._flush_due:
            return self._hand_on(HAND_RECORDS)
        return []

    def drain(self) -> list:
        """Everything the rings and the backlog hold, decoded: at the end, when nothing in the
        session runs any more."""
        while self._read_rings(everything=True):
            pass
        return self._hand_on(None)

    def backlog(self) -> int:
        return len(self._backlog)

    def refill(self):
        """One more pass over the rings, without waiting and without handing anything on."""
        self._read_rings()

    def pressed(self) -> bool:
        """Records arrive faster than they are handed on: the session should pause."""
        return (len(self._backlog) >= BACKLOG_PAUSE
                or any(ring.fill() >= PAUSE_FILL for ring in self.rings.rings.values()))

    def relieved(self) -> bool:
        """The backlog is worked off: a paused session may go on."""
        return (len(self._backlog) <= BACKLOG_RESUME
                and all(ring.fill() <= PAUSE_FILL / 4 for ring in self.rings.rings.values()))

    def _read_rings(self, everything=False) -> int:
        """One pass: copies up to BATCH_RECORDS records of each ring into the backlog (while it
        holds less than BACKLOG_RECORDS: beyond, the rings fill and the kernel counts what it
        drops). Returns how many."""
        backlog = self._backlog
        before = len(backlog)
        room = BATCH_RECORDS if everything else min(BATCH_RECORDS, BACKLOG_RECORDS - before)
        if room <= 0:
            return 0
        for stream, ring in self.rings.rings.items():
            counts = [0] * RECORD_TYPES
            start = len(backlog)
            position = ring.read(stream, backlog, room, counts, self._type_at)
            if len(backlog) == start and position == ring.consumed:
                continue
            for record_type, n in enumerate(counts):
                self.taken[record_type] += n
            if self.ledger is not None:
                self.ledger.taken(stream, position, self.taken)   # before the space is given back
            ring.release(position)
        if not before and backlog:
            self._flush_due = time.monotonic() + FLUSH_SECONDS
        return len(backlog) - before

    def _hand_on(self, limit) -> list:
        """Decodes up to `limit` records of the backlog (all with None). An undecodable record
        is dropped and counted, in its ring's stream."""
        backlog = self._backlog
        count = len(backlog) if limit is None else min(limit, len(backlog))
        popleft = backlog.popleft
        records, undecodable = self.decoder.raw_all([popleft() for _ in range(count)])
        for stream, raw in undecodable:
            self.undecodable[stream] += 1
            if len(raw) > self._type_at:
                self.dropped[raw[self._type_at] % RECORD_TYPES] += 1
        handed = self.handed
        for record_type, n in collections.Counter(map(_record_type, records)).items():
            handed[record_type % RECORD_TYPES] += n
        if backlog:
            self._flush_due = time.monotonic()   # the rest goes out at the next poll
        return records

    def close(self):
        self._epoll.close()
