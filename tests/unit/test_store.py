"""The session store (layout, flushing, failures), its lock file, and recovery of sessions whose
recorder died; no root and no BPF needed (cgroups are stood in for by plain directories)."""

import calendar
import errno
import fcntl
import gzip
import os
import stat

import orjson
import pytest

from enhrec_wrap.log import reader
from enhrec_wrap.session import recovery
from enhrec_wrap.log import gz_stream, layout, session_lock, store
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.config import Config
from enhrec_wrap.errors import EnhrecError

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
OTHER = "9d1c2b3a-0000-4000-8000-000000000001"
SERVER = "5a1f0e2d-1111-4222-8333-444455556666"
NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))
KINDS = ("session.command", "session.disk", "session.network")


def make_event(ei, kind, sid=SID, second=0):
    e = {"ei": ei, "event": kind, "code": "X", "uid": f"u{ei}", "sid": sid,
         "time": f"2024-03-05T12:00:{second:02d}.{ei % 1000:03d}Z", "namespace": "default",
         "server_id": SERVER, "server_hostname": "host", "login": "alice", "user": "alice"}
    if kind == "session.start":
        e.update(interactive=True, enhanced_recording=True, initial_command=[])
    return e


def encode(e):
    return orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE)


def session_events(n, sid=SID):
    kinds = ["session.start"] + [KINDS[i % 3] for i in range(n - 1)]
    return [make_event(i, k, sid) for i, k in enumerate(kinds)]


@pytest.fixture
def log_dir(tmp_path):
    (tmp_path / "data").mkdir()   # the data_dir exists: the server id lives in it
    return str(tmp_path / "data" / "log")


def write(writer, events):
    writer.write(events, [encode(e) for e in events])


def read_gz(path):
    return [orjson.loads(x) for x in reader.gz_lines(path)]


def files_of(log_dir):
    directory = os.path.join(log_dir, SERVER, layout.SESSION_FILES)
    return sorted(os.listdir(directory)), directory


# --- layout and contents --------------------------------------------------------------------

def test_layout_index_and_contents(log_dir):
    events = session_events(10)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, events[:4])
    write(writer, events[4:])
    writer.close(ended=True)
    names, directory = files_of(log_dir)
    assert names == sorted([f"{SID}.index", f"{SID}-0.events.gz",
                            f"{SID}-0.session.command-events.gz", f"{SID}-0.session.disk-events.gz",
                            f"{SID}-0.session.network-events.gz"])
    index = [orjson.loads(x) for x in open(os.path.join(directory, f"{SID}.index"), "rb")]
    assert {(i["file_name"], i["type"], i["index"]) for i in index} == {
        (f"{SID}-0.events.gz", "events", 0),
        (f"{SID}-0.session.command-events.gz", "session.command", 0),
        (f"{SID}-0.session.disk-events.gz", "session.disk", 0),
        (f"{SID}-0.session.network-events.gz", "session.network", 0)}
    # A normal end leaves complete gzip files, readable by anything.
    with gzip.open(os.path.join(directory, f"{SID}-0.events.gz")) as f:
        assert [orjson.loads(x) for x in f] == events
    for kind in KINDS:
        got = read_gz(os.path.join(directory, layout.stream_file_name(SID, 0, kind)))
        assert got == [e for e in events if e["event"] == kind]


def test_files_are_private(log_dir):
    old = os.umask(0)
    try:
        writer = store.SessionStore.create(log_dir, SERVER, SID)
        write(writer, session_events(2))
        writer.close(ended=True)
    finally:
        os.umask(old)
    names, directory = files_of(log_dir)
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_nothing_written_leaves_no_files_and_no_lock(log_dir):
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    writer.close(ended=True)
    assert not os.path.exists(os.path.join(log_dir, SERVER, layout.SESSION_FILES))
    assert os.listdir(layout.open_sessions_dir(log_dir, SERVER)) == []


def test_every_batch_is_readable_before_close(log_dir):
    """A recorder that dies after any write leaves every event written so far readable."""
    events = session_events(30)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    _, directory = files_of_after(writer, events[:1], log_dir)
    for n in range(1, 30):
        write(writer, [events[n]])
        writer.flush()   # the writer thread's few milliseconds
        assert read_gz(os.path.join(directory, f"{SID}-0.events.gz")) == events[:n + 1]


