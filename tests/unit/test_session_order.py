"""The session's ordering rules, without root: lifecycle.run with fakes of its root-only parts
(session/privileged.py: the cgroup, the kernel side, the fork; and the watchdog), which write
down every call in order. The log is real: its files in a temporary data_dir. Then the child's
own order between its fork and its exec (session/child.py), in a real forked process."""

import os
import shutil
import signal
import sys

import orjson
import pytest

from enhrec_wrap.config import Config
from enhrec_wrap.errors import EnhrecError, Failure
from enhrec_wrap.host.privileges import Account
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.store import SessionStore
from enhrec_wrap.session import child, lifecycle
from enhrec_wrap.session.child import FORWARDED_SIGNALS, TERMINAL_SIGNALS
from enhrec_wrap.session.ledger import Ledger, new_page
from enhrec_wrap.session.lifecycle import Request

CHILD_PID = 4_000_000   # above pid_max's ceiling (2^22): the fakes never signal a real process


class Journal:
    """The calls of the fakes, in order; `fail` (name, n): the n-th call of that name raises."""

    def __init__(self, log_path):
        self.calls = []
        self.log_path = log_path
        self.fail = None

    def call(self, name, **seen):
        self.calls.append((name, seen))
        if self.fail == (name, self.names().count(name)):
            raise EnhrecError(f"{name} failed: as the test wants")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def index(self, name) -> int:
        return self.names().index(name)

    def seen(self, name) -> dict:
        (found,) = [seen for n, seen in self.calls if n == name]
        return found

    def logged(self) -> list[str]:
        """The events in the audit log now."""
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path, "rb") as f:
            return [orjson.loads(line)["event"] for line in f.read().splitlines()]


class FakeCgroup:
    id = 4242
    path = "/nonexistent/enhrec/fake"
    lock_fd = -1

    def __init__(self, journal):
        self.journal = journal

    def add(self, pid):
        self.journal.call("cgroup.add", pid=pid)

    def populated(self):
        return False

    def pids(self):
        return []

    def freeze(self, frozen):
        self.journal.call("cgroup.freeze")

    def kill(self):
        self.journal.call("cgroup.kill")

    def kill_and_wait(self):
        self.journal.call("cgroup.kill_and_wait")

    def remove(self):
        self.journal.call("cgroup.remove")

    def close(self):
        self.journal.call("cgroup.close")


class FakeReader:
    def pressed(self):
        return False

    def relieved(self):
        return True


class FakeRecording:
    version = "fake-version"

    def __init__(self, journal, ledger):
        self.journal = journal
        self.reader = FakeReader()
        self.records_settled = list(ledger.state.settled)

    def wake_on(self, fd):
        self.journal.call("recording.wake_on", fd=fd)

    def wait_registered(self):
        self.journal.call("recording.wait_registered")

    def poll(self, timeout, flush):
        return []

    def drain(self):
        return []

    def events(self, records, factory, between=None):
        return []

    def refill(self):
        pass

    def settled(self):
        return self.records_settled

    def undecodable(self):
        return {}

    def lost(self):
        return {}

    def release_order(self, idle_unload_seconds):
        return {"version": self.version, "cgroup_id": FakeCgroup.id,
                "idle_unload_seconds": idle_unload_seconds}

    def close(self, idle_unload_seconds):
        self.journal.call("recording.close", idle_unload_seconds=idle_unload_seconds)


class FakeChild:
    pid = CHILD_PID

    def __init__(self, journal, exec_failure=None):
        self.journal = journal
        self.exec_failure = exec_failure
        self.released = False
        self.reaped = False

    def watch(self):
        self.journal.call("child.watch")
        return 1000

    def abort(self):
        self.journal.call("child.abort")
        self.reaped = True

    def release(self):
        self.journal.call("child.release", logged=self.journal.logged())
        self.released = True
        return self.exec_failure

    def send(self, signum):
        self.journal.call("child.send", signum=signum)

    def wait(self):
        assert self.released, "waited for a child that was never let go"
        self.journal.call("child.exited", logged=self.journal.logged())
        self.reaped = True
        return 0

    def exited(self):
        return self.reaped

    def close(self):
        self.journal.call("child.close", reaped=self.reaped)


