"""Backpressure (session/backpressure.py): a session whose records come faster than its recorder
writes them is paused, not robbed of its records. Real sessions, real BPF, a static C open loop
at full speed (several times faster than any recorder writes), with the default config."""

import os
import signal
import subprocess
import time

import pytest

from enhrec_wrap.host import priority

OPEN_LOOP = r'''
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    long n = atol(argv[1]);
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    return 0;
}
'''
SESSION_TIMEOUT = 120


@pytest.fixture(scope="module")
def open_loop(tmp_path_factory):
    directory = tmp_path_factory.mktemp("backpressure")
    source = directory / "open_loop.c"
    source.write_text(OPEN_LOOP)
    binary = directory / "open_loop"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(source)], check=True)
    os.chmod(directory, 0o755)
    return str(binary)


def _opens_of(session, path):
    return [e for e in session.disks if e["path"] == path]


def test_full_speed_open_loops_on_every_cpu_are_recorded_whole(recorder, tmp_path, open_loop):
    """200,000 opens from one full-speed loop per CPU at once: each one logged, nothing lost,
    and the session was paused for its recorder (it cannot write them as fast as they come)."""
    marker = tmp_path / "marker"
    marker.write_text("")
    os.chmod(tmp_path, 0o755)
    cpus = os.cpu_count()
    loops = " & ".join(f"{open_loop} {200000 // cpus} {marker}" for _ in range(cpus))
    _, session = recorder.record(["/bin/bash", "-c", f"{loops} & wait"])
    end = session.end
    assert end["lost_events"] == {"command": 0, "disk": 0, "network": 0}, end
    assert len(_opens_of(session, str(marker))) == 200000 // cpus * cpus
    assert end["pauses"] >= 1 and end["paused_seconds"] > 0, end


def test_a_quiet_session_is_never_paused(recorder):
    _, session = recorder.record(["/bin/sh", "-c", "for i in 1 2 3; do cat /etc/hostname; done"])
    assert (session.end["pauses"], session.end["paused_seconds"]) == (0, 0.0)


def test_the_session_runs_at_the_callers_priority_and_its_recorder_above(recorder):
    """The recorder and its watchdog are boosted (host/priority.py); the session is not."""
    proc = recorder.popen(["/bin/sh", "-c", "nice; echo $ENHREC_SESSION_ID; sleep 30"],
                          preexec_fn=lambda: os.nice(2))
    try:
        assert proc.stdout.readline().strip() == "2"   # the caller's nice, not the recorder's
        proc.stdout.readline()
        watchdog = recorder.watchdog_of(proc.pid)
        for pid in (proc.pid, watchdog):
            assert os.getpriority(os.PRIO_PROCESS, pid) == priority.RECORDER_NICE, pid
    finally:
        proc.terminate()
        proc.communicate(timeout=SESSION_TIMEOUT)


def test_a_paused_session_whose_recorder_dies_is_killed_and_accounted_for(
        recorder, tmp_path, open_loop):
    """The recorder SIGKILLed while it holds the session frozen: the watchdog still kills the
    session (a frozen process dies of SIGKILL) and ends it with every open logged or lost."""
    marker = tmp_path / "marker"
    marker.write_text("")
    os.chmod(tmp_path, 0o755)
    proc = recorder.popen(["/bin/bash", "-c", f"echo $ENHREC_SESSION_ID; "
                           f"while :; do {open_loop} 100000 {marker}; done"])
    sid = proc.stdout.readline().strip()
    freeze = os.path.join(recorder.cgroup_sessions, sid, "cgroup.freeze")
    deadline = time.monotonic() + 30
    while not _frozen(freeze):
        assert time.monotonic() < deadline, "the session was never paused"
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=SESSION_TIMEOUT)
    deadline = time.monotonic() + 30
    while not recorder.sessions()[sid].of("session.end"):
        assert time.monotonic() < deadline, "the watchdog wrote no session.end"
        time.sleep(0.1)
    end = recorder.sessions()[sid].end
    assert end["end_reason"] == "recorder_died" and end["incomplete"] is True
    assert not os.path.exists(os.path.dirname(freeze)), "the session's cgroup is still there"
    session = recorder.sessions()[sid]
    assert [e["ei"] for e in session.events] == list(range(len(session.events)))


def _frozen(freeze_file):
    try:
        with open(freeze_file) as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return False
