"""Issue 13 end to end: the host's audit log shipped by rsyslog RELP to a collector, through faults.

Two rsyslogd on 127.0.0.1, each with its own config (the project's, rendered by
scripts/install-rsyslog.sh as `make install-forwarder` / `install-collector` render them), work
directory, pid file and port: a "host" following the wrapper's day files, and a "collector"
writing them into a data_dir of its own. Real SSH sessions are recorded while the collector is
killed -9 and restarted, and the host's rsyslogd is stopped (SIGTERM) and restarted. Then every
(server_id, seq) the host wrote is at the collector (duplicates counted), `enhrec verify` passes on
both sides with the verification key, and a line edited on the host afterwards fails verify there
while the collector's copy still verifies. Nothing here skips: without rsyslog, the test fails.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import uuid

import pytest

ENHREC = "/usr/local/bin/enhrec"
RSYSLOGD = "/usr/sbin/rsyslogd"
RENDER = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "install-rsyslog.sh"
# Each bound on the whole path: delivery after the last fault, a daemon's start and stop.
DELIVERY_TIMEOUT = 120
START_TIMEOUT = 10
STOP_TIMEOUT = 60   # the forwarder's queue gets 20 s to drain at a stop (its config)
# The recorded workload: opens paced over some seconds, so that the faults fall mid-stream.
OPENS = 20000
WORKLOAD = ("python3 -c 'import time\n"
            f"for i in range({OPENS}):\n"
            "    open(\"/dev/null\").close()\n"
            "    time.sleep(0.002) if i % 4 == 0 else None'")   # about 12 s
def _run(argv, env=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=STOP_TIMEOUT, env=env)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_TRAILER = re.compile(rb',"seq":(\d+),"prev":"[0-9a-f]{64}","epoch":\d+,"mac":"[0-9a-f]{64}"\}\n\Z')


class Rsyslogd:
    """One rsyslogd in the foreground with a rendered config; stopped by its pid only."""

    def __init__(self, root, side, args, env=None):
        self.root = root
        self.work = os.path.join(root, "work")
        os.makedirs(self.work, mode=0o700)
        self.conf = os.path.join(root, f"{side}.conf")
        self.pidfile = os.path.join(root, f"{side}.pid")
        rendered = _run(["bash", str(RENDER), "render", side, self.conf, *args(self.work)],
                        env={**os.environ, **(env or {})})
        assert rendered.returncode == 0, rendered.stderr
        check = _run([RSYSLOGD, "-N1", "-f", self.conf])
        assert check.returncode == 0, f"rsyslogd -N1 rejects {self.conf}: {check.stderr}"
        self.proc = None
        self.log = open(os.path.join(root, f"{side}.out"), "ab")

    def start(self):
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        # The pid file is written once the inputs are set up (imfile watching, imrelp listening).
        while not os.path.exists(self.pidfile):
            assert self.proc.poll() is None, f"rsyslogd exited: {self.output()}"
            assert time.monotonic() < deadline, f"rsyslogd did not start: {self.output()}"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"rsyslogd did not stop within {STOP_TIMEOUT} s after {sig.name}")
        finally:
            self.proc = None

    def output(self):
        with open(self.log.name, "rb") as f:
            return f.read()[-2000:].decode(errors="replace")


def day_files(data_dir, server_id):
    directory = os.path.join(data_dir, "log", server_id)
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.endswith(".00:00:00.log"))


def seqs(data_dir, server_id):
    """{seq: how many lines carry it} over the host's day files under data_dir."""
    found = {}
    for path in day_files(data_dir, server_id):
        with open(path, "rb") as f:
            for line in f:
                m = _TRAILER.search(line)
                if m:
                    seq = int(m.group(1))
                    found[seq] = found.get(seq, 0) + 1
    return found


def verify(config, key):
    return _run([ENHREC, "--config", config, "verify", "--key", key])


@pytest.fixture
def fleet(host, work_dir):
    server_id = open(os.path.join(host.data_dir, "host_uuid")).read().strip()
    root = os.path.join(work_dir, "fleet")
    collector_data = os.path.join(root, "collector-data")
    os.makedirs(collector_data, mode=0o700)
    port = _free_port()
    collector = Rsyslogd(os.path.join(root, "collector"), "collector", lambda work: [
        str(port), "127.0.0.1", os.path.join(collector_data, "log"), str(uuid.uuid4()), work])
    forwarder = Rsyslogd(os.path.join(root, "host"), "forwarder", lambda work: [
        "127.0.0.1", str(port), os.path.join(host.data_dir, "log"), server_id, work])
    collector_config = os.path.join(root, "collector.yaml")
    with open(collector_config, "w") as f:
        f.write(f"teleport:\n  data_dir: {collector_data}\n")
    os.chmod(collector_config, 0o644)
    collector.start()
    forwarder.start()
    try:
        yield forwarder, collector, server_id, collector_data, collector_config
    finally:
        forwarder.stop()
        collector.stop()


