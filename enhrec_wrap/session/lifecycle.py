"""One recorded session, from session.start to session.end.

Order matters and is the point of this module: the programs are attached and filtering on the
session's cgroup before the child may exec anything, and the child is inside the cgroup before it
runs a single instruction of the user's program. Whatever fails before the exec stops the session
with nothing run (fail closed).
"""

import os
import select
import shutil
import signal
import time
import uuid
from dataclasses import dataclass, field

from enhrec_wrap.events import teleport as events
from enhrec_wrap.session import recovery
from enhrec_wrap.log.auditlog import AuditLog, load_or_create_server_id
from enhrec_wrap.host.cgroup import SessionCgroup
from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.host.privileges import Account, drop_privileges
from enhrec_wrap.log.store import SessionStore
from enhrec_wrap.session.watchdog import Watchdog

EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
POLL_MS = 50
# After SIGHUP/SIGTERM the session gets this long to exit on its own before cgroup.kill.
HANGUP_GRACE_SECONDS = 2.0
KILL_WAIT_SECONDS = 5.0
# Signals a terminal sends to its foreground group: the session's to handle, not the wrapper's.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
# Everything the child must get back to default: Python ignores SIGPIPE and SIGXFSZ itself.
CHILD_DEFAULT_SIGNALS = TERMINAL_SIGNALS + FORWARDED_SIGNALS + (signal.SIGPIPE, signal.SIGXFSZ)
KEPT_ENVIRONMENT = ("TERM", "LANG")
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Request:
    """What to run, for whom. Built by the CLI from arguments and the caller's identity."""
    account: Account                 # the OS account the session runs as (`login`)
    user: str                        # the identity that logged in (`user`)
    command: list[str] | None        # None: the account's login shell
    interactive: bool
    start_fields: dict = field(default_factory=dict)   # extra session.start fields (ssh)
    connection_fields: dict = field(default_factory=dict)   # extra start and end fields (ssh)
    environment: dict = field(default_factory=dict)     # extra variables for the session
    cwd: str | None = None           # where it starts; None: home for the login shell, else ours
    client_fds: tuple = ()           # outputs whose reader vanishing means the client is gone


def login_environment(request: Request, sid: str, inherited=os.environ) -> dict:
    """A clean login environment, as login(1) and `su -` build it; nothing else is inherited."""
    account = request.account
    env = {name: inherited[name] for name in KEPT_ENVIRONMENT if name in inherited}
    env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell,
               PATH=ROOT_PATH if account.uid == 0 else USER_PATH)
    env.update(request.environment)
    env["ENHREC_SESSION_ID"] = sid
    return env


def child_argv(request: Request) -> tuple[str, list[str]]:
    """(file to exec, argv): the command as given, or the login shell with a `-` argv[0]."""
    if request.command:
        return request.command[0], list(request.command)
    shell = request.account.shell
    return shell, ["-" + os.path.basename(shell)]


