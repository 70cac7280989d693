"""The open records' own way to their events (events/kernel.py OpenFields and the kept line
formats, teleport.py EventFactory.line_format and from_format) against the way every other record takes (Decoder.as_dict, KernelEvents.build,
EventFactory.make_from): the same lines, byte for byte, memo hit or miss."""

import itertools
import json
from pathlib import Path

import orjson
import pytest

from enhrec_wrap.events import kernel as kernel_events
from enhrec_wrap.events import teleport as events
from enhrec_wrap.events.kernel import KernelEvents
from enhrec_wrap.kernel import abi, paths
from enhrec_wrap.kernel.decode import SCRATCH_TABLES, Decoder

# The record layouts as the loaded program gave them (decode.record_fields, 2026-12-01, kernel
# 6.18). The records here are packed and decoded with this same layout, so it need not be the
# one of today's header.
FIELDS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "record_fields.json")
                    .read_text())
SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"


@pytest.fixture(scope="module")
def decoder():
    return Decoder(fields=FIELDS)


def record(decoder, record_type=abi.RECORD_OPEN, tail=b"", **values):
    """A record as the ring holds it (its fixed part packed by the layout, then its tail),
    decoded as the reader hands it on: a raw_from tuple."""
    layout = decoder.layouts[record_type]
    fields = dict.fromkeys(layout.names, 0)
    fields.update(ts_ns=1_000, cgroup_id=7, pid=100, tid=100, ppid=1, comm=b"cat",
                  type=record_type, tail_len=len(tail))
    fields.update(values)
    for name, _, code, _ in FIELDS[SCRATCH_TABLES[record_type]]:
        if name in fields and fields[name] == 0 and code.endswith("s"):
            fields[name] = b""   # an array: bytes
    raw = layout.struct.pack(*(fields[n] for n in layout.names))
    raw = raw.ljust(layout.tail_offset, b"\0") + tail
    return decoder.raw_from(raw, 0, len(raw))


def walk(path: bytes) -> bytes:
    """A path's components as path.h writes them: leaf first, each NUL-terminated."""
    names = path.strip(b"/").split(b"/")
    return b"".join(n + b"\0" for n in reversed(names))


def opened(decoder, path=b"/etc/passwd", request=None, path_flags=abi.PATH_COMPLETE,
           walked=True, **values):
    """An open record: the walk of the file the kernel opened (unless not `walked`), then the
    caller's request."""
    components = walk(path) if walked else b""
    request = path if request is None else request
    tail = components + request + b"\0"
    base = {"ret": 3, "file.ino": 42, "file.dev": (8 << 20) | 1, "file.mnt_id": 27,
            "file.fs_magic": 0xEF53, "file.path_flags": path_flags,
            "file.path_len": len(components), "request_len": len(request) + 1}
    base.update(values)
    return record(decoder, tail=tail, **base)


def factory():
    made = events.EventFactory(SID, "server", "node", "root", "alice", "main")
    counter = itertools.count()
    made._uuid = lambda: b"uuid-%d" % next(counter)
    made.monotonic_to_epoch_ns = 1_764_590_000_000_000_000
    return made


def reference_lines(decoder, records):
    """What the general way makes of each record: a dict of the record, build(), make_from()."""
    builder, made = KernelEvents(), factory()
    lines = []
    for ts, record_type, values, tail in sorted(records, key=lambda r: r[0]):
        kind, fields = builder.build(decoder.as_dict(record_type, values, tail))
        lines.append(events.encode(made.make_from(kind, ts + made.monotonic_to_epoch_ns, fields)))
    return lines


def lines_of(kernel, records, made=None):
    return [events.encode(e) for e in kernel.events(records, made or factory())]