def test_batches_that_waited_for_the_writer_go_out_as_one_in_order(log_dir, monkeypatch):
    """The writer thread takes every batch waiting at once: one gzip member per file for all
    of them (its cost goes by how often it runs, not by how many batches came), every event in
    order, in its kind's file too."""
    events = session_events(40)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    _, directory = files_of_after(writer, events[:1], log_dir)
    members = []
    real_member = store.gzip_member
    monkeypatch.setattr(store, "gzip_member", lambda data: members.append(data) or real_member(data))
    with writer._cond:   # the thread cannot take anything while we hold its lock
        for n in range(1, 40, 3):
            writer.write(events[n:n + 3], [encode(e) for e in events[n:n + 3]])
    writer.flush()
    assert read_gz(os.path.join(directory, f"{SID}-0.events.gz")) == events
    disk = [e for e in events if e["event"] == "session.disk"]
    assert read_gz(os.path.join(directory, f"{SID}-0.session.disk-events.gz")) == disk
    # one member for all events, one per kind: not one per batch of three
    assert len(members) == 4
    assert members[0] == b"".join(encode(e) for e in events[1:])
    writer.close(ended=True)


def files_of_after(writer, first, log_dir):
    write(writer, first)
    return files_of(log_dir)


# --- failures -------------------------------------------------------------------------------

def patch_write_all(monkeypatch, write_all):
    """The store writes its index, each GzStream its gzip file: both with files.write_all."""
    for module in (store, gz_stream):
        monkeypatch.setattr(module, "write_all", write_all)


def test_failed_write_is_cut_back_and_the_next_batch_goes_to_a_new_part(log_dir, monkeypatch):
    events = session_events(12)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, events[:4])
    real = store.write_all

    def full_disk(fd, data):
        os.write(fd, data[:len(data) // 2])   # half of it got out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch_write_all(monkeypatch, full_disk)
    write(writer, events[4:8])
    with pytest.raises(EnhrecError) as failure:
        writer.flush()   # reported once written (by the writer thread)
    assert failure.value.unwritten == 4
    message = str(failure.value)
    assert "No space left on device" in message and "free disk space" in message
    assert "\n" not in message
    patch_write_all(monkeypatch, real)
    write(writer, events[8:])
    writer.close(ended=True)
    _, directory = files_of(log_dir)
    # Part 0 holds what was written before the failure, intact; part 1 what came after.
    assert read_gz(os.path.join(directory, f"{SID}-0.events.gz")) == events[:4]
    assert read_gz(os.path.join(directory, f"{SID}-1.events.gz")) == events[8:]
    index = [orjson.loads(x) for x in open(os.path.join(directory, f"{SID}.index"), "rb")]
    assert {"file_name": f"{SID}-1.events.gz", "type": "events", "index": 8} in index
    log = reader.LogDir(log_dir)
    assert [e["ei"] for e in reader.session_events(log, SID)] == [0, 1, 2, 3, 8, 9, 10, 11]


def test_first_batch_fails_at_once_later_ones_at_the_next_write(log_dir, monkeypatch):
    events = session_events(6)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, events[:1])
    real = store.write_all

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch_write_all(monkeypatch, full_disk)
    write(writer, events[1:3])
    with writer._cond:   # until the writer thread has tried them (flush would raise)
        while writer._pending or writer._busy:
            writer._cond.wait()
    patch_write_all(monkeypatch, real)
    with pytest.raises(EnhrecError) as failure:
        write(writer, events[3:])
    assert failure.value.unwritten == 2
    writer.close(ended=True)
    log = reader.LogDir(log_dir)
    assert [e["ei"] for e in reader.session_events(log, SID)] == [0, 3, 4, 5]


def test_failure_of_the_last_batches_keeps_the_lock_for_recovery(log_dir, monkeypatch):
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, session_events(2)[:1])

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch_write_all(monkeypatch, full_disk)
    write(writer, session_events(2)[1:])   # say, session.end
    with pytest.raises(EnhrecError):
        writer.close(ended=True)
    assert os.path.exists(layout.lock_path(log_dir, SERVER, SID))


