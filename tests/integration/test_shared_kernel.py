"""One set of kernel programs for every session on the host (kernel/host.py), and a recorder
whose death leaves nothing unrecorded (session/watchdog.py, salvage.py), as root on the real
kernel: sessions share one set, first sessions started together load one set, an idle host
unloads it, a session never uses programs of another version, the recorder's and the
watchdog's SIGKILL, and the unload that `make uninstall` does.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from host_state import idle_timers, our_set, registered, wait_until

from enhrec_wrap.kernel import host as kernel

REPO = pathlib.Path(__file__).resolve().parents[2]
SESSION_TIMEOUT = 90


def our_program_ids() -> set[int]:
    """The ids of the programs our pinned links attach (bpftool's view)."""
    ids = set()
    for name in os.listdir(our_set()):
        if name.startswith("link-"):
            info = json.loads(subprocess.run(
                ["bpftool", "-j", "link", "show", "pinned", os.path.join(our_set(), name)],
                check=True, capture_output=True, text=True).stdout)
            ids.add(info["prog_id"])
    return ids


def attachments_of(program_ids: set[int]) -> int:
    """How many bpf links on the host attach one of these programs."""
    every = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], check=True,
                                      capture_output=True, text=True).stdout)
    return sum(1 for link in every if link.get("prog_id") in program_ids)


def attachments_of_our_programs() -> int:
    return attachments_of(our_program_ids())


def start_sessions(recorder, tmp_path, count, name="s"):
    """`count` sessions that wait for tmp_path/<name>-go; returns them once all are recorded."""
    go = tmp_path / f"{name}-go"
    procs = [recorder.popen(["bash", "-c", f"echo $ENHREC_SESSION_ID; "
                             f"while [ ! -e {go} ]; do sleep 0.05; done"])
             for _ in range(count)]
    sids = [p.stdout.readline().strip() for p in procs]
    assert all(sids), [p.communicate() for p in procs if p.poll() is not None]
    return go, procs, sids


def end_sessions(go, procs):
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=SESSION_TIMEOUT)
        assert p.returncode == 0, err


def cgroup_ids(recorder, sids):
    return {os.stat(os.path.join(recorder.cgroup_sessions, sid)).st_ino for sid in sids}


# --- one set for all -------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 20])
def test_sessions_share_one_set_of_programs(recorder, tmp_path, count):
    go, procs, sids = start_sessions(recorder, tmp_path, count)
    try:
        assert cgroup_ids(recorder, sids) <= registered()
        links = [n for n in os.listdir(our_set()) if n.startswith("link-")]
        assert len(links) >= 13
        # One attachment per program, whatever the number of sessions.
        assert attachments_of_our_programs() == len(links)
    finally:
        end_sessions(go, procs)
    for sid in sids:
        session = recorder.sessions()[sid]
        assert session.commands_with(name="sleep"), session.summary()
        assert session.end["lost_events"] == {"command": 0, "disk": 0, "network": 0}


def test_first_sessions_started_together_load_one_set(recorder, tmp_path, kernel_to_ourselves):
    recorder.unload_our_programs()
    assert not os.path.exists(our_set())
    go, procs, sids = start_sessions(recorder, tmp_path, 6)
    try:
        assert kernel.pinned_versions().count(kernel.program_version()) == 1
        links = [n for n in os.listdir(our_set()) if n.startswith("link-")]
        assert attachments_of_our_programs() == len(links)
        assert cgroup_ids(recorder, sids) <= registered()
    finally:
        end_sessions(go, procs)
    assert all(recorder.sessions()[sid].commands_with(name="sleep") for sid in sids)


def test_an_idle_host_unloads_the_programs_and_the_next_session_loads_them(
        recorder, tmp_path, kernel_to_ourselves):
    recorder.unload_our_programs()
    recorder.configure("enhrec:\n  idle_unload_seconds: 1\n")
    _, first = recorder.record(["/bin/true"])
    programs = our_program_ids()
    # One link per attachment: a program of several tracepoints has several.
    assert attachments_of(programs) == len([n for n in os.listdir(our_set())
                                            if n.startswith("link-")])
    assert len(programs) < attachments_of(programs)
    wait_until(lambda: not os.path.exists(our_set()), 20, "the idle programs were not unloaded")
    wait_until(lambda: attachments_of(programs) == 0, 20, "the programs are still attached")
    target = tmp_path / "after"
    target.write_text("x")
    result = recorder.run(["/bin/cat", str(target)])
    assert result.returncode == 0, result.stderr
    (after,) = [s for sid, s in recorder.sessions().items() if sid != first.sid]
    assert [e for e in after.disks if e["path"] == str(target)]
    assert os.path.isdir(our_set())


