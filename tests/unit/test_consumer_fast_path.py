"""The consumer's hot path (decode.Decoder.raw_from + events.KernelEvents.events) makes exactly
the events of the reference path (Decoder.decode + KernelEvents.feed + EventFactory.make), for
every kind of record: opens the fast path builds itself and the ones it hands over (relative,
unreadable, non-UTF-8, unknown parent, escaped program), execs, lost results, connects."""

import struct

from enhrec_wrap.kernel import abi, decode
from enhrec_wrap.events import teleport as events

# The layouts as BCC flattens bpf_programs/enhrec.h (test_decode.py checks the constants).
HEADER = [["ts_ns", 0, "Q", 8], ["cgroup_id", 8, "Q", 8], ["pid", 16, "I", 4], ["tid", 20, "I", 4],
          ["ppid", 24, "I", 4], ["type", 28, "H", 2], ["tail_len", 30, "H", 2],
          ["comm", 32, "16s", 16]]
FIELDS = {
    "exec_scratch": HEADER + [["dirfd", 48, "i", 4], ["at_flags", 52, "I", 4], ["argc", 56, "I", 4],
                              ["truncated", 60, "I", 4], ["filename_len", 64, "I", 4],
                              ["pad", 68, "I", 4], ["data", 72, "65536s", 65536]],
    "exec_result_scratch": HEADER + [["ret", 48, "q", 8]],
    "open_scratch": HEADER + [["ret", 48, "q", 8], ["flags", 56, "q", 8], ["dirfd", 64, "i", 4],
                              ["mode", 68, "I", 4], ["path", 72, "8192s", 8192]],
    "connect_scratch": HEADER + [["ret", 48, "q", 8], ["family", 56, "H", 2], ["dport", 58, "H", 2],
                                 ["sport", 60, "H", 2], ["flags", 62, "H", 2],
                                 ["daddr", 64, "16s", 16], ["saddr", 80, "16s", 16]],
}
SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
SERVER_ID = "5d2f4d7a-92c4-4c1e-8b3c-7b0e1f6a9d10"


def header(ts, record_type, pid, ppid, comm, tail_len=0):
    return struct.pack("=QQIIIHH16s", ts, 4242, pid, pid, ppid, record_type, tail_len, comm)


def open_record(ts, path, pid=100, ppid=99, comm=b"cat", ret=3, flags=0, dirfd=-100):
    tail = path + b"\0" if path is not None else b""
    return header(ts, abi.RECORD_OPEN, pid, ppid, comm, len(tail)) + \
        struct.pack("=qqiI", ret, flags, dirfd, 0) + tail


def exec_record(ts, pid, filename, args, comm=b"bash"):
    tail = filename + b"\0" + b"".join(a + b"\0" for a in args)
    return header(ts, abi.RECORD_EXEC, pid, 1, comm, len(tail)) + \
        struct.pack("=iIIIII", -100, 0, len(args), 0, len(filename) + 1, 0) + tail


def result_record(ts, pid, ret, comm):
    return header(ts, abi.RECORD_EXEC_RESULT, pid, 1, comm) + struct.pack("=q", ret)


def connect_record(ts, pid):
    return header(ts, abi.RECORD_CONNECT, pid, 1, b"curl") + \
        struct.pack("=qHHHH16s16s", 0, 2, 443, 50000, abi.CONNECT_TCP, bytes([10, 0, 0, 1]),
                    bytes([10, 0, 0, 2]))


def records():
    return [
        open_record(10, b"/etc/passwd"),
        exec_record(5, 200, b"/bin/ls", [b"ls", b"-l"]),              # earlier ts, later record
        open_record(20, b"relative/file", dirfd=-100),                # abs_path (resolved or not)
        open_record(21, None, ret=-2),                                # unreadable path
        open_record(22, b"/tmp/\xffbad"),                             # non-UTF-8 path
        open_record(23, b"/etc/hosts", ppid=0, pid=2**31),            # parent from /proc: none
        open_record(24, b"/etc/group", comm=b"\xffprog"),             # escaped program
        result_record(25, 200, 0, b"ls"),
        exec_record(26, 300, b"/bin/true", []),                       # its result is lost,
        exec_record(27, 300, b"/bin/false", []),                      # then the pid execs again
        result_record(28, 300, 1, b"false"),
        result_record(29, 400, 0, b"orphan"),                         # its exec record was lost
        connect_record(30, 500),
        open_record(31, b"/x", comm=b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0"),
    ]


def factory():
    return events.EventFactory(SID, SERVER_ID, "node", "root", "alice", "main")


def without_random(made):
    return [{k: v for k, v in e.items() if k != "uid"} for e in made]


def test_fast_path_makes_the_reference_events():
    decoder = decode.Decoder(fields=FIELDS)
    raw = records()

    reference_kernel, reference_factory = events.KernelEvents(), factory()
    completed = reference_kernel.feed_many([decoder.decode(r) for r in raw])
    completed.sort(key=lambda item: item[1])
    expected = [reference_factory.make(kind, reference_factory.kernel_time(ts), **fields)
                for kind, ts, fields in completed]

    fast_kernel, fast_factory = events.KernelEvents(), factory()
    fast_factory.monotonic_to_epoch_ns = reference_factory.monotonic_to_epoch_ns
    made = fast_kernel.events([decoder.raw_from(r, 0, len(r)) for r in raw], decoder, fast_factory)

    assert without_random(made) == without_random(expected)
    assert [list(e) for e in made] == [list(e) for e in expected]   # the same key order
    assert fast_factory.next_ei == reference_factory.next_ei == len(expected)
    assert all(e["uid"] != f["uid"] for e, f in zip(made, expected))
    # And the two kernels are left in the same state: the same exec still waits for its result.
    assert fast_kernel.pending_execs.keys() == reference_kernel.pending_execs.keys()


def test_raw_from_rejects_what_decode_rejects():
    decoder = decode.Decoder(fields=FIELDS)
    good = open_record(1, b"/etc/passwd")
    for bad in (good[:10], good[:60], good[:-3], header(1, 9, 1, 1, b"x") + bytes(40)):
        for decode_one in (decoder.raw_from, decoder.decode_from):
            try:
                decode_one(bad, 0, len(bad))
            except ValueError:
                continue
            raise AssertionError(f"{decode_one.__name__} took {bad!r}")
