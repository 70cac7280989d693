"""More faults of issue 11's and 8's kinds: special files planted in the log, low open-file
limits, a start that reaches one sink only. Each fails closed with one line, and the log tells
the truth afterwards.

Root and real BPF, as every integration test (conftest.py): these fail, never skip, without them.
"""

import glob
import json
import os
import resource
import shlex
import signal
import subprocess

import pytest

from enhrec_wrap.log import layout, reader

SESSION_TIMEOUT = 60
ENHREC = shlex.split(os.environ.get("ENHREC", "/usr/local/bin/enhrec"))


def server_dir(recorder):
    (path,) = glob.glob(os.path.join(recorder.data_dir, "log", "*-*-*-*-*"))
    return path


def day_file(recorder):
    (path,) = glob.glob(os.path.join(server_dir(recorder), "*.log"))
    return path


def enhrec(recorder, *args, timeout=SESSION_TIMEOUT):
    result = subprocess.run([*ENHREC, args[0], "--config", recorder.config_path, *args[1:]],
                            capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def replace_by_fifo(path):
    os.unlink(path)
    os.mkfifo(path, 0o600)


# --- special files where a file of the log belongs ----------------------------------------------

@pytest.mark.parametrize("which", ["day file", "host_uuid"])
def test_a_fifo_planted_in_the_log_is_refused_at_once_with_one_line(recorder, which):
    """Opening a FIFO waits for its other end: the start hung forever (the login with it)."""
    recorder.record(["/bin/true"])
    path = day_file(recorder) if which == "day file" else os.path.join(recorder.data_dir,
                                                                         layout.HOST_UUID)
    replace_by_fifo(path)
    result = recorder.run(["/bin/echo", "ran"], timeout=SESSION_TIMEOUT)
    assert result.returncode == 125
    line = recorder.one_line(result.stderr)
    assert f"{path} is a FIFO, not a regular file: move it away" in line, line
    assert result.stdout == ""


def test_a_device_planted_as_the_day_file_is_refused(recorder):
    recorder.record(["/bin/true"])
    path = day_file(recorder)
    os.unlink(path)
    os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))   # a /dev/null of its own
    result = recorder.run(["/bin/echo", "ran"])
    assert result.returncode == 125 and result.stdout == ""
    assert f"{path} is a character device, not a regular file" in recorder.one_line(result.stderr)


def test_verify_names_a_fifo_day_file_and_never_waits_for_it(recorder):
    recorder.record(["/bin/true"])
    path = day_file(recorder)
    replace_by_fifo(path)
    result = enhrec(recorder, "verify", timeout=30)
    assert result.returncode == 1
    assert f"{os.path.basename(path)}: {path} is a FIFO, not a regular file" in result.stdout


# --- open-file limits ----------------------------------------------------------------------------

def with_open_files(soft, hard):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("soft", [16, 150])
def test_a_low_open_file_limit_still_records_and_the_session_keeps_it(recorder, soft):
    """A start holds ~60 fds, and the watchdog's fds were placed at fixed numbers near 200:
    under `ulimit -Sn 150` every start failed with "internal error: ... Bad file descriptor"."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    result, session = recorder.record(["/bin/sh", "-c", "ulimit -Sn; /bin/echo recorded"],
                                      preexec_fn=with_open_files(soft, hard))
    assert result.stdout.split() == [str(soft), "recorded"]
    assert session.command(argv=["recorded"])
    assert session.end["exit_status"] == 0


def test_an_open_file_limit_too_low_to_record_is_one_clear_line(recorder):
    result = recorder.run(["/bin/echo", "ran"], preexec_fn=with_open_files(10, 10))
    assert result.returncode == 125 and result.stdout == ""
    line = recorder.one_line(result.stderr)
    assert "internal error" not in line and "open-file limit" in line, line


# --- a session.start that reaches the daily file only ------------------------------------------

def ends_by_sid(recorder):
    log = reader.LogDir(os.path.join(recorder.data_dir, "log"))
    ends = {}
    for event, _ in reader.day_events(log):
        ends.setdefault(event["sid"], []).append(event)
    return ends


def assert_refused_sessions_say_so(recorder, refused_runs):
    """Every session whose start failed has one session.end, which says it never ran."""
    sessions = ends_by_sid(recorder)
    refused = {sid: events for sid, events in sessions.items()
               if not any(e["event"] == "session.command" for e in events)}
    assert len(refused) <= refused_runs
    for sid, events in refused.items():
        (end,) = [e for e in events if e["event"] == "session.end"]
        assert end["end_reason"] == "not_started", end
        assert "nothing was run" in end["incomplete_reason"], end
        assert not os.listdir(os.path.join(server_dir(recorder), layout.OPEN_SESSIONS))


def test_session_files_refusing_session_start_is_not_called_a_crash(recorder):
    """The daily file took session.start, the session files could not: nothing ran (exit 125),
    and the next start's repair said "the recorder stopped without ending the session"."""
    recorder.record(["/bin/true"])
    sessions = os.path.join(server_dir(recorder), layout.SESSION_FILES)
    os.rename(sessions, sessions + ".moved")
    with open(sessions, "w"):
        pass   # a file where the directory belongs
    result = recorder.run(["/bin/echo", "ran"])
    assert result.returncode == 125 and result.stdout == ""
    assert f"{sessions} is a regular file, not a directory" in recorder.one_line(result.stderr)
    os.unlink(sessions)
    os.rename(sessions + ".moved", sessions)
    assert recorder.run(["/bin/true"]).returncode == 0   # its repair
    assert_refused_sessions_say_so(recorder, 1)
    shown = enhrec(recorder, "sessions", "--json")
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 3