def test_unwritable_directory_names_the_file_and_the_fix(tmp_path, log_dir):
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    sessions = os.path.join(log_dir, SERVER, "sessions")
    with open(sessions, "w"):
        pass   # a file where the directory must be
    with pytest.raises(EnhrecError) as failure:
        write(writer, session_events(1))
    assert "cannot write the session file" in str(failure.value)
    writer.close(ended=False)


# --- the lock file --------------------------------------------------------------------------

def test_lock_is_held_while_open_and_kept_for_recovery_when_not_ended(log_dir):
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    path = layout.lock_path(log_dir, SERVER, SID)
    assert session_lock.is_live(log_dir, SERVER, SID)
    assert session_lock.OpenLock.try_take(path) is None
    write(writer, session_events(2))
    writer.close(ended=False)
    assert os.path.exists(path) and not session_lock.is_live(log_dir, SERVER, SID)
    taken = session_lock.OpenLock.try_take(path)
    assert taken is not None
    taken.release(ended=True)
    assert not os.path.exists(path)


def test_lock_removed_under_a_waiting_taker_is_not_taken(log_dir):
    lock = session_lock.OpenLock.create(log_dir, SERVER, SID)
    fd = os.open(lock.path, os.O_RDWR)   # a repair that opened it just before the end
    lock.release(ended=True)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert os.fstat(fd).st_nlink == 0   # what try_take checks after locking
    os.close(fd)
    assert session_lock.OpenLock.try_take(lock.path) is None


def test_stale_locks_are_the_unheld_ones_and_old_unnamed_ones_go(log_dir):
    live = session_lock.OpenLock.create(log_dir, SERVER, SID)
    dead = session_lock.OpenLock.create(log_dir, SERVER, OTHER)
    os.close(dead.fd)   # its recorder died
    old = layout.hidden_lock_path(log_dir, SERVER, "01d00000-0000-4000-8000-000000000000")
    young = layout.hidden_lock_path(log_dir, SERVER, "0e000000-0000-4000-8000-000000000000")
    for path in (old, young):
        open(path, "w").close()   # made, but its recorder died before it was named
    os.utime(old, (0, 0))
    stale = list(session_lock.stale_locks(log_dir, SERVER))
    assert [sid for sid, _ in stale] == [OTHER]
    for _, lock in stale:
        lock.release(ended=False)
    assert not os.path.exists(old) and os.path.exists(young)   # the young one may be named yet
    assert session_lock.is_live(log_dir, SERVER, SID)
    assert not session_lock.is_live(log_dir, SERVER, OTHER)
    live.release(ended=True)


# --- recovery -------------------------------------------------------------------------------

@pytest.fixture
def config(tmp_path):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "host_uuid").write_text(SERVER)
    return Config(data_dir=str(data), cgroup_path=str(tmp_path / "cgroup"), nodename="host")


def crashed_session(config, sid, events):
    """Writes `events` the way a recorder does, then dies: the gzip streams unfinished and the
    lock file left behind, unheld."""
    audit = AuditLog(config.log_dir, SERVER)
    writer = store.SessionStore.create(config.log_dir, SERVER, sid)
    for e in events:
        audit.write([encode(e)])
        write(writer, [e])
    audit.close()
    writer.flush()
    for stream in writer._streams.values():
        os.close(stream.fd)   # no trailer: as after SIGKILL
    os.close(writer._index_fd)
    os.close(writer.lock.fd)


def daily_events(config, sid):
    return [e for e, _ in reader.day_events(reader.LogDir(config.log_dir)) if e["sid"] == sid]


CHAIN_FIELDS = ("seq", "prev", "epoch", "mac")


def unchained(events):
    """The events without the chain fields the daily file's writer sealed them with."""
    return [{k: v for k, v in e.items() if k not in CHAIN_FIELDS} for e in events]


def test_check_finds_stale_sessions_and_changes_nothing(config):
    crashed_session(config, SID, session_events(5))
    report = recovery.check(config)
    assert report.stale == [SID]
    assert os.path.exists(layout.lock_path(config.log_dir, SERVER, SID))
    assert all(e["event"] != "session.end" for e in daily_events(config, SID))


