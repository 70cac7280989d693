"""What the benchmarks share: the machine, the installed wrapper with a throw-away config, the
workload programs, the host's shared kernel side, reading a session's events back, and
statistics.

Everything runs the installed program (/usr/local/bin/enhrec-wrap, the code in
/opt/enhrec-wrap/venv) as root, never the source tree. ENHREC_WRAP names another installed
wrapper (a private `make install PREFIX=... BINDIR=...`); its venv is the one its #! line names.
"""

import contextlib
import fcntl
import glob
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time

WRAPPER = os.environ.get("ENHREC_WRAP", "/usr/local/bin/enhrec-wrap")
PIN_ROOT = "/sys/fs/bpf/enhrec-wrap"   # kernel/host.py
KERNEL_TESTS_LOCK = "/run/enhrec-wrap-kernel-tests.lock"   # tests/integration/conftest.py
HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.join(HERE, "workloads")
SESSION_START_TIMEOUT = 60.0
# How long the kernel may take to release an unpinned set's attachments (each waits for an RCU
# grace period, kernel/host.py): a measurement "with no programs" starts after that.
DETACH_TIMEOUT = 30.0
# ... and the kernel goes on tearing the attachments down after the programs are gone: a set
# loaded within 0.25 s of that took 300 to 430 ms, after 0.5 to 2 s 120 to 190 ms, as many
# cached starts (measured here, 2026-12-01). An idle unload comes 300 s after the last session,
# so the first session after one finds a settled kernel: the benchmark waits for that too.
SETTLE_SECONDS = 2.0


def _venv_python(wrapper: str) -> str:
    """The interpreter of an installed entry script (`#!/opt/enhrec-wrap/venv/bin/python3 -I`)."""
    try:
        with open(wrapper) as f:
            first = f.readline()
    except OSError:
        return "/opt/enhrec-wrap/venv/bin/python3"
    return first[2:].split()[0] if first.startswith("#!") else "/opt/enhrec-wrap/venv/bin/python3"


VENV_PYTHON = _venv_python(WRAPPER)


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_gib": round(mem_kb / 2**20),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def require_root():
    if os.geteuid() != 0:
        raise SystemExit("benchmarks: must run as root (they load BPF programs): sudo make bench")
    if not os.access(WRAPPER, os.X_OK):
        raise SystemExit(f"benchmarks: {WRAPPER} is missing: run `make install`")