class Session:
    def __init__(self, config, request: Request, clock=time.time):
        self.config = config
        self.request = request
        self.sid = str(uuid.uuid4())
        self.server_id = load_or_create_server_id(config.data_dir)
        self.log = AuditLog(config.log_dir, self.server_id, clock=clock)
        # The second sink: the session's own files, and the lock that marks it as not ended.
        self.store = SessionStore.create(config.log_dir, self.server_id, self.sid)
        self.watchdog = None
        self.log_failure = None      # the first write failure, told to the user once
        self.write_failures = 0
        self.unwritten = {}          # sink -> events it could not take
        self.ended = False           # session.end is in both sinks
        self.factory = events.EventFactory(self.sid, self.server_id, config.nodename,
                                           request.account.name, request.user, config.cluster)
        self.kernel = events.KernelEvents()
        self.records = []
        self.cgroup = None
        self.probes = None
        self.child = None
        self.hangup_deadline = None
        self.start_ns = None

    # -- set up ------------------------------------------------------------------------------

    def start_recording(self):
        """cgroup, then programs filtering on it: nothing of the session can run before both."""
        if not self.config.enabled:
            return
        from enhrec_wrap.kernel.loader import Probes   # BCC is imported only when recording
        self.cgroup = SessionCgroup.create(self.config.cgroup_path, self.sid)
        # Ready before anything can run in the cgroup: if we die, the watchdog kills what is in
        # it. It starts while the programs load.
        self.watchdog = Watchdog.launch(self.cgroup.path)
        self.probes = Probes(self.config, self._on_record)
        self.probes.watch(self.cgroup.id)
        self.watchdog.wait_ready()

    def write_start(self):
        self.start_ns = time.time_ns()
        fields = {"interactive": self.request.interactive,
                  "enhanced_recording": self.config.enabled,
                  "session_recording": events.SESSION_RECORDING,
                  "initial_command": list(self.request.command or []),
                  "schema_version": events.SCHEMA_VERSION}
        size = _terminal_size()
        if size:
            fields["size"] = size
        if self.cgroup:
            fields["cgroup_id"] = self.cgroup.id
        fields.update(self.request.connection_fields)
        fields.update(self.request.start_fields)
        self._write([self.factory.make(events.SESSION_START, self.start_ns, **fields)], strict=True)

    # -- the child ---------------------------------------------------------------------------

    def spawn(self):
        """Forks the child, which waits until it is in the cgroup, drops privileges and execs.
        Returns an EnhrecError when the exec failed (command not found ...), else None."""
        path, argv = child_argv(self.request)
        env = login_environment(self.request, self.sid)
        cwd = self.request.cwd
        if cwd is None and self.request.command is None:
            cwd = self.request.account.home
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(err_r)
            _child(self.request.account, path, argv, env, cwd, go_r, err_w)
        os.close(go_r)
        os.close(err_w)
        self.child = pid
        try:
            if self.cgroup:
                self.cgroup.add(pid)
                self.probes.set_parent(pid, os.getpid())
        except BaseException:
            os.kill(pid, signal.SIGKILL)   # never let it run unrecorded
            os.waitpid(pid, 0)
            self.child = None
            os.close(go_w)
            raise
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:
            pass   # the child failed during its set-up; its reason is on the error pipe
        finally:
            os.close(go_w)
        failure = _read_all(err_r)
        os.close(err_r)
        if failure:
            code, _, message = failure.decode(errors="replace").partition(":")
            return EnhrecError(message, int(code))
        return None

    # -- while it runs -----------------------------------------------------------------------

    def install_signal_handlers(self):
        for sig in TERMINAL_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._forward)

    def _forward(self, signum, _frame):
        if self.child:
            try:
                os.kill(self.child, signum)
            except ProcessLookupError:
                pass
        if self.hangup_deadline is None:
            self.hangup_deadline = time.monotonic() + HANGUP_GRACE_SECONDS

    def _check_client(self):
        """Without a terminal, sshd signals nobody when the client vanishes: it only closes its
        ends of our output pipes. Take that as the hangup it is."""
        if self.hangup_deadline is None and _outputs_closed(self.request.client_fds):
            self._forward(signal.SIGHUP, None)

    def wait_child(self) -> int:
        """Records until the child exits; returns its wait status."""
        while True:
            self.poll()
            self._check_client()
            pid, status = os.waitpid(self.child, os.WNOHANG)
            if pid:
                self.child = None
                return status
            if self.hangup_deadline and time.monotonic() > self.hangup_deadline and self.cgroup:
                self.cgroup.kill()   # the client is gone: nothing may go on without it

    def finish_lingering(self) -> int:
        """Processes left in the cgroup after the shell exited (`nohup cmd &`): killed, or
        recorded until they exit, as configured. Returns how many were killed."""
        if not self.cgroup or not self.cgroup.populated():
            return 0
        if self.config.background_processes == "record" and self.hangup_deadline is None:
            while self.cgroup.populated():
                self.poll()
                self._check_client()
                if self.hangup_deadline and time.monotonic() > self.hangup_deadline:
                    break
            if not self.cgroup.populated():
                return 0
        lingering = len(self.cgroup.pids())
        self.cgroup.kill()
        self.cgroup.wait_empty(KILL_WAIT_SECONDS)
        return lingering

    def _on_record(self, records):
        self.records.extend(records)   # decoded records of one pass over the rings

    def poll(self):
        if self.probes:
            # Wakes for records, or as soon as the child exits (not up to POLL_MS later);
            # writes what it read in batches of up to 20 ms (Probes.poll).
            if self.probes.poll(POLL_MS, wake_pid=self.child):
                self._flush_records()
        else:
            time.sleep(POLL_MS / 1000)

    def _flush_records(self):
        if not self.records:
            return
        batch, self.records = self.records, []
        self._write(self.kernel.events(batch, self.probes.decoder, self.factory))

    def _write_kernel_events(self, completed):
        if not completed:
            return
        completed.sort(key=lambda item: item[1])
        make, offset = self.factory.make_from, self.factory.monotonic_to_epoch_ns
        self._write([make(kind, ts + offset, fields) for kind, ts, fields in completed])

    def _write(self, made, strict=False):
        """Each event to both sinks. `strict` (before the session's program runs): a failure
        raises, so nothing runs. Otherwise on_log_failure decides (_log_failed)."""
        if not made:
            return
        lines = [events.encode(e) for e in made]
        for sink, write in (("audit_log", lambda: self.log.write(lines)),
                            ("session_files", lambda: self.store.write(made, lines))):
            try:
                write()
            except EnhrecError as e:
                if strict:
                    raise
                # The store reports failed batches late (it writes in a thread): their count.
                self._log_failed(sink, e, getattr(e, "unwritten", len(lines)))

    def _log_failed(self, sink, error, count):
        """`close` ends the session at the first failure (fail closed); `continue` keeps it and
        counts what could not be written. Either way the user is told, once."""
        self.write_failures += 1
        self.unwritten[sink] = self.unwritten.get(sink, 0) + count
        if self.log_failure is not None:
            return
        self.log_failure = error
        if self.config.on_log_failure == "continue":
            _tell_user(f"{error}; the session goes on and what cannot be written is lost "
                       "(on_log_failure: continue)")
            return
        _tell_user(f"{error}; the session is ended (on_log_failure: close)")
        if self.cgroup:
            self.cgroup.kill()
        elif self.child:
            os.kill(self.child, signal.SIGKILL)

    # -- the end -----------------------------------------------------------------------------

    def write_end(self, exit_status: int, killed: int):
        if self.probes:
            self.probes.drain()
            self._flush_records()
            self._write_kernel_events(self.kernel.unfinished())
        fields = {"enhanced_recording": self.config.enabled,
                  "session_recording": events.SESSION_RECORDING,
                  "interactive": self.request.interactive,
                  "participants": [self.request.user],
                  "session_start": events.rfc3339(self.start_ns),
                  "session_stop": events.rfc3339(time.time_ns()),
                  "exit_status": exit_status,
                  "schema_version": events.SCHEMA_VERSION,
                  **self.request.connection_fields}
        if self.probes:
            lost = self.probes.lost_counts()
            fields["lost_events"] = {s: lost[s] for s in ("command", "disk", "network")}
            fields["lost_return_codes"] = lost["command_result"]
            fields["killed_processes"] = killed
        if self.unwritten:
            fields["unwritten_events"] = dict(self.unwritten)
        failures = self.write_failures
        self._write([self.factory.make(events.SESSION_END, **fields)])
        self.ended = self.write_failures == failures

    def close(self):
        """Undo of everything set up: runs whatever happened before."""
        if self.child:
            os.kill(self.child, signal.SIGKILL)
            os.waitpid(self.child, 0)
        if self.cgroup:
            if self.cgroup.populated():
                self.cgroup.kill()
                self.cgroup.wait_empty(KILL_WAIT_SECONDS)
            self.cgroup.remove()
        if self.watchdog:
            self.watchdog.stop()
        if self.probes:
            self.probes.close()
        self.log.close()
        try:
            # Not ended (session.end missing somewhere): the lock file stays for recovery.
            self.store.close(ended=self.ended or self.start_ns is None)
        except EnhrecError as e:
            self._log_failed("session_files", e, getattr(e, "unwritten", 0))


