"""What a recorded session logs: commands, opens, connects, process ancestry, exit status,
background processes, and the log itself. Every test runs the installed wrapper as root with
real BPF programs."""

import errno
import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid

import pytest

from enhrec_wrap.kernel import abi, decode
from enhrec_wrap.events import teleport as events

PYTHON = "/usr/bin/python3"
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENVELOPE = ("ei", "event", "code", "uid", "time", "sid", "namespace", "server_id",
            "server_hostname", "login", "user")
CODES = {"session.start": "T2000I", "session.end": "T2004I", "session.command": "T4000I",
         "session.disk": "T4001I", "session.network": "T4002I"}
# Keeps curl's request on this machine: it connects to a closed local port instead of resolving
# www.example.com.
NO_NETWORK_PROXY = "http://127.0.0.1:9"


# --- the seed's three bypasses ------------------------------------------------------------------

class Terminal:
    """Drives a command on a pseudo-terminal, one typed line at a time."""

    def __init__(self, argv, env):
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.transcript = b""
        self.steps = 0

    def _read(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the terminal session stalled; transcript: {self.transcript!r}")
        ready, _, _ = select.select([self.fd], [], [], remaining)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:
            if e.errno != errno.EIO:   # EIO: every process holding the terminal is gone
                raise
            data = b""
        self.transcript += data
        return bool(data)

    def type(self, line, timeout=60):
        """Types `line` and waits until the shell has run it. The marker is printed by a builtin
        (no exec) and typed as two words, so the echo of the typed line never matches it."""
        self.steps += 1
        marker = f"STEP_{self.steps}".encode()
        os.write(self.fd, line.encode() + b"\n")
        os.write(self.fd, f"printf '%s_%s\\n' STEP {self.steps}\n".encode())
        start = len(self.transcript)
        deadline = time.monotonic() + timeout
        while marker not in self.transcript[start:]:
            if not self._read(deadline):
                pytest.fail(f"the shell ended before {line!r} ran; transcript: {self.transcript!r}")
        return self.transcript[start:]

    def finish(self, line="exit", timeout=60):
        """Types the last line; returns the wait status once the command has ended."""
        os.write(self.fd, line.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while self._read(deadline):
            pass
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        return status


def test_seed_bypasses_are_recorded(recorder):
    """base64 | sh, a script file and a command typed after `stty -echo`: all three in one
    interactive session on a terminal."""
    script = os.path.join(recorder.dir, "script.sh")
    with open(script, "w") as f:
        f.write("id\necho script-done\n")
    terminal = Terminal(recorder.argv(["bash", "--norc", "-i"]), recorder.environment({"TERM": "dumb"}))
    terminal.type(f"export http_proxy={NO_NETWORK_PROXY}")
    terminal.type("echo Y3VybCBodHRwOi8vd3d3LmV4YW1wbGUuY29tCg== | base64 --decode | sh")
    terminal.type(f"bash {script}")
    terminal.type("stty -echo")
    after_stty = terminal.type("uname -n")
    status = terminal.finish()
    assert os.waitstatus_to_exitcode(status) == 0, terminal.transcript
    assert b"uname -n" not in after_stty, "the typed command was echoed: stty -echo had no effect"
    assert os.uname().nodename.encode() in after_stty

    sessions = recorder.sessions()
    assert len(sessions) == 1
    session = next(iter(sessions.values()))
    assert session.start["interactive"] is True
    assert session.end["interactive"] is True
    assert session.start["initial_command"] == ["bash", "--norc", "-i"]
    assert re.fullmatch(r"\d+:\d+", session.start["size"])
    shell = session.command(argv=["--norc", "-i"])
    assert shell["ppid"] == terminal.pid

    # (1) the obfuscated command: every stage of the pipe, and curl's connect attempt
    base64 = session.command(name="base64", argv=["--decode"])
    sh = session.command(name="sh", argv=[])
    curl = session.command(name="curl", argv=["http://www.example.com"])
    assert base64["ppid"] == shell["pid"] and sh["ppid"] == shell["pid"]
    assert curl["ppid"] == sh["pid"] or curl["pid"] == sh["pid"]
    assert curl["return_code"] == 0 and curl["program"] == "curl"
    connects = [n for n in session.networks if n["pid"] == curl["pid"]]
    assert connects, f"no session.network for curl; network events: {session.networks}"
    connect = connects[0]
    assert (connect["dst_addr"], connect["dst_port"], connect["version"]) == ("127.0.0.1", 9, 4)
    assert connect["protocol"] == "tcp" and connect["program"] == "curl"
    assert connect["connect_return_code"] <= 0   # refused here; -115 (EINPROGRESS) when non-blocking

    # (2) the script file: id runs as a child of the bash that reads the script
    script_bash = session.command(name="bash", argv=[script])
    assert script_bash["ppid"] == shell["pid"]
    id_command = session.command(name="id", argv=[])
    assert id_command["ppid"] == script_bash["pid"]
    assert id_command["return_code"] == 0

    # (3) typed while the terminal did not echo
    uname = session.command(name="uname", argv=["-n"])
    assert uname["ppid"] == shell["pid"] and uname["return_code"] == 0
    assert session.command(name="stty", argv=["-echo"])["ppid"] == shell["pid"]


# --- one session full of kernel events ----------------------------------------------------------

# Runs inside the session; what it did (fds, ports, pids, expected flags) goes to a JSON file.
DRIVER = r'''
import ctypes, fcntl, json, os, socket, subprocess, sys, time

work, results_path = sys.argv[1], sys.argv[2]
port4, port6, closed_port = (int(a) for a in sys.argv[3:6])
r = {"pid": os.getpid()}
libc = ctypes.CDLL(None, use_errno=True)

def cloexec(fd, flags):
    """os.open adds O_CLOEXEC itself: the flags the kernel saw, as this Python passed them."""
    return flags | os.O_CLOEXEC if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC else flags

written = os.path.join(work, "written-file")
fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
r["written"] = {"path": written, "fd": fd,
                "flags": cloexec(fd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)}
os.close(fd)

missing = os.path.join(work, "missing-file")
try:
    os.open(missing, os.O_RDONLY)
except FileNotFoundError:
    r["missing"] = {"path": missing}

class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
how = OpenHow(os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0, 0)
fd = libc.syscall(ctypes.c_long(437), ctypes.c_long(-100), ctypes.c_char_p(written.encode()),
                  ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))   # SYS_openat2
r["openat2"] = {"path": written, "fd": fd, "flags": how.flags, "errno": ctypes.get_errno()}
if fd >= 0:
    os.close(fd)

created = os.path.join(work, "created-file")
fd = libc.creat(created.encode(), 0o644)
r["creat"] = {"path": created, "fd": fd}
os.close(fd)

os.chdir(work)
fd = os.open("relative-file", os.O_WRONLY | os.O_CREAT, 0o600)
r["relative"] = {"abs_path": os.path.join(os.getcwd(), "relative-file"), "fd": fd}
os.close(fd)

def tcp(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.connect(address)
    name = s.getsockname()
    s.close()
    return {"src_addr": name[0], "src_port": name[1]}
r["tcp4"] = tcp(socket.AF_INET, ("127.0.0.1", port4))
r["tcp6"] = tcp(socket.AF_INET6, ("::1", port6))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.connect(("127.0.0.1", closed_port))
except ConnectionRefusedError as e:
    r["refused"] = {"errno": e.errno}
s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", 9))
r["udp"] = {"src_port": u.getsockname()[1]}
u.close()

p = subprocess.Popen(["bash", "-c", "/nonexistent/prog; true"], stderr=subprocess.DEVNULL)
p.wait()
r["failed_exec_bash"] = p.pid

pid = os.fork()
if pid == 0:
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 1)
    os.execv("/bin/echo", [b"echo", b"\xff\xfeA\\B", b"line1\nline2"])
os.waitpid(pid, 0)
r["echo_pid"] = pid

for name, argv in (("hundred", ["/bin/true"] + [f"hundred-{i}" for i in range(100)]),
                   ("three_hundred", ["/bin/true"] + [f"three-hundred-{i}" for i in range(300)]),
                   ("long_arg", ["/bin/true", "L" * 5000]),
                   ("over_argv_max", ["/bin/true"] + ["M" * 1000] * 40)):
    child = subprocess.Popen(argv)
    child.wait()
    r[name] = child.pid

with open(results_path, "w") as f:
    json.dump(r, f)
'''


@pytest.fixture(scope="module")
def kernel_session(make_recorder):
    """One session whose command opens, connects and execs in every way the tests below check
    (one BPF compilation instead of one per check). The listeners run outside the session."""
    recorder = make_recorder("kernel-events")
    work = os.path.join(recorder.dir, "work")
    os.mkdir(work)
    driver = os.path.join(recorder.dir, "driver.py")
    with open(driver, "w") as f:
        f.write(DRIVER)
    results_path = os.path.join(recorder.dir, "results.json")
    with socket.socket(socket.AF_INET) as listener4, socket.socket(socket.AF_INET6) as listener6, \
            socket.socket(socket.AF_INET) as closed:
        listener4.bind(("127.0.0.1", 0))
        listener4.listen(8)
        listener6.bind(("::1", 0))
        listener6.listen(8)
        closed.bind(("127.0.0.1", 0))   # bound, never listening: connects to it are refused
        ports = [s.getsockname()[1] for s in (listener4, listener6, closed)]
        result, session = recorder.record(
            [PYTHON, "-I", driver, work, results_path, *map(str, ports)])
    with open(results_path) as f:
        done = json.load(f)
    done["ports"] = dict(zip(("tcp4", "tcp6", "closed"), ports))
    return result, session, done


def _disk(session, path, pid):
    found = [d for d in session.disks if d["path"] == path and d["pid"] == pid]
    assert found, f"no session.disk for {path}; disk paths: {[d['path'] for d in session.disks]}"
    return found


def test_driver_is_the_first_process(kernel_session):
    result, session, done = kernel_session
    driver = session.commands[0]
    assert driver["pid"] == done["pid"]
    assert driver["ppid"] == result.pid   # the wrapper
    assert driver["path"] == PYTHON and driver["return_code"] == 0
    assert all(e["cgroup_id"] == session.start["cgroup_id"]
               for e in session.commands + session.disks + session.networks)


def test_opens_with_flags_and_return_codes(kernel_session):
    _, session, done = kernel_session
    pid = done["pid"]
    written = done["written"]
    (event,) = [d for d in _disk(session, written["path"], pid) if d["flags"] == written["flags"]]
    assert event["return_code"] == written["fd"] >= 0
    assert event["program"] == "python3"

    (missing,) = _disk(session, done["missing"]["path"], pid)
    assert missing["return_code"] == -errno.ENOENT
    assert missing["flags"] & os.O_ACCMODE == os.O_RDONLY

    openat2 = done["openat2"]
    assert openat2["fd"] >= 0, f"openat2 failed with errno {openat2['errno']}"
    (event,) = [d for d in _disk(session, openat2["path"], pid) if d["flags"] == openat2["flags"]]
    assert event["return_code"] == openat2["fd"]

    (created,) = _disk(session, done["creat"]["path"], pid)
    assert created["flags"] == 0o1101   # O_WRONLY | O_CREAT | O_TRUNC, as creat() means
    assert created["return_code"] == done["creat"]["fd"] >= 0

    (relative,) = _disk(session, done["relative"]["abs_path"], pid)   # the file the kernel opened
    assert (relative["requested_path"], relative["path_source"]) == ("relative-file", "kernel")
    assert relative["return_code"] == done["relative"]["fd"] >= 0


def _connects_by_port(session, done):
    by_port = {}
    for n in session.networks:
        assert n["pid"] == done["pid"], f"connect of another process: {n}"
        by_port.setdefault(n["dst_port"], []).append(n)
    return by_port


def test_connects(kernel_session):
    _, session, done = kernel_session
    by_port = _connects_by_port(session, done)
    ports = done["ports"]
    fields = ("dst_addr", "version", "src_addr", "protocol", "connect_return_code")

    (tcp4,) = by_port[ports["tcp4"]]
    assert {k: tcp4[k] for k in fields} == {
        "dst_addr": "127.0.0.1", "version": 4, "src_addr": done["tcp4"]["src_addr"],
        "protocol": "tcp", "connect_return_code": 0}
    (tcp6,) = by_port[ports["tcp6"]]
    assert {k: tcp6[k] for k in fields} == {
        "dst_addr": "::1", "version": 6, "src_addr": done["tcp6"]["src_addr"],
        "protocol": "tcp", "connect_return_code": 0}

    (refused,) = by_port[ports["closed"]]
    assert done["refused"]["errno"] == errno.ECONNREFUSED
    assert (refused["dst_addr"], refused["version"], refused["protocol"]) == ("127.0.0.1", 4, "tcp")
    assert refused["connect_return_code"] == -errno.ECONNREFUSED

    (udp,) = by_port[9]
    assert (udp["dst_addr"], udp["version"], udp["protocol"], udp["connect_return_code"]) == \
        ("127.0.0.1", 4, "udp", 0)


def test_tcp_connects_have_the_source_port(kernel_session):
    """The port the kernel picked for an unbound socket (what getsockname shows after connect)."""
    _, session, done = kernel_session
    by_port = _connects_by_port(session, done)
    for name in ("tcp4", "tcp6"):
        (event,) = by_port[done["ports"][name]]
        assert event.get("src_port") == done[name]["src_port"], f"{name}: {event}"


def test_failed_exec(kernel_session):
    _, session, done = kernel_session
    # subprocess tries each PATH directory in turn: the earlier execs fail with ENOENT.
    bash = session.command(argv=["-c", "/nonexistent/prog; true"], return_code=0)
    assert bash["pid"] == done["failed_exec_bash"] and bash["ppid"] == done["pid"]
    failed = session.command(path="/nonexistent/prog")
    assert failed["return_code"] == -errno.ENOENT
    assert failed["argv"] == []
    assert failed["ppid"] == bash["pid"]
    assert failed["program"] == "bash"   # the exec failed, so the name stayed the shell's


def test_non_utf8_and_newline_in_argv(kernel_session):
    _, session, done = kernel_session
    (echo,) = [c for c in session.commands if c["pid"] == done["echo_pid"]]
    assert echo["path"] == "/bin/echo" and echo["return_code"] == 0
    assert echo["escaped_fields"] == ["argv.0"]
    assert events.unescape(echo["argv"][0]) == b"\xff\xfeA\\B"
    assert echo["argv"][1] == "line1\nline2"
    assert echo["argv_truncated"] is False


def test_long_command_lines(kernel_session):
    """A successful exec's argv is the new image's own (mm->arg_start..arg_end): every argument,
    whole, up to ARGV_MAX bytes in all."""
    _, session, done = kernel_session
    (hundred,) = [c for c in session.commands if c["pid"] == done["hundred"]]
    assert hundred["argv"] == [f"hundred-{i}" for i in range(100)]
    assert hundred["argv_truncated"] is False

    (three_hundred,) = [c for c in session.commands if c["pid"] == done["three_hundred"]]
    assert three_hundred["argv"] == [f"three-hundred-{i}" for i in range(300)]
    assert three_hundred["argv_truncated"] is False

    (long_arg,) = [c for c in session.commands if c["pid"] == done["long_arg"]]
    assert long_arg["argv"] == ["L" * 5000]
    assert long_arg["argv_truncated"] is False

    (over,) = [c for c in session.commands if c["pid"] == done["over_argv_max"]]
    kept = "/bin/true\0" + "\0".join(over["argv"])
    assert over["argv_truncated"] is True
    assert len(kept.encode()) <= abi.ARGV_MAX and over["argv"][0] == "M" * 1000
    assert len(over["argv"]) >= abi.ARGV_MAX // 1001 - 1


# --- ancestry, exit status, signals ---------------------------------------------------------------

def test_nested_pids(recorder):
    result, session = recorder.record(["sh", "-c", 'sh -c "/bin/true; :"; :'])
    outer = session.command(argv=["-c", 'sh -c "/bin/true; :"; :'])
    inner = session.command(argv=["-c", "/bin/true; :"])
    true = session.command(path="/bin/true")
    assert outer["ppid"] == result.pid
    assert inner["ppid"] == outer["pid"]
    assert true["ppid"] == inner["pid"]
    assert len({outer["pid"], inner["pid"], true["pid"], result.pid}) == 4
    assert [c["pid"] for c in session.commands] == [outer["pid"], inner["pid"], true["pid"]]


@pytest.mark.parametrize("script, status", [("exit 3", 3), ("kill -KILL $$", 128 + 9)])
def test_exit_status(recorder, script, status):
    _, session = recorder.record(["sh", "-c", script], expect_status=status)
    assert session.end["exit_status"] == status


def test_sigterm_to_the_wrapper_ends_the_session(recorder):
    marker = f"30.{os.getpid()}1"   # a unique `sleep` argument to find the process by
    wrapper = recorder.popen(["sh", "-c", f"sleep {marker}; :"])
    try:
        recorder.wait_for(lambda e: e.get("argv") == [marker], what="the session's sleep")
        start = recorder.wait_for(lambda e: e["event"] == "session.start", what="session.start")
        cgroup_dir = os.path.join(recorder.cgroup_sessions, start["sid"])
        assert os.stat(cgroup_dir).st_ino == start["cgroup_id"]
        wrapper.send_signal(signal.SIGTERM)
        _, err = wrapper.communicate(timeout=20)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    leftovers = recorder.pids_with_argument(marker)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert wrapper.returncode == 128 + signal.SIGTERM, err
    assert leftovers == [], "a process of the session survived it"
    (session,) = recorder.sessions().values()
    assert session.end["exit_status"] == 128 + signal.SIGTERM
    assert session.events[-1] is session.end
    assert session.sid == start["sid"]
    assert not os.path.exists(cgroup_dir)


# --- concurrent sessions ---------------------------------------------------------------------------

def test_concurrent_sessions_see_only_their_own_processes(recorder):
    stop = threading.Event()
    outside_runs = []

    def outside():
        while not stop.is_set():
            subprocess.run(["/bin/echo", "outside-marker"], stdout=subprocess.DEVNULL)
            outside_runs.append(time.monotonic())
            time.sleep(0.05)

    loop = threading.Thread(target=outside)
    loop.start()
    try:
        wrappers = {name: recorder.popen(["sh", "-c", f"sleep 1.5; /bin/echo marker-{name}"])
                    for name in "AB"}
        outputs = {name: w.communicate(timeout=90) for name, w in wrappers.items()}
    finally:
        stop.set()
        loop.join()
    for name, w in wrappers.items():
        assert w.returncode == 0, outputs[name]
        assert outputs[name][0] == f"marker-{name}\n"
    assert len(outside_runs) > 20

    sessions = list(recorder.sessions().values())
    assert len(sessions) == 2
    seen = {}
    for session in sessions:
        (marker,) = [c["argv"] for c in session.commands_with(path="/bin/echo")]
        seen[marker[0]] = session
        assert all("outside-marker" not in c["argv"] for c in session.commands)
        cgroup_id = session.start["cgroup_id"]
        kernel = session.commands + session.disks + session.networks
        assert kernel and all(e["cgroup_id"] == cgroup_id for e in kernel)
    assert set(seen) == {"marker-A", "marker-B"}
    assert seen["marker-A"].start["cgroup_id"] != seen["marker-B"].start["cgroup_id"]


# --- the log itself ---------------------------------------------------------------------------------

def test_quiet_session_log_format(recorder):
    result, session = recorder.record(["/bin/true"])
    end = session.end
    assert end["lost_events"] == {"command": 0, "disk": 0, "network": 0}
    assert end["exit_status"] == 0 and end["enhanced_recording"] is True
    assert end["killed_processes"] == 0
    true = session.command(path="/bin/true")
    assert (true["argv"], true["return_code"], true["ppid"]) == ([], 0, result.pid)

    assert [e["ei"] for e in session.events] == list(range(len(session.events)))
    assert session.events[0]["event"] == "session.start"
    assert session.events[-1]["event"] == "session.end"

    with open(os.path.join(recorder.data_dir, "host_uuid")) as f:
        server_id = f.read().strip()
    lines = recorder.lines()
    assert len(lines) == len(session.events)
    uids = set()
    for line in lines:
        event = json.loads(line)   # every line is one whole JSON object
        assert isinstance(event, dict)
        missing = [k for k in ENVELOPE if k not in event]
        assert not missing, f"{event['event']} lacks {missing}"
        assert event["code"] == CODES[event["event"]]
        assert str(uuid.UUID(event["uid"])) == event["uid"]
        uids.add(event["uid"])
        assert TIME_FORMAT.match(event["time"]), event["time"]
        assert event["server_id"] == server_id
        assert event["sid"] == session.sid and event["namespace"] == "default"
        assert event["login"] == "root" and event["user"] == "root"
    assert len(uids) == len(lines)
    uuid.UUID(server_id)

    log_dir = os.path.join(recorder.data_dir, "log")
    day_file = os.path.join(log_dir, os.readlink(recorder.events_log))
    assert os.path.dirname(os.readlink(recorder.events_log)) == server_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\d\.00:00:00\.log", os.path.basename(day_file))
    for path, mode in ((log_dir, 0o700), (os.path.join(log_dir, server_id), 0o700),
                       (day_file, 0o600)):
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: mode {stat.S_IMODE(st.st_mode):o}"
        assert (st.st_uid, st.st_gid) == (0, 0), path


# --- background processes ---------------------------------------------------------------------------

def test_background_process_is_killed_by_default(recorder):
    marker = f"60.{os.getpid()}2"
    started = time.monotonic()
    # The pause lets nohup exec sleep before the shell exits (else the kill can come first).
    result, session = recorder.record(
        ["sh", "-c", f"nohup sleep {marker} >/dev/null 2>&1 & sleep 0.5; echo started"])
    elapsed = time.monotonic() - started
    leftovers = recorder.pids_with_argument(marker)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == [], "the background process outlived the session"
    assert result.stdout == "started\n"
    assert elapsed < 30
    # nohup tries each PATH directory in turn: the earlier execs fail with ENOENT.
    session.command(name="sleep", argv=[marker], return_code=0)
    assert session.end["killed_processes"] >= 1
    assert not os.path.exists(os.path.join(recorder.cgroup_sessions, session.sid))


def test_background_process_is_recorded_when_configured(recorder):
    recorder.configure("enhrec:\n  background_processes: record\n")
    started = time.monotonic()
    result, session = recorder.record(["sh", "-c", "(sleep 1; /bin/echo late-marker) & exit 0"])
    assert time.monotonic() - started >= 1
    late = session.command(path="/bin/echo", argv=["late-marker"])
    assert late["return_code"] == 0
    assert late["ei"] < session.end["ei"]
    assert session.end["killed_processes"] == 0
    assert result.stdout == "late-marker\n"