def test_repair_ends_a_stale_session_in_both_sinks(config):
    events = session_events(7)
    crashed_session(config, SID, events)
    report = recovery.repair(config)
    assert report.repaired == [SID] and report.errors == []
    for got in (daily_events(config, SID),
                reader.session_events(reader.LogDir(config.log_dir), SID)):
        assert [e["ei"] for e in got] == list(range(8))
        end = got[-1]
        assert end["event"] == "session.end" and end["code"] == "T2004I"
        assert end["incomplete"] is True
        assert end["session_start"] == events[0]["time"]
        assert end["session_stop"] == max(e["time"] for e in events)
        assert (end["login"], end["user"], end["server_id"]) == ("alice", "alice", SERVER)
    assert not os.path.exists(layout.lock_path(config.log_dir, SERVER, SID))
    # The crashed part stays as it was; session.end went to a new part.
    _, directory = files_of(config.log_dir)
    assert read_gz(os.path.join(directory, f"{SID}-0.events.gz")) == events
    again = recovery.repair(config)
    assert again.stale == [] and again.repaired == []
    assert len(daily_events(config, SID)) == 8


def test_repair_keeps_the_ssh_connection_and_cluster_of_the_start(config):
    """A repaired session.end says what the recorder's would have: the SSH connection of its
    session.start, its cluster_name and session_recording (docs/events.md)."""
    events = session_events(3)
    events[0].update({"cluster_name": "main", "session_recording": "off", "proto": "ssh",
                      "addr.remote": "192.0.2.7:51234", "addr.local": "192.0.2.1:22",
                      "server_addr": "192.0.2.1:22", "ssh_key_fingerprint": "SHA256:x"})
    crashed_session(config, SID, events)
    recovery.repair(config)
    end = daily_events(config, SID)[-1]
    assert end["event"] == "session.end"
    assert {k: end[k] for k in ("cluster_name", "session_recording", "proto", "addr.remote",
                                "addr.local", "server_addr")} == {
        "cluster_name": "main", "session_recording": "off", "proto": "ssh",
        "addr.remote": "192.0.2.7:51234", "addr.local": "192.0.2.1:22",
        "server_addr": "192.0.2.1:22"}
    assert "ssh_key_fingerprint" not in end   # a session.start field only


def test_repair_of_a_local_session_gives_the_configured_cluster(config):
    crashed_session(config, SID, session_events(3))
    recovery.repair(config)
    end = daily_events(config, SID)[-1]
    assert end["cluster_name"] == "host" and end["session_recording"] == "off"
    assert not end.keys() & {"proto", "addr.remote", "addr.local", "server_addr"}


def test_repair_takes_the_ei_after_the_daily_log_when_it_has_more(config):
    events = session_events(6)
    crashed_session(config, SID, events[:4])
    audit = AuditLog(config.log_dir, SERVER)
    audit.write([encode(e) for e in events[4:]])   # the store had failed for these
    audit.close()
    recovery.repair(config)
    assert [e["ei"] for e in daily_events(config, SID)] == list(range(7))


def test_live_session_is_never_touched(config, tmp_path):
    writer = store.SessionStore.create(config.log_dir, SERVER, SID)
    write(writer, session_events(3))
    leaf = tmp_path / "cgroup" / "enhrec" / SID
    leaf.mkdir(parents=True)
    held = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)   # what the live recorder's Watchdog holds
    report = recovery.repair(config)
    assert report.stale == [] and report.stale_cgroups == []
    assert leaf.exists()
    writer.close(ended=True)
    os.close(held)


def test_repair_removes_the_stale_sessions_cgroup(config, tmp_path):
    crashed_session(config, SID, session_events(3))
    leaf = tmp_path / "cgroup" / "enhrec" / SID
    leaf.mkdir(parents=True)
    report = recovery.repair(config)
    assert report.cgroups_removed == [str(leaf)]
    assert not leaf.exists()


def test_orphan_cgroups_are_removed_only_after_the_grace_period(config, tmp_path, monkeypatch):
    leaf = tmp_path / "cgroup" / "enhrec" / OTHER
    leaf.mkdir(parents=True)
    report = recovery.repair(config)
    assert leaf.exists() and report.cgroups_removed == []   # may be a session starting now
    monkeypatch.setattr(recovery, "CGROUP_GRACE_SECONDS", 0.0)
    assert recovery.check(config).stale_cgroups == [str(leaf)]
    report = recovery.repair(config)
    assert report.cgroups_removed == [str(leaf)] and not leaf.exists()


