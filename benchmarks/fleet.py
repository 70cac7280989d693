"""Shipping the audit log to a collector (issue 13): lines per second, and the lag of each line from
the host's day file to the collector's copy, under a recorded session of N opens (ship) and at a
steady rate (paced); and what sealing a line into the chain costs (seal_cost).

Two rsyslogd on 127.0.0.1 with the project's configs (rendered by scripts/install-rsyslog.sh, as
`make install-forwarder` and `install-collector` render them), each with its own work directory
and port. While the session runs, one thread polls both files every millisecond and notes when
each seq first appears in each; a line's lag is the difference. Lines per second shipped: the
lines over the time from the first line on the host to the last at the collector.
"""

import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid

import harness as h

RSYSLOGD = "/usr/sbin/rsyslogd"
RENDER = os.path.join(os.path.dirname(h.HERE), "scripts", "install-rsyslog.sh")
POLL_SECONDS = 0.001
DELIVERY_TIMEOUT = 600
_SEQ = re.compile(rb',"seq":(\d+),"prev":"[0-9a-f]{64}","epoch":\d+,"mac":"[0-9a-f]{64}"\}\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, root, side, args):
        self.work = os.path.join(root, "work")
        os.makedirs(self.work, mode=0o700)
        self.conf = os.path.join(root, f"{side}.conf")
        self.pidfile = os.path.join(root, f"{side}.pid")
        h.run(["bash", RENDER, "render", side, self.conf, *args(self.work)])
        h.run([RSYSLOGD, "-N1", "-f", self.conf])
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.pidfile):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rsyslogd ({side}) did not start")
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Watcher(threading.Thread):
    """When each seq first shows up in the day files of a directory (monotonic seconds)."""

    def __init__(self, directory):
        super().__init__(daemon=True)
        self.directory = directory
        self.seen = {}
        self.copies = 0
        self.offsets = {}
        self.pending = {}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            self.poll()
            time.sleep(POLL_SECONDS)

    def poll(self):
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(".00:00:00.log")]
        except FileNotFoundError:
            return
        for name in names:
            path = os.path.join(self.directory, name)
            with open(path, "rb") as f:
                f.seek(self.offsets.get(name, 0))
                data = f.read()
            if not data:
                continue
            now = time.monotonic()
            self.offsets[name] = self.offsets.get(name, 0) + len(data)
            data = self.pending.get(name, b"") + data
            cut = data.rfind(b"\n") + 1
            self.pending[name] = data[cut:]
            for m in _SEQ.finditer(data, 0, cut):
                self.copies += 1
                self.seen.setdefault(int(m.group(1)), now)


def ship(ws, opens: int) -> dict:
    """A recorded session of `opens` opens (the installed wrapper) while both daemons run."""
    config = ws.config()
    return _shipping(config, lambda server_id: h.run(config.argv([ws.openloop, str(opens), ws.target])))


def paced(ws, rate: int, seconds: float) -> dict:
    """Sealed lines written by the installed AuditLog at `rate` lines/s, in batches of 20 ms (a
    recorder's batch window)."""
    from enhrec_wrap.log.auditlog import AuditLog

    config = ws.config()
    line = (b'{"ei":1,"event":"session.disk","code":"T4001I","time":"2026-11-28T05:38:51.812Z",'
            b'"path":"' + b"/tmp/enhrec-bench/f" * 12 + b'","flags":0,"return_code":3}\n')

    def write(server_id):
        log = AuditLog(os.path.join(config.data_dir, "log"), server_id)
        batch = max(1, rate // 50)
        total = int(rate * seconds)
        start = time.monotonic()
        for done in range(0, total, batch):
            log.write([line] * min(batch, total - done))
            ahead = (done + batch) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        log.close()

    return _shipping(config, write)


def seal_cost(lines: int = 100_000) -> float:
    """Microseconds per line of chain.seal for the open events of a recording, in batches of
    512 (kernel/rings.py's HAND_RECORDS)."""
    from enhrec_wrap.log import chain

    line = (b'{"ei":5,"event":"session.disk","code":"T4001I","uid":"9c0b0b0b-1111-2222-3333-'
            b'444455556666","time":"2026-11-28T05:38:51.812Z","sid":"4f1c0b0b-1111-2222-3333-'
            b'444455556666","namespace":"default","server_id":"72480b0b-1111-2222-3333-'
            b'444455556666","server_hostname":"vm","cluster_name":"vm","login":"root","user":"root",'
            b'"pid":2653,"ppid":2650,"cgroup_id":4294968064,"program":"openloop","path":'
            b'"/tmp/enhrec-bench-x/target-file","flags":0,"return_code":3}\n')
    batch = [line] * 512
    key = bytes(32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        prev = chain.GENESIS
        for seq in range(1, lines, 512):
            _, prev = chain.seal(batch, seq, prev, 0, key)
        best = min(best, (time.perf_counter() - start) / lines)
    return best * 1e6


def _shipping(config, workload) -> dict:
    server_id = str(uuid.uuid4())
    os.makedirs(os.path.join(config.data_dir, "log", server_id), mode=0o700)
    with open(os.path.join(config.data_dir, "host_uuid"), "w") as f:
        f.write(server_id)
    root = os.path.join(os.path.dirname(config.data_dir), "fleet")
    collector_data = os.path.join(root, "collector-data")
    os.makedirs(collector_data, mode=0o700)
    port = free_port()
    collector = Daemon(os.path.join(root, "collector"), "collector", lambda work: [
        str(port), "127.0.0.1", os.path.join(collector_data, "log"), str(uuid.uuid4()), work])
    forwarder = Daemon(os.path.join(root, "host"), "forwarder", lambda work: [
        "127.0.0.1", str(port), os.path.join(config.data_dir, "log"), server_id, work])
    on_host = Watcher(os.path.join(config.data_dir, "log", server_id))
    at_collector = Watcher(os.path.join(collector_data, "log", server_id))
    try:
        on_host.start()
        at_collector.start()
        workload(server_id)
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        time.sleep(0.5)   # the watcher's last poll of the host's file
        while at_collector.seen.keys() < on_host.seen.keys() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        on_host.stopping.set()
        at_collector.stopping.set()
        forwarder.stop()
        collector.stop()
    missing = len(on_host.seen.keys() - at_collector.seen.keys())
    lags = sorted(at_collector.seen[s] - t for s, t in on_host.seen.items() if s in at_collector.seen)
    span = max(at_collector.seen.values()) - min(on_host.seen.values())
    return {
        "lines": len(on_host.seen), "missing": missing,
        "duplicates": at_collector.copies - len(at_collector.seen),
        "lines_per_second": len(at_collector.seen) / span,
        "lag_median_ms": statistics.median(lags) * 1000,
        "lag_p99_ms": lags[int(len(lags) * 0.99)] * 1000,
        "lag_max_ms": lags[-1] * 1000,
    }
