"""A client that vanishes mid-session (kill -9, so it says nothing to sshd): the session's
processes are stopped and session.end is written within 5 seconds, with a terminal or without."""

import os
import select
import signal
import subprocess
import time

import pytest

END_WITHIN = 5.0


@pytest.mark.parametrize("tty", [False, True], ids=["no-terminal", "terminal"])
def test_killed_client_ends_the_session(host, tty):
    mark = host.mark()
    # `trap '' HUP`: even a session that ignores the hangup must not outlive its client.
    command = "trap '' HUP; echo started; sleep 30; echo survived"
    client = subprocess.Popen(host.ssh_argv(command, tty=tty), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = _read_line(client, timeout=60)
        assert b"started" in line, f"the session did not start: {line!r}"
        start = host.events()[mark:]
        sid = next(e["sid"] for e in start if e["event"] == "session.start")
        assert _session_pids(sid), "no process in the session's cgroup"
        client.kill()
        killed_at = time.monotonic()
        client.wait()

        end = _wait(lambda: _end_of(host, mark, sid), END_WITHIN)
        assert end is not None, f"no session.end within {END_WITHIN}s of the client's death"
        assert end["exit_status"] in (128 + signal.SIGHUP, 128 + signal.SIGKILL)
        assert end["interactive"] is tty
        remaining = END_WITHIN - (time.monotonic() - killed_at)
        assert _wait(lambda: not host.user_pids(), max(remaining, 0.5)), (
            f"processes of {host.user.pw_name} still running: {host.user_pids()}")
        assert not os.path.exists(f"/cgroup2/enhrec/{sid}"), "the session cgroup is still there"
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    session = host.session_since(mark)
    assert [e["argv"] for e in session.commands_named("sleep")] == [["30"]]


def _read_line(proc, timeout):
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data


def _session_pids(sid):
    try:
        with open(f"/cgroup2/enhrec/{sid}/cgroup.procs") as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _end_of(host, mark, sid):
    return next((e for e in host.events()[mark:]
                 if e["sid"] == sid and e["event"] == "session.end"), None)


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
