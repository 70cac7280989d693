"""Loss is counted exactly: with tiny ring buffers and the recorder stopped while the session
bursts, every exec, open and connect of the burst is either in the log or counted in session.end's
`lost_events` for its stream, never both and never neither.

How the loss is forced: the session's producer (producer.py below) prepares everything, says
`ready` (mkdir: not an event), and waits for `go`. The test stops the recorder (SIGSTOP), says
`go`, and the producer makes exactly N events of one kind whose marker (path, port) nothing else
has, then says `done`. With no consumer, the ring fills and the kernel counts the rest as lost.
The test continues the recorder and the session ends. Nothing else happens in the window, so
every lost record of the stream is one of the burst: recorded(marker) + lost == N.
"""

import os
import signal
import socket
import textwrap
import time

import pytest


PYTHON = "/usr/bin/python3"
TINY_BUFFERS = """\
ssh_service:
  enhanced_recording:
    command_buffer_size: 1
    disk_buffer_size: 1
    network_buffer_size: 1
"""
WINDOW_TIMEOUT = 30.0
# Big exec records (20 arguments of 1000 bytes): a handful fill the command ring.
EXEC_ARGUMENTS = 20

PRODUCER = textwrap.dedent('''\
    import os, socket, sys, time
    mode, count, directory, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    argv = ["/bin/true"] + [str(i) * 1000 for i in range(%d)]
    os.mkdir(os.path.join(directory, "ready"))
    while not os.path.exists(os.path.join(directory, "go")):
        time.sleep(0.005)
    if mode == "disk":
        for _ in range(count):
            os.close(os.open(marker, os.O_RDONLY))
    elif mode == "network":
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect(("127.0.0.1", int(marker)))
            s.close()
    elif mode == "command":
        for _ in range(count):
            pid = os.posix_spawn(marker, argv, {})
            os.waitpid(pid, 0)
    os.mkdir(os.path.join(directory, "done"))
''' % EXEC_ARGUMENTS)


def _wait_for(path, proc, what):
    deadline = time.monotonic() + WINDOW_TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the session ended before {what}: status {proc.returncode}\n"
                        f"stdout: {out}\nstderr: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {WINDOW_TIMEOUT}s")
        time.sleep(0.01)


def burst_with_recorder_stopped(recorder, tmp_path, mode, count, marker):
    """Runs the producer in a session with tiny buffers, stopping the recorder for the burst.
    Returns the recorded Session."""
    recorder.configure(TINY_BUFFERS)
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    window = tmp_path / "window"
    window.mkdir()
    proc = recorder.popen([PYTHON, "-S", "-I", str(script), mode, str(count), str(window),
                           str(marker)], stdin=subprocess_devnull())
    stopped = False
    try:
        _wait_for(window / "ready", proc, "the producer was ready")
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = True
        (window / "go").mkdir()
        _wait_for(window / "done", proc, "the burst")
        os.kill(proc.pid, signal.SIGCONT)
        stopped = False
        out, err = proc.communicate(timeout=WINDOW_TIMEOUT)
    finally:
        if stopped:
            os.kill(proc.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"status {proc.returncode}\nstdout: {out}\nstderr: {err}"
    sessions = recorder.sessions()
    assert len(sessions) == 1, f"expected one session, got {len(sessions)}"
    return next(iter(sessions.values()))


def subprocess_devnull():
    import subprocess
    return subprocess.DEVNULL


def test_open_burst_recorded_plus_lost_is_exact(recorder, tmp_path):
    marker = tmp_path / "marker-file"
    marker.write_bytes(b"")
    count = 3000
    session = burst_with_recorder_stopped(recorder, tmp_path, "disk", count, marker)
    recorded = [e for e in session.disks if e["path"] == str(marker)]
    lost = session.end["lost_events"]
    assert lost["disk"] > 0, f"no loss was forced: {lost}"
    assert len(recorded) > 0, "nothing of the burst was recorded: the ring should hold some"
    assert len(recorded) + lost["disk"] == count, (
        f"recorded {len(recorded)} + lost {lost['disk']} != {count}")
    assert all(e["return_code"] >= 0 for e in recorded)
    assert lost["command"] == 0 and lost["network"] == 0, lost


def test_connect_burst_recorded_plus_lost_is_exact(recorder, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))   # a port of ours: nothing else in the session uses it
        port = probe.getsockname()[1]
        count = 1000
        session = burst_with_recorder_stopped(recorder, tmp_path, "network", count, port)
    recorded = [e for e in session.networks if e["dst_port"] == port]
    lost = session.end["lost_events"]
    assert lost["network"] > 0, f"no loss was forced: {lost}"
    assert len(recorded) > 0
    assert len(recorded) + lost["network"] == count, (
        f"recorded {len(recorded)} + lost {lost['network']} != {count}")
    assert all(e["dst_addr"] == "127.0.0.1" and e["connect_return_code"] == 0 for e in recorded)


def test_exec_burst_recorded_plus_lost_is_exact(recorder, tmp_path):
    """An exec is one record, made at sched_process_exec when the new image runs: each exec of
    the burst is either logged whole (argv, return_code 0) or counted in lost_events.command."""
    true = tmp_path / "true-marker"   # a path of its own, so nothing else matches
    os.symlink("/bin/true", true)
    count = 150
    session = burst_with_recorder_stopped(recorder, tmp_path, "command", count, true)
    recorded = session.commands_with(path=str(true))
    lost = session.end["lost_events"]
    assert lost["command"] > 0, f"no loss was forced: {lost}"
    assert len(recorded) > 0
    assert len(recorded) + lost["command"] == count, (
        f"recorded {len(recorded)} + lost {lost['command']} != {count}")
    assert all(len(e["argv"]) == EXEC_ARGUMENTS for e in recorded)
    assert all(e["return_code"] == 0 and "return_code_unknown" not in e for e in recorded)
    assert all(e["executable"] == "/usr/bin/true" for e in recorded)   # the symlink's target