def test_session_that_never_wrote_anything_just_loses_its_lock(config):
    lock = session_lock.OpenLock.create(config.log_dir, SERVER, SID)
    os.close(lock.fd)
    report = recovery.repair(config)
    assert report.stale == [SID] and report.repaired == []
    assert not os.path.exists(lock.path)


def test_repair_at_start_never_raises(config, monkeypatch):
    def broken(_config):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(recovery, "repair", broken)
    assert recovery.repair_at_start(config) is None


def test_no_data_dir_yet_is_nothing_to_do(tmp_path):
    config = Config(data_dir=str(tmp_path / "new"), cgroup_path=str(tmp_path / "cg"))
    report = recovery.check(config)
    assert report.stale == [] and report.stale_cgroups == []


# --- midnight -------------------------------------------------------------------------------

def test_midnight_switches_the_day_file_but_not_the_session_files(config):
    """A session crossing UTC midnight: the daily log moves to the new day's file (events.log
    with it), while the session's own files go on."""
    now = [NOON + 12 * 3600 - 1]   # 23:59:59
    audit = AuditLog(config.log_dir, SERVER, clock=lambda: now[0])
    writer = store.SessionStore.create(config.log_dir, SERVER, SID)
    events = session_events(6)
    for n, e in enumerate(events):
        if n == 3:
            now[0] += 2   # 00:00:01 the next day
        audit.write([encode(e)])
        write(writer, [e])
    audit.close()
    writer.close(ended=True)
    server_dir = os.path.join(config.log_dir, SERVER)
    day1 = [orjson.loads(x) for x in open(os.path.join(server_dir, "2024-03-05.00:00:00.log"), "rb")]
    day2 = [orjson.loads(x) for x in open(os.path.join(server_dir, "2024-03-06.00:00:00.log"), "rb")]
    assert [e["ei"] for e in day1] == [0, 1, 2] and [e["ei"] for e in day2] == [3, 4, 5]
    assert os.readlink(os.path.join(config.log_dir, "events.log")) == f"{SERVER}/2024-03-06.00:00:00.log"
    assert [e["ei"] for e in reader.session_events(reader.LogDir(config.log_dir), SID)] == list(range(6))


# --- a full disk leaves a true record (issue 11) ----------------------------------------------

class FullDisk:
    """write_all that fails (ENOSPC, after writing half) for the files whose name contains
    `which`, while `on`."""

    def __init__(self, monkeypatch, which=""):
        self.real = store.write_all
        self.which = which
        self.on = False
        patch_write_all(monkeypatch, self)

    def __call__(self, fd, data):
        if self.on and self.which in os.readlink(f"/proc/self/fd/{fd}"):
            os.write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(fd, data)


def stored_eis(log_dir, stream=layout.ALL_EVENTS):
    names, directory = files_of(log_dir)
    eis = []
    for name in names:
        parsed = layout.parse_stream_file(name)
        if parsed and parsed.stream == stream:
            eis += [e["ei"] for e in read_gz(os.path.join(directory, name))]
    return sorted(eis)


def test_a_batch_that_fails_in_one_file_is_in_none_and_counted_exactly(log_dir, monkeypatch):
    """The disk filled while the kind file was written, not the file of every event: the batch
    is cut back from every file, so each holds the same events and the count is what is missing
    from each."""
    events = session_events(13)   # kinds cycle command, disk, network
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    disk = FullDisk(monkeypatch, which="session.disk")
    write(writer, events[:4])
    disk.on = True
    write(writer, events[4:10])
    with pytest.raises(EnhrecError) as failure:
        writer.flush()
    assert failure.value.unwritten == 6
    disk.on = False
    write(writer, events[10:])
    writer.close(ended=True)
    kept = [0, 1, 2, 3, 10, 11, 12]
    assert stored_eis(log_dir) == kept
    for kind in KINDS:
        assert stored_eis(log_dir, kind) == [e["ei"] for e in events if e["ei"] in kept
                                             and e["event"] == kind]


