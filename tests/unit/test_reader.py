"""The streaming readers: daily files, session gzip files cut anywhere, corrupt lines, following
events.log across midnight."""

import gzip
import os
import random
import zlib

import orjson
import pytest

from enhrec_wrap.log import file_lines, reader
from enhrec_wrap.log import layout, store

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
OTHER = "9d1c2b3a-0000-4000-8000-000000000001"
SERVER = "5a1f0e2d-1111-4222-8333-444455556666"


def event(ei, sid=SID, kind="session.command", **fields):
    e = {"ei": ei, "event": kind, "sid": sid, "time": f"2024-03-05T12:00:{ei % 60:02d}.000Z"}
    e.update(fields)
    return e


def line(e):
    return orjson.dumps(e) + b"\n"


def sync_flushed_gzip(batches):
    """What the store writes: each batch compressed and sync-flushed; returns (data, the end
    offset of each batch)."""
    zip_ = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    data, ends = b"", []
    for batch in batches:
        data += zip_.compress(batch) + zip_.flush(zlib.Z_SYNC_FLUSH)
        ends.append(len(data))
    return data, ends, zip_.flush(zlib.Z_FINISH)


# --- gzip -----------------------------------------------------------------------------------

def test_complete_gzip_reads_whole(tmp_path):
    path = tmp_path / "a.gz"
    lines = [line(event(i)) for i in range(100)]
    path.write_bytes(gzip.compress(b"".join(lines)))
    stats = reader.Stats()
    assert list(reader.gz_lines(str(path), stats)) == lines
    assert stats.truncated_files == []


def test_truncated_gzip_gives_every_flushed_batch_at_any_cut(tmp_path):
    batches = [b"".join(line(event(b * 10 + i)) for i in range(10)) for b in range(8)]
    data, ends, _ = sync_flushed_gzip(batches)
    path = tmp_path / "cut.gz"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        stats = reader.Stats()
        got = b"".join(reader.gz_lines(str(path), stats))
        whole = sum(1 for end in ends if end <= cut)
        # Every batch flushed before the cut is there, and never a partial line.
        assert got.startswith(b"".join(batches[:whole])), cut
        assert got == b"" or got.endswith(b"\n")
        assert all(reader.parse(x) is not None for x in got.splitlines(keepends=True))
        if cut < len(data) and cut > 0:
            assert stats.truncated_files == [str(path)]


def test_several_members_are_read_in_order(tmp_path):
    first, second = line(event(0)), line(event(1))
    path = tmp_path / "m.gz"
    path.write_bytes(gzip.compress(first) + gzip.compress(second))
    assert list(reader.gz_lines(str(path))) == [first, second]


def test_garbage_after_the_data_ends_the_stream_there(tmp_path):
    good = [line(event(i)) for i in range(5)]
    data, _, _ = sync_flushed_gzip([b"".join(good)])
    path = tmp_path / "g.gz"
    path.write_bytes(data + os.urandom(200))
    stats = reader.Stats()
    got = list(reader.gz_lines(str(path), stats))
    assert got[:5] == good
    ((named, why),) = stats.skipped_files
    assert named == str(path) and why.startswith("damaged at byte ")


def test_empty_gzip_file_has_no_lines(tmp_path):
    path = tmp_path / "empty.gz"
    path.write_bytes(b"")
    assert list(reader.gz_lines(str(path))) == []


# --- lines and parsing ----------------------------------------------------------------------

def test_day_file_skips_corrupt_lines_and_the_unfinished_last_one(tmp_path):
    path = tmp_path / "2024-03-05.00:00:00.log"
    good = [line(event(i)) for i in range(3)]
    path.write_bytes(good[0] + b"{not json\n" + good[1] + b"[1, 2]\n" + b"\n" + good[2] + b'{"ei": 3, "ev')
    stats = reader.Stats()
    got = [e for e, _ in reader.events_of(reader.day_file_lines(str(path), stats), stats)]
    assert [e["ei"] for e in got] == [0, 1, 2]
    assert stats.corrupt_lines == 2   # the blank line is not counted
    assert stats.truncated_files == [str(path)]


def test_day_file_from_an_offset(tmp_path):
    path = tmp_path / "d.log"
    data = line(event(0)) + line(event(1))
    path.write_bytes(data)
    assert list(reader.day_file_lines(str(path), start=len(line(event(0))))) == [line(event(1))]