@pytest.fixture
def few_inodes(recorder):
    """The test's data_dir on a tmpfs of 64 inodes."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64,mode=0700", "tmpfs",
                    recorder.data_dir], check=True)
    try:
        yield recorder.data_dir
    finally:
        subprocess.run(["umount", "-l", recorder.data_dir], check=False)


def test_no_inode_left_at_each_step_of_the_start_fails_closed_and_truthfully(recorder, few_inodes):
    """With 1 to 6 inodes free, the start fails at the lock, the day file or one of the four
    session files: each time one line and exit 125 (or a recorded session), never a traceback,
    and afterwards no session that never ran looks like one that crashed."""
    recorder.record(["/bin/true"])
    filler = os.path.join(few_inodes, "fill")
    os.mkdir(filler)
    refused = 0
    for free in range(1, 7):
        n = 0
        while True:
            try:
                open(os.path.join(filler, str(n)), "w").close()
            except OSError:
                break
            n += 1
        for i in range(free):
            os.unlink(os.path.join(filler, str(n - 1 - i)))
        result = recorder.run(["/bin/echo", "ran"])
        assert "Traceback" not in result.stderr
        if result.returncode == 125:
            refused += 1
            assert result.stdout == "" and "No space left" in recorder.one_line(result.stderr)
        else:
            assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
        for name in os.listdir(filler):
            os.unlink(os.path.join(filler, name))
    assert refused
    assert recorder.run(["/bin/true"]).returncode == 0   # the repairs
    assert_refused_sessions_say_so(recorder, refused)


# --- a writer stopped while it holds the chain's lock --------------------------------------------

def test_a_start_waits_for_a_stopped_lock_holder_a_bounded_time_and_says_who(recorder):
    """A recorder stopped (SIGSTOP) in the middle of its batch holds the chain state's lock; every
    start on the host waited for it, forever and without a word. Here flock(1) holds it, for
    longer than the test waits."""
    import time
    recorder.record(["/bin/true"])
    state = os.path.join(recorder.data_dir, layout.CHAIN_STATE)
    holder = subprocess.Popen(["flock", "-x", state, "sleep", "40"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not any(f" {holder.pid} " in x for x in open("/proc/locks")):
            assert time.monotonic() < deadline, "flock did not take the lock"
            time.sleep(0.02)
        began = time.monotonic()
        result = recorder.run(["/bin/echo", "ran"], timeout=30)
        waited = time.monotonic() - began
    finally:
        os.killpg(holder.pid, signal.SIGKILL)   # flock and its sleep, which shares the lock
        holder.wait()
    assert result.returncode == 125 and result.stdout == ""
    line = recorder.one_line(result.stderr)
    assert f"pid {holder.pid} has held the lock of {state} for 10 s" in line, line
    assert 9 < waited < 30
    assert not os.listdir(os.path.join(server_dir(recorder), layout.OPEN_SESSIONS))
    assert recorder.run(["/bin/true"]).returncode == 0   # and the next one goes on