def test_batches_failing_in_a_row_make_no_empty_parts(log_dir, monkeypatch):
    events = session_events(60)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    disk = FullDisk(monkeypatch)
    write(writer, events[:3])
    writer.flush()
    disk.on = True
    for n in range(3, 50, 2):   # 24 batches while the disk is full
        write(writer, events[n:n + 2])
    with writer._cond:
        while writer._pending or writer._busy:
            writer._cond.wait()
    disk.on = False
    with pytest.raises(EnhrecError) as failure:
        write(writer, events[51:])
    assert failure.value.unwritten == 48
    writer.close(ended=True)
    names, directory = files_of(log_dir)
    parts = [n for n in names if n.endswith(".gz")]
    assert all(os.path.getsize(os.path.join(directory, n)) > 0 for n in parts), parts
    assert len(parts) <= 8, parts   # parts 0 and 1 of each stream, at most
    index = [orjson.loads(x) for x in open(os.path.join(directory, f"{SID}.index"), "rb")]
    assert sorted(i["file_name"] for i in index) == sorted(parts)
    assert stored_eis(log_dir) == [0, 1, 2] + list(range(51, 60))


def test_an_index_line_that_fails_is_cut_back(log_dir, monkeypatch):
    events = session_events(8)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, events[:2])
    disk = FullDisk(monkeypatch, which="events.gz")   # the batch fails: a new part is due
    disk.on = True
    write(writer, events[2:4])
    with pytest.raises(EnhrecError):
        writer.flush()
    disk.which = ".index"                            # and its index line fails next
    write(writer, events[4:6])
    with pytest.raises(EnhrecError):
        writer.flush()
    disk.on = False
    write(writer, events[6:])
    writer.close(ended=True)
    _, directory = files_of(log_dir)
    index = [orjson.loads(x) for x in open(os.path.join(directory, f"{SID}.index"), "rb")]
    assert {"file_name": f"{SID}-1.events.gz", "type": "events", "index": 6} in index
    assert stored_eis(log_dir) == [0, 1, 6, 7]


def test_repair_copies_the_sessions_own_end_where_it_is_missing(config):
    """A session that ended normally while the disk was full: its session.end reached one sink
    only, and its lock stayed. The repair gives the other sink that same session.end, never a
    second, incomplete one."""
    events = session_events(4)
    end = make_event(4, "session.end")
    end.update(exit_status=0, unwritten_events={"session_files": 1})
    crashed_session(config, SID, events)
    audit = AuditLog(config.log_dir, SERVER)
    audit.write([encode(end)])   # the store failed for it
    audit.close()
    report = recovery.repair(config)
    assert report.errors == [] and report.copied == [SID] and report.repaired == []
    daily = daily_events(config, SID)
    stored = reader.session_events(reader.LogDir(config.log_dir), SID)
    for got in (daily, stored):
        assert [e["ei"] for e in got] == list(range(5))
        assert unchained(got[-1:]) == [end]
    assert stored[-1] == daily[-1]   # the daily file's line as sealed, byte for byte
    assert not os.path.exists(layout.lock_path(config.log_dir, SERVER, SID))


def test_repair_copies_the_stored_end_to_the_daily_file(config):
    events = session_events(4) + [make_event(4, "session.end")]
    writer = store.SessionStore.create(config.log_dir, SERVER, SID)
    write(writer, events)
    writer.close(ended=False)      # the daily log failed for session.end: the lock stays
    audit = AuditLog(config.log_dir, SERVER)
    audit.write([encode(e) for e in events[:4]])
    audit.close()
    report = recovery.repair(config)
    assert report.copied == [SID]
    assert unchained(daily_events(config, SID)) == events


def test_a_recorder_that_died_closing_after_its_end_gets_no_second_one(config, monkeypatch):
    """Killed after session.end was in the daily log (the ledger says so) and before its store
    had written it: the watchdog writes no second session.end; the next repair copies the one
    there is into the session files."""
    import contextlib
    from enhrec_wrap.session import ledger, salvage
    monkeypatch.setattr(salvage, "HostLock", contextlib.nullcontext)
    monkeypatch.setattr(salvage.HostPrograms, "open", classmethod(lambda cls, version: None))
    events = session_events(4)
    end = make_event(4, "session.end")
    crashed_session(config, SID, events)
    audit = AuditLog(config.log_dir, SERVER)
    audit.write([encode(end)])
    audit.close()
    lock_path = layout.lock_path(config.log_dir, SERVER, SID)
    state = ledger.State()
    state.next_ei, state.ended = 5, 1
    session = {"sid": SID, "server_id": SERVER, "log_dir": config.log_dir, "lock_path": lock_path,
               "cgroup_id": 0, "version": "none", "idle_unload_seconds": 0, "end_fields": {},
               "envelope": {"cluster_name": "host", **{k: events[0][k] for k in (
                   "sid", "namespace", "server_id", "server_hostname", "login", "user")}}}
    salvage.finish(session, state, salvage.RECORDER_DIED, 0, os.open(lock_path, os.O_RDWR))
    assert [e["ei"] for e in daily_events(config, SID)] == list(range(5))
    assert os.path.exists(lock_path)
    assert recovery.repair(config).copied == [SID]
    stored = reader.session_events(reader.LogDir(config.log_dir), SID)
    assert unchained(stored) == events + [end]
    assert stored[-1] == daily_events(config, SID)[-1]


