"""Adversarial tests (issue 9): what a hostile user inside a recorded session would try, to do
something unrecorded or to make the log state something that did not happen.

Each technique is a small C program in programs/ that prints the one fact it produces (the path
the kernel opened, the argv it ran, the address it connected to). The programs are built here
with gcc once per test run (every m32_*.c with `-m32 -static`, which needs gcc-multilib), then
run in a real recorded session; the test asserts that the session's events state exactly that
fact. The event fields are those of docs/events.md (schema of issue 9).

The Recorder and the root check are tests/integration/conftest.py's, loaded by path (test modules
cannot import across directories under --import-mode=importlib). ENHREC_WRAP overrides the
wrapper and ENHREC the CLI, as there. Nothing here skips: without root, BPF, gcc or gcc-multilib
the tests fail.
"""

import importlib.util
import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROGRAM_SOURCES = HERE / "programs"
CFLAGS = ("-O2", "-Wall", "-pthread")
ENHREC = shlex.split(os.environ.get("ENHREC", "/usr/local/bin/enhrec"))


def _integration_conftest():
    path = HERE.parent / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("enhrec_integration_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_integration = _integration_conftest()
require_root_and_wrapper = _integration.require_root_and_wrapper
recorder = _integration.recorder
make_recorder = _integration.make_recorder


# --- the technique programs ---------------------------------------------------------------------

def _build(source: Path, directory: Path):
    flags = ("-m32", "-static") if source.stem.startswith("m32_") else ()
    command = ["gcc", *CFLAGS, *flags, "-I", str(PROGRAM_SOURCES), "-o",
               str(directory / source.stem), str(source)]
    return command, subprocess.run(command, capture_output=True, text=True)


@pytest.fixture(scope="session")
def programs(tmp_path_factory):
    """{name: path of the built program} for every programs/*.c."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: the adversarial tests build their programs with it "
                    "(scripts/install-deps.sh --tests installs gcc and gcc-multilib)", pytrace=False)
    directory = tmp_path_factory.mktemp("programs").resolve()
    sources = sorted(PROGRAM_SOURCES.glob("*.c"))
    with ThreadPoolExecutor(max_workers=2) as pool:   # the machine has 2 CPUs
        builds = list(pool.map(lambda s: _build(s, directory), sources))
    for command, result in builds:
        if result.returncode != 0:
            hint = (" (-m32 needs gcc-multilib: scripts/install-deps.sh --tests)"
                    if "-m32" in command else "")
            pytest.fail(f"{shlex.join(command)} failed{hint}:\n{result.stderr}", pytrace=False)
    return {s.stem: str(directory / s.stem) for s in sources}


# --- one technique in one recorded session ------------------------------------------------------

# Fields every event has: left out of the events that failure messages show.
_ENVELOPE = ("ei", "code", "uid", "time", "sid", "namespace", "server_id", "server_hostname",
             "cluster_name", "login", "user", "cgroup_id")


def brief(event) -> str:
    """The event without its envelope, as text for a failure message (pytest would cut a
    dict short)."""
    return repr({k: v for k, v in event.items() if k not in _ENVELOPE})


def listing(events, *fields):
    """The events as tuples of `fields` (None where absent), for failure messages."""
    return [tuple(e.get(f) for f in fields) for e in events]


class Run:
    """A technique's recorded session: what the program printed, and the session's events."""

    brief = staticmethod(brief)

    def __init__(self, result, session):
        self.result = result
        self.session = session

    @property
    def lines(self):
        return self.result.stdout.splitlines()

    def printed(self, word, fields=None):
        """The fields of every stdout line whose first word is `word` (with `fields`, at most
        that many: the last one keeps its spaces)."""
        limit = -1 if fields is None else fields
        return [line.split(None, limit)[1:] for line in self.lines if line.split()[:1] == [word]]

    def printed_once(self, word):
        found = self.printed(word)
        assert len(found) == 1, (f"the program printed {len(found)} {word} line(s), expected one; "
                                 f"stdout: {self.result.stdout!r} stderr: {self.result.stderr!r}")
        return found[0]

    def pid_of(self, path):
        """The pid of the (first) process that exec'd `path` (a name without "/": a file of
        that name, wherever PATH found it)."""
        found = [e for e in self.session.commands if e.get("path") == path
                 or "/" not in path and os.path.basename(e.get("path", "")) == path]
        assert found, (f"no session.command with path {path!r}: its exec was not recorded; "
                       f"commands (pid, ppid, path, argv, return_code): {self.session.summary()}")
        return found[0]["pid"]

    def of(self, kind, pid=None, **fields):
        """The events of `kind` (by pid, when given) whose `fields` have exactly these values."""
        return [e for e in self.session.of(kind)
                if (pid is None or e.get("pid") == pid)
                and all(e.get(k) == v for k, v in fields.items())]

    def opens(self, pid):
        return self.of("session.disk", pid)

    def describe_opens(self, pid):
        return listing(self.opens(pid), "path", "requested_path", "path_source", "flags",
                       "return_code", "path_flags")

    def one_open(self, pid, what, **fields):
        """The one session.disk of `pid` with these `fields`; fails naming what was logged."""
        found = self.of("session.disk", pid, **fields)
        assert len(found) == 1, (
            f"{what}: expected one session.disk of pid {pid} with {fields}, got {len(found)}; its "
            f"opens (path, requested_path, path_source, flags, return_code, path_flags): "
            f"{self.describe_opens(pid)}")
        return found[0]

    def one_command(self, what, **fields):
        found = self.of("session.command", **fields)
        assert len(found) == 1, (
            f"{what}: expected one session.command with {fields}, got {len(found)}; commands "
            f"(path, argv, executable, interpreter, return_code, argv_unreadable): "
            f"{listing(self.session.commands, 'path', 'argv', 'executable', 'interpreter', 'return_code', 'argv_unreadable')}")
        return found[0]

    def sends_and_connects(self, pid=None):
        return listing(self.of("session.network", pid), "pid", "operation", "protocol",
                       "dst_addr", "dst_port", "connect_return_code")

    def refusals(self, pid):
        return self.of("session.refused", pid)

    def one_refusal(self, pid, what):
        found = self.refusals(pid)
        assert len(found) == 1, (
            f"{what}: expected one session.refused of pid {pid}, got {len(found)} (refusals "
            f"of the session: {listing(self.session.of('session.refused'), 'pid', 'syscall', 'syscall_nr', 'arch', 'refusal')}); "
            f"exit status {self.result.returncode}, stdout {self.result.stdout!r}, "
            f"stderr {self.result.stderr!r}")
        return found[0]


@pytest.fixture
def run_in_session(recorder):
    """run_in_session(argv, status=0) -> Run: one recorded session of `argv`. With status None
    the exit status is left to the test (to look at the events first)."""

    def run(argv, status=0):
        result = recorder.run([str(a) for a in argv])
        sessions = recorder.sessions()
        assert len(sessions) == 1, (f"expected one recorded session, got {len(sessions)}; exit "
                                    f"status {result.returncode}, stderr: {result.stderr}")
        session = next(iter(sessions.values()))
        lost = session.end.get("lost_events")
        assert lost and not any(lost.values()), f"the session lost events ({lost}): nothing can be judged"
        assert session.commands, ("the session recorded no exec at all, not even its first "
                                  "command's, and counts no loss: it ran unrecorded")
        if status is not None:
            assert result.returncode == status, (
                f"{shlex.join(map(str, argv))} exited {result.returncode}, expected {status}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return Run(result, session)

    return run


@pytest.fixture
def technique(programs, run_in_session):
    """technique(name, *args, status=0) -> (Run, pid): the program `name` from programs/ run in
    a recorded session, and the pid its exec was recorded with."""

    def run(name, *args, status=0):
        done = run_in_session([programs[name], *args], status=status)
        return done, done.pid_of(programs[name])

    return run


@pytest.fixture
def scratch(tmp_path):
    """A scratch directory by its resolved name (the kernel names files by that)."""
    return tmp_path.resolve()


@pytest.fixture(scope="session")
def enhrec():
    """enhrec(config_path, command, *args) -> CompletedProcess of the installed CLI."""
    if not os.access(ENHREC[0], os.X_OK):
        pytest.fail(f"{ENHREC[0]} is missing or not executable: run `make install` (or set ENHREC)",
                    pytrace=False)

    def run(config_path, command, *args):
        result = subprocess.run([*ENHREC, command, "--config", config_path, *args],
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        assert result.returncode == 0, f"enhrec {command} {shlex.join(args)}: {result.stderr}"
        return result

    return run
