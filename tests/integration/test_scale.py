"""A busy bastion host: many sessions at once on the host's one set of programs, as root on the
real kernel. Sessions started together as the first ones on the host are each recorded whole
(every exec, open and connect, lost counts 0, one session.start and one session.end, the chain
intact under that many appenders); idle sessions cost their recorders next to nothing; the set
stays loaded until the last session ends; a run of short `ssh host cmd` sessions leaves nothing
behind; a host at MAX_SESSIONS refuses the next session with one line naming the limit.

Sized to run in well under a minute each on a 2-CPU machine (docs/architecture.md, "Many
sessions", has the figures of 100 and 200 sessions).
"""

import os
import socket
import struct
import subprocess
import threading
import time

import pytest
from host_state import idle_timers, our_set, registered, wait_until

from enhrec_wrap.kernel import abi
from enhrec_wrap.kernel import host as kernel
from enhrec_wrap.kernel.syscalls import (BPF_MAP_TYPE_RINGBUF, map_create, map_delete_batch,
                                         map_keys, map_update_batch)

SESSION_TIMEOUT = 120
CONCURRENT = 40
CGROUP_SESSIONS = "/cgroup2/enhrec"   # conftest.py's: the default cgroup_path's sessions


def enhrec(recorder, *args):
    enhrec_bin = os.path.join(os.path.dirname(recorder.wrapper[0]), "enhrec")
    return subprocess.run([enhrec_bin, "--config", recorder.config_path, *args],
                          capture_output=True, text=True, timeout=SESSION_TIMEOUT)