def ensure_compiler():
    """gcc with a static libc (the workload programs, and figure 6's build)."""
    if shutil.which("gcc") and shutil.which("make") and glob.glob("/usr/lib/*/libc.a"):
        return
    print("benchmarks: installing gcc, make and libc6-dev (apt-get)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "gcc", "make", "libc6-dev"], check=True, env=env, stdout=subprocess.DEVNULL)


class Workspace:
    """A temporary directory with the compiled workloads and a root-owned config whose data_dir
    is inside it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="enhrec-bench-")
        os.chmod(self.dir, 0o755)
        self.bin = os.path.join(self.dir, "bin")
        os.mkdir(self.bin)
        self.openloop = self._build("openloop", static=True)
        self.forkexec = self._build("forkexec", static=True)
        self.target = os.path.join(self.dir, "target-file")   # what openloop opens
        with open(self.target, "w") as f:
            f.write("x\n")
        self._configs = 0

    def _build(self, name, static):
        out = os.path.join(self.bin, name)
        cmd = ["gcc", "-O2", "-o", out, os.path.join(WORKLOADS, f"{name}.c")]
        if static:
            cmd.insert(1, "-static")
        subprocess.run(cmd, check=True)
        return out

    def config(self, **recording) -> "Config":
        """A fresh data_dir and config; `recording` sets enhanced_recording keys."""
        self._configs += 1
        base = os.path.join(self.dir, f"run{self._configs}")
        os.mkdir(base, 0o700)
        data_dir = os.path.join(base, "data")
        path = os.path.join(base, "enhrec.yaml")
        text = f"teleport:\n  data_dir: {data_dir}\n"
        if recording:
            text += "ssh_service:\n  enhanced_recording:\n"
            text += "".join(f"    {k}: {json.dumps(v)}\n" for k, v in recording.items())
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return Config(path, data_dir)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Config:
    def __init__(self, path, data_dir):
        self.path = path
        self.data_dir = data_dir

    def argv(self, command):
        return [WRAPPER, "--config", self.path, "--", *command]

    def sessions(self) -> dict:
        """{sid: [events in ei order]} of everything logged with this config. A last line
        without its newline is one being appended while a session runs: left for later."""
        log = os.path.join(self.data_dir, "log", "events.log")
        grouped = {}
        if os.path.exists(log):
            with open(log, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    event = json.loads(line)
                    grouped.setdefault(event["sid"], []).append(event)
        for events in grouped.values():
            events.sort(key=lambda e: e["ei"])
        return grouped

    def only_session(self) -> list:
        sessions = self.sessions()
        if len(sessions) != 1:
            raise RuntimeError(f"expected one session in {self.data_dir}, found {len(sessions)}")
        return next(iter(sessions.values()))

    def wait_for_end(self, timeout: float = 60.0) -> dict:
        """The session.end of the one session logged with this config, once it is there (a
        dead recorder's watchdog writes it after the wrapper is gone)."""
        deadline = time.monotonic() + timeout
        while True:
            sessions = self.sessions()
            ends = [e for events in sessions.values() for e in events
                    if e["event"] == "session.end"]
            if ends:
                return ends[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no session.end in {self.data_dir} after {timeout:.0f} s")
            time.sleep(0.05)

    def started(self) -> int:
        return sum(1 for events in self.sessions().values()
                   if any(e["event"] == "session.start" for e in events))


# -- the host's one set of programs (kernel/host.py), asked through the installed package ---------

_STATE = """
import json, os
from enhrec_wrap.kernel import host, program_cache
import inspect
from enhrec_wrap.kernel.syscalls import obj_get
version = host.program_version()
state = {"version": version, "sessions": None,
         "holds_links": "links" in inspect.signature(host.HostPrograms.__init__).parameters,
         "cache_entry": os.path.join(program_cache.CACHE_DIR, version + ".json")}
with host.HostLock():
    state["pinned"] = host.pinned_versions()
    if version in state["pinned"]:
        programs = host.HostPrograms.open(version)
        if programs is not None:
            state["sessions"] = programs.sessions()
            programs.close()
            meta = host.read_meta(obj_get(os.path.join(host.PIN_ROOT, version, "map-meta")))
            state["loaded_at"] = meta["loaded"]
print(json.dumps(state))
"""
_UNLOAD = """
import sys
from enhrec_wrap.kernel import host
with host.HostLock():
    sys.exit(0 if host.unload_if_unused(host.program_version()) else 3)
"""


def kernel_state() -> dict:
    """The installed code's set: its version, whether it is pinned, which cgroup ids are
    registered with it (None: not pinned) and when it was loaded (time.time(), `loaded_at`),
    the other versions pinned, its cache entry's path."""
    return json.loads(run([VENV_PYTHON, "-I", "-c", _STATE]).stdout)


def set_program_ids(version: str) -> set:
    """The kernel ids of the programs a pinned set's links attach (bpftool); a pin that goes
    while it is read (the set being unloaded) is left out."""
    pin_dir = os.path.join(PIN_ROOT, version)
    ids = set()
    try:
        names = sorted(os.listdir(pin_dir))
    except FileNotFoundError:
        return ids
    for name in names:
        if name.startswith("link-"):
            shown = subprocess.run(["bpftool", "-j", "link", "show", "pinned",
                                    os.path.join(pin_dir, name)], capture_output=True, text=True)
            if shown.returncode == 0:
                ids.add(json.loads(shown.stdout)["prog_id"])
    return ids


def loaded_programs() -> list:
    """Every BPF program loaded on the host: [(id, type, name)]."""
    return [(p["id"], p.get("type", "?"), p.get("name", ""))
            for p in json.loads(run(["bpftool", "-j", "prog", "show"]).stdout)]


def unload_set(timeout: float = 60.0):
    """Unloads the installed code's set (as an idle host does), and waits until the kernel has
    released its programs: after this, no program of ours runs on any syscall. Sessions that
    are still registered (ending ones, or other work on the machine) are waited for, up to
    `timeout`; then it fails."""
    deadline = time.monotonic() + timeout
    while True:
        state = kernel_state()
        if state["version"] not in state["pinned"]:
            return
        ids = set_program_ids(state["version"])
        inode = SetWatch.expect_unload(state["version"])
        result = subprocess.run([VENV_PYTHON, "-I", "-c", _UNLOAD], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, env=environment())
        if result.returncode == 0:
            break
        SetWatch.unexpect(inode)
        if result.returncode != 3:
            raise RuntimeError(f"unloading the kernel programs failed: {result.stderr.strip()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot unload the kernel programs {state['version'][:12]}: "
                               f"{len(state['sessions'] or [])} session(s) still use them after "
                               f"{timeout:.0f} s (not the benchmark's?); run it when no other "
                               "session is recording")
        time.sleep(0.2)
    deadline = time.monotonic() + DETACH_TIMEOUT
    while ids & {p[0] for p in loaded_programs()}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the kernel still holds the unloaded programs after "
                               f"{DETACH_TIMEOUT:.0f} s")
        time.sleep(0.05)
    time.sleep(SETTLE_SECONDS)


@contextlib.contextmanager
def kernel_to_ourselves():
    """The machine's lock for runs that unload the host's programs (the integration tests'
    kernel_to_ourselves fixture takes it too): one such run at a time, since checkouts and
    development copies of the same programs share one set."""
    fd = os.open(KERNEL_TESTS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class SetWatch(threading.Thread):
    """Watches the installed code's set in bpffs (its pin directory's inode every 50 ms, the
    sessions registered with it every 0.25 s) and records each time it went away without the
    benchmark unloading it: (time.time(), sessions registered at the last look). Something
    else on the machine unloaded it; a session registered with it then goes on unrecorded
    without a lost count (seen here while other checkouts ran their tests: 852 and 52 of 1,000
    execs recorded, lost 0). A figure measured across such an unload is not valid. (The look
    at the sessions is a bpftool run: 4 ms of CPU every 0.25 s.)"""
    _ours = set()   # inodes of the pin directories the benchmark is unloading
    _lock = threading.Lock()

    def __init__(self, version: str):
        super().__init__(name="set-watch", daemon=True)
        self.pin_dir = os.path.join(PIN_ROOT, version)
        self.external = []
        self._stopping = threading.Event()

    @classmethod
    def expect_unload(cls, version: str):
        """The set as pinned now is about to be unloaded by the benchmark: its inode."""
        try:
            inode = os.stat(os.path.join(PIN_ROOT, version)).st_ino
        except OSError:
            return None
        with cls._lock:
            cls._ours.add(inode)
        return inode

    @classmethod
    def unexpect(cls, inode):
        with cls._lock:
            cls._ours.discard(inode)

    def run(self):
        seen, registered, tick = self._inode(), 0, 0
        while not self._stopping.wait(0.05):
            now = self._inode()
            tick += 1
            if now is not None and tick % 5 == 0:
                registered = self._registered(registered)
            if seen is not None and now != seen:
                with SetWatch._lock:
                    if seen in SetWatch._ours:
                        SetWatch._ours.discard(seen)
                    else:
                        self.external.append((time.time(), registered))
                registered = 0
            seen = now

    def _inode(self):
        try:
            return os.stat(self.pin_dir).st_ino
        except OSError:
            return None

    def _registered(self, last: int) -> int:
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned",
                               os.path.join(self.pin_dir, "map-session_rings")],
                              capture_output=True, text=True)
        try:
            return len(json.loads(dump.stdout)) if dump.returncode == 0 else last
        except ValueError:
            return last

    def stop(self):
        self._stopping.set()
        self.join()


def wait_unregistered(timeout: float = 60.0):
    """Until no session is registered with the set any more (ended sessions' watchdogs take
    their rings out after the wrappers have exited), and the kernel has settled."""
    deadline = time.monotonic() + timeout
    while kernel_state()["sessions"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"sessions still registered {timeout:.0f} s after the "
                               "benchmark's ended (not the benchmark's?)")
        time.sleep(0.1)
    time.sleep(SETTLE_SECONDS)


def empty_program_cache():
    """Removes the installed code's compiled-program cache entry: its next load compiles."""
    try:
        os.unlink(kernel_state()["cache_entry"])
    except FileNotFoundError:
        pass


def environment() -> dict:
    """Ours without sudo's variables: with SUDO_UID set the wrapper runs the session as the sudo
    caller, and the benchmarks are about root sessions."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    kwargs.setdefault("env", environment())
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    result = subprocess.run(argv, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr.strip()}")
    return result


def timed(argv, **kwargs) -> float:
    """Wall time of one run, in seconds, from before fork to after wait."""
    start = time.perf_counter()
    run(argv, **kwargs)
    return time.perf_counter() - start


def timed_exit(argv) -> tuple:
    """(seconds until the process exited, seconds until its stderr was closed) of one run.
    A shell in a terminal waits for the first; sshd without a terminal, and subprocess with a
    pipe, for the second: the wrapper's watchdog keeps stderr (to tell the user) until it has
    taken the session's rings out after the wrapper's exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=environment())
    status = proc.wait()
    exited = time.perf_counter()
    err = proc.stderr.read()
    closed = time.perf_counter()
    proc.stderr.close()
    if status != 0:
        raise RuntimeError(f"{argv} exited {status}: {err.decode(errors='replace').strip()}")
    return exited - start, closed - start


