"""End-to-end tests: a real sshd on 127.0.0.1 with the project's own drop-in and sudoers rule, in
front of the installed wrapper, used by real ssh, scp, sftp and rsync clients.

For the duration of the run (one run at a time, serialised by a lock):
- /etc/enhrec-wrap/enhrec.yaml is replaced by a config whose data_dir is a fresh directory (the
  sudo rule lets the wrapper take no --config, so the default path is the only way in), and the
  original is put back afterwards (also at the start of the next run, if a run was killed);
- conf/sudoers.d/enhrec-wrap is installed as /etc/sudoers.d/enhrec-wrap (checked with visudo),
  and whatever was there before is put back;
- test users get a home, an SSH key and nothing else, and are removed at the end;
- sshd runs in the foreground with host keys and config in a temporary directory, at a free port.
Nothing here skips: when sshd cannot start or the wrapper is missing, the tests fail.
"""

import fcntl
import json
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DROP_IN = REPO / "conf" / "sshd_config.d" / "enhrec-wrap.conf"
SUDOERS_SRC = REPO / "conf" / "sudoers.d" / "enhrec-wrap"
PTY_DRIVER = REPO / "scripts" / "pty_session.py"
WRAPPER = "/usr/local/bin/enhrec-wrap"
ENHREC = "/usr/local/bin/enhrec"
VERIFICATION_KEY = "verification.key"   # in work_dir
SSHD = "/usr/sbin/sshd"
CONFIG_PATH = "/etc/enhrec-wrap/enhrec.yaml"
CONFIG_BACKUP = CONFIG_PATH + ".e2e-backup"
SUDOERS_PATH = "/etc/sudoers.d/enhrec-wrap"
SUDOERS_BACKUP = "/etc/enhrec-wrap/sudoers.e2e-backup"   # a name sudo's includedir never reads
LOCK_PATH = "/run/enhrec-wrap-e2e.lock"
USER = "enhrec-e2e"
EXPIRED_USER = "enhrec-e2e-exp"
# One session costs a BPF compile (a few seconds); anything far beyond that is stuck.
TIMEOUT = 90