@pytest.fixture
def listener():
    """A TCP port on loopback that accepts every connection (the sessions' connect)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def busy_command(port):
    """Prints the sid, then 5 execs of /bin/true, 5 of cat (each opening /etc/hostname) and one
    connect to `port` (bash's /dev/tcp)."""
    return ["bash", "-c", "echo $ENHREC_SESSION_ID; for i in 1 2 3 4 5; do /bin/true; "
            "/bin/cat /etc/hostname >/dev/null; done; "
            f"exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-"]


def assert_recorded_whole(session, port):
    assert session.start["sid"] == session.sid   # exactly one session.start
    end = session.end                              # exactly one session.end
    assert end["lost_events"] == {"command": 0, "disk": 0, "network": 0}, end
    assert len(session.commands_with(path="/bin/true")) == 5, session.summary()
    assert len(session.commands_with(path="/bin/cat")) == 5, session.summary()
    assert len([e for e in session.disks if e["path"] == "/etc/hostname"]) == 5
    assert len([e for e in session.networks if e.get("dst_port") == port]) == 1, session.networks
    assert [e["ei"] for e in session.events] == list(range(len(session.events)))


def test_first_sessions_started_at_once_are_each_recorded_whole(recorder, listener,
                                                                 kernel_to_ourselves):
    recorder.unload_our_programs()
    assert not os.path.exists(our_set())
    procs = [recorder.popen(busy_command(listener), stdin=subprocess.DEVNULL)
             for _ in range(CONCURRENT)]
    results = [p.communicate(timeout=SESSION_TIMEOUT) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0 and err == "", (proc.returncode, err)
    sids = {out.split()[0] for out, _ in results}
    sessions = recorder.sessions()
    assert set(sessions) == sids and len(sids) == CONCURRENT
    for session in sessions.values():
        assert_recorded_whole(session, listener)
    assert kernel.pinned_versions().count(kernel.program_version()) == 1
    verified = enhrec(recorder, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout
    # Nothing of theirs is left: no cgroup, no registration.
    assert not [sid for sid in sids if os.path.exists(os.path.join(recorder.cgroup_sessions, sid))]
    ids = {s.start["cgroup_id"] for s in sessions.values()}
    wait_until(lambda: not ids & registered(), 20, "ended sessions are still registered")


def _voluntary_switches(pid: int) -> int:
    """How often the recorder's main thread went to sleep and was woken."""
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for {pid}")


def test_an_idle_session_leaves_its_recorder_asleep(recorder):
    """A bastion host's sessions are idle most of the time: each recorder waking every 50 ms
    made 200 idle sessions cost 0.36 of this machine's CPUs. An idle recorder waits longer
    between looks (recording.py), and what the session does next is still recorded soon."""
    proc = recorder.popen(["bash", "-c", "echo $ENHREC_SESSION_ID; read x; /bin/true; read y"],
                          stdin=subprocess.PIPE)
    try:
        sid = proc.stdout.readline().strip()
        assert sid
        time.sleep(2)   # the start's work done, the recorder idle
        before = _voluntary_switches(proc.pid)
        time.sleep(3)
        wakes = _voluntary_switches(proc.pid) - before
        # 3 s at one look per 50 ms were 60 wake-ups; at IDLE_POLL_SECONDS (0.5) they are 6.
        assert wakes <= 15, wakes
        proc.stdin.write("\n")
        proc.stdin.flush()
        # Logged while the session runs on: a record waits for a look at most IDLE_POLL_SECONDS.
        recorder.wait_for(lambda e: e.get("sid") == sid and e.get("path") == "/bin/true",
                          timeout=10, what="the exec after the idle time")
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=SESSION_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert recorder.sessions()[sid].end["lost_events"] == {"command": 0, "disk": 0, "network": 0}


def test_the_set_is_unloaded_only_after_the_last_session(recorder, kernel_to_ourselves):
    """30 sessions; 29 end and the idle time passes: the set stays for the last one, whose next
    exec is recorded; once it ends, the set goes."""
    recorder.unload_our_programs()
    recorder.configure("enhrec:\n  idle_unload_seconds: 1\n")
    procs = [recorder.popen(["bash", "-c", "echo $ENHREC_SESSION_ID; read x; /bin/true"],
                            stdin=subprocess.PIPE) for _ in range(30)]
    sids = [p.stdout.readline().strip() for p in procs]
    assert all(sids)
    last = procs.pop()
    for proc in procs:
        proc.stdin.write("\n")
        proc.stdin.close()
    for proc in procs:
        assert proc.wait(timeout=SESSION_TIMEOUT) == 0, proc.stderr.read()
    time.sleep(3)   # three times the idle time, after 29 sessions left
    assert os.path.isdir(our_set()), "the set was unloaded under a running session"
    last.stdin.write("\n")
    last.stdin.close()
    assert last.wait(timeout=SESSION_TIMEOUT) == 0, last.stderr.read()
    assert recorder.sessions()[sids[-1]].commands_with(path="/bin/true")
    wait_until(lambda: not os.path.exists(our_set()), 20, "the set was not unloaded")
    for sid in sids:
        assert recorder.sessions()[sid].end["exit_status"] == 0


def test_a_run_of_short_sessions_leaves_nothing_behind(recorder):
    """`ssh host cmd` one after another: each ends with its cgroup removed, its rings taken out,
    no process of its own left, and one idle timer for the set however many came and went."""
    count = 60
    for _ in range(count):
        result = recorder.run(["/bin/cat", "/etc/hostname"])
        assert result.returncode == 0 and result.stderr == "", result.stderr
    sessions = recorder.sessions()
    assert len(sessions) == count
    ids = {s.start["cgroup_id"] for s in sessions.values()}
    wait_until(lambda: not ids & registered(), 20, "ended sessions are still registered")
    assert not [sid for sid in sessions
                if os.path.exists(os.path.join(recorder.cgroup_sessions, sid))]
    # No wrapper, watchdog or releasing Python of this test's config is left.
    wait_until(lambda: not recorder.pids_with_argument(recorder.config_path), 10,
               "a process of the sessions is left")
    assert len(idle_timers()) <= 1
    for session in sessions.values():
        assert [e for e in session.disks if e["path"] == "/etc/hostname"]
        assert session.end["lost_events"] == {"command": 0, "disk": 0, "network": 0}


# --- the limit ----------------------------------------------------------------------------------

class _Fakes:
    """Places in the set's maps that no session owns, as many as it takes to fill them: only
    ever for the moment a test needs the host full. They are lost counters under cgroup ids no
    cgroup has (recovery takes a registration whose cgroup is gone out of session_rings only),
    and one ring under a cgroup of the test's own, in a stream no program looks up, so that
    the set counts as used and no start of another version unloads it meanwhile."""

    FIRST_ID = 1 << 62
    UNUSED_STREAM = abi.STREAM_COUNT

    def __init__(self, count: int):
        with kernel.HostLock():
            self.host = kernel.HostPrograms.open(kernel.program_version())
        assert self.host is not None
        self.cgroup = os.path.join(os.path.dirname(CGROUP_SESSIONS), f"scale-test-{os.getpid()}")
        os.mkdir(self.cgroup)
        self.ring = map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0, "fake_ring")
        self.ring_key = kernel.RING_KEY.pack(os.stat(self.cgroup).st_ino, self.UNUSED_STREAM, 0)
        map_update_batch(self.host.maps["session_rings"], [self.ring_key],
                         [struct.pack("=I", self.ring)])
        ids = range(self.FIRST_ID, self.FIRST_ID + count)
        self.lost_keys = [struct.pack("=Q", i) for i in ids]
        map_update_batch(self.host.maps["lost_events"], self.lost_keys,
                         [bytes(8 * abi.STREAM_COUNT * self.host.cpus)] * count)

    def remove(self):
        try:
            map_delete_batch(self.host.maps["lost_events"], self.lost_keys)
            map_delete_batch(self.host.maps["session_rings"], [self.ring_key])
        finally:
            os.close(self.ring)
            self.host.close()
            os.rmdir(self.cgroup)


def test_a_host_at_max_sessions_refuses_the_next_with_one_line(recorder, tmp_path,
                                                               kernel_to_ourselves):
    recorder.run(["/bin/true"])   # our set is loaded
    wait_until(lambda: not registered(), 20, "sessions still registered")
    marker = tmp_path / "ran"
    fakes = _Fakes(abi.MAX_SESSIONS)
    try:
        refused = recorder.run(["/bin/touch", str(marker)])
        doctor = enhrec(recorder, "doctor")
    finally:
        fakes.remove()
    assert refused.returncode == 125, refused.stderr
    line = recorder.one_line(refused.stderr)
    assert "MAX_SESSIONS" in line and f"{abi.MAX_SESSIONS} sessions" in line, line
    assert not marker.exists(), "the command ran unrecorded"
    assert [ln for ln in doctor.stdout.splitlines()
            if ln.startswith("FAIL") and "MAX_SESSIONS" in ln], doctor.stdout
    # Room again: the next session starts.
    assert recorder.run(["/bin/true"]).returncode == 0


def test_a_start_takes_out_many_dead_registrations(recorder, kernel_to_ourselves):
    """Registrations left by sessions whose recorder and watchdog both died (as after a `kill
    -9` of them all): the next start's recovery takes them all out, in one batch per map, and
    records its own session."""
    recorder.run(["/bin/true"])   # our set is loaded
    count = 300
    with kernel.HostLock():
        host = kernel.HostPrograms.open(kernel.program_version())
    ring = map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096, 0, "fake_ring")
    try:
        ids = list(range(_Fakes.FIRST_ID, _Fakes.FIRST_ID + count))   # no cgroup has these
        keys = [kernel.RING_KEY.pack(i, s, 0) for i in ids for s in abi.RING_STREAM_NAMES]
        with kernel.HostLock():
            map_update_batch(host.maps["session_rings"], keys,
                             [struct.pack("=I", ring)] * len(keys))
            map_update_batch(host.maps["lost_events"], [struct.pack("=Q", i) for i in ids],
                             [bytes(8 * abi.STREAM_COUNT * host.cpus)] * count)
        assert set(ids) <= registered()
        result = recorder.run(["/bin/cat", "/etc/hostname"])
        assert result.returncode == 0, result.stderr
        assert not set(ids) & registered()
        assert not set(ids) & {struct.unpack("=Q", k)[0] for k in
                               map_keys(host.maps["lost_events"], 8)}
    finally:
        os.close(ring)
        host.close()
    (session,) = [s for s in recorder.sessions().values()
                  if [e for e in s.disks if e["path"] == "/etc/hostname"]]
    assert session.end["lost_events"] == {"command": 0, "disk": 0, "network": 0}


def test_sessions_start_beside_a_shared_hold_of_the_host_lock(recorder):
    """A session's start (its recovery, opening the set, registering) takes the HostLock shared
    when the set is pinned alone, so starts go on side by side: one that holds it, as a
    registration waiting out its RCU grace period does, keeps no other waiting."""
    recorder.run(["/bin/true"])   # our set is loaded, unused sets of other versions unloaded
    with kernel.HostLock(shared=True):
        result = recorder.run(["/bin/cat", "/etc/hostname"], timeout=30)
    assert result.returncode == 0, result.stderr
    (session,) = [s for s in recorder.sessions().values()
                  if [e for e in s.disks if e["path"] == "/etc/hostname"]]
    assert session.end["lost_events"] == {"command": 0, "disk": 0, "network": 0}
