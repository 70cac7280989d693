"""The on-disk audit log: server id, day files, events.log, permissions, locking, errors."""

import calendar
import errno
import multiprocessing
import os
import random
import shutil
import stat
import uuid

import orjson
import pytest

from enhrec_wrap.log import auditlog, chain
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.server_id import load_or_create_server_id
from enhrec_wrap.errors import EnhrecError

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
# 2024-03-05 12:00:00 UTC
NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))
DAY_NAME = "2024-03-05.00:00:00.log"
# Forked children inherit the test's state; "fork" is spelled out because 3.14 changes the default.
FORK = multiprocessing.get_context("fork")

def unsealed(line):
    """The event as it was before sealing: the chain fields start at the line's last ',"seq":'
    (a quote inside a JSON string is escaped, so the event cannot hold that text)."""
    return line[:line.rindex(b',"seq":')] + b"}\n"



def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def line(**fields):
    return orjson.dumps(fields) + b"\n"


def fixed(t):
    return lambda: t


def events_of(data):
    """The day file's lines without their chain fields (test_chain.py checks those)."""
    lines = data.splitlines(keepends=True)
    return b"".join(unsealed(x) if chain.trailer(x) else x for x in lines)


@pytest.fixture
def open_umask():
    """Run the test with umask 0 so only the module's explicit modes can make things private."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "data" / "log")


@pytest.fixture
def log(tmp_path, log_dir):
    os.mkdir(tmp_path / "data")
    audit = AuditLog(log_dir, SID, clock=fixed(NOON))
    yield audit
    audit.close()


def fail_on_log_file(real_write, path, after=0, partial=None):
    """An os.write that writes `partial` bytes `after` times to the file at path, then ENOSPC."""
    calls = []

    def fake(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") != path:
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) <= after:
            return real_write(fd, bytes(data[:partial]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return fake


# ---------------------------------------------------------------- server id


def test_server_id_created_once_and_stable(tmp_path, open_umask):
    data_dir = str(tmp_path / "teleport")

    first = load_or_create_server_id(data_dir)

    assert str(uuid.UUID(first)) == first
    host_uuid = os.path.join(data_dir, "host_uuid")
    with open(host_uuid) as f:
        assert f.read() == first
    assert mode_of(data_dir) == 0o700
    assert mode_of(host_uuid) == 0o600
    assert load_or_create_server_id(data_dir) == first
    assert sorted(os.listdir(data_dir)) == ["host_uuid"]


def test_server_id_written_by_teleport_is_kept(tmp_path):
    (tmp_path / "host_uuid").write_text(SID + "\n")

    assert load_or_create_server_id(str(tmp_path)) == SID


def _race_for_server_id(data_dir, barrier, results):
    barrier.wait()
    results.put(load_or_create_server_id(data_dir))


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_first_sessions_agree_on_one_server_id(tmp_path, round_):
    data_dir = str(tmp_path / "teleport")
    workers = 8
    barrier = FORK.Barrier(workers)
    results = FORK.Queue()
    procs = [FORK.Process(target=_race_for_server_id, args=(data_dir, barrier, results)) for _ in range(workers)]
    for p in procs:
        p.start()
    ids = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    assert len(set(ids)) == 1
    with open(os.path.join(data_dir, "host_uuid")) as f:
        assert f.read() == ids[0]
    # Every loser cleaned up its temporary file.
    assert os.listdir(data_dir) == ["host_uuid"]


@pytest.mark.parametrize("content", [b"not-a-uuid\n", b"", b"\xff\xfe garbage\nsecond line"])
def test_corrupt_server_id_names_the_file_and_the_fix(tmp_path, content):
    host_uuid = tmp_path / "host_uuid"
    host_uuid.write_bytes(content)

    with pytest.raises(EnhrecError) as exc:
        load_or_create_server_id(str(tmp_path))

    message = str(exc.value)
    assert message.startswith(f"corrupt server id in {host_uuid} (expected a UUID, found ")
    assert "delete it to create a new id" in message
    assert "\n" not in message
    # The broken file is evidence; it is left for the administrator.
    assert host_uuid.read_bytes() == content


def test_server_id_under_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    data_dir = str(tmp_path / "file" / "teleport")

    with pytest.raises(EnhrecError) as exc:
        load_or_create_server_id(data_dir)

    assert str(exc.value) == (
        f"cannot read or create the server id {data_dir}/host_uuid: {tmp_path}/file is a "
        "regular file, not a directory: move it away, or set teleport.data_dir elsewhere"
    )


# ---------------------------------------------------------------- layout


def test_day_file_and_symlink_for_a_fixed_clock(log, log_dir):
    day_file = os.path.join(log_dir, SID, DAY_NAME)
    link = os.path.join(log_dir, "events.log")

    # The constructor already created both, before anything was written.
    assert os.path.getsize(day_file) == 0
    assert os.readlink(link) == f"{SID}/{DAY_NAME}"

    log.write([line(ei=0, event="session.start"), line(ei=1, event="session.end")])

    with open(link, "rb") as f:
        assert [orjson.loads(events_of(x)) for x in f] == [
            {"ei": 0, "event": "session.start"},
            {"ei": 1, "event": "session.end"},
        ]
    assert sorted(os.listdir(log_dir)) == [SID, "events.log"]


def test_symlink_already_right_is_left_alone(log, log_dir):
    link = os.path.join(log_dir, "events.log")
    before = os.lstat(link).st_ino

    AuditLog(log_dir, SID, clock=fixed(NOON)).close()

    assert os.lstat(link).st_ino == before


def test_modes_are_private_even_with_umask_0(tmp_path, log_dir, open_umask):
    os.mkdir(tmp_path / "data")

    AuditLog(log_dir, SID, clock=fixed(NOON)).close()

    assert mode_of(log_dir) == 0o700
    assert mode_of(os.path.join(log_dir, SID)) == 0o700
    assert mode_of(os.path.join(log_dir, SID, DAY_NAME)) == 0o600


def test_existing_permissive_modes_are_tightened(tmp_path, log_dir):
    server_dir = os.path.join(log_dir, SID)
    day_file = os.path.join(server_dir, DAY_NAME)
    os.makedirs(server_dir)
    with open(day_file, "wb") as f:
        f.write(line(ei=0))
    os.chmod(log_dir, 0o777)
    os.chmod(server_dir, 0o755)
    os.chmod(day_file, 0o666)

    AuditLog(log_dir, SID, clock=fixed(NOON)).close()

    assert (mode_of(log_dir), mode_of(server_dir), mode_of(day_file)) == (0o700, 0o700, 0o600)
    with open(day_file, "rb") as f:
        assert f.read() == line(ei=0)


def test_session_crossing_midnight_switches_file_and_symlink(tmp_path, log_dir):
    now = [calendar.timegm((2024, 12, 31, 23, 59, 59)) + 0.5]
    os.mkdir(tmp_path / "data")
    log = AuditLog(log_dir, SID, clock=lambda: now[0])
    link = os.path.join(log_dir, "events.log")

    log.write([line(ei=0, at="before")])
    assert os.readlink(link) == f"{SID}/2024-12-31.00:00:00.log"
    now[0] += 1
    log.write([line(ei=1, at="after"), line(ei=2, at="after")])
    log.close()

    with open(os.path.join(log_dir, SID, "2024-12-31.00:00:00.log"), "rb") as f:
        assert events_of(f.read()) == line(ei=0, at="before")
    with open(os.path.join(log_dir, SID, "2025-01-01.00:00:00.log"), "rb") as f:
        assert events_of(f.read()) == line(ei=1, at="after") + line(ei=2, at="after")
    assert os.readlink(link) == f"{SID}/2025-01-01.00:00:00.log"
    # No temporary symlink was left behind.
    assert sorted(os.listdir(log_dir)) == [SID, "events.log"]


def test_empty_batch_writes_nothing(log, log_dir, monkeypatch):
    def no_write(fd, data):
        raise AssertionError("an empty batch must not reach os.write")

    monkeypatch.setattr(auditlog.os, "write", no_write)
    log.write([])
    monkeypatch.undo()

    assert os.path.getsize(os.path.join(log_dir, SID, DAY_NAME)) == 0


def test_removed_directory_is_recreated_and_recording_goes_on(log, log_dir):
    day_file = os.path.join(log_dir, SID, DAY_NAME)
    log.write([line(ei=0)])

    shutil.rmtree(os.path.join(log_dir, SID))
    log.write([line(ei=1)])

    with open(day_file, "rb") as f:
        assert events_of(f.read()) == line(ei=1)
    assert mode_of(day_file) == 0o600


def test_write_after_close_reopens(log, log_dir):
    log.write([line(ei=0)])
    log.close()
    log.close()

    log.write([line(ei=1)])

    with open(os.path.join(log_dir, SID, DAY_NAME), "rb") as f:
        assert events_of(f.read()) == line(ei=0) + line(ei=1)


def test_partial_writes_are_completed(log, log_dir, monkeypatch):
    day_file = os.path.join(log_dir, SID, DAY_NAME)
    big = line(ei=0, pad="x" * 10_000)
    real_write = os.write

    def at_most_1000(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") == day_file:
            return real_write(fd, bytes(data[:1000]))
        return real_write(fd, data)

    monkeypatch.setattr(auditlog.os, "write", at_most_1000)
    log.write([big, line(ei=1)])
    monkeypatch.undo()

    with open(day_file, "rb") as f:
        assert events_of(f.read()) == big + line(ei=1)


# ---------------------------------------------------------------- concurrency


def _hammer(log_dir, worker, batches, max_write):
    if max_write:
        # Force short writes (this child exits afterwards): only the lock then keeps batches whole.
        real_write = os.write
        auditlog.os.write = lambda fd, data: real_write(fd, bytes(data[:max_write]))
    rng = random.Random(worker)
    log = AuditLog(log_dir, SID, clock=fixed(NOON))
    for b in range(batches):
        batch = []
        for i in range(rng.randint(1, 5)):
            roll = rng.random()
            if roll < 0.005:
                size = rng.randint(65_537, 131_072)
            elif roll < 0.05:
                size = rng.randint(4_097, 16_384)
            else:
                size = rng.randint(0, 300)
            batch.append(line(w=worker, b=b, i=i, n=size, pad="x" * size))
        log.write(batch)
    log.close()


@pytest.mark.parametrize(
    "batches, max_write", [(2000, None), (300, 1000)], ids=["whole-writes", "short-writes"]
)
def test_concurrent_writers_never_interleave(tmp_path, log_dir, batches, max_write):
    workers = 8
    os.mkdir(tmp_path / "data")
    procs = [FORK.Process(target=_hammer, args=(log_dir, w, batches, max_write)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0

    with open(os.path.join(log_dir, SID, DAY_NAME), "rb") as f:
        records = [orjson.loads(x) for x in f]

    assert all(r["n"] == len(r["pad"]) for r in records)
    seen_batches = {}
    for position, r in enumerate(records):
        seen_batches.setdefault((r["w"], r["b"]), []).append((position, r["i"]))
    assert {w for w, _ in seen_batches} == set(range(workers))
    for w in range(workers):
        assert [b for ww, b in seen_batches if ww == w] == list(range(batches))
    for entries in seen_batches.values():
        positions = [p for p, _ in entries]
        # A batch is one block of consecutive lines, in its own order.
        assert positions == list(range(positions[0], positions[0] + len(entries)))
        assert [i for _, i in entries] == list(range(len(entries)))


# ---------------------------------------------------------------- failures


def test_disk_full_raises_one_line_with_the_fix(log, log_dir, monkeypatch):
    day_file = os.path.join(log_dir, SID, DAY_NAME)
    log.write([line(ei=0)])
    monkeypatch.setattr(auditlog.os, "write", fail_on_log_file(os.write, day_file))

    with pytest.raises(EnhrecError) as exc:
        log.write([line(ei=1)])

    assert str(exc.value) == (
        f"cannot write the audit log {day_file}: No space left on device: free disk space in {log_dir}"
    )
    with open(day_file, "rb") as f:
        assert events_of(f.read()) == line(ei=0)


def test_half_written_batch_is_removed_on_failure(log, log_dir, monkeypatch):
    day_file = os.path.join(log_dir, SID, DAY_NAME)
    log.write([line(ei=0)])
    monkeypatch.setattr(
        auditlog.os, "write", fail_on_log_file(os.write, day_file, after=1, partial=7)
    )

    with pytest.raises(EnhrecError, match="No space left on device"):
        log.write([line(ei=1, pad="y" * 100)])
    monkeypatch.undo()

    # The next batch starts on a clean line instead of gluing onto a fragment.
    log.write([line(ei=2)])
    with open(day_file, "rb") as f:
        assert events_of(f.read()) == line(ei=0) + line(ei=2)


def test_unwritable_log_dir_fails_in_the_constructor(tmp_path):
    (tmp_path / "data").write_text("a file where the data directory should be")
    log_dir = str(tmp_path / "data" / "log")

    with pytest.raises(EnhrecError) as exc:
        AuditLog(log_dir, SID, clock=fixed(NOON))

    assert str(exc.value) == (
        f"cannot write the audit log {log_dir}/{SID}/{DAY_NAME}: {tmp_path}/data is a regular "
        "file, not a directory: move it away, or set teleport.data_dir elsewhere"
    )


def test_day_file_symlink_is_refused(tmp_path, log_dir):
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched\n")
    victim_mode = mode_of(victim)
    os.makedirs(os.path.join(log_dir, SID))
    day_file = os.path.join(log_dir, SID, DAY_NAME)
    os.symlink(victim, day_file)

    with pytest.raises(EnhrecError) as exc:
        AuditLog(log_dir, SID, clock=fixed(NOON))

    assert str(exc.value).startswith(
        f"cannot write the audit log {day_file}: Too many levels of symbolic links: replace the symlink"
    )
    assert victim.read_bytes() == b"untouched\n"
    assert mode_of(victim) == victim_mode


def test_events_log_that_is_not_a_symlink_is_kept_and_reported(tmp_path, log_dir):
    os.makedirs(log_dir)
    link = os.path.join(log_dir, "events.log")
    with open(link, "wb") as f:
        f.write(line(ei=0))

    with pytest.raises(EnhrecError) as exc:
        AuditLog(log_dir, SID, clock=fixed(NOON))

    assert str(exc.value) == (
        f"cannot write the audit log {link}: not a symlink: move it away, "
        f"it must link to the current day's file"
    )
    with open(link, "rb") as f:
        assert f.read() == line(ei=0)


def test_server_id_that_is_not_a_file_name_is_rejected(log_dir):
    with pytest.raises(ValueError):
        AuditLog(log_dir, "../elsewhere", clock=fixed(NOON))


# --- the reason of a failed file operation ------------------------------------------------------

def test_error_on_a_pseudo_file_system_names_it():
    from enhrec_wrap.log import files
    message = str(files.error("cannot create x", OSError(errno.ENOENT, "x"), "/proc/sys"))
    assert message == ("cannot create x: /proc/sys is on a proc file system, which cannot hold "
                       "the audit log: set teleport.data_dir to a directory on a disk")


def test_error_below_a_regular_file_names_the_file(tmp_path):
    from enhrec_wrap.log import files
    (tmp_path / "plain").write_text("")
    message = str(files.error("cannot create x", OSError(errno.ENOTDIR, "x"),
                              str(tmp_path / "plain" / "log")))
    assert message == (f"cannot create x: {tmp_path}/plain is a regular file, not a directory: "
                       "move it away, or set teleport.data_dir elsewhere")


# --- the day file removed or renamed under the recorder (issue 11) ----------------------------

def test_removed_day_file_is_counted_and_made_again(log, log_dir):
    log.write([b'{"a":1}\n', b'{"a":2}\n'])
    log.write([b'{"a":3}\n'])
    shutil.rmtree(log_dir)
    assert log.removed() == 3
    log.write([b'{"a":4}\n'])
    assert log.removed() == 3
    with open(os.path.join(log_dir, SID, DAY_NAME), "rb") as f:
        data = f.read()
    assert events_of(data) == b'{"a":4}\n'
    # The chain state outlived the log dir: seq goes on, and verify names 1..3 as missing.
    assert chain.trailer(data).seq == 4


def test_renamed_day_file_loses_nothing_and_counts_nothing(log, log_dir, monkeypatch):
    """A write looks at the path at most every PATH_CHECK_SECONDS: until then the lines go on
    into the renamed file, which keeps them; from then on into a new one at the path."""
    now = [1000.0]
    monkeypatch.setattr(auditlog, "_monotonic", lambda: now[0])
    log.write([b'{"a":1}\n'])
    day = os.path.join(log_dir, SID, DAY_NAME)
    os.rename(day, day + ".1")   # logrotate
    log.write([b'{"a":2}\n'])
    now[0] += auditlog.PATH_CHECK_SECONDS
    log.write([b'{"a":3}\n'])
    assert log.removed() == 0
    with open(day + ".1", "rb") as f:
        rotated = f.readlines()
    with open(day, "rb") as f:
        data = f.read()
    assert [events_of(x) for x in rotated] == [b'{"a":1}\n', b'{"a":2}\n']
    assert events_of(data) == b'{"a":3}\n'
    assert [chain.trailer(x).seq for x in rotated + [data]] == [1, 2, 3]


def test_removed_looks_at_the_path_at_once(log, log_dir, monkeypatch):
    """session.end asks removed() before it is written: a rename just made is noticed there,
    whenever the last write looked, so session.end goes where readers look."""
    monkeypatch.setattr(auditlog, "_monotonic", lambda: 1000.0)
    log.write([b'{"a":1}\n'])
    day = os.path.join(log_dir, SID, DAY_NAME)
    os.rename(day, day + ".1")
    assert log.removed() == 0
    log.write([b'{"a":2}\n'])
    with open(day, "rb") as f:
        assert events_of(f.read()) == b'{"a":2}\n'


def test_a_removal_is_noticed_by_the_next_write_between_looks_at_the_path(log, log_dir, monkeypatch):
    """rm of the day file (or of the whole log) is seen by the link count at every batch, not
    only at the look at the path: no line goes to a removed file after the batch that saw it,
    and what went to it is counted."""
    monkeypatch.setattr(auditlog, "_monotonic", lambda: 1000.0)   # no look at the path is due
    log.write([b'{"a":1}\n', b'{"a":2}\n'])
    os.unlink(os.path.join(log_dir, SID, DAY_NAME))
    log.write([b'{"a":3}\n'])
    shutil.rmtree(log_dir)
    log.write([b'{"a":4}\n'])
    assert log.removed() == 3
    with open(os.path.join(log_dir, SID, DAY_NAME), "rb") as f:
        assert events_of(f.read()) == b'{"a":4}\n'


def test_a_removal_after_the_link_count_was_read_is_counted_by_the_look_at_the_path(
        log, log_dir, monkeypatch):
    """The file removed between the batch's fstat and its look at the path: still counted."""
    now = [1000.0]
    monkeypatch.setattr(auditlog, "_monotonic", lambda: now[0])
    log.write([b'{"a":1}\n', b'{"a":2}\n'])
    os.unlink(os.path.join(log_dir, SID, DAY_NAME))
    real_fstat, seen = os.fstat, []

    def fstat_before_the_removal(fd):
        st = real_fstat(fd)
        if seen:
            return st
        seen.append(fd)   # the batch's first fstat, of the day file: as if read just before
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, 1) + tuple(st)[4:])

    monkeypatch.setattr(os, "fstat", fstat_before_the_removal)
    now[0] += auditlog.PATH_CHECK_SECONDS
    log.write([b'{"a":3}\n'])
    monkeypatch.setattr(os, "fstat", real_fstat)
    assert seen and log.removed() == 2
    with open(os.path.join(log_dir, SID, DAY_NAME), "rb") as f:
        assert events_of(f.read()) == b'{"a":3}\n'


def test_a_removal_noticed_by_a_write_keeps_the_chain_going(log, log_dir):
    """The write notices it under the chain lock: only the day file is closed and made again,
    the chain state (whose lock it holds) stays, so the batch is sealed as the next seq."""
    log.write([b'{"a":1}\n', b'{"a":2}\n'])
    os.unlink(os.path.join(log_dir, SID, DAY_NAME))
    log.write([b'{"a":3}\n'])
    log.write([b'{"a":4}\n'])
    assert log.removed() == 2
    with open(os.path.join(log_dir, SID, DAY_NAME), "rb") as f:
        lines = f.readlines()
    assert [chain.trailer(x).seq for x in lines] == [3, 4]
    assert chain.trailer(lines[1]).prev == chain.line_hash(lines[0])