def _run(argv, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(argv, **kwargs)


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _kill_user_processes(uid):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """The events of one recorded session, in `ei` order."""

    def __init__(self, events):
        self.events = sorted(events, key=lambda e: e["ei"])
        self.sid = self.events[0]["sid"]

    def of(self, kind):
        return [e for e in self.events if e["event"] == kind]

    @property
    def start(self):
        starts = self.of("session.start")
        assert len(starts) == 1, f"expected one session.start, got {len(starts)}"
        return starts[0]

    @property
    def end(self):
        ends = self.of("session.end")
        assert len(ends) == 1, f"expected one session.end, got {len(ends)}"
        return ends[0]

    @property
    def commands(self):
        return self.of("session.command")

    def commands_named(self, name):
        return [e for e in self.commands if os.path.basename(e["path"]) == name]

    def opened(self, path):
        return [e for e in self.of("session.disk") if e["path"] == path]

    def summary(self):
        return [(os.path.basename(e["path"]), e["argv"][:6]) for e in self.commands]


class SshHost:
    """The sshd under test, its clients, and the events its sessions leave."""

    def __init__(self, work, port, key, known_hosts, data_dir, user):
        self.work = work
        self.port = port
        self.key = key
        self.known_hosts = known_hosts
        self.data_dir = data_dir
        self.user = user
        self.target = f"{user.pw_name}@127.0.0.1"
        self.fingerprint = _run(["ssh-keygen", "-lf", key + ".pub"]).stdout.split()[1]

    @property
    def options(self):
        return ["-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]

    def ssh_argv(self, *args, tty=False):
        return ["ssh", *self.options, "-p", str(self.port), *(["-tt"] if tty else []),
                self.target, *args]

    def ssh(self, command, input=None, timeout=TIMEOUT, **kwargs):
        """`ssh host command`; returns the CompletedProcess (text)."""
        return self.client(self.ssh_argv(command), input=input, timeout=timeout, **kwargs)

    def scp(self, *args, legacy=False):
        return self.client(["scp", *self.options, "-P", str(self.port), *(["-O"] if legacy else []),
                            *args])

    def sftp(self, *args):
        return self.client(["sftp", *self.options, "-P", str(self.port), *args])

    def rsync(self, *args):
        shell = " ".join(["ssh", *self.options, "-p", str(self.port)])
        return self.client(["rsync", "-e", shell, *args])

    def remote(self, path):
        return f"{self.target}:{path}"

    def user_pids(self):
        """Pids of the processes running as the test user, i.e. of its sessions."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as f:
                    uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if uid == self.user.pw_uid:
                pids.append(int(entry))
        return pids

    @staticmethod
    def client(argv, input=None, timeout=TIMEOUT, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL if input is None else None)
        try:
            return _run(argv, input=input, timeout=timeout, **kwargs)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{argv[0]} did not finish within {timeout}s: {argv}\n{e.stdout}\n{e.stderr}")

    # -- events ----------------------------------------------------------------------------------

    @property
    def events_log(self):
        return os.path.join(self.data_dir, "log", "events.log")

    def events(self):
        if not os.path.exists(self.events_log):
            return []
        with open(self.events_log, "rb") as f:
            return [json.loads(line) for line in f.read().splitlines()]

    def mark(self):
        """A point in the log; `sessions_since(mark)` gives the sessions started after it."""
        return len(self.events())

    def sessions_since(self, mark, count=1, timeout=15.0):
        """The `count` sessions that started after `mark`, once each has its session.end."""
        deadline = time.monotonic() + timeout
        while True:
            grouped = {}
            for event in self.events()[mark:]:
                grouped.setdefault(event["sid"], []).append(event)
            sessions = [Session(events) for events in grouped.values()
                        if any(e["event"] == "session.start" for e in events)]
            ended = [s for s in sessions if s.of("session.end")]
            if len(ended) >= count and len(sessions) == len(ended):
                assert len(sessions) == count, (
                    f"expected {count} session(s), got {len(sessions)}: "
                    f"{[s.start.get('initial_command') for s in sessions]}")
                return sorted(sessions, key=lambda s: s.start["time"])
            if time.monotonic() > deadline:
                pytest.fail(f"expected {count} ended session(s) within {timeout}s, got "
                            f"{len(ended)} ended of {len(sessions)}")
            time.sleep(0.1)

    def session_since(self, mark):
        return self.sessions_since(mark, 1)[0]


@pytest.fixture(scope="session")
def e2e_lock():
    """One e2e run at a time: they share /etc/enhrec-wrap/enhrec.yaml and the sudoers rule."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests start sshd and install a sudoers rule: run them as root "
                    "(sudo make test)", pytrace=False)
    for path in (WRAPPER, SSHD, "/usr/bin/sudo", "/usr/sbin/visudo"):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run `make install`", pytrace=False)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _restore_leftovers():
    """Puts back what an interrupted run replaced."""
    if os.path.exists(CONFIG_BACKUP):
        os.replace(CONFIG_BACKUP, CONFIG_PATH)
    if os.path.exists(SUDOERS_BACKUP):
        os.replace(SUDOERS_BACKUP, SUDOERS_PATH)


@pytest.fixture(scope="session")
def work_dir(e2e_lock):
    _restore_leftovers()
    path = tempfile.mkdtemp(prefix="enhrec-e2e-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(work_dir):
    """The wrapper's data_dir, through /etc/enhrec-wrap/enhrec.yaml for the whole run. It is
    0755 on purpose: what keeps users out of the log must be the wrapper's own log directory."""
    data = os.path.join(work_dir, "data")
    os.mkdir(data)
    os.chmod(data, 0o755)
    os.makedirs(os.path.dirname(CONFIG_PATH), mode=0o755, exist_ok=True)
    had_config = os.path.exists(CONFIG_PATH)
    if had_config:
        os.replace(CONFIG_PATH, CONFIG_BACKUP)
    try:
        fd = os.open(CONFIG_PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(fd, "w") as f:
            f.write(f"teleport:\n  data_dir: {data}\n")
        # The chain key, made before any session as `make install` makes it; its verification
        # key is kept for test_fleet.py, which checks every line's MAC.
        keygen = _run([ENHREC, "keygen"])
        assert keygen.returncode == 0, f"enhrec keygen failed: {keygen.stderr}"
        with open(os.path.join(work_dir, VERIFICATION_KEY), "w") as f:
            f.write(keygen.stdout)
        yield data
    finally:
        if had_config:
            os.replace(CONFIG_BACKUP, CONFIG_PATH)
        else:
            os.unlink(CONFIG_PATH)


@pytest.fixture(scope="session")
def sudoers(e2e_lock, work_dir):
    """The project's sudoers rule, checked by visudo as a file and with the whole configuration."""
    check = _run(["visudo", "-cf", str(SUDOERS_SRC)])
    assert check.returncode == 0, f"visudo rejects {SUDOERS_SRC}: {check.stdout}{check.stderr}"
    had_rule = os.path.exists(SUDOERS_PATH)
    if had_rule:
        os.replace(SUDOERS_PATH, SUDOERS_BACKUP)
    try:
        staged = os.path.join(work_dir, "sudoers")
        shutil.copyfile(SUDOERS_SRC, staged)
        os.chmod(staged, 0o440)
        shutil.move(staged, SUDOERS_PATH)
        whole = _run(["visudo", "-c"])
        assert whole.returncode == 0, f"sudo's configuration fails with the rule: {whole.stdout}"
        yield SUDOERS_PATH
    finally:
        if had_rule:
            os.replace(SUDOERS_BACKUP, SUDOERS_PATH)
        elif os.path.exists(SUDOERS_PATH):
            os.unlink(SUDOERS_PATH)


def make_user(name):
    if _user_exists(name):   # left over from an interrupted run
        _kill_user_processes(pwd.getpwnam(name).pw_uid)
        _run(["userdel", "-r", name])
    created = _run(["useradd", "-m", "-s", "/bin/bash", name])
    assert created.returncode == 0, created.stderr
    return pwd.getpwnam(name)


def remove_user(name):
    if _user_exists(name):
        _kill_user_processes(pwd.getpwnam(name).pw_uid)
        _run(["userdel", "-r", name])


@pytest.fixture(scope="session")
def ssh_user(e2e_lock, work_dir):
    """The recorded user, with an ed25519 key (the private half stays with root)."""
    entry = make_user(USER)
    try:
        key = os.path.join(work_dir, "id_ed25519")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f", key], check=True)
        ssh_dir = os.path.join(entry.pw_dir, ".ssh")
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        shutil.copyfile(key + ".pub", os.path.join(ssh_dir, "authorized_keys"))
        for path in (ssh_dir, os.path.join(ssh_dir, "authorized_keys")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(os.path.join(ssh_dir, "authorized_keys"), 0o600)
        yield entry, key
    finally:
        remove_user(USER)


@pytest.fixture(scope="session")
def expired_user(e2e_lock):
    entry = make_user(EXPIRED_USER)
    try:
        yield entry
    finally:
        remove_user(EXPIRED_USER)


@pytest.fixture(scope="session")
def sshd(e2e_lock, work_dir, sudoers, data_dir, ssh_user):
    """A foreground sshd on 127.0.0.1 that includes the project's drop-in as it is. internal-sftp
    is its sftp subsystem, the harder case for a ForceCommand."""
    entry, key = ssh_user
    host_key = os.path.join(work_dir, "ssh_host_ed25519_key")
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
    port = _free_port()
    config = os.path.join(work_dir, "sshd_config")
    with open(config, "w") as f:
        f.write(f"""Include {DROP_IN}
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {work_dir}/sshd.pid
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
AllowUsers {USER}
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation directory
    check = _run([SSHD, "-t", "-f", config])
    if check.returncode != 0:
        pytest.fail(f"sshd -t rejects the test config with the drop-in: {check.stderr}", pytrace=False)
    known_hosts = os.path.join(work_dir, "known_hosts")
    with open(host_key + ".pub") as pub, open(known_hosts, "w") as f:
        f.write(f"[127.0.0.1]:{port} {pub.read()}")
    log = os.path.join(work_dir, "sshd.log")
    proc = subprocess.Popen([SSHD, "-D", "-f", config, "-E", log], stdin=subprocess.DEVNULL)
    try:
        _wait_listening(proc, port, log)
        yield SshHost(work_dir, port, key, known_hosts, data_dir, entry)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(proc, port, log):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}: {_tail(log)}", pytrace=False)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 15s: {_tail(log)}", pytrace=False)


def _tail(path):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-20:])
    except OSError:
        return "(no log)"


@pytest.fixture
def host(sshd):
    return sshd


@pytest.fixture(scope="session")
def verification_key(data_dir, work_dir):
    """The file with the verification key of the chain key made with data_dir (test_fleet.py)."""
    return os.path.join(work_dir, VERIFICATION_KEY)


@pytest.fixture
def pty_driver():
    """argv prefix that types the lines of a file into a pseudo-terminal session, one by one."""
    return ["/usr/bin/python3", str(PTY_DRIVER)]