@pytest.mark.parametrize("seed", range(20))
def test_reverse_lines_any_block_size(tmp_path, seed):
    rng = random.Random(seed)
    lines = [os.urandom(rng.randint(0, 40)).replace(b"\n", b"") + b"\n" for _ in range(rng.randint(0, 60))]
    partial = b"half a line" if rng.random() < 0.5 else b""
    path = tmp_path / "r.log"
    path.write_bytes(b"".join(lines) + partial)
    got = list(file_lines.reverse_lines(str(path), block=rng.randint(1, 64)))
    assert got == list(reversed(lines))


def test_reverse_lines_stops_at_the_given_end(tmp_path):
    path = tmp_path / "r.log"
    path.write_bytes(b"a\nb\nc\n")
    assert list(file_lines.reverse_lines(str(path), end=4)) == [b"b\n", b"a\n"]


# --- the directory --------------------------------------------------------------------------

@pytest.fixture
def log_dir(tmp_path):
    root = tmp_path / "log"
    for day, eis in (("2024-03-04", [0, 1]), ("2024-03-05", [2, 3]), ("2024-03-06", [4])):
        directory = root / SERVER
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{day}.00:00:00.log").write_bytes(b"".join(line(event(i)) for i in eis))
    (root / SERVER / "notes.txt").write_text("not a day file")
    (root / "events.log").symlink_to(f"{SERVER}/2024-03-06.00:00:00.log")
    return reader.LogDir(str(root))


def test_day_files_in_order_and_by_range(log_dir):
    assert [d for d, _ in log_dir.day_files()] == ["2024-03-04", "2024-03-05", "2024-03-06"]
    assert [d for d, _ in log_dir.day_files("2024-03-05", "2024-03-05")] == ["2024-03-05"]
    assert [d for d, _ in log_dir.day_files(None, "2024-03-04")] == ["2024-03-04"]


def test_day_events_prefilter_and_progress(log_dir):
    calls = []

    class Recorder:
        def start(self, total):
            calls.append(("start", total))

        def update(self, done, label):
            calls.append(("update", label))

        def finish(self):
            calls.append(("finish",))

    got = [e["ei"] for e, _ in reader.day_events(log_dir, must_contain=(b'"ei":3',), progress=Recorder())]
    assert got == [3]
    assert calls[0][0] == "start" and calls[-1] == ("finish",)


def test_current_file_follows_the_symlink(log_dir):
    assert log_dir.current_file().endswith("2024-03-06.00:00:00.log")


def test_missing_log_dir_is_empty(tmp_path):
    log = reader.LogDir(str(tmp_path / "nothing"))
    assert log.day_files() == [] and log.stored_sids() == {} and log.current_file() is None


def _store_session(log_root, sid, batches, close=True):
    writer = store.SessionStore.create(str(log_root), SERVER, sid)
    for batch in batches:
        writer.write(batch, [line(e) for e in batch])
    if close:
        writer.close(ended=True)
    else:
        writer.flush()   # written, and then the recorder "dies" (nothing closed)
    return writer


def test_session_events_from_the_store_in_ei_order(tmp_path):
    root = tmp_path / "log"
    _store_session(root, SID, [[event(0, kind="session.start"), event(1)], [event(2)]])
    _store_session(root, OTHER, [[event(0, sid=OTHER, kind="session.start")]])
    log = reader.LogDir(str(root))
    assert set(log.stored_sids()) == {SID, OTHER}
    assert [e["ei"] for e in reader.session_events(log, SID)] == [0, 1, 2]


def test_session_events_of_a_crashed_recorder(tmp_path):
    """Each batch is a whole gzip member: a recorder that dies between batches leaves files that
    are complete up to its last batch."""
    root = tmp_path / "log"
    _store_session(root, SID, [[event(0, kind="session.start")], [event(1), event(2)]], close=False)
    log = reader.LogDir(str(root))
    stats = reader.Stats()
    assert [e["ei"] for e in reader.session_events(log, SID, stats)] == [0, 1, 2]
    assert stats.truncated_files == []


