"""What the benchmarks share: the machine, the installed wrapper with a throw-away config, the
workload programs, reading a session's events back, and statistics.

Everything runs the installed program (/usr/local/bin/enhrec-wrap, the code in
/opt/enhrec-wrap/venv) as root, never the source tree.
"""

import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

WRAPPER = "/usr/local/bin/enhrec-wrap"
VENV_PYTHON = "/opt/enhrec-wrap/venv/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = os.path.join(HERE, "workloads")
SESSION_START_TIMEOUT = 60.0
# How long an ended session's detached tracepoints stay registered (enhrec_wrap.kernel.loader.HOLD_SECONDS):
# a measurement "with no session" must start later than that.
TRACEPOINT_HOLD_SECONDS = 2


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
        """{sid: [events in ei order]} of everything logged with this config."""
        log = os.path.join(self.data_dir, "log", "events.log")
        grouped = {}
        if os.path.exists(log):
            with open(log, "rb") as f:
                for line in f:
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

    def started(self) -> int:
        return sum(1 for events in self.sessions().values()
                   if any(e["event"] == "session.start" for e in events))


def program_cache_entry(config: Config) -> str:
    """The compiled-program cache file the wrapper uses with this config."""
    code = ("import sys\nfrom enhrec_wrap.kernel import loader as bpf, program_cache\nfrom enhrec_wrap.config import load_config\n"
            "print(program_cache.CACHE_DIR + '/' + bpf.program_cache_key(load_config(sys.argv[1])) + '.json')")
    return run([VENV_PYTHON, "-I", "-c", code, config.path]).stdout.strip()


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
    """n recorded sessions running `sleep`, started one by one and each waited for until it
    records (session.start is written after the programs are attached)."""

    def __init__(self, config: Config, n: int):
        self.config = config
        self.procs = []
        before = config.started()
        for i in range(n):
            self.procs.append(subprocess.Popen(
                config.argv(["/bin/sleep", "100000"]), env=environment(),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            deadline = time.monotonic() + SESSION_START_TIMEOUT
            while config.started() < before + i + 1:
                if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("an idle session did not start: "
                                       + self.procs[-1].stderr.read().decode(errors="replace"))
                time.sleep(0.05)
        time.sleep(0.2)   # past session.start: the wrapper is in its poll loop

    @property
    def pids(self):
        return [p.pid for p in self.procs]

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
        self.procs = []


def children(pid) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


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