def test_the_host_log_reaches_the_collector_through_faults_and_verifies_there(host, fleet,
                                                                              verification_key):
    forwarder, collector, server_id, collector_data, collector_config = fleet
    key = verification_key
    session = subprocess.Popen(host.ssh_argv(WORKLOAD), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_growth(host.data_dir, server_id)
        assert session.poll() is None, "the session ended before the faults"
        collector.stop(signal.SIGKILL)          # mid-stream, as a crash would
        time.sleep(1)
        collector.start()
        time.sleep(1)
        assert session.poll() is None, "the session ended before the host's rsyslogd was stopped"
        forwarder.stop(signal.SIGTERM)         # its queue is saved, imfile's offsets too
        time.sleep(1)
        forwarder.start()
        assert session.poll() is None, "the session ended while the host's rsyslogd was stopped"
        out, err = session.communicate(timeout=180)
        assert session.returncode == 0, err.decode(errors="replace")
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    # A second session after the faults, written while both run normally.
    assert host.ssh("true").returncode == 0

    on_host = seqs(host.data_dir, server_id)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        at_collector = seqs(collector_data, server_id)
        missing = on_host.keys() - at_collector.keys()
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    duplicates = sum(n - 1 for n in at_collector.values())
    print(f"host wrote seq {min(on_host)}..{max(on_host)} ({len(on_host)} lines); the collector "
          f"has {len(at_collector)} of them, {duplicates} delivered twice")
    assert len(on_host) > OPENS, "the recorded session did not reach the host's log"
    assert not missing, (f"{len(missing)} line(s) never reached the collector, first seq "
                         f"{min(missing)}\nforwarder: {forwarder.output()}")
    assert all(n == 1 for n in on_host.values())

    on_host_check = verify("/etc/enhrec-wrap/enhrec.yaml", key)
    assert on_host_check.returncode == 0, on_host_check.stdout + on_host_check.stderr
    assert "intact" in on_host_check.stdout and "MACs checked" in on_host_check.stdout
    at_collector_check = verify(collector_config, key)
    assert at_collector_check.returncode == 0, at_collector_check.stdout + at_collector_check.stderr
    assert f"host {server_id}" in at_collector_check.stdout
    if duplicates:
        assert f"{duplicates} exact duplicate line(s) dropped" in at_collector_check.stdout

    # Root on the host edits one recorded line afterwards: the host's copy fails, the
    # collector's does not. (The forwarder is stopped first: everything has been shipped.)
    forwarder.stop()
    path, offset = _find(host.data_dir, server_id, b'"/dev/null"')
    _pwrite(path, offset + len(b'"/dev/nul'), b"L")
    try:
        tampered = verify("/etc/enhrec-wrap/enhrec.yaml", key)
        assert tampered.returncode == 1, tampered.stdout + tampered.stderr
        assert f"host {server_id}" in tampered.stdout and "NOT INTACT: first bad seq" in tampered.stdout
        assert "changed" in tampered.stdout
        assert f"first: host {server_id}, seq " in tampered.stderr
        assert verify(collector_config, key).returncode == 0
    finally:
        _pwrite(path, offset + len(b'"/dev/nul'), b"l")
    assert verify("/etc/enhrec-wrap/enhrec.yaml", key).returncode == 0


def _wait_for_growth(data_dir, server_id, lines=2000, timeout=60):
    """Until the running session has written `lines` more lines."""
    before = len(seqs(data_dir, server_id))
    deadline = time.monotonic() + timeout
    while len(seqs(data_dir, server_id)) < before + lines:
        assert time.monotonic() < deadline, "the recorded session wrote nothing"
        time.sleep(0.1)


def _find(data_dir, server_id, needle):
    """(path, offset) of the first `needle` in the host's newest day file."""
    path = day_files(data_dir, server_id)[-1]
    with open(path, "rb") as f:
        offset = f.read().index(needle)
    return path, offset


def _pwrite(path, offset, data):
    """In place, as an editor of the disk would: same size, same inode."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# --- TLS ------------------------------------------------------------------------------------

def _certificates(directory):
    """A throw-away CA and two certificates it signed, named host.test and collector.test."""
    os.makedirs(directory, mode=0o700)

    def openssl(*args):
        done = _run(["openssl", *args])
        assert done.returncode == 0, done.stderr

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=enhrec e2e CA",
            "-keyout", f"{directory}/ca.key", "-out", f"{directory}/ca.pem")
    for name in ("host", "collector"):
        with open(f"{directory}/{name}.ext", "w") as f:
            f.write(f"subjectAltName=DNS:{name}.test\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}.test",
                "-keyout", f"{directory}/{name}.key", "-out", f"{directory}/{name}.csr")
        openssl("x509", "-req", "-days", "1", "-in", f"{directory}/{name}.csr", "-CA",
                f"{directory}/ca.pem", "-CAkey", f"{directory}/ca.key", "-CAcreateserial",
                "-extfile", f"{directory}/{name}.ext", "-out", f"{directory}/{name}.pem")
    return directory


@pytest.mark.parametrize("library", ["openssl", "gnutls"])
def test_relp_over_tls_ships_to_the_named_collector_only(host, work_dir, library):
    server_id = open(os.path.join(host.data_dir, "host_uuid")).read().strip()
    root = os.path.join(work_dir, f"fleet-tls-{library}")
    certs = _certificates(os.path.join(root, "certs"))

    def tls(side, peer):
        return {"TLS_CA": f"{certs}/ca.pem", "TLS_CERT": f"{certs}/{side}.pem",
                "TLS_KEY": f"{certs}/{side}.key", "TLS_PEER": peer, "TLS_LIB": library}

    daemons, collectors = [], {}
    try:
        # One collector that accepts host.test, and one that accepts only another name.
        for name, peer in (("good", "host.test"), ("picky", "other.test")):
            data = os.path.join(root, f"{name}-data")
            os.makedirs(data, mode=0o700)
            port = _free_port()
            collector = Rsyslogd(os.path.join(root, name), "collector", lambda work: [
                str(port), "127.0.0.1", os.path.join(data, "log"), str(uuid.uuid4()), work],
                env=tls("collector", peer))
            forwarder = Rsyslogd(os.path.join(root, f"{name}-host"), "forwarder", lambda work: [
                "127.0.0.1", str(port), os.path.join(host.data_dir, "log"), server_id, work],
                env=tls("host", "collector.test"))
            assert 'tls="on"' in open(forwarder.conf).read()
            for daemon in (collector, forwarder):
                daemon.start()
                daemons.append(daemon)
            collectors[name] = data
        assert host.ssh("cat /etc/hostname").returncode == 0
        on_host = seqs(host.data_dir, server_id)
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while on_host.keys() - seqs(collectors["good"], server_id).keys():
            assert time.monotonic() < deadline, "lines did not reach the collector over TLS"
            time.sleep(0.2)
        assert seqs(collectors["picky"], server_id) == {}
        assert "authentication error" in daemons[2].output()   # the picky collector's
    finally:
        for daemon in reversed(daemons):
            # Nothing left to keep: the picky collector's forwarder would retry for its 20 s.
            daemon.stop(signal.SIGKILL)


# --- the make targets -------------------------------------------------------------------------

def _alive(pidfile):
    try:
        pid = int(open(pidfile).read())
    except (OSError, ValueError):
        return None
    try:
        return pid if os.readlink(f"/proc/{pid}/exe") == RSYSLOGD else None
    except OSError:
        return None


def test_the_make_targets_set_up_and_take_down_both_sides(host):
    """make install-collector / install-forwarder on this host's config: each checked, installed
    and started (no systemd here); a refused one changes nothing; uninstall stops and removes."""
    repo = str(RENDER.parents[1])
    make = ["make", "-s", "-C", repo]
    port = _free_port()
    server_id = open(os.path.join(host.data_dir, "host_uuid")).read().strip()
    confs = {side: f"/etc/enhrec-wrap/rsyslog-{side}.conf" for side in ("forwarder", "collector")}
    pids = {side: f"/run/enhrec-{side}.pid" for side in confs}
    spool_existed = os.path.exists("/var/spool/enhrec-wrap")
    try:
        done = _run(make + ["install-collector", f"PORT={port}", "ADDRESS=127.0.0.1"])
        assert done.returncode == 0, done.stdout + done.stderr
        done = _run(make + ["install-forwarder", f"COLLECTOR=127.0.0.1:{port}"])
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"shipping {host.data_dir}/log/{server_id}/*.log to 127.0.0.1:{port}" in done.stdout
        for side in confs:
            assert _alive(pids[side]), f"no rsyslogd runs for the {side}"
            assert _run([RSYSLOGD, "-N1", "-f", confs[side]]).returncode == 0
        forwarder_conf = open(confs["forwarder"]).read()
        assert f'file="{host.data_dir}/log/{server_id}/*.log"' in forwarder_conf
        assert f'port="{port}"' in forwarder_conf

        running = _alive(pids["forwarder"])
        for bad in (["COLLECTOR=nonsense"], [f"COLLECTOR=127.0.0.1:{port}", "TLS_CA=/etc/hostname"]):
            refused = _run(make + ["install-forwarder", *bad])
            assert refused.returncode != 0
            assert "install-rsyslog: " in refused.stderr and "Traceback" not in refused.stderr
            assert open(confs["forwarder"]).read() == forwarder_conf
            assert _alive(pids["forwarder"]) == running
    finally:
        for side in confs:
            _run(make + [f"uninstall-{side}"])
        if not spool_existed:
            subprocess.run(["rm", "-rf", "/var/spool/enhrec-wrap"], check=False)
    for side in confs:
        assert not os.path.exists(confs[side]) and _alive(pids[side]) is None
