"""Faults in the pure parts: verify on day files it cannot trust to be what they seem (a line with
no end, a FIFO), the refusal of special files where the log writes."""

import os

import pytest

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.inspect import verify
from enhrec_wrap.log import chainstate, files
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.file_lines import MAX_LINE_BYTES

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
DAY = "2024-03-05.00:00:00.log"
NOON = 1709640000   # 2024-03-05 12:00 UTC


@pytest.fixture
def host(tmp_path):
    """A host's day file of 6 chained lines (two batches), and its directory."""
    log_dir = str(tmp_path / "data" / "log")
    os.makedirs(log_dir)
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    for batch in range(2):
        log.write([b'{"event":"session.command","ei":%d}\n' % (batch * 3 + i) for i in range(3)])
    log.close()
    return os.path.join(log_dir, SID)


def test_verify_reads_past_a_huge_line_in_pieces_and_names_it(host, monkeypatch):
    """A line of 3 MiB (a gzip bomb's kind, in a day file) was read whole into memory."""
    path = os.path.join(host, DAY)
    with open(path, "rb") as f:
        lines = f.readlines()
    with open(path, "wb") as f:
        f.write(b"".join(lines[:3]) + b"x" * (3 * MAX_LINE_BYTES) + b"\n" + b"".join(lines[3:]))
    read = []
    real = verify._lines

    def watched(f):
        for line, length in real(f):
            read.append(len(line) if line is not None else 0)
            yield line, length

    monkeypatch.setattr(verify, "_lines", watched)
    report = verify.verify_host(host, None)
    assert not report.intact and report.lines == 6
    (problem,) = report.problems
    assert problem.kind == "changed" and "line 4 is not a chained line" in problem.detail
    assert max(read) <= MAX_LINE_BYTES + 1


def test_verify_a_huge_unfinished_last_line_is_still_being_written(host):
    with open(os.path.join(host, DAY), "ab") as f:
        f.write(b"y" * (2 * MAX_LINE_BYTES))
    report = verify.verify_host(host, None)
    assert report.intact and report.lines == 6 and report.incomplete == [DAY]


def test_verify_names_a_fifo_in_place_of_a_day_file(host):
    path = os.path.join(host, DAY)
    os.unlink(path)
    os.mkfifo(path, 0o600)
    report = verify.verify_host(host, None)   # would wait for a writer, forever
    (problem,) = report.problems
    assert problem.kind == "unreadable" and f"{path} is a FIFO, not a regular file" in problem.detail


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY | os.O_APPEND, os.O_RDWR])
def test_open_regular_refuses_a_fifo_for_any_access_without_waiting(tmp_path, flags):
    path = str(tmp_path / "f")
    os.mkfifo(path, 0o600)
    with pytest.raises(files.NotRegularFile) as caught:
        files.open_regular(path, flags)
    assert str(caught.value) == f"{path} is a FIFO, not a regular file"
    message = str(files.error("cannot write the audit log x", caught.value, str(tmp_path)))
    assert message.endswith(f"{path} is a FIFO, not a regular file: move it away; the audit log "
                            "is regular files only")


def test_open_regular_gives_a_blocking_fd_of_a_regular_file(tmp_path):
    import fcntl
    fd = files.open_regular(str(tmp_path / "new"), os.O_WRONLY | os.O_CREAT)
    try:
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        os.close(fd)


def test_a_chain_state_that_is_a_fifo_is_refused_with_the_fix(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.mkfifo(data_dir / chainstate.STATE_FILE, 0o600)
    with pytest.raises(EnhrecError) as caught:
        chainstate.read_key(str(data_dir), SID)
    assert "a FIFO, not a regular file: it holds the chain key" in str(caught.value)


# --- the session files behind the daily log when the recorder died ------------------------------

def test_salvage_gives_the_session_files_what_the_daily_log_has_after_their_last_event(tmp_path):
    """The store's writer thread is milliseconds behind the daily log: a recorder killed then
    left 512 events of an open loop in the daily log only (1 kill in 4 here), and the session
    files lacked them with no count. The watchdog's salvage writes them there first. (On the
    real clock: it looks for them at the daily log's end, today's file.)"""
    import orjson
    from enhrec_wrap.events import teleport as events
    from enhrec_wrap.log import layout, reader, store
    from enhrec_wrap.session import salvage
    server = "5a1f0e2d-1111-4222-8333-444455556666"
    (tmp_path / "data").mkdir()
    log_dir = str(tmp_path / "data" / "log")
    factory = events.EventFactory(SID, server, "host", "alice", "alice", "host")
    made = [factory.make(events.SESSION_START, initial_command=[])]
    made += [factory.make(events.SESSION_COMMAND, argv=[str(i)]) for i in range(14)]
    log = AuditLog(log_dir, server)
    sealed = log.write([events.encode(e) for e in made])
    log.close()
    writer = store.SessionStore.create(log_dir, server, SID)
    writer.write(made[:10], sealed[:10])   # the writer thread got this far
    writer.close(ended=False)
    session = {"sid": SID, "server_id": server, "log_dir": log_dir,
               "end_fields": {"session_start": made[0]["time"]}}
    end = factory.make(events.SESSION_END, incomplete=True)
    salvage._write(session, [end], catch_up=True)
    stored = reader.session_lines(reader.LogDir(log_dir), SID)
    assert [e["ei"] for e, _ in stored] == list(range(16))
    daily = {e["ei"]: line for e, line in reader.day_events(reader.LogDir(log_dir))}
    assert all(line == daily[e["ei"]] for e, line in stored)   # the same sealed bytes
    assert orjson.loads(stored[-1][1])["event"] == "session.end"