def test_sessions_one_after_another_share_one_idle_timer(recorder, kernel_to_ourselves):
    """Each session that leaves the set without sessions would start a timer: a host running
    one short session after another (`ssh host cmd` in a loop) has one, not one a session."""
    recorder.unload_our_programs()
    recorder.configure("enhrec:\n  idle_unload_seconds: 60\n")
    for _ in range(4):
        assert recorder.run(["/bin/true"]).returncode == 0
    wait_until(lambda: not registered(), 10, "sessions still registered")
    assert len(idle_timers()) == 1


def test_a_clock_set_back_does_not_keep_an_idle_set_loaded(recorder, kernel_to_ourselves):
    """The idle time is read from the pin directory's mtime: one in the future (the clock was
    set back an hour since the last session) starts the wait again from now, no later."""
    recorder.unload_our_programs()
    recorder.configure("enhrec:\n  idle_unload_seconds: 2\n")
    assert recorder.run(["/bin/true"]).returncode == 0
    wait_until(lambda: not registered() and idle_timers(), 10, "no idle timer after the session")
    with kernel.HostLock():   # as the clock's step would leave it, before the timer looks
        future = time.time() + 3600
        os.utime(our_set(), (future, future))
    wait_until(lambda: not os.path.exists(our_set()), 10, "the idle programs were not unloaded")


def test_unloading_at_once_ends_the_idle_timer(recorder, kernel_to_ourselves):
    """`make uninstall` (idle --now) leaves no pin and no timer process behind."""
    recorder.configure("enhrec:\n  idle_unload_seconds: 600\n")
    assert recorder.run(["/bin/true"]).returncode == 0
    wait_until(lambda: not registered(), 10, "sessions still registered")
    (timer,) = idle_timers()
    subprocess.run([sys.executable, "-I", "-m", "enhrec_wrap.kernel.idle", "--now"], check=True)
    assert not os.path.exists(our_set())
    wait_until(lambda: not os.path.exists(f"/proc/{timer}"), 5, "the idle timer went on")


def test_a_session_in_the_idle_time_starts_it_again(recorder, kernel_to_ourselves):
    """The set is unloaded idle_unload_seconds after the LAST session left it, not after the
    first one that started the timer; then the timer ends."""
    recorder.unload_our_programs()
    recorder.configure("enhrec:\n  idle_unload_seconds: 3\n")
    assert recorder.run(["/bin/true"]).returncode == 0
    time.sleep(2)
    assert recorder.run(["/bin/true"]).returncode == 0
    wait_until(lambda: not registered(), 10, "sessions still registered")
    second_left = time.monotonic()
    (timer,) = idle_timers()
    wait_until(lambda: not os.path.exists(our_set()), 20, "the idle programs were not unloaded")
    # registered() went empty at most ~0.1 s after the session really left
    assert time.monotonic() - second_left >= 3 - 0.3
    wait_until(lambda: not os.path.exists(f"/proc/{timer}"), 10, "the timer did not end")


def test_a_session_never_uses_programs_of_another_version(recorder, tmp_path, kernel_to_ourselves):
    """A set pinned under another version (as after an upgrade) is never attached to: the session
    loads its own, and the other, used by no session, is unloaded on the way."""
    recorder.record(["/bin/true"])   # our set is loaded
    wait_until(lambda: not registered(), 10, "sessions still registered")
    other = os.path.join(kernel.PIN_ROOT, "0" * 64)
    os.rename(our_set(), other)      # our programs, now under another version's name
    other_links = {n for n in os.listdir(other) if n.startswith("link-")}
    go, procs, sids = start_sessions(recorder, tmp_path, 1)
    try:
        assert not os.path.exists(other), "a set of another version with no session was kept"
        assert os.path.isdir(our_set())
        assert {n for n in os.listdir(our_set()) if n.startswith("link-")} == other_links
        assert cgroup_ids(recorder, sids) <= registered()
    finally:
        end_sessions(go, procs)


# --- the recorder's death ----------------------------------------------------------------------

