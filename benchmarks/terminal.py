"""The terminal recording's figures (benchmarks/run.py, figure 8): a 20 MB `cat` through the
recorded terminal against the same `cat` on an unrecorded pty, the delay a keystroke's echo gains,
the relay's CPU time per MB of output and its memory.

The "terminal" is this process on a pty's master, as a terminal emulator or sshd is; the
workload runs bare on that pty, or as the command of a session of the installed wrapper.
"""

import errno
import fcntl
import hashlib
import os
import pty
import select
import shlex
import signal
import statistics
import struct
import termios
import time

import harness as h

ROWS, COLS = 40, 120
DONE = "TTY-BENCH-DONE"


class Pty:
    """argv on a fresh pty whose master we hold."""

    def __init__(self, argv):
        pid, fd = pty.fork()
        if pid == 0:
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
                os.execvpe(argv[0], argv, dict(h.environment(), TERM="xterm"))
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.early = b""   # what wait_raw read: the session may write as soon as it is raw

    def wait_raw(self, timeout=60.0):
        """Until the wrapper has put our terminal in raw mode: the session is about to run."""
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.fd)[3] & termios.ECHO:
            if time.monotonic() > deadline:
                raise RuntimeError("the wrapper never put the terminal in raw mode")
            if select.select([self.fd], [], [], 0.005)[0]:
                self.early += os.read(self.fd, 65536)

    def read_until(self, needle: bytes, timeout=120.0, keep=False):
        """Reads until needle; returns what came before it when keep."""
        deadline = time.monotonic() + timeout
        chunks, tail, seen = [self.early], self.early, self.early
        self.early = b""
        while needle not in tail:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise RuntimeError(f"no {needle!r} within {timeout}s")
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                raise RuntimeError(f"the session ended before {needle!r}: {seen[-300:]!r}") from None
            seen = seen[-300:] + data
            if keep:
                chunks.append(data)
            tail = tail[-len(needle):] + data
        if keep:
            whole = b"".join(chunks)
            return whole[:whole.rindex(needle)]
        return None

    def close(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    if not os.read(self.fd, 1 << 16):
                        break
                except OSError:
                    break
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                self.pid = None
                break
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def write_config(ws, name, enhrec_yaml=""):
    """A config of the workspace's, with an `enhrec:` section."""
    base = os.path.join(ws.dir, name)
    os.mkdir(base, 0o700)
    path = os.path.join(base, "enhrec.yaml")
    with open(path, "w") as f:
        f.write(f"teleport:\n  data_dir: {base}/data\n" + (f"enhrec:\n{enhrec_yaml}" if enhrec_yaml else ""))
    os.chmod(path, 0o600)
    return h.Config(path, os.path.join(base, "data"))


def make_text_file(path, megabytes):
    """Lines of printable text, numbered, `megabytes` MiB."""
    size = megabytes << 20
    body = bytes(32 + (i * 7) % 95 for i in range(70)) + b"\n"
    with open(path, "wb") as f:
        written, n = 0, 0
        while written < size:
            line = (b"%08d " % n + body)[:size - written]
            f.write(line)
            written += len(line)
            n += 1
    os.chmod(path, 0o644)


def relay_of(wrapper_pid):
    """The relay: the wrapper's child that holds the session pty's master (the watchdog, the
    wrapper's other fork, holds none)."""
    for child in h.children(wrapper_pid):
        try:
            fds = os.listdir(f"/proc/{child}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{child}/fd/{fd}") == "/dev/ptmx":
                    return child
            except OSError:
                continue
    raise RuntimeError(f"no relay among the children of the wrapper {wrapper_pid}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cat_once(wrap, path, relayed=True):
    """(seconds, intact, relay CPU seconds or None) for `cat path` on the terminal, from the go
    (a newline typed) to the marker echoed after it. `relayed`: the session has a relay."""
    command = ["sh", "-c", f"echo READY; read x; cat {path}; echo {DONE[:4]}''{DONE[4:]}; sleep 0.5"]
    p = Pty(wrap(command) if callable(wrap) else wrap + command)
    relay = None
    try:
        p.read_until(b"READY")
        relay = relay_of(p.pid) if wrap and relayed else None
        time.sleep(0.2)
        relay_before = cpu_seconds(relay) if relay else None
        begin = time.perf_counter()
        os.write(p.fd, b"\n")
        got = p.read_until(DONE.encode(), keep=True)
        seconds = time.perf_counter() - begin
        relay_cpu = cpu_seconds(relay) - relay_before if relay else None
    finally:
        p.close()
    with open(path, "rb") as f:
        expected = f.read().replace(b"\n", b"\r\n")   # the pty's ONLCR
    start = got.find(expected[:80])
    intact = start >= 0 and hashlib.sha256(got[start:start + len(expected)]).digest() == \
        hashlib.sha256(expected).digest()
    return seconds, intact, relay_cpu


def cat_figures(ws, megabytes, rounds):
    """Medians of interleaved rounds: bare pty, recorded (relay), kernel events only."""
    path = os.path.join(ws.dir, f"text-{megabytes}mb.txt")
    make_text_file(path, megabytes)
    recorded = write_config(ws, "tty-cat")
    unrelayed = write_config(ws, "tty-cat-off", "  tty_recording: off\n")
    h.run(recorded.argv(["/bin/true"]))   # the compiled-program cache, as for every session
    typescript = os.path.join(ws.dir, "typescript")

    def script(command):   # util-linux script(1): a relay in C, writing an uncompressed file
        return ["script", "-qf", "-c", shlex.join(command), typescript]
    runs = {"bare": [], "recorded": [], "off": [], "script": []}
    cpu, intact = [], []
    for _ in range(rounds):   # interleaved, so that other load hits each alike
        for name, wrap in (("bare", []), ("recorded", recorded.argv([])),
                           ("off", unrelayed.argv([])), ("script", script)):
            seconds, ok, relay_cpu = cat_once(wrap, path, relayed=name == "recorded")
            runs[name].append(seconds)
            intact.append(ok)
            if name == "recorded":
                cpu.append(relay_cpu)
    med = {k: statistics.median(v) for k, v in runs.items()}
    # Each round's own ratio too: on a shared 2-CPU machine they spread far wider than the
    # ratio of the medians shows (1.0x to 3.3x in one run here).
    per_round = [r / b for r, b in zip(runs["recorded"], runs["bare"])]
    return {"seconds": med, "runs": runs, "intact": all(intact),
            "ratio_per_round": {"min": min(per_round), "median": statistics.median(per_round),
                                "max": max(per_round)},
            "relay_cpu_ms_per_mb": statistics.median(cpu) * 1000 / megabytes}


def echo_delays(wrap, keys, busy=None):
    """Seconds from a byte typed to its echo, from a program in raw mode (`cat`, as a shell's
    line editor echoes). `busy`: a command run in the session's background meanwhile."""
    background = f"{busy} & " if busy else ""
    p = Pty(wrap + ["sh", "-c", f"{background}stty raw -echo; echo READY; exec cat"])
    delays = []
    try:
        if wrap:
            p.wait_raw()
        p.read_until(b"READY")
        time.sleep(0.3)
        for i in range(keys):
            key = bytes([97 + i % 26])
            time.sleep(0.003 + (i % 5) * 0.001)
            begin = time.perf_counter()
            os.write(p.fd, key)
            got = b""
            while key not in got:
                if not select.select([p.fd], [], [], 5)[0]:
                    raise RuntimeError("no echo within 5 s")
                got += os.read(p.fd, 1024)
            delays.append(time.perf_counter() - begin)
    finally:
        # bare: the shell and its background job; recorded: the wrapper, which passes it on
        os.killpg(p.pid, signal.SIGTERM)
        p.close()
    return delays


def echo_figures(ws, keys, rounds, busy_command):
    recorded = write_config(ws, "tty-echo")
    wrap = recorded.argv([])
    out = {}
    for label, busy in (("idle", None), ("busy", busy_command)):
        bare, relayed = [], []
        for _ in range(rounds):
            bare += echo_delays([], keys, busy)
            relayed += echo_delays(wrap, keys, busy)
        out[label] = {"bare_p50": statistics.median(bare) * 1000,
                      "bare_p99": _p99(bare) * 1000,
                      "recorded_p50": statistics.median(relayed) * 1000,
                      "recorded_p99": _p99(relayed) * 1000}
    return out


def _p99(values):
    return statistics.quantiles(values, n=100)[98]


def relay_memory(ws):
    """The relay's own memory, with one idle session on a terminal: RSS, PSS, and what is its
    alone (private pages; the rest it shares with its wrapper, of which it is a fork)."""
    config = write_config(ws, "tty-memory")
    p = Pty(config.argv(["sh", "-c", "echo READY; exec sleep 100"]))
    try:
        p.wait_raw()
        p.read_until(b"READY")
        time.sleep(0.5)
        relay = relay_of(p.pid)
        status = h.proc_status(relay)
        with open(f"/proc/{relay}/smaps_rollup") as f:
            private = sum(int(line.split()[1]) for line in f
                          if line.startswith(("Private_Clean:", "Private_Dirty:")))
        wrapper = h.proc_status(p.pid)
    finally:
        os.kill(p.pid, signal.SIGTERM)
        p.close()
    return {"rss_kb": status["VmRSS"], "pss_kb": status["Pss"], "private_kb": private,
            "wrapper_pss_kb": wrapper["Pss"]}