def cases(decoder):
    return [
        opened(decoder),
        opened(decoder, request=b"passwd", dirfd=-100),            # requested_path differs
        opened(decoder, path=b"/tmp/x", path_flags=abi.PATH_COMPLETE | abi.PATH_DELETED),
        opened(decoder, path=b"/a/b", path_flags=abi.PATH_TRUNCATED, via_uring=1),
        opened(decoder, path=b"/srv/\xff\xfe", request=b"\xff\xfe"),   # escaped path
        opened(decoder, comm=b"\xffprog"),                          # escaped program
        opened(decoder, path=b"/srv/\xff", request=b"x\\\xff", comm=b"\xfe"),   # all of them
        opened(decoder, ret=-2, path_flags=abi.PATH_NO_FILE, walked=False),   # failed
        opened(decoder, ret=-13, path_flags=abi.PATH_COMPLETE),
        opened(decoder, path=b"x", path_flags=abi.PATH_NO_PARENT,
               **{"file.fs_magic": paths.PIPEFS_MAGIC, "file.ino": 9}),   # pipe:[9]
        opened(decoder, request=b"", **{"request_len": 0}),
        opened(decoder, pid=200, ppid=100),
        opened(decoder, **{"file.ino": 43}),                        # same path, another file
        opened(decoder, flags=0o2101),                               # O_APPEND|O_CREAT|O_WRONLY
    ]


def test_each_kind_of_open_makes_the_reference_line(decoder):
    for one in cases(decoder):
        assert lines_of(KernelEvents(decoder), [one]) == reference_lines(decoder, [one])


def test_a_batch_of_repeats_and_other_kinds_makes_the_reference_lines(decoder):
    """Memo hits (the same records again and again), in a batch with an exec failure and a
    refusal between them, out of time order as two rings hand them on."""
    batch = []
    for ts, one in enumerate(cases(decoder) * 3):
        _, record_type, values, tail = one
        batch.append((ts * 7 % 40, record_type, values, tail))
    failed = record(decoder, abi.RECORD_EXEC_FAILED, tail=b"/bin/nope\0nope\0",
                    ts_ns=5, ret=-2, argc=1, filename_len=10, dirfd=-100)
    refused = record(decoder, abi.RECORD_REFUSED, ts_ns=6, syscall=425, arch=0xC000003E)
    batch += [failed, refused]
    kernel = KernelEvents(decoder)
    made = factory()
    assert lines_of(kernel, batch, made) == reference_lines(decoder, batch)
    assert made.next_ei == len(batch)


def test_memos_that_start_again_still_make_the_reference_lines(decoder, monkeypatch):
    monkeypatch.setattr(kernel_events, "MEMO_ENTRIES", 3)
    kernel = KernelEvents(decoder)
    batch = [opened(decoder, path=b"/f/%d" % i, pid=i) for i in range(10)] * 2
    assert lines_of(kernel, batch) == reference_lines(decoder, batch)
    assert len(kernel._opens._files) <= 3 and len(kernel._opens._processes) <= 3


def test_escaped_fields_are_not_shared_between_events(decoder):
    one = opened(decoder, comm=b"\xff")
    first, second = KernelEvents(decoder).events([one, one], factory())
    assert first["escaped_fields"] == ["program"]
    assert first["escaped_fields"] is not second["escaped_fields"]


def test_events_made_from_one_template_are_each_their_own(decoder):
    """An open's kept line format is filled in for each: each event has its own ei, uid and
    time, the same bytes as encode() makes of the event's dict."""
    one = opened(decoder)
    later = (one[0] + 5_000_000, *one[1:])
    kernel, made = KernelEvents(decoder), factory()
    [first] = kernel.events([one], made)
    [second] = kernel.events([later], made)
    assert type(first) is type(second) is events.EncodedEvent   # the lines' own way
    assert len(kernel._lines) == 1   # the second came from the first's format
    assert (first["ei"], second["ei"]) == (0, 1) and (first["event"], second["event"]) == (
        "session.disk", "session.disk")
    a, b = first.as_dict(), second.as_dict()
    assert a["uid"] != b["uid"] and a["time"] != b["time"]
    assert [events.encode(first), events.encode(second)] == reference_lines(decoder, [one, later])


