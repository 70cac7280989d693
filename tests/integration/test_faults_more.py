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
