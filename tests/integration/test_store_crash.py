"""The per-session files after real sessions, concurrency, a recorder killed with SIGKILL, a
full disk (on_log_failure), and a session crossing UTC midnight. Root and real BPF, as every
integration test (see conftest.py: these fail, never skip, without them)."""

import calendar
import functools
import glob
import gzip
import json
import os
import signal
import stat
import time

import pytest
from host_state import registered_anywhere, wait_until

from enhrec_wrap.log import reader
from enhrec_wrap.log import layout

SESSION_TIMEOUT = 120


def server_dir(recorder):
    (path,) = glob.glob(os.path.join(recorder.data_dir, "log", "*-*-*-*-*"))
    return path


def session_files(recorder, sid):
    directory = os.path.join(server_dir(recorder), layout.SESSION_FILES)
    return directory, sorted(n for n in os.listdir(directory) if n.startswith(sid))


def gz_events(path):
    with gzip.open(path) as f:   # complete gzip: a normal end writes the trailer
        return [json.loads(x) for x in f]


def open_locks(recorder):
    directory = os.path.join(server_dir(recorder), layout.OPEN_SESSIONS)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def wait_for_file(path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and open(path).read().strip():
            return open(path).read().strip()
        time.sleep(0.05)
    pytest.fail(f"{path} did not appear within {timeout}s")


def dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- the layout -----------------------------------------------------------------------------

def test_layout_after_a_real_session(recorder):
    _, session = recorder.record(["bash", "-c", "cat /etc/hostname >/dev/null; "
                                  "exec 3<>/dev/tcp/127.0.0.1/9 || true"])
    sid = session.sid
    directory, names = session_files(recorder, sid)
    assert names == sorted([f"{sid}.index", f"{sid}-0.events.gz",
                            f"{sid}-0.session.command-events.gz", f"{sid}-0.session.disk-events.gz",
                            f"{sid}-0.session.network-events.gz"])
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    index = [json.loads(x) for x in open(os.path.join(directory, f"{sid}.index"))]
    assert sorted((i["type"], i["file_name"], i["index"]) for i in index) == [
        ("events", f"{sid}-0.events.gz", 0),
        ("session.command", f"{sid}-0.session.command-events.gz", 0),
        ("session.disk", f"{sid}-0.session.disk-events.gz", 0),
        ("session.network", f"{sid}-0.session.network-events.gz", 0)]
    # The session's file holds exactly what the daily log holds for it, line for line.
    stored = gz_events(os.path.join(directory, f"{sid}-0.events.gz"))
    assert stored == session.events
    for kind in ("session.command", "session.disk", "session.network"):
        got = gz_events(os.path.join(directory, layout.stream_file_name(sid, 0, kind)))
        assert got == session.of(kind) and got
    assert open_locks(recorder) == []   # ended: nothing for recovery


# --- concurrency ----------------------------------------------------------------------------

def test_eight_sessions_of_200_execs_at_once(recorder):
    script = "for i in $(seq 200); do /bin/true; done"
    wrappers = [recorder.popen(["bash", "-c", script]) for _ in range(8)]
    for w in wrappers:
        out, err = w.communicate(timeout=SESSION_TIMEOUT)
        assert w.returncode == 0, err
    day_files = glob.glob(os.path.join(server_dir(recorder), "*.log"))
    lines = b"".join(open(p, "rb").read() for p in day_files).splitlines()
    parsed = [json.loads(x) for x in lines]   # every line is valid JSON
    sessions = {}
    for e in parsed:
        sessions.setdefault(e["sid"], []).append(e)
    assert len(sessions) == 8
    for sid, events in sessions.items():
        events.sort(key=lambda e: e["ei"])
        assert [e["ei"] for e in events] == list(range(len(events))), "an ei is missing or twice"
        start, end = events[0], events[-1]
        assert (start["event"], end["event"]) == ("session.start", "session.end")
        trues = [e for e in events if e["event"] == "session.command" and e["path"] == "/bin/true"]
        assert len(trues) == 200 and all(e["return_code"] == 0 for e in trues)
        assert end["lost_events"] == {"command": 0, "disk": 0, "network": 0}
        kernel = [e for e in events if "cgroup_id" in e and e["event"] != "session.start"]
        assert all(e["cgroup_id"] == start["cgroup_id"] for e in kernel), "an event in the wrong session"
        directory, _ = session_files(recorder, sid)
        assert gz_events(os.path.join(directory, f"{sid}-0.events.gz")) == events


# --- the recorder killed --------------------------------------------------------------------

def test_sigkill_of_the_recorder(recorder, tmp_path):
    """The watchdog kills the session at once and writes its session.end itself, numbered after
    the last event, in both sinks; the lock file and the cgroup go. A live session beside it is
    never touched."""
    stop = tmp_path / "stop"
    live = recorder.popen(["bash", "-c", f"echo $ENHREC_SESSION_ID > {tmp_path}/live; "
                           f"while [ ! -e {stop} ]; do sleep 0.1; done"])
    victim = recorder.popen(["bash", "-c", f"echo $ENHREC_SESSION_ID > {tmp_path}/victim; "
                             "sleep 1000 & sleep 1000"])
    try:
        live_sid = wait_for_file(tmp_path / "live")
        sid = wait_for_file(tmp_path / "victim")
        leaf = os.path.join(recorder.cgroup_sessions, sid)
        live_leaf = os.path.join(recorder.cgroup_sessions, live_sid)
        wait_until(lambda: len(open(os.path.join(leaf, "cgroup.procs")).read().split()) == 3,
                   10, "bash and its two sleeps did not show up in the cgroup")
        pids = [int(p) for p in open(os.path.join(leaf, "cgroup.procs")).read().split()]
        recorder.wait_for(lambda e: e.get("sid") == sid and e.get("argv") == ["1000"],
                          what="the victim's sleep")

        victim.kill()   # SIGKILL: no chance to clean up
        _, err = victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        wait_until(lambda: all(dead(p) for p in pids), 5, "the session's processes did not die")
        assert "the recorder stopped, so the session was ended" in err
        wait_until(lambda: f"{sid}.lock" not in open_locks(recorder), 10,
                   "the watchdog did not end the session")
        session = recorder.sessions()[sid]
        end = session.end
        assert end["incomplete"] is True and end["end_reason"] == "recorder_died"
        assert session.events[-1] is end
        assert [e["ei"] for e in session.events] == list(range(len(session.events)))
        assert end["session_start"] == session.start["time"]
        assert end["killed_processes"] == 3
        assert end["lost_events"] == {"command": 0, "disk": 0, "network": 0}
        assert not os.path.exists(leaf)
        stored = reader.session_events(reader.LogDir(os.path.join(recorder.data_dir, "log")), sid)
        assert stored[-1]["uid"] == end["uid"]

        after = recorder.run(["true"])   # the next start finds nothing to repair
        assert after.returncode == 0, after.stderr
        assert len(recorder.sessions()[sid].of("session.end")) == 1

        # The live session was never touched.
        assert os.path.isdir(live_leaf) and live.poll() is None
        assert f"{live_sid}.lock" in open_locks(recorder)
    finally:
        stop.touch()
        live.communicate(timeout=30)
        if victim.poll() is None:
            victim.kill()
    assert live.returncode == 0
    live_session = recorder.sessions()[live_sid]
    assert live_session.end.get("incomplete") is None


def test_sigkill_of_recorder_and_watchdog_is_repaired_at_the_next_start(recorder, tmp_path):
    """Both gone: the session's processes run on until the next start's recovery, which kills
    them, ends the session (incomplete) and takes its rings out of the kernel's maps."""
    victim = recorder.popen(["bash", "-c", f"echo $ENHREC_SESSION_ID > {tmp_path}/victim; "
                             "sleep 1000"])
    sid = wait_for_file(tmp_path / "victim")
    leaf = os.path.join(recorder.cgroup_sessions, sid)
    recorder.wait_for(lambda e: e.get("sid") == sid and e.get("argv") == ["1000"],
                      what="the victim's sleep")
    cgroup_id = os.stat(leaf).st_ino
    recorder.kill_recorder_and_watchdog(victim.pid)
    victim.wait(timeout=30)   # its sleep holds the pipes until the recovery kills it
    assert f"{sid}.lock" in open_locks(recorder)
    assert cgroup_id in registered_anywhere()
    after = recorder.run(["true"])
    assert after.returncode == 0, after.stderr
    end = recorder.sessions()[sid].end
    assert end["incomplete"] is True
    assert not os.path.exists(leaf)
    wait_until(lambda: cgroup_id not in registered_anywhere(), 5,
               "the dead session's rings are still registered")


def test_watchdog_is_outside_the_session_and_root(recorder, test_user):
    # The session's own user tries to kill every watchdog: it must not be able to.
    script = ("echo $ENHREC_SESSION_ID; sleep 1; "
              "for p in $(pgrep enhrec-watchdog); do kill -9 $p; done; sleep 0.5; true")
    proc = recorder.popen(["bash", "-c", script], options=("--user", test_user.pw_name))
    sid = proc.stdout.readline().strip()
    leaf = os.path.join(recorder.cgroup_sessions, sid)
    watchdog = recorder.watchdog_of(proc.pid)
    assert os.stat(f"/proc/{watchdog}").st_uid == 0
    assert str(watchdog) not in open(os.path.join(leaf, "cgroup.procs")).read().split()
    assert os.getsid(watchdog) != os.getsid(proc.pid)   # no terminal signal reaches it
    out, err = proc.communicate(timeout=SESSION_TIMEOUT)
    assert proc.returncode == 0, err
    assert "Operation not permitted" in err   # it tried
    assert "recorder stopped" not in err and "watchdog died" not in err
    wait_until(lambda: dead(watchdog), 5, "the watchdog did not exit at the normal end")


# --- a full disk ----------------------------------------------------------------------------

def fill_and_go_on(data_dir, outside, then=""):
    return ("sleep 0.3; "
            f"dd if=/dev/zero of={data_dir}/fill bs=64k 2>/dev/null; "
            f"for i in $(seq 20); do /bin/true; done; {then}"
            f"sleep 1; /bin/true; echo survived > {outside}/marker")


def all_lines_parse(recorder):
    for path in glob.glob(os.path.join(server_dir(recorder), "*.log")):
        for line in open(path, "rb"):
            json.loads(line)
    for path in glob.glob(os.path.join(server_dir(recorder), layout.SESSION_FILES, "*.gz")):
        list(reader.events_of(reader.gz_lines(path)))


def test_full_disk_ends_the_session_by_default(recorder, small_disk, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    result = recorder.run(["bash", "-c", fill_and_go_on(small_disk, outside)])
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("enhrec-wrap:")]
    assert "No space left on device" in line and "free disk space" in line
    assert line.endswith("the session is ended (on_log_failure: close)")
    assert not (outside / "marker").exists(), "the session went on after the log failed"
    all_lines_parse(recorder)   # nothing already written was damaged
    (sid,) = recorder.sessions()
    os.unlink(os.path.join(small_disk, "fill"))
    assert recorder.run(["true"]).returncode == 0   # the next start ends it, if it had no end
    end = recorder.sessions()[sid].end
    # session.end may have fit in what the cut-back batches freed; if not, it was repaired.
    assert end.get("incomplete") is True or (end["unwritten_events"]["audit_log"] > 0
                                             and end["exit_status"] == 128 + signal.SIGKILL), end


def test_full_disk_with_continue_keeps_the_session_and_counts(recorder, small_disk, tmp_path):
    recorder.configure("enhrec:\n  on_log_failure: continue\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    # The pause lets the recorder try (and fail) to write the loop's events before there is room
    # again: without it the rm could come first, and nothing would fail.
    script = fill_and_go_on(small_disk, outside, then=f"sleep 0.3; rm -f {small_disk}/fill; ")
    result = recorder.run(["bash", "-c", script])
    assert result.returncode == 0, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("enhrec-wrap:")]
    assert "No space left on device" in line and "(on_log_failure: continue)" in line
    assert (outside / "marker").exists()
    all_lines_parse(recorder)
    (session,) = recorder.sessions().values()
    assert session.end["unwritten_events"]["audit_log"] > 0
    assert session.end.get("incomplete") is None
    assert session.commands_with(path="/bin/true")   # recording went on once there was room


# --- midnight -------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # BCC's own, in this process
def test_session_crossing_midnight_switches_the_day_file(recorder, tmp_path, monkeypatch):
    """A real session (in this process, so that the audit log's clock can be set): the clock
    says 23:59:59 until the session touches a marker, then 00:00:01 the next day."""
    from enhrec_wrap.session import lifecycle as session_module
    from enhrec_wrap.config import load_config
    from enhrec_wrap.host.privileges import account_by_uid
    from enhrec_wrap.session.watchdog import Watchdog

    marker = tmp_path / "midnight"
    before = calendar.timegm((2031, 1, 1, 23, 59, 59))

    def clock():
        return before + (2 if marker.exists() else 0)

    monkeypatch.setattr(session_module, "Session", functools.partial(session_module.Session, clock=clock))
    request = session_module.Request(
        account=account_by_uid(0), user="root", interactive=False,
        command=["bash", "-c", f"/bin/true; sleep 0.3; touch {marker}; sleep 0.3; /bin/echo after"])
    status = session_module.run(load_config(recorder.config_path), request, Watchdog())
    assert status == 0
    directory = server_dir(recorder)
    day1 = [json.loads(x) for x in open(os.path.join(directory, "2031-01-01.00:00:00.log"), "rb")]
    day2 = [json.loads(x) for x in open(os.path.join(directory, "2031-01-02.00:00:00.log"), "rb")]
    assert day1[0]["event"] == "session.start" and day2[-1]["event"] == "session.end"
    assert any(e.get("path") == "/bin/echo" for e in day2)
    assert not any(e.get("path") == "/bin/echo" for e in day1)
    assert [e["ei"] for e in day1 + day2] == list(range(len(day1) + len(day2)))
    link = os.readlink(os.path.join(recorder.data_dir, "log", "events.log"))
    assert link.endswith("/2031-01-02.00:00:00.log")
    sid = day1[0]["sid"]
    stored_dir, _ = session_files(recorder, sid)
    assert gz_events(os.path.join(stored_dir, f"{sid}-0.events.gz")) == day1 + day2
