"""Integration tests: the installed wrapper, run as root, recording with real BPF.

Every test gets its own config (root-owned, 0600) whose teleport.data_dir is a fresh directory, so
the events it reads are its own. These tests never skip: without root, or without the kernel side,
they fail, and the wrapper's own message says why.

ENHREC_WRAP overrides the wrapper command (split like a shell would), e.g. for a development copy.
"""

import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import time

import pytest

WRAPPER = shlex.split(os.environ.get("ENHREC_WRAP", "/usr/local/bin/enhrec-wrap"))
TEST_USER = "enhrec-it"
CGROUP_SESSIONS = "/cgroup2/enhrec"
# BPF compilation alone takes a few seconds; a session that takes this long is stuck.
SESSION_TIMEOUT = 90


@pytest.fixture(scope="session", autouse=True)
def require_root_and_wrapper():
    if os.geteuid() != 0:
        pytest.fail("the integration tests load BPF programs and need root: run `sudo make test`",
                    pytrace=False)
    if not WRAPPER or shutil.which(WRAPPER[0]) is None:
        pytest.fail(f"{shlex.join(WRAPPER)!r} is missing or not executable: run `make install` "
                    "(or set ENHREC_WRAP)", pytrace=False)


@pytest.fixture(scope="session")
def test_user():
    """A fresh login account (home directory, /bin/bash), removed again at the end."""
    if _user_exists(TEST_USER):   # left over from an interrupted run
        subprocess.run(["userdel", "-r", TEST_USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", TEST_USER], check=True)
    try:
        yield pwd.getpwnam(TEST_USER)
    finally:
        subprocess.run(["userdel", "-r", TEST_USER], capture_output=True)


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class Session:
    """The events of one recorded session, in `ei` order."""

    def __init__(self, events):
        self.events = sorted(events, key=lambda e: e["ei"])
        self.sid = self.events[0]["sid"]

    @property
    def start(self):
        starts = [e for e in self.events if e["event"] == "session.start"]
        assert len(starts) == 1, f"expected one session.start, got {len(starts)}"
        return starts[0]

    @property
    def end(self):
        ends = [e for e in self.events if e["event"] == "session.end"]
        assert len(ends) == 1, f"expected one session.end, got {len(ends)}"
        return ends[0]

    def of(self, kind):
        return [e for e in self.events if e["event"] == kind]

    @property
    def commands(self):
        return self.of("session.command")

    @property
    def disks(self):
        return self.of("session.disk")

    @property
    def networks(self):
        return self.of("session.network")

    def commands_with(self, argv=None, path=None, name=None, return_code=None):
        """session.command events matching every criterion given: the exact argv list, the exact
        path, the path's last component, the return code."""
        found = []
        for e in self.commands:
            if argv is not None and e["argv"] != argv:
                continue
            if path is not None and e["path"] != path:
                continue
            if name is not None and os.path.basename(e["path"]) != name:
                continue
            if return_code is not None and e["return_code"] != return_code:
                continue
            found.append(e)
        return found

    def command(self, **criteria):
        """The one session.command matching `criteria` (see commands_with)."""
        found = self.commands_with(**criteria)
        assert len(found) == 1, (f"expected one session.command with {criteria}, got {len(found)}; "
                                 f"commands (pid, ppid, path, argv, return_code): {self.summary()}")
        return found[0]

    def summary(self):
        return [(e["pid"], e["ppid"], e["path"], _short(e["argv"]), e["return_code"])
                for e in self.commands]


def _short(argv):
    argv = [a if len(a) <= 60 else a[:60] + "..." for a in argv]
    return argv if len(argv) <= 6 else argv[:6] + [f"... ({len(argv)} in all)"]


class Recorder:
    """Runs the wrapper with a test's own config and reads back that test's events."""

    wrapper = WRAPPER
    cgroup_sessions = CGROUP_SESSIONS

    def __init__(self, directory):
        self.dir = directory
        self.data_dir = os.path.join(directory, "data")
        self.config_path = os.path.join(directory, "enhrec.yaml")
        os.mkdir(self.data_dir, 0o700)
        self.configure()

    def configure(self, extra=""):
        """(Re)writes the config: data_dir plus `extra` YAML (whole sections)."""
        text = f"teleport:\n  data_dir: {self.data_dir}\n" + extra
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            f.write(text)
        os.chown(self.config_path, 0, 0)
        os.chmod(self.config_path, 0o600)

    def argv(self, command, options=()):
        return [*WRAPPER, "--config", self.config_path, *options, "--", *command]

    @staticmethod
    def environment(extra=None):
        """The test's environment without sudo's variables: with SUDO_UID set, the wrapper would
        run the session as whoever started the test run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
        env.update(extra or {})
        return env

    def run(self, command, options=(), input=None, env=None, timeout=SESSION_TIMEOUT, **kwargs):
        """Runs one session to its end; returns the CompletedProcess (text mode) with `.pid`."""
        proc = self.popen(command, options=options, env=env,
                          stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          **kwargs)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the session did not end within {timeout}s: {command}\nstdout: {out}\n"
                        f"stderr: {err}")
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        result.pid = proc.pid
        return result

    def popen(self, command, options=(), env=None, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return subprocess.Popen(self.argv(command, options), env=self.environment(env), **kwargs)

    def record(self, command, expect_status=0, **kwargs):
        """Runs one session that must end with `expect_status`; returns (result, Session)."""
        result = self.run(command, **kwargs)
        assert result.returncode == expect_status, (
            f"exit status {result.returncode}, expected {expect_status}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}")
        sessions = self.sessions()
        assert len(sessions) == 1, f"expected one session, got {len(sessions)}"
        return result, next(iter(sessions.values()))

    @property
    def events_log(self):
        return os.path.join(self.data_dir, "log", "events.log")

    def lines(self):
        if not os.path.exists(self.events_log):
            return []
        with open(self.events_log, "rb") as f:
            return f.read().splitlines()

    def sessions(self):
        """{sid: Session} of every event in this test's log."""
        grouped = {}
        for line in self.lines():
            event = json.loads(line)
            grouped.setdefault(event["sid"], []).append(event)
        return {sid: Session(events) for sid, events in grouped.items()}

    def wait_for(self, predicate, timeout=30.0, what="an event"):
        """Waits until some logged event satisfies `predicate`; returns that event."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                event = json.loads(line)
                if predicate(event):
                    return event
            time.sleep(0.1)
        pytest.fail(f"{what} was not logged within {timeout}s")

    # -- helpers for the tests (test modules cannot import from conftest) ------------------------

    @staticmethod
    def one_line(stderr):
        """The single line of `stderr`; fails unless there is exactly one."""
        lines = stderr.splitlines()
        assert len(lines) == 1, f"expected exactly one line on stderr, got: {stderr!r}"
        return lines[0]

    @staticmethod
    def user_groups(entry):
        """The gids a login as `entry` gets: primary group plus supplementary ones."""
        return sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)))

    @staticmethod
    def unload_our_programs():
        return unload_our_programs()

    @staticmethod
    def watchdog_of(recorder_pid, timeout=10.0):
        """The pid of a recorder's watchdog: its child named enhrec-watchdog."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        stat = f.read()
                except OSError:
                    continue
                comm = stat[stat.index(b"(") + 1:stat.rindex(b")")]
                ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
                if comm == b"enhrec-watchdog" and ppid == recorder_pid:
                    return int(entry)
            time.sleep(0.01)
        pytest.fail(f"the recorder {recorder_pid} has no watchdog")

    def kill_recorder_and_watchdog(self, recorder_pid):
        """Both die and nothing else notices: the recorder is stopped first, so that it never
        sees its watchdog go (it would end the session itself)."""
        watchdog = self.watchdog_of(recorder_pid)
        os.kill(recorder_pid, signal.SIGSTOP)
        os.kill(watchdog, signal.SIGKILL)
        os.kill(recorder_pid, signal.SIGKILL)
        return watchdog

    @staticmethod
    def pids_with_argument(marker):
        """Pids of processes (any) that have `marker` as one of their arguments."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if marker.encode() in args:
                found.append(int(entry))
        return found


@pytest.fixture
def kernel_to_ourselves():
    """For tests that unload the host's programs: one such test at a time on the machine (the
    test runs of a checkout and of a development copy may share a set of programs)."""
    import fcntl
    fd = os.open("/run/enhrec-wrap-kernel-tests.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def unload_our_programs():
    """Unloads this code's set of programs; returns its version. Fails while a session uses it."""
    from enhrec_wrap.kernel.host import HostLock, program_version, unload_if_unused
    version = program_version()
    deadline = time.monotonic() + 10
    # The lock is taken anew at each try: an ended session's watchdog takes its rings out of
    # the programs' maps under the same lock, after the wrapper has already returned.
    while True:
        with HostLock():
            if unload_if_unused(version):
                return version
        assert time.monotonic() < deadline, "a session still uses the programs"
        time.sleep(0.1)


@pytest.fixture
def recorder(tmp_path):
    return Recorder(str(tmp_path))


@pytest.fixture(scope="session")
def make_recorder(tmp_path_factory):
    """For fixtures wider than one test: a Recorder in a fresh directory named after `name`."""
    return lambda name: Recorder(str(tmp_path_factory.mktemp(name)))


@pytest.fixture
def small_disk(recorder):
    """The test's data_dir on a 1 MiB tmpfs, so that a session (a burst of its events or of its
    terminal's output) can fill it."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", recorder.data_dir],
                   check=True)
    try:
        yield recorder.data_dir
    finally:
        subprocess.run(["umount", "-l", recorder.data_dir], check=False)