def loop_seconds(argv, **kwargs) -> float:
    """A workload program's own report of its loop's wall time (its stdout's last line)."""
    return loop_times(argv, **kwargs)[0]


def loop_times_and_peak(argv) -> tuple:
    """loop_times() of a command, and the peak RSS (kB) of its biggest process: run from a
    Python of its own, whose waited-for children are only this command's processes."""
    code = ("import resource, subprocess, sys\n"
            "out = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE).stdout\n"
            "sys.stdout.write(out.decode())\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    lines = run([VENV_PYTHON, "-I", "-c", code, *argv]).stdout.strip().splitlines()
    wall, cpu = lines[-2].split()
    return float(wall), float(cpu), int(lines[-1])


def loop_times(argv, **kwargs) -> tuple:
    """A workload program's own report: (wall seconds of its loop, CPU seconds it and its
    children used)."""
    wall, cpu = run(argv, **kwargs).stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


class IdleSessions:
    """n recorded sessions of `sleep 900` (issue 8's idle session), started one by one and each
    waited for until it records (session.start is written once its rings are registered)."""

    def __init__(self, config: Config, n: int):
        self.config = config
        self.procs = []
        before = config.started()
        try:
            for i in range(n):
                self.procs.append(subprocess.Popen(
                    config.argv(["/bin/sleep", "900"]), env=environment(),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                deadline = time.monotonic() + SESSION_START_TIMEOUT
                while config.started() < before + i + 1:
                    if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("an idle session did not start: " + self._stderr())
                    time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        time.sleep(0.2)   # past session.start: the wrapper is in its poll loop

    def _stderr(self) -> str:
        proc = self.procs[-1]
        if proc.poll() is None:
            return "no session.start within the timeout"
        return proc.stderr.read().decode(errors="replace").strip()

    @property
    def pids(self):
        """The recorders' (each session's wrapper process)."""
        return [p.pid for p in self.procs]

    def processes(self) -> list:
        """Per session: (recorder pid, [watchdog pids]), the session's own processes that are
        not its command."""
        return [(pid, [c for c in children(pid) if process_name(c) == WATCHDOG_NAME])
                for pid in self.pids]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)   # forwarded to sleep; the session ends normally
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stderr.close()
        self.procs = []


WATCHDOG_NAME = "enhrec-watchdog"   # session/watchdog.py NAME


def children(pid) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def process_name(pid) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def proc_status(pid) -> dict:
    """VmRSS, VmHWM (kB) and Pss (kB, from smaps_rollup) of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Name"):
                out[key] = value.split()[0] if key == "Name" else int(value.split()[0])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    return out


def pss_split(pid) -> dict:
    """A process's PSS (kB) by kind of mapping, from /proc/PID/smaps: `rings` (BPF maps mapped
    into it: a session's ring buffers), `anon` (its heap and other anonymous memory: Python's
    objects), `file` (the interpreter, libraries and other files, shared with every process
    that maps them) and `total`."""
    split = {"rings": 0, "anon": 0, "file": 0}
    kind = "anon"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                name = head[5].strip() if len(head) > 5 else ""
                kind = ("rings" if name.startswith("anon_inode:bpf") else
                        "file" if name.startswith("/") else "anon")
            elif head[0] == "Pss:":
                split[kind] += int(head[1])
    split["total"] = sum(split.values())
    return split


def ring_kernel_bytes(pid) -> int:
    """Kernel memory of the ring buffers a process holds (each map once, from fdinfo's memlock):
    not in any process's PSS."""
    seen = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if info.get("map_type", "").strip() == "27":   # BPF_MAP_TYPE_RINGBUF
            seen[info["map_id"].strip()] = int(info["memlock"])
    return sum(seen.values())


def paused(end: dict) -> str:
    """What session.end says of backpressure (session/backpressure.py): how often and how long
    the session was paused while its recorder caught up."""
    if "pauses" not in end:
        return "no backpressure fields in session.end"
    return f"paused {end['pauses']:,} times, {end['paused_seconds']:.2f} s"


def kernel_events(session_events, kind):
    return [e for e in session_events if e["event"] == kind]


def session_end(session_events):
    ends = [e for e in session_events if e["event"] == "session.end"]
    if len(ends) != 1:
        raise RuntimeError(f"expected one session.end, found {len(ends)}")
    return ends[0]


def median(values):
    return statistics.median(values)


def p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_with_peak(argv) -> tuple:
    """(stdout lines, wall seconds, peak RSS in kB of its biggest process, CPU seconds of all
    its processes) of a command, run from a Python of its own, whose waited-for children are
    only this command's processes."""
    code = ("import resource, subprocess, sys, time\n"
            "start = time.perf_counter()\n"
            "out = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE).stdout\n"
            "wall = time.perf_counter() - start\n"
            "sys.stdout.write(out.decode())\n"
            "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(wall, r.ru_maxrss, r.ru_utime + r.ru_stime)")
    lines = run([VENV_PYTHON, "-I", "-c", code, *argv]).stdout.strip().splitlines()
    wall, peak, cpu = lines[-1].split()
    return lines[:-1], float(wall), int(peak), float(cpu)


def session_cgroup_dir(sid: str, cgroup_path: str = "/cgroup2") -> str:
    """A session's cgroup leaf (host/cgroup.py leaf_dir) with the default cgroup_path."""
    return os.path.join(cgroup_path, "enhrec", sid)


def kill_and_wait_empty(proc, cgroup_dir: str, timeout: float = 10.0) -> float:
    """SIGKILLs a session's recorder and returns the seconds until its cgroup is empty
    (cgroup.events says `populated 0`, or the leaf is gone). The kernel wakes a poll of
    cgroup.events when it changes; polled each millisecond as well."""
    fd = os.open(os.path.join(cgroup_dir, "cgroup.events"), os.O_RDONLY)
    try:
        if b"populated 1" not in os.pread(fd, 4096, 0):
            raise RuntimeError(f"{cgroup_dir} is empty before the kill")
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        start = time.perf_counter()
        os.kill(proc.pid, signal.SIGKILL)
        while time.perf_counter() - start < timeout:
            poller.poll(1)
            try:
                if b"populated 0" in os.pread(fd, 4096, 0):
                    return time.perf_counter() - start
            except OSError:
                return time.perf_counter() - start   # removed: emptied first
        raise RuntimeError(f"{cgroup_dir} still populated {timeout:.0f} s after the SIGKILL")
    finally:
        os.close(fd)