# --- files removed under the recorder (issue 11) ----------------------------------------------

def test_session_files_removed_under_the_store_are_made_again_and_their_events_counted(log_dir):
    events = session_events(12)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, events[:1])
    write(writer, events[1:5])
    writer.flush()
    import shutil
    shutil.rmtree(os.path.join(log_dir, SERVER, "sessions"))   # a careless cleanup
    write(writer, events[5:9])
    write(writer, events[9:])
    writer.flush()
    assert writer.removed_events() == 5
    writer.close(ended=True)
    assert stored_eis(log_dir) == list(range(5, 12))
    for kind in KINDS:
        assert stored_eis(log_dir, kind) == [e["ei"] for e in events[5:] if e["event"] == kind]
    names, directory = files_of(log_dir)
    index = [orjson.loads(x) for x in open(os.path.join(directory, f"{SID}.index"), "rb")]
    assert sorted(i["file_name"] for i in index) == sorted(n for n in names if n.endswith(".gz"))
    assert {"file_name": f"{SID}-1.events.gz", "type": "events", "index": 5} in index


def test_an_index_removed_alone_is_written_again_whole(log_dir):
    events = session_events(6)
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    write(writer, events[:3])
    writer.flush()
    _, directory = files_of(log_dir)
    os.unlink(os.path.join(directory, f"{SID}.index"))
    write(writer, events[3:])
    writer.close(ended=True)
    assert writer.removed_events() == 0
    index = [orjson.loads(x) for x in open(os.path.join(directory, f"{SID}.index"), "rb")]
    assert len(index) == 4 and {i["index"] for i in index} == {0}
    assert stored_eis(log_dir) == list(range(6))


def test_the_lock_removed_under_the_recorder_is_noticed_and_made_again(log_dir):
    writer = store.SessionStore.create(log_dir, SERVER, SID)
    lock = writer.lock
    assert not lock.gone()
    import shutil
    shutil.rmtree(layout.open_sessions_dir(log_dir, SERVER))
    assert lock.gone()
    old_fd = lock.fd
    writer.renew_lock()
    assert writer.lock.fd != old_fd and not writer.lock.gone()
    assert session_lock.is_live(log_dir, SERVER, SID)
    writer.close(ended=True)
    assert not os.path.exists(layout.lock_path(log_dir, SERVER, SID))


def test_a_big_batch_is_compressed_by_isal_into_a_member_zlib_reads(monkeypatch):
    """Batches from _ISAL_FROM bytes go through ISA-L (much faster), smaller ones through zlib
    (no isal import at a session's start); both are gzip members that zlib and gzip read, one
    after the other in one file."""
    import gzip
    import zlib as real_zlib
    from isal import isal_zlib
    used = []
    monkeypatch.setattr(gz_stream, "_isal_compress", None)
    real_isal = isal_zlib.compress
    monkeypatch.setattr(isal_zlib, "compress", lambda *a: used.append("isal") or real_isal(*a))
    small = b'{"event":"session.disk","path":"/etc/passwd"}\n' * 10
    big = b''.join(b'{"event":"session.disk","path":"/tmp/f%d"}\n' % i
                   for i in range(gz_stream._ISAL_FROM // 30))
    assert len(small) < gz_stream._ISAL_FROM <= len(big)
    first = gz_stream.gzip_member(small)
    assert used == []
    second = gz_stream.gzip_member(big)
    assert used == ["isal"]
    assert real_zlib.decompress(second, 16 + real_zlib.MAX_WBITS) == big
    assert gzip.decompress(first + second) == small + big