def test_recorder_sigkill_leaves_no_exec_unaccounted(recorder, tmp_path):
    """A tight exec loop whose every exec appends a line: after the recorder's SIGKILL every exec
    that ran is in the log or counted in lost_events.command, 5 times out of 5; the session's
    processes are dead at once (the benchmark measures how fast: docs/PERFORMANCE.md)."""
    for trial in range(5):
        lines = tmp_path / f"lines-{trial}"
        proc = recorder.popen(["bash", "-c", f"echo $ENHREC_SESSION_ID; "
                               f"while :; do /bin/echo x >> {lines}; done"])
        sid = proc.stdout.readline().strip()
        leaf = os.path.join(recorder.cgroup_sessions, sid)
        wait_until(lambda: lines.exists() and lines.stat().st_size >= 400, 30,
                   "the loop did not run")
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: not os.path.exists(leaf) or not _populated(leaf), 5,
                   "the session's processes went on")
        dead_after = time.monotonic() - killed_at
        proc.communicate(timeout=SESSION_TIMEOUT)
        wait_until(lambda: recorder.sessions()[sid].of("session.end"), 30,
                   "the watchdog wrote no session.end", step=0.1)
        ran = lines.read_bytes().count(b"\n")
        session = recorder.sessions()[sid]
        end = session.end
        logged = len(session.commands_with(path="/bin/echo"))
        lost = end["lost_events"]["command"]
        assert end["incomplete"] is True and end["end_reason"] == "recorder_died"
        assert logged + lost >= ran, (trial, logged, lost, ran)
        # Execs the kill caught between exec and write are logged but wrote no line: a few.
        assert logged + lost - ran <= 3, (trial, logged, lost, ran)
        assert [e["ei"] for e in session.events] == list(range(len(session.events)))
        assert dead_after < 1.0, dead_after


def _populated(leaf):
    try:
        with open(os.path.join(leaf, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except FileNotFoundError:
        return False


def test_watchdog_sigkill_ends_the_session(recorder, tmp_path):
    proc = recorder.popen(["bash", "-c", "echo $ENHREC_SESSION_ID; sleep 1000"])
    sid = proc.stdout.readline().strip()
    recorder.wait_for(lambda e: e.get("sid") == sid and e.get("argv") == ["1000"],
                      what="the session's sleep")
    os.kill(recorder.watchdog_of(proc.pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=SESSION_TIMEOUT)
    assert proc.returncode == 128 + signal.SIGKILL
    assert "the session watchdog died, so the session is ended" in err
    end = recorder.sessions()[sid].end
    assert end["end_reason"] == "watchdog_died"
    assert end.get("incomplete") is None   # the recorder wrote everything itself
    assert end["exit_status"] == 128 + signal.SIGKILL
    assert not os.path.exists(os.path.join(recorder.cgroup_sessions, sid))
    wait_until(lambda: cgroup_ids_gone(recorder, sid), 10, "its rings are still registered")


def cgroup_ids_gone(recorder, sid):
    return all(recorder.sessions()[sid].start["cgroup_id"] != c for c in registered())


# --- unloading ---------------------------------------------------------------------------------

def _install_prefix(recorder):
    """PREFIX and BINDIR of the wrapper under test, from its entry script's interpreter line."""
    script = recorder.wrapper[0]
    with open(script) as f:
        python = f.readline()[2:].split()[0]   # #!<PREFIX>/venv/bin/python3 -I
    return os.path.dirname(os.path.dirname(os.path.dirname(python))), os.path.dirname(script)


def test_make_uninstall_unloads_the_programs_and_leaves_no_pin(recorder, tmp_path,
                                                                kernel_to_ourselves):
    """`make uninstall`'s kernel step, for real: refused while a session uses the programs,
    and afterwards no pin of ours is left in bpffs."""
    prefix, bindir = _install_prefix(recorder)
    make = ["make", "-s", "-C", str(REPO), "uninstall-kernel", f"PREFIX={prefix}",
            f"BINDIR={bindir}"]
    go, procs, _ = start_sessions(recorder, tmp_path, 1)
    try:
        refused = subprocess.run(make, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert refused.returncode != 0
        assert "still used by sessions" in refused.stderr
        assert os.path.isdir(our_set())
    finally:
        end_sessions(go, procs)
    wait_until(lambda: not registered(), 10, "the session is still registered")
    programs = our_program_ids()
    done = subprocess.run(make, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(our_set())
    wait_until(lambda: attachments_of(programs) == 0, 20, "the programs are still attached")
    # What is left in bpffs (on a shared machine: another checkout's programs) is in use.
    with kernel.HostLock():
        for version in kernel.pinned_versions():
            host = kernel.HostPrograms.open(version)
            assert host is not None and host.sessions(), f"an unused set is left: {version}"
            host.close()
