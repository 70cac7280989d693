"""Faults and hostile input (issue 11): each leaves a true record, and the tools say what is missing.

Root and real BPF, as every integration test (conftest.py): these fail, never skip, without them.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import zlib

import pytest

from enhrec_wrap.events import teleport as events
from enhrec_wrap.log import layout, reader

SESSION_TIMEOUT = 120
ENHREC = shlex.split(os.environ.get("ENHREC", "/usr/local/bin/enhrec"))


def run_bytes(recorder, command, timeout=SESSION_TIMEOUT):
    """The wrapper on a command of bytes (names that are not UTF-8); output as bytes."""
    return subprocess.run(recorder.argv(command), env=recorder.environment(), capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def open_locks(recorder):
    found = []
    log_dir = os.path.join(recorder.data_dir, "log")
    for server in os.listdir(log_dir) if os.path.isdir(log_dir) else []:
        directory = os.path.join(log_dir, server, layout.OPEN_SESSIONS)
        if os.path.isdir(directory):
            found += os.listdir(directory)
    return found


# --- 1. names that are not UTF-8 ------------------------------------------------------------

def test_command_and_argument_that_are_not_utf8_run_and_are_recorded(recorder, tmp_path):
    program = os.fsencode(tmp_path) + b"/\xff\xfe-prog"
    shutil.copy("/bin/echo", program)
    result = run_bytes(recorder, [program, b"\xfa\\x"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"\xfa\\x\n"
    assert result.stderr == b""
    ((_, session),) = recorder.sessions().items()
    start = session.start
    assert start["initial_command"] == [events.text(program)[0], "\\xfa\\\\x"]
    assert start["escaped_fields"] == ["initial_command.0", "initial_command.1"]
    assert [events.unescape(a) for a in start["initial_command"]] == [program, b"\xfa\\x"]
    ran = session.command(path=events.text(program)[0])
    assert ran["argv"] == ["\\xfa\\\\x"] and "argv.0" in ran["escaped_fields"]
    assert session.end["exit_status"] == 0
    assert open_locks(recorder) == []


def test_missing_command_that_is_not_utf8_is_one_line_and_leaves_no_lock(recorder):
    result = run_bytes(recorder, [b"/nonexistent/\xff-prog"])
    assert result.returncode == 127
    (line,) = result.stderr.splitlines()
    assert line == b"enhrec-wrap: /nonexistent/\\xff-prog: command not found"
    ((_, session),) = recorder.sessions().items()
    assert session.end["exit_status"] == 127
    assert open_locks(recorder) == []


def test_failure_before_the_start_leaves_no_lock(recorder, tmp_path):
    """The session's lock exists before its cgroup: a set-up that fails after it takes it away
    again, since there is no session to repair."""
    not_a_directory = tmp_path / "cgroup-file"
    not_a_directory.write_text("")
    recorder.configure(f"ssh_service:\n  enhanced_recording:\n    cgroup_path: {not_a_directory}\n")
    result = recorder.run(["true"])
    assert result.returncode == 125
    recorder.one_line(result.stderr)
    assert recorder.lines() == []
    assert open_locks(recorder) == []


# --- 2 and 8. configs that are silly but valid ------------------------------------------------

def test_config_nested_100000_deep_is_one_line_for_both_commands(recorder):
    recorder.configure("ssh_service:\n  labels: " + "[" * 100_000 + "\n")
    result = recorder.run(["true"])
    assert result.returncode == 125
    line = recorder.one_line(result.stderr)
    assert "nested more than" in line and "levels deep" in line
    enhrec = subprocess.run([*ENHREC, "sessions", "--config", recorder.config_path],
                            capture_output=True, text=True, timeout=60)
    assert enhrec.returncode == 2
    line = recorder.one_line(enhrec.stderr)
    assert "nested more than" in line and "internal error" not in line


def test_data_dir_on_proc_says_what_is_wrong(recorder):
    recorder.configure("")
    with open(recorder.config_path, "w") as f:
        f.write("teleport:\n  data_dir: /proc\n")
    result = recorder.run(["true"])
    assert result.returncode == 125
    line = recorder.one_line(result.stderr)
    assert "/proc is on a proc file system, which cannot hold the audit log" in line, line
    assert "make sure" not in line


def test_cgroup_path_that_is_a_regular_file_says_so(recorder, tmp_path):
    regular = tmp_path / "cgroup-file"
    regular.write_text("")
    recorder.configure(f"ssh_service:\n  enhanced_recording:\n    cgroup_path: {regular}\n")
    result = recorder.run(["true"])
    assert result.returncode == 125
    line = recorder.one_line(result.stderr)
    assert f"{regular} is a regular file, not a directory" in line, line
    assert "File exists" not in line
    below = regular / "x"
    recorder.configure(f"ssh_service:\n  enhanced_recording:\n    cgroup_path: {below}\n")
    line = recorder.one_line(recorder.run(["true"]).stderr)
    assert f"{regular} is a regular file, not a directory" in line, line


# --- 5 and 6. damaged session files -------------------------------------------------------------

def enhrec(recorder, *args, timeout=120):
    result = subprocess.run([*ENHREC, args[0], "--config", recorder.config_path, *args[1:]],
                            capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def events_part(recorder, sid, part=0):
    (server,) = [n for n in os.listdir(os.path.join(recorder.data_dir, "log")) if layout.is_uuid(n)]
    return os.path.join(recorder.data_dir, "log", server, layout.SESSION_FILES,
                        layout.stream_file_name(sid, part, layout.ALL_EVENTS))


def test_fifo_in_place_of_a_session_file_is_named_and_never_waited_for(recorder):
    _, session = recorder.record(["/bin/echo", "fifo-test"])
    part = events_part(recorder, session.sid)
    os.unlink(part)
    os.mkfifo(part, 0o600)
    shown = enhrec(recorder, "show", session.sid[:8], timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert f"enhrec: {part}: a FIFO, not a regular file: skipped" in shown.stderr.splitlines()
    assert "/bin/echo fifo-test" in shown.stdout   # from the daily file
    assert recorder.run(["true"]).returncode == 0   # recovery at the next start reads it too


def test_gzip_bomb_in_place_of_a_session_file_costs_no_memory(recorder):
    """1 MB that inflates to 1 GB without a newline."""
    _, session = recorder.record(["/bin/echo", "bomb-test"])
    part = events_part(recorder, session.sid)
    zip_ = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1 << 20)
    with open(part, "wb") as f:
        for _ in range(1024):
            f.write(zip_.compress(zeros))
        f.write(zip_.flush())
    assert os.path.getsize(part) < 2 << 20
    # Through a process of its own, whose only child is enhrec: its peak is enhrec's alone.
    probe = ("import resource, subprocess, sys\n"
             "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
             "print(done.returncode, peak, file=sys.stderr)\n"
             "sys.stdout.write(done.stdout + '\\0' + done.stderr)\n")
    run = subprocess.run(["/usr/bin/python3", "-c", probe, *ENHREC, "show", "--config",
                          recorder.config_path, session.sid[:8]],
                         capture_output=True, text=True, timeout=120)
    status, peak = map(int, run.stderr.split())
    out, err = run.stdout.split("\0")
    assert status == 0, err
    assert "enhrec: skipped 1 line(s) longer than 1 MiB (no event is that long)" in err
    assert "/bin/echo bomb-test" in out
    assert peak < 200 * 1024, f"enhrec show peaked at {peak} KiB"


# --- 3. a full disk ---------------------------------------------------------------------------

def log_of(recorder):
    return reader.LogDir(os.path.join(recorder.data_dir, "log"))


def both_sinks(recorder, sid):
    """(the session's events in the daily files, in its session files)."""
    log = log_of(recorder)
    daily = [e for e, _ in reader.day_events(log) if e.get("sid") == sid]
    return daily, reader.session_events(log, sid)


def the_one_end(recorder, sid):
    """The session.end the session has: the same one in both sinks, never two."""
    daily, stored = both_sinks(recorder, sid)
    ends = [e for e in daily + stored if e["event"] == "session.end"]
    assert len({e["uid"] for e in ends}) == 1 and len(ends) == 2, ends
    return ends[0], daily, stored


def missing_before(end, events):
    """How many of the eis before session.end's are not among `events`."""
    return end["ei"] - len({e["ei"] for e in events if e["ei"] < end["ei"]})


def assert_counts_are_exact(end, daily, stored):
    written = end.get("unwritten_events", {})
    removed = end.get("removed_events", {})
    assert missing_before(end, daily) == written.get("audit_log", 0) + removed.get("audit_log", 0)
    assert missing_before(end, stored) == (written.get("session_files", 0)
                                           + removed.get("session_files", 0))


def assert_no_empty_parts(recorder, sid):
    for server in log_of(recorder).server_ids():
        directory = os.path.join(log_of(recorder).path, server, layout.SESSION_FILES)
        parts = sorted(n for n in os.listdir(directory) if n.startswith(sid) and n.endswith(".gz"))
        assert all(os.path.getsize(os.path.join(directory, n)) > 0 for n in parts), [(n, os.path.getsize(os.path.join(directory, n))) for n in parts]
        with open(os.path.join(directory, layout.index_file_name(sid)), "rb") as f:
            index = sorted(json.loads(x)["file_name"] for x in f)
        assert index == parts


def burst_on_a_full_disk(data_dir, outside, then=""):
    return ("sleep 0.3; "
            f"dd if=/dev/zero of={data_dir}/fill bs=64k 2>/dev/null; "
            f"for i in $(seq 400); do /bin/true; done; {then}"
            f"sleep 0.5; /bin/true; echo survived > {outside}/marker")


@pytest.mark.parametrize("setting", ["close", "continue"])
def test_full_disk_costs_events_but_session_end_counts_them_exactly(recorder, small_disk,
                                                                    tmp_path, setting):
    recorder.configure(f"enhrec:\n  on_log_failure: {setting}\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    then = f"sleep 0.3; rm -f {small_disk}/fill; " if setting == "continue" else ""
    result = recorder.run(["bash", "-c", burst_on_a_full_disk(small_disk, outside, then)])
    assert "No space left on device" in result.stderr
    (sid,) = {e["sid"] for e, _ in reader.day_events(log_of(recorder))}
    if os.path.exists(os.path.join(small_disk, "fill")):
        os.unlink(os.path.join(small_disk, "fill"))
    assert recorder.run(["true"]).returncode == 0   # its repair, if the session needs one
    end, daily, stored = the_one_end(recorder, sid)
    if setting == "continue":
        assert result.returncode == 0 and (outside / "marker").exists()
        assert end.get("incomplete") is None and end["unwritten_events"]["audit_log"] > 0
    else:
        assert result.returncode == 137 and not (outside / "marker").exists()
    if end.get("incomplete"):
        # session.end fit in neither sink (the disk had no room left at all): the repair's is
        # the only one, and what is missing is what the readers say is missing.
        shown = enhrec(recorder, "show", "--json", sid)
        head = json.loads(shown.stdout)["session"]
        union = {e["ei"] for e in daily + stored}
        assert head["missing_events"] == end["ei"] - len(union - {end["ei"]})
    else:
        assert_counts_are_exact(end, daily, stored)
    assert_no_empty_parts(recorder, sid)
    assert open_locks(recorder) == []


# --- 4. the log removed while a session runs ----------------------------------------------------

def wait_for(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture
def paused_session(recorder, tmp_path):
    """Starts a session that runs 20 commands, waits for `go`, runs 20 more and waits for
    `stop`; it is ended whatever the test did."""
    started = []

    def start():
        script = ("for i in $(seq 20); do /bin/true; done; sleep 0.3; "
                  f"touch {tmp_path}/paused; while [ ! -e {tmp_path}/go ]; do sleep 0.05; done; "
                  "for i in $(seq 20); do /bin/echo after; done; sleep 0.3; "
                  f"touch {tmp_path}/resumed; while [ ! -e {tmp_path}/stop ]; do sleep 0.05; done")
        proc = recorder.popen(["bash", "-c", script])
        started.append(proc)
        wait_for(tmp_path / "paused", proc)
        return proc

    yield start
    for name in ("go", "stop"):
        (tmp_path / name).touch()
    for proc in started:
        try:
            proc.communicate(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_log_removed_mid_session_is_made_again_and_the_gap_recorded(recorder, tmp_path,
                                                                  paused_session):
    proc = paused_session()
    (sid,) = {e["sid"] for e, _ in reader.day_events(log_of(recorder))}
    # A careless cleanup job; the paused session still writes (its sleeps), so the recorder
    # may make a directory again under rmtree.
    shutil.rmtree(os.path.join(recorder.data_dir, "log"), ignore_errors=True)
    (tmp_path / "go").touch()
    wait_for(tmp_path / "resumed", proc)
    assert [f"{sid}.lock"] == open_locks(recorder), "the lock was not made again"
    (tmp_path / "stop").touch()
    out, err = proc.communicate(timeout=SESSION_TIMEOUT)
    assert proc.returncode == 0, err
    assert recorder.run(["true"]).returncode == 0   # nothing to repair
    end, daily, stored = the_one_end(recorder, sid)
    assert end.get("incomplete") is None
    removed = end["removed_events"]
    assert removed["audit_log"] > 20 and removed["session_files"] > 20, removed
    assert_counts_are_exact(end, daily, stored)
    assert_no_empty_parts(recorder, sid)
    assert open_locks(recorder) == []
    assert len([e for e in daily if e.get("argv") == ["after"]]) == 20
    # What the readers say: the events missing, never "lost none" or a login shell.
    shown = enhrec(recorder, "show", sid[:8])
    assert shown.returncode == 0, shown.stderr
    assert "lost   none" not in shown.stdout and "login shell" not in shown.stdout
    assert f"{removed['session_files']} event(s) missing" in shown.stdout, shown.stdout
    assert "session.start is missing" in shown.stdout
    listed = enhrec(recorder, "sessions", "--json")
    (row,) = [json.loads(x) for x in listed.stdout.splitlines() if sid in x]
    assert row["missing_events"] == removed["session_files"], row
    searched = enhrec(recorder, "search", "--sid", sid[:8])
    assert f"{removed['session_files']} event(s) of 1 session(s) missing" in searched.stderr, \
        searched.stderr


def test_log_removed_and_then_the_recorder_killed_is_ended_by_the_watchdog(recorder, tmp_path,
                                                                          paused_session):
    """The lock file made again is the one the watchdog ends the session with."""
    proc = paused_session()
    (sid,) = {e["sid"] for e, _ in reader.day_events(log_of(recorder))}
    shutil.rmtree(os.path.join(recorder.data_dir, "log"), ignore_errors=True)
    (tmp_path / "go").touch()
    wait_for(tmp_path / "resumed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=SESSION_TIMEOUT)
    deadline = time.monotonic() + 10
    while open_locks(recorder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_locks(recorder) == [], "the watchdog did not end the session"
    end, daily, stored = the_one_end(recorder, sid)
    assert end["incomplete"] is True and end["end_reason"] == "recorder_died"


# --- 9. a daily file renamed (logrotate) ------------------------------------------------------

def test_renamed_daily_file_makes_no_session_vanish_or_shrink(recorder, tmp_path, paused_session):
    _, before = recorder.record(["bash", "-c", "/bin/true; /bin/true; /bin/true"])
    proc = paused_session()
    (across,) = {e["sid"] for e, _ in reader.day_events(log_of(recorder))} - {before.sid}
    (_, day), = log_of(recorder).day_files()
    os.rename(day, day + ".1")   # what logrotate does (then it may compress the .1)
    (tmp_path / "go").touch()
    wait_for(tmp_path / "resumed", proc)
    (tmp_path / "stop").touch()
    _, err = proc.communicate(timeout=SESSION_TIMEOUT)
    assert proc.returncode == 0, err
    listed = enhrec(recorder, "sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["sid"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == {before.sid, across}
    assert rows[before.sid]["commands"] == len(before.commands) == 4
    stored = reader.session_events(log_of(recorder), across)
    assert rows[across]["commands"] == len([e for e in stored if e["event"] == "session.command"])
    assert rows[across]["commands"] >= 42 and rows[across]["duration_seconds"] > 0.5
    assert rows[across]["missing_events"] == 0 and rows[across]["state"] == "complete"
    end = stored[-1]
    assert end["event"] == "session.end" and "removed_events" not in end
    shown = enhrec(recorder, "show", across[:8])
    assert "lost   none" in shown.stdout and "bash -c" in shown.stdout
