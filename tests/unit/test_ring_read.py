"""Reading a ring buffer's records from its memory (kernel/rings.py Ring.read), on memory laid out
as the kernel maps a BPF ring buffer: the consumer page, then the producer page and the data
pages twice in a row (so a record that wraps is contiguous). Here anonymous memory stands in for
the map's, with the data written into both copies as the kernel's double mapping shows it. Then
the reader's hand-on of what it read: decoded (kernel/decode.py raw_from) and counted."""

import json
import mmap
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from enhrec_wrap.kernel import abi
from enhrec_wrap.kernel.decode import SCRATCH_TABLES, Decoder
from enhrec_wrap.kernel.rings import (PAGE_SIZE, RECORD_TYPES, RINGBUF_BUSY_BIT,
                                      RINGBUF_DISCARD_BIT, RINGBUF_HDR_SIZE, Ring, RingReader)

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



# --- a reader's hand-on: the backlog decoded and counted (RingReader._hand_on) ------------------

FIELDS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "record_fields.json")
                    .read_text())


def packed(decoder, record_type, tail=b"", **values):
    """A record's bytes as the BPF side writes them: its fixed part by the layout, its tail."""
    layout = decoder.layouts[record_type]
    fields = {name: b"" if code.endswith("s") else 0
              for name, _, code, _ in FIELDS[SCRATCH_TABLES[record_type]] if name in layout.index}
    fields.update(type=record_type, tail_len=len(tail), comm=b"cat", **values)
    return layout.struct.pack(*(fields[n] for n in layout.names)).ljust(layout.tail_offset, b"\0") + tail


def test_the_backlog_is_handed_on_decoded_and_counted_by_type():
    """Every record as raw_from decodes it, in order; the undecodable ones dropped and counted
    in their stream and under the type they were taken as."""
    decoder = Decoder(fields=FIELDS)
    good = [packed(decoder, abi.RECORD_OPEN, b"/etc/x\0", ts_ns=10, pid=7),
            packed(decoder, abi.RECORD_REFUSED, ts_ns=11, syscall=425),
            packed(decoder, abi.RECORD_OPEN, b"/tmp/%\0\xff", ts_ns=12, ret=-2)]
    cut_tail = packed(decoder, abi.RECORD_OPEN, b"/etc/y\0", ts_ns=13)[:-3]
    unknown = packed(decoder, abi.RECORD_REFUSED)
    unknown = unknown[:decoder.type_offset] + bytes([RECORD_TYPES - 1, 0]) + unknown[decoder.type_offset + 2:]
    fake = FakeRing()
    for payload in good[:2] + [cut_tail] + good[2:] + [unknown]:
        fake.write(payload)
    reader = RingReader(SimpleNamespace(rings={}), decoder)   # no fd to wait on
    reader.rings = SimpleNamespace(rings={2: fake.ring()})
    reader.undecodable = {2: 0}
    reader._read_rings(everything=True)
    handed = reader._hand_on(None)
    assert handed == [decoder.raw_from(raw, 0, len(raw)) for raw in good]
    assert [r[3] for r in handed] == [b"/etc/x\0", None, b"/tmp/%\0\xff"]
    assert reader.handed[abi.RECORD_OPEN] == 2 and reader.handed[abi.RECORD_REFUSED] == 1
    assert sum(reader.handed) == 3
    assert reader.undecodable == {2: 2}
    assert reader.dropped[abi.RECORD_OPEN] == 1 and reader.dropped[RECORD_TYPES - 1] == 1
    assert reader.taken[abi.RECORD_OPEN] == 3 and sum(reader.taken) == 5
    reader.close()


def test_raw_from_refuses_what_is_not_a_whole_record_and_reads_at_an_offset():
    decoder = Decoder(fields=FIELDS)
    raw = packed(decoder, abi.RECORD_OPEN, b"/etc/x\0", ts_ns=99)
    ts, record_type, values, tail = decoder.raw_from(raw, 0, len(raw))
    assert (ts, record_type, tail) == (99, abi.RECORD_OPEN, b"/etc/x\0")
    assert decoder.raw_from(memoryview(b"pad" + raw), 3, len(raw)) == (ts, record_type, values, tail)
    refused = packed(decoder, abi.RECORD_REFUSED, ts_ns=5)
    assert decoder.raw_from(refused, 0, len(refused))[::3] == (5, None)
    layout = decoder.layouts[abi.RECORD_OPEN]
    for size, message in ((decoder.type_offset + 1, "record of"),
                          (layout.struct.size - 1, "cut at"), (len(raw) - 1, "cut at")):
        with pytest.raises(ValueError, match=message):
            decoder.raw_from(raw, 0, size)
    with pytest.raises(ValueError, match="unknown record type"):
        bad = raw[:decoder.type_offset] + b"\x0f\x00" + raw[decoder.type_offset + 2:]
        decoder.raw_from(bad, 0, len(bad))


def test_raw_all_decodes_a_batch_as_raw_from_each_and_hands_back_the_rest():
    decoder = Decoder(fields=FIELDS)
    good = [packed(decoder, abi.RECORD_OPEN, b"/a\0" * n, ts_ns=n, pid=n) for n in range(1, 6)]
    good += [packed(decoder, abi.RECORD_REFUSED, ts_ns=9), packed(decoder, abi.RECORD_EXEC_FAILED,
                                                                     b"/x\0x\0", ts_ns=8)]
    bad = [b"", b"\0" * (decoder.type_offset + 1), good[0][:-1], good[5][:-1],
           good[5][:decoder.type_offset] + b"\x0f\x00" + good[5][decoder.type_offset + 2:]]
    taken = [("g%d" % i, raw) for i, raw in enumerate(good)]
    for i, raw in enumerate(bad):
        taken.insert(2 * i + 1, ("b%d" % i, raw))
    records, undecodable = decoder.raw_all(taken)
    assert [(ts, record_type, tail) for ts, record_type, _, tail in records] == [
        *((n, abi.RECORD_OPEN, b"/a\0" * n) for n in range(1, 6)),
        (9, abi.RECORD_REFUSED, None), (8, abi.RECORD_EXEC_FAILED, b"/x\0x\0")]
    assert [values for _, _, values, _ in records] == [
        decoder.layouts[r[1]].struct.unpack_from(raw) for r, raw in zip(records, good)]
    assert records == [decoder.raw_from(raw, 0, len(raw)) for raw in good]
    assert undecodable == [("b%d" % i, raw) for i, raw in enumerate(bad)]
    for raw in bad:
        with pytest.raises(ValueError):
            decoder.raw_from(raw, 0, len(raw))