def varied_opens(decoder):
    """Opens of every kind the kernel side makes: odd paths (quotes, backslashes, percent
    signs, control and non-ASCII characters, JSON's escapes), paths that are not UTF-8, every
    path flag, failures, every open flag, extreme numbers, many processes."""
    names = [b"plain", b'quo"te', b"back\\slash", b"100%", b"%d%s%%", b"tab\there", b"\x01ctl",
             b"\x7f", "caf\u00e9".encode(), "\u2028\u2029".encode(), "\U0001f600".encode(),
             b"\\u0000", b'"ei"', b"uid", b"sp ace", b"\xff\xfe", b"a\xc3", b"{}[],:"]
    flags = [f for f in range(1 << 10) if f & abi.PATH_COMPLETE or f & abi.PATH_TRUNCATED]
    out = []
    for i, name in enumerate(names * 4):
        path = b"/srv/%d/" % (i % 7) + name
        flag = flags[i * 37 % len(flags)]
        values = {"pid": 100 + i % 5, "ppid": 1 + i % 3, "ts_ns": 1_000 + i * 997_001,
                  "flags": (i * 0o1013) & 0o7777777, "file.ino": (1 << 64) - 1 - i,
                  "file.dev": (i * 1_234_567) & 0xFFFFFFFF, "file.mnt_id": i,
                  "comm": [b"cat", b"sh", b"w%d" % i, b"\xff"[:i % 9 == 0]][i % 4]}
        if i % 5 == 0:   # a failure: the caller's request only
            out.append(opened(decoder, path=path, ret=-(1 + i % 40),
                              path_flags=abi.PATH_NO_FILE | flag, walked=False, **values))
        elif i % 5 == 1:
            out.append(opened(decoder, path=path, request=name, dirfd=3, path_flags=flag,
                              via_uring=i % 2, **values))
        else:
            out.append(opened(decoder, path=path, path_flags=flag, ret=i, **values))
    return out


def test_varied_opens_make_the_reference_lines_byte_for_byte(decoder):
    """Every open's line made from its kept format is the line of its event's dict, as
    encode() makes it (the reference way), in batches with memo and template hits."""
    batch = sorted(varied_opens(decoder) * 2, key=lambda r: r[0])   # so two calls sort alike
    kernel, made = KernelEvents(decoder), factory()
    got = lines_of(kernel, batch[:100], made) + lines_of(kernel, batch[100:], made)
    assert got == reference_lines(decoder, batch)
    made_events = KernelEvents(decoder).events(batch, factory())
    fast = [e for e in made_events if type(e) is events.EncodedEvent]
    assert len(fast) > len(batch) // 2   # the lines' own way was taken, not only the dicts'
    for e in fast:
        assert orjson.loads(e.line)["ei"] == e["ei"] and e.as_dict()["event"] == e["event"]


def test_an_envelope_holding_a_slot_marker_takes_the_dicts_way(decoder):
    """A template whose slots cannot be told apart (here a login that is the uid's marker) is
    not kept: its events are dicts, and the lines are still the reference's."""
    one = opened(decoder)
    made = factory()
    made.envelope["login"] = events._SLOT_UID
    reference = factory()
    reference.envelope["login"] = events._SLOT_UID
    [event] = KernelEvents(decoder).events([one], made)
    assert type(event) is dict
    ts, record_type, values, tail = one
    kind, fields = KernelEvents().build(decoder.as_dict(record_type, values, tail))
    assert events.encode(event) == events.encode(
        reference.make_from(kind, ts + reference.monotonic_to_epoch_ns, fields))


def test_formats_that_start_again_or_change_factory_still_make_the_reference_lines(decoder, monkeypatch):
    """The kept formats start again when full, and when another factory (another envelope)
    makes the events."""
    kernel = KernelEvents(decoder)
    other = factory()
    other.envelope["login"] = "somebody"
    [elsewhere] = kernel.events([opened(decoder)], other)
    assert orjson.loads(events.encode(elsewhere))["login"] == "somebody"
    monkeypatch.setattr(kernel_events, "MEMO_ENTRIES", 2)
    batch = [opened(decoder, path=b"/t/%d" % (i % 5)) for i in range(20)]
    assert lines_of(kernel, batch) == reference_lines(decoder, batch)   # the first factory's again
    assert len(kernel._lines) <= 2