class FakePrivileged:
    def __init__(self, journal, exec_failure=None):
        self.journal = journal
        self.exec_failure = exec_failure

    def create_cgroup(self, cgroup_path, sid):
        self.journal.call("create_cgroup")
        return FakeCgroup(self.journal)

    def start_recording(self, config, cgroup_id, ledger):
        self.journal.call("start_recording", cgroup_id=cgroup_id)
        return FakeRecording(self.journal, ledger)

    def fork_child(self, plan, session_terminal):
        self.journal.call("fork_child", argv=plan.argv)
        return FakeChild(self.journal, self.exec_failure)


class FakeWatchdog:
    def __init__(self, journal):
        self.journal = journal
        self.ledger = Ledger(new_page())
        self.armed = False
        self.pidfd = -1

    def arm(self, brief, lock_fd, cgroup_fd):
        self.journal.call("watchdog.arm", sid=brief["sid"])
        self.armed = True

    def alive(self):
        return True

    def stop(self, release=None):
        self.journal.call("watchdog.stop", release=release)


@pytest.fixture
def session_setup(tmp_path):
    """A config, a request and a journal; the wrapper's signal handlers, which run() installs,
    are put back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in TERMINAL_SIGNALS + FORWARDED_SIGNALS}
    config = Config(data_dir=str(tmp_path), nodename="node", cgroup_path=str(tmp_path / "cgroup"),
                    tty_recording="off")
    account = Account("alice", os.getuid(), os.getgid(), str(tmp_path), "/bin/sh")
    request = Request(account=account, user="alice", command=["/bin/true", "x"], interactive=False)
    journal = Journal(str(tmp_path / "log" / "events.log"))
    yield config, request, journal
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_child_is_let_go_only_once_recorded_and_inside_the_cgroup(session_setup):
    config, request, journal = session_setup
    status = lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal))
    assert status == 0
    names = journal.names()
    release = journal.index("child.release")
    # The recording's set-up, in its order, all of it before the child may exec.
    assert names[:release + 1] == [
        "create_cgroup", "start_recording", "watchdog.arm", "recording.wake_on", "fork_child",
        "cgroup.add", "child.watch", "recording.wake_on", "recording.wait_registered",
        "child.release"]
    assert journal.seen("start_recording")["cgroup_id"] == FakeCgroup.id
    assert journal.seen("cgroup.add")["pid"] == CHILD_PID
    assert journal.seen("fork_child")["argv"] == ["/bin/true", "x"]


def test_session_start_is_written_before_the_child_runs_and_end_after_it_ended(session_setup):
    config, request, journal = session_setup
    lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal))
    assert journal.seen("child.release")["logged"] == ["session.start"]
    assert journal.seen("child.exited")["logged"] == ["session.start"]
    assert journal.logged() == ["session.start", "session.end"]


def test_the_end_undoes_the_set_up_and_the_watchdog_goes_last(session_setup):
    config, request, journal = session_setup
    lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal))
    names = journal.names()
    end = names[journal.index("child.exited") + 1:]
    assert end == ["child.close", "cgroup.remove", "recording.close", "cgroup.close",
                   "watchdog.stop"]
    assert journal.seen("child.close")["reaped"] is True
    # The watchdog alive: it takes the rings out after we are gone, not the recording.
    assert journal.seen("recording.close")["idle_unload_seconds"] is None
    assert journal.seen("watchdog.stop")["release"]["cgroup_id"] == FakeCgroup.id


# Each call before the exec that can fail: (its name, which call of that name).
BEFORE_EXEC = [
    ("create_cgroup", 1), ("start_recording", 1), ("watchdog.arm", 1),
    ("recording.wake_on", 1),   # the watchdog's pidfd
    ("fork_child", 1), ("cgroup.add", 1), ("child.watch", 1),
    ("recording.wake_on", 2),   # the child's
    ("recording.wait_registered", 1),
]


@pytest.mark.parametrize("failing, nth", BEFORE_EXEC)
def test_a_failure_before_the_exec_runs_nothing_and_raises(session_setup, failing, nth):
    config, request, journal = session_setup
    journal.fail = (failing, nth)
    with pytest.raises(EnhrecError, match=f"^{failing} failed: as the test wants$"):
        lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal))
    names = journal.names()
    failed_at = [i for i, name in enumerate(names) if name == failing][nth - 1]
    assert "child.release" not in names
    if "fork_child" in names[:failed_at]:
        # Forked before the failure: killed and reaped before anything could let it go.
        assert names[failed_at + 1] == "child.abort"
    assert names[-1] == "watchdog.stop"


def test_a_watchdog_that_never_started_leaves_the_rings_to_the_wrapper(session_setup):
    """Its arm failed: no watchdog will take the rings out after we are gone, so we do."""
    config, request, journal = session_setup
    journal.fail = ("watchdog.arm", 1)
    with pytest.raises(EnhrecError):
        lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal))
    assert journal.seen("recording.close")["idle_unload_seconds"] == config.idle_unload_seconds
    assert journal.seen("watchdog.stop")["release"] is None


def test_a_session_start_that_cannot_be_written_runs_nothing(session_setup, monkeypatch):
    config, request, journal = session_setup

    def refuse(self, lines, announce=None):
        raise EnhrecError("cannot write the audit log: as the test wants")

    monkeypatch.setattr(AuditLog, "write", refuse)
    with pytest.raises(EnhrecError, match="^cannot write the audit log: as the test wants$"):
        lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal))
    assert "fork_child" not in journal.names()
    assert journal.names()[-1] == "watchdog.stop"


def test_a_failed_exec_is_raised_after_the_session_ended(session_setup):
    config, request, journal = session_setup
    failure = EnhrecError("/bin/true: command not found", Failure.COMMAND_NOT_FOUND)
    with pytest.raises(EnhrecError) as raised:
        lifecycle.run(config, request, FakeWatchdog(journal), FakePrivileged(journal, failure))
    assert raised.value is failure
    assert journal.logged() == ["session.start", "session.end"]


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_audit_log_is_closed_when_the_session_store_cannot_be_made(session_setup, monkeypatch):
    config, request, journal = session_setup

    def refuse(*args):
        raise EnhrecError("cannot make the session's files: as the test wants")

    # A first session makes the data_dir's files that stay (host_uuid, the chain's state).
    lifecycle.Session(config, request).sinks.close(ended=True)
    watchdog, privileged = FakeWatchdog(journal), FakePrivileged(journal)
    monkeypatch.setattr(SessionStore, "create", classmethod(refuse))
    before = open_fds()
    with pytest.raises(EnhrecError, match="^cannot make the session's files: as the test wants$"):
        lifecycle.Session(config, request, watchdog, privileged=privileged)
    assert open_fds() == before


# --- the child's side, between its fork and its exec ------------------------------------------

def child_side(tmp_path, command):
    """child._child run in a forked process, with the calls that need root (priority, seccomp,
    the privilege drop) and the exec written down instead of made: what it did, in order, and
    the files it opened (a Python audit hook sees every open), as the fake exec reports them on
    the error pipe."""
    account = Account("alice", os.getuid(), os.getgid(), str(tmp_path), "/bin/sh")
    request = Request(account=account, user="alice", command=command, interactive=False,
                      cwd=str(tmp_path))
    plan = child.make_plan(request, "a-sid", (True, True))   # as fork_child: in the parent
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    wrappers_fd = os.open(os.devnull, os.O_RDONLY)   # one of the wrapper's, say the log's
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(err_r)
            done = []

            def audit(event, args):
                if event == "open":
                    done.append(f"open {args[0]}")
                elif event == "os.chdir":
                    done.append("chdir")

            def execve(program, argv, env):
                closed = []
                try:
                    os.fstat(wrappers_fd)
                except OSError:
                    closed.append("the wrapper's fd closed")
                os.write(err_w, orjson.dumps(done + closed + [f"exec {program}"]))
                os._exit(0)

            child.priority.restore_caller = lambda: done.append("restore_caller")
            child.seccomp.install = lambda seccomp_filter: done.append("seccomp.install")
            child.drop_privileges = lambda account, groups: done.append(
                f"drop_privileges {account.uid} {sorted(groups)}")
            child.os.execve = execve
            sys.addaudithook(audit)
            child._child(plan, go_r, err_w)
        finally:
            os._exit(99)
    os.close(go_r)
    os.close(err_w)
    os.close(wrappers_fd)
    os.write(go_w, b"g")
    os.close(go_w)
    with os.fdopen(err_r, "rb") as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return orjson.loads(report), plan


def test_the_child_drops_its_privileges_last_and_opens_no_file(tmp_path):
    done, plan = child_side(tmp_path, ["true", "x"])
    # No "open ...": a file opened here could be recorded, the child may be in the cgroup.
    program = shutil.which("true", path=plan.env["PATH"])
    assert done == ["restore_caller", "seccomp.install",
                    f"drop_privileges {os.getuid()} {sorted(plan.groups)}", "chdir",
                    "the wrapper's fd closed", f"exec {program}"]
