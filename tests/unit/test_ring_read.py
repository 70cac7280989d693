"""Reading a ring buffer's records from its memory (kernel/rings.py Ring.read), on memory laid out
as the kernel maps a BPF ring buffer: the consumer page, then the producer page and the data
pages twice in a row (so a record that wraps is contiguous). Here anonymous memory stands in for
the map's, with the data written into both copies as the kernel's double mapping shows it."""

import mmap
import struct

from enhrec_wrap.kernel.rings import (PAGE_SIZE, RECORD_TYPES, RINGBUF_BUSY_BIT,
                                      RINGBUF_DISCARD_BIT, RINGBUF_HDR_SIZE, Ring)

SIZE = PAGE_SIZE   # one data page: small enough to wrap in a test
TYPE_AT = 4        # where these records keep their type (a record's header field in enhrec.h)


class FakeRing:
    """The memory of one ring buffer map, and a producer that writes records into it."""

    def __init__(self, start=0):
        self.consumer_map = mmap.mmap(-1, PAGE_SIZE)
        self.data_map = mmap.mmap(-1, PAGE_SIZE + 2 * SIZE)
        self.position = start
        struct.pack_into("=Q", self.consumer_map, 0, start)
        self._publish()

    def ring(self) -> Ring:
        ring = Ring.__new__(Ring)   # Ring() maps a map fd; these maps are ours
        ring.fd, ring.size, ring.mask = -1, SIZE, SIZE - 1
        ring._consumer_map, ring._data_map = self.consumer_map, self.data_map
        ring._consumer = memoryview(self.consumer_map).cast("Q")
        ring._producer = memoryview(self.data_map)[:8].cast("Q")
        return ring

    def write(self, payload: bytes, flags=0):
        header = struct.pack("=II", len(payload) | flags, 0)
        self._put(self.position, header + payload)
        self.position += (len(payload) + RINGBUF_HDR_SIZE + 7) & ~7
        self._publish()

    def _put(self, position, data):
        for i, byte in enumerate(data):   # both copies of each data page, as the kernel maps them
            offset = (position + i) & (SIZE - 1)
            self.data_map[PAGE_SIZE + offset] = byte
            self.data_map[PAGE_SIZE + SIZE + offset] = byte

    def _publish(self):
        struct.pack_into("=Q", self.data_map, 0, self.position)


def record(record_type: int, size: int = 24) -> bytes:
    return (b"head" + bytes([record_type, 0]) + bytes(range(size - 6)))[:size]


def read(ring, limit=100):
    records, counts = [], [0] * RECORD_TYPES
    position = ring.read(2, records, limit, counts, TYPE_AT)
    return records, counts, position


def test_records_come_out_whole_and_counted_by_type():
    fake = FakeRing()
    written = [record(3), record(3, 61), record(1, 200), record(3 + RECORD_TYPES)]
    for payload in written:
        fake.write(payload)
    records, counts, position = read(fake.ring())
    assert records == [(2, payload) for payload in written]
    assert all(type(raw) is bytes for _, raw in records)
    assert counts[3] == 3 and counts[1] == 1 and sum(counts) == 4
    assert position == fake.position


def test_a_discarded_record_is_skipped_and_a_busy_one_stops_the_read():
    fake = FakeRing()
    fake.write(record(3))
    fake.write(record(5), RINGBUF_DISCARD_BIT)
    fake.write(record(1))
    busy_at = fake.position
    fake.write(record(3), RINGBUF_BUSY_BIT)
    fake.write(record(3))
    records, counts, position = read(fake.ring())
    assert records == [(2, record(3)), (2, record(1))]
    assert counts[5] == 0 and sum(counts) == 2
    assert position == busy_at   # the busy record and what follows it wait for the next read


def test_the_limit_counts_records_taken_not_discarded_ones():
    fake = FakeRing()
    for i in range(5):
        fake.write(record(i), RINGBUF_DISCARD_BIT if i % 2 else 0)
    records, _, position = read(fake.ring(), limit=2)
    assert records == [(2, record(0)), (2, record(2))]
    ring = fake.ring()
    ring.release(position)
    assert read(ring)[0] == [(2, record(4))]


def test_a_record_that_wraps_is_contiguous():
    fake = FakeRing(start=SIZE - 16)   # the next record starts 16 bytes before the end
    payload = record(3, 100)
    fake.write(payload)
    records, _, position = read(fake.ring())
    assert records == [(2, payload)]
    assert position == fake.position


def test_a_record_shorter_than_its_type_offset_is_taken_uncounted():
    fake = FakeRing()
    fake.write(b"abc")
    records, counts, _ = read(fake.ring())
    assert records == [(2, b"abc")] and sum(counts) == 0