def run(config, request: Request) -> int:
    """Runs a recorded session; returns the exit status (the command's, or 128+signal)."""
    recovery.repair_at_start(config)   # sessions whose recorder died: end them, free their cgroups
    session = Session(config, request)
    try:
        session.start_recording()
        session.write_start()
        session.install_signal_handlers()
        exec_failure = session.spawn()
        status = session.wait_child()
        exit_status = exit_status_of(status)
        killed = session.finish_lingering()
        session.write_end(exit_status, killed)
    finally:
        session.close()
    if exec_failure:
        raise exec_failure
    return exit_status


def exit_status_of(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _outputs_closed(fds) -> bool:
    """True when the reader of one of these fds is gone (a pipe's POLLERR, a socket's or a
    hung-up terminal's POLLHUP)."""
    if not fds:
        return False
    poller = select.poll()
    for fd in fds:
        poller.register(fd, 0)   # POLLERR and POLLHUP are always reported
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _tell_user(message: str) -> None:
    """For a failure while the session runs, which cannot wait for cli.py: the session goes on
    (or is being ended) and the user must know now. Raw mode on a terminal needs the \\r."""
    try:
        end = "\r\n" if os.isatty(2) else "\n"
        os.write(2, f"enhrec-wrap: {message}{end}".encode(errors="replace"))
    except OSError:
        pass


def _terminal_size() -> str | None:
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
            return f"{size.columns}:{size.lines}"
        except OSError:
            continue
    return None


def _read_all(fd) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _child(account, path, argv, env, cwd, go_fd, err_fd):
    """In the forked child: never returns. Reports a failure as b"<exit code>:<message>" on
    err_fd (close-on-exec, so a successful exec reports nothing).

    All set-up happens before the go signal, outside the session's cgroup, so that the recording
    starts with the user's own program and not with the wrapper's preparations."""
    try:
        _prepare_child(account, cwd, keep_fds=(go_fd, err_fd))
        program = _find_program(path, env["PATH"])
        if os.read(go_fd, 1) != b"g":
            os._exit(125)   # the parent could not put us in the cgroup: run nothing
        os.close(go_fd)
    except EnhrecError as e:
        _report(err_fd, e.exit_code, str(e))
    except BaseException as e:  # noqa: BLE001 - the child must never return into the parent
        _report(err_fd, 125, f"cannot start the session: {e}")
    try:
        os.execve(program, argv, env)
    except FileNotFoundError:
        _report(err_fd, EXIT_NOT_FOUND, f"{path}: command not found")
    except BaseException as e:  # noqa: BLE001
        _report(err_fd, EXIT_NOT_EXECUTABLE, f"{path}: {getattr(e, 'strerror', None) or e}")


def _prepare_child(account, cwd, keep_fds):
    for sig in CHILD_DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    low = 3   # nothing of the wrapper's (log, BPF maps) may reach the user's program
    for fd in sorted(keep_fds):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    drop_privileges(account)
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")   # as login(1) does when the home directory is unusable


def _find_program(path, search_path):
    """The file execvp would run, looked up as the session's user."""
    if "/" in path:
        return path
    found = shutil.which(path, path=search_path)
    if found is None:
        raise EnhrecError(f"{path}: command not found", EXIT_NOT_FOUND)
    return found


def _report(fd, code, message):
    try:
        os.write(fd, f"{code}:{message}".encode())
    finally:
        os._exit(code)
