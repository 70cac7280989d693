"""Faults and hostile input (issue 11): each leaves a true record, and the tools say what is missing.

Root and real BPF, as every integration test (conftest.py): these fail, never skip, without them.
"""

import json
import os
import shlex
import subprocess

import pytest

from enhrec_wrap.events import teleport as events
from enhrec_wrap.log import layout

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
    with open(program, "wb") as f:
        f.write(b"#!/bin/sh\necho \"ran $1\"\n")
    os.chmod(program, 0o755)
    result = run_bytes(recorder, [program, b"\xfa\\x"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ran \xfa\\x\n"
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
    import resource
    import zlib
    _, session = recorder.record(["/bin/echo", "bomb-test"])
    part = events_part(recorder, session.sid)
    zip_ = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"0" * (1 << 20)
    with open(part, "wb") as f:
        for _ in range(1024):
            f.write(zip_.compress(zeros))
        f.write(zip_.flush())
    assert os.path.getsize(part) < 2 << 20
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    shown = enhrec(recorder, "show", session.sid[:8])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert shown.returncode == 0, shown.stderr
    assert "enhrec: skipped 1 line(s) longer than 1 MiB (no event is that long)" in shown.stderr
    assert "/bin/echo bomb-test" in shown.stdout
    assert max(peak, before) < 200 * 1024, f"enhrec show peaked at {peak} KiB"