def test_a_batch_torn_by_a_crash_is_read_up_to_its_last_whole_member(tmp_path):
    root = tmp_path / "log"
    _store_session(root, SID, [[event(0, kind="session.start")], [event(1)]], close=False)
    path = root / SERVER / layout.SESSION_FILES / f"{SID}-0.events.gz"
    torn = gzip.compress(line(event(2)) + line(event(3)))
    with open(path, "ab") as f:
        f.write(torn[:len(torn) // 2])   # the recorder died in the middle of this write
    stats = reader.Stats()
    assert [e["ei"] for e in reader.session_events(reader.LogDir(str(root)), SID, stats)] == [0, 1]
    assert any(p.endswith("-0.events.gz") for p in stats.truncated_files)


def test_parts_found_without_the_index(tmp_path):
    root = tmp_path / "log"
    _store_session(root, SID, [[event(0, kind="session.start")]])
    directory = root / SERVER / layout.SESSION_FILES
    (directory / f"{SID}-1.events.gz").write_bytes(gzip.compress(line(event(1))))
    os.unlink(directory / f"{SID}.index")
    log = reader.LogDir(str(root))
    assert SID in log.stored_sids()
    assert [e["ei"] for e in reader.session_events(log, SID)] == [0, 1]


# --- following events.log ------------------------------------------------------------------

def test_follower_reads_new_lines_and_moves_to_the_next_day(tmp_path):
    root = tmp_path / "log"
    (root / SERVER).mkdir(parents=True)
    day1 = root / SERVER / "2024-03-05.00:00:00.log"
    day2 = root / SERVER / "2024-03-06.00:00:00.log"
    day1.write_bytes(line(event(0)))
    (root / "events.log").symlink_to(f"{SERVER}/{day1.name}")
    follower = reader.Follower(reader.LogDir(str(root)))
    assert follower.poll() == []   # starts at the end
    with open(day1, "ab") as f:
        f.write(line(event(1)) + b'{"ei": 2, "half')
    assert follower.poll() == [line(event(1))]
    # Midnight: a late batch still lands in yesterday's file, then events.log moves on.
    with open(day1, "ab") as f:
        f.write(b'"}\n')
    day2.write_bytes(line(event(3)))
    os.unlink(root / "events.log")
    (root / "events.log").symlink_to(f"{SERVER}/{day2.name}")
    got = follower.poll()
    assert got == [b'{"ei": 2, "half"}\n', line(event(3))]
    with open(day2, "ab") as f:
        f.write(line(event(4)))
    assert follower.poll() == [line(event(4))]


def test_follower_waits_for_events_log_to_appear(tmp_path):
    root = tmp_path / "log"
    follower = reader.Follower(reader.LogDir(str(root)), from_end=False)
    assert follower.poll() == []
    (root / SERVER).mkdir(parents=True)
    (root / SERVER / "2024-03-05.00:00:00.log").write_bytes(line(event(0)))
    (root / "events.log").symlink_to(f"{SERVER}/2024-03-05.00:00:00.log")
    assert follower.poll() == [line(event(0))]


# --- damaged and hostile files (issue 11) ---------------------------------------------------

@pytest.fixture
def no_hang():
    """Fails the test instead of hanging it (a FIFO opened for reading blocks for a writer)."""
    import signal

    def expired(*_):
        raise AssertionError("the reader hung")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_fifo_is_skipped_and_named_never_waited_for(tmp_path, no_hang):
    fifo = tmp_path / f"{SID}-0.events.gz"
    os.mkfifo(fifo)
    for read in (reader.gz_lines, reader.day_file_lines):
        stats = reader.Stats()
        assert list(read(str(fifo), stats)) == []
        assert stats.skipped_files == [(str(fifo), "a FIFO, not a regular file: skipped")]
    stats = reader.Stats()
    assert list(file_lines.reverse_lines(str(fifo), stats=stats)) == []
    assert stats.skipped_files == [(str(fifo), "a FIFO, not a regular file: skipped")]


def test_a_file_that_is_not_gzip_is_named(tmp_path):
    path = tmp_path / f"{SID}-0.events.gz"
    path.write_bytes(b"this is not gzip at all\n" * 10)
    stats = reader.Stats()
    assert list(reader.gz_lines(str(path), stats)) == []
    assert stats.skipped_files == [(str(path), "not a gzip file: skipped")]


def test_a_damaged_gzip_is_named_and_read_up_to_the_damage(tmp_path):
    good = [line(event(i)) for i in range(5)]
    data, ends, _ = sync_flushed_gzip([b"".join(good[:3]), b"".join(good[3:])])
    path = tmp_path / "d.gz"
    path.write_bytes(data[:ends[0]] + b"\xff" * 64 + data[ends[0]:])
    stats = reader.Stats()
    assert list(reader.gz_lines(str(path), stats)) == good[:3]
    ((named, why),) = stats.skipped_files
    assert named == str(path) and why.startswith(f"damaged at byte {ends[0]}")


LONG = file_lines.MAX_LINE_BYTES + 1


def test_lines_longer_than_the_bound_are_skipped_and_counted(tmp_path):
    good = [line(event(i)) for i in range(3)]
    huge = b'{"ei": 99, "x": "' + b"a" * LONG + b'"}\n'
    data = good[0] + huge + good[1] + huge + good[2]
    day = tmp_path / "2024-03-05.00:00:00.log"
    day.write_bytes(data)
    gz = tmp_path / "a.gz"
    gz.write_bytes(gzip.compress(data))
    for read, path in ((reader.day_file_lines, day), (reader.gz_lines, gz)):
        stats = reader.Stats()
        assert list(read(str(path), stats)) == good, read
        assert stats.long_lines == 2
    for block in (1000, 1 << 16, 1 << 22):
        stats = reader.Stats()
        assert list(file_lines.reverse_lines(str(day), block=block, stats=stats)) == good[::-1]
        assert stats.long_lines == 2, block


def test_a_line_of_exactly_the_bound_is_read(tmp_path):
    exact = b'{"x": "' + b"a" * (file_lines.MAX_LINE_BYTES - 10) + b'"}\n'
    assert len(exact) == file_lines.MAX_LINE_BYTES
    day = tmp_path / "d.log"
    day.write_bytes(exact + line(event(0)))
    assert list(reader.day_file_lines(str(day))) == [exact, line(event(0))]
    assert list(file_lines.reverse_lines(str(day), block=4096)) == [line(event(0)), exact]


def test_the_follower_skips_a_line_longer_than_the_bound(tmp_path):
    root = tmp_path / "log"
    (root / SERVER).mkdir(parents=True)
    day = root / SERVER / "2024-03-05.00:00:00.log"
    day.write_bytes(b"")
    (root / "events.log").symlink_to(f"{SERVER}/{day.name}")
    stats = reader.Stats()
    follower = reader.Follower(reader.LogDir(str(root)), stats=stats)
    follower.poll()
    with open(day, "ab") as f:
        f.write(b"a" * (LONG // 2))
    assert follower.poll() == []
    with open(day, "ab") as f:
        f.write(b"a" * (LONG // 2) + b"b\n" + line(event(1)))
    assert follower.poll() == [line(event(1))]
    assert stats.long_lines == 1


def test_a_gzip_bomb_is_read_in_bounded_memory(tmp_path):
    """256 MiB without a newline from a 256 KiB file: read to the end, one long line skipped,
    and the reader never holds more than its bound."""
    import subprocess
    import sys
    path = tmp_path / "bomb.gz"
    zip_ = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1 << 20)
    with open(path, "wb") as f:
        f.write(zip_.compress(line(event(0))))
        for _ in range(256):
            f.write(zip_.compress(zeros))
        f.write(zip_.compress(b"\n" + line(event(1))) + zip_.flush())
    probe = ("import resource, sys\n"
             "from enhrec_wrap.log import reader\n"
             "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "stats = reader.Stats()\n"
             "n = sum(1 for _ in reader.gz_lines(sys.argv[1], stats))\n"
             "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
             "print(n, stats.long_lines, grown)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    lines, long_lines, grown_kib = map(int, out)
    assert (lines, long_lines) == (2, 1)
    assert grown_kib < 32 * 1024, f"the reader grew by {grown_kib} KiB"


def test_the_follower_starts_over_on_a_file_made_again_under_its_name(tmp_path):
    """logrotate renamed the day file and the recorder made it again, already longer than
    where the follower was in the old one: it reads the new one from its start."""
    root = tmp_path / "log"
    (root / SERVER).mkdir(parents=True)
    day = root / SERVER / "2024-03-05.00:00:00.log"
    day.write_bytes(line(event(0)))
    (root / "events.log").symlink_to(f"{SERVER}/{day.name}")
    follower = reader.Follower(reader.LogDir(str(root)))
    assert follower.poll() == []
    os.rename(day, str(day) + ".1")
    day.write_bytes(line(event(1)) + line(event(2)))
    assert follower.poll() == [line(event(1)), line(event(2))]
