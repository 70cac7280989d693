"""One recorded session, from session.start to session.end.

Order matters and is the point of this module: the programs are attached and filtering on the
session's cgroup before the child may exec anything, and the child is inside the cgroup before it
runs a single instruction of the user's program. Whatever fails before the exec stops the session
with nothing run (fail closed).
"""

import os
import select
import signal
import time
from dataclasses import dataclass, field

from enhrec_wrap.events import teleport as events
from enhrec_wrap.session import recovery, terminal
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.server_id import load_or_create_server_id
from enhrec_wrap.host.cgroup import SessionCgroup
from enhrec_wrap.errors import EnhrecError, Failure
from enhrec_wrap.host import priority
from enhrec_wrap.host.privileges import Account, drop_privileges, supplementary_groups
from enhrec_wrap.log.store import SessionStore
from enhrec_wrap.session import seccomp
from enhrec_wrap.session.backpressure import Backpressure
from enhrec_wrap.session.ledger import Ledger, new_page

# The session's exit status (session.end's exit_status) when its command never ran, as env(1)
# and shells give it: the forked child exits with it.
NOT_STARTED_STATUS = {
    Failure.COMMAND_NOT_FOUND: 127,
    Failure.COMMAND_NOT_EXECUTABLE: 126,
    Failure.FAILED: 125,
}
POLL_SECONDS = 0.05
RECORDED_AT_NODE = "node"
# After SIGHUP/SIGTERM the session gets this long to exit on its own before cgroup.kill.
HANGUP_GRACE_SECONDS = 2.0
# session.end's end_reason: why the session ended.
END_EXITED = "exited"              # its first process exited
END_HANGUP = "hangup"              # the client went away (SIGHUP, or its pipes closed)
END_TERMINATED = "terminated"      # the wrapper got SIGTERM
END_LOG_FAILURE = "log_failure"    # the log could not be written (on_log_failure: close)
END_WATCHDOG_DIED = "watchdog_died"
WATCHDOG_DIED = ("the session watchdog died, so the session is ended (it may not run without "
                 "one); see `enhrec doctor`")
# Signals a terminal sends to its foreground group: the session's to handle, not the wrapper's.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
# Everything the child must get back to default: Python ignores SIGPIPE and SIGXFSZ itself.
CHILD_DEFAULT_SIGNALS = TERMINAL_SIGNALS + FORWARDED_SIGNALS + (signal.SIGPIPE, signal.SIGXFSZ)
KEPT_ENVIRONMENT = ("TERM", "LANG")
# session.start's initial_command keeps this much of the command (its bytes and one for each
# argument's end, as the kernel counts them): 2 MiB of arguments, escaped, would make a line of
# 10 MB, longer than readers take (reader.MAX_LINE_BYTES). The exec events hold 32 KiB.
MAX_INITIAL_COMMAND_BYTES = 64 << 10
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
    def __init__(self, config, request: Request, watchdog=None, clock=time.time):
        self.config = config
        self.request = request
        # Forked at the wrapper's start (cli/wrap.py); a session that records nothing
        # (enabled: false) has nothing for one to guard.
        self.watchdog = watchdog
        self.ledger = watchdog.ledger if watchdog else Ledger(new_page())
        self.sid = events.random_uuid()
        self.server_id = load_or_create_server_id(config.data_dir)
        self.log = AuditLog(config.log_dir, self.server_id, clock=clock,
                            epoch_seconds=config.key_epoch_seconds)
        # The second sink: the session's own files, and the lock that marks it as not ended.
        try:
            self.store = SessionStore.create(config.log_dir, self.server_id, self.sid)
        except BaseException:
            self.log.close()   # run() never gets a Session to close
            raise
        self.log_failure = None      # the first write failure, told to the user once
        self.write_failures = 0
        self.unwritten = {}          # sink -> events it could not take
        self.ended = False           # session.end is in both sinks
        self.logged = False          # a sink took a batch: there is a session to end
        self.end_reason = END_EXITED
        self.factory = events.EventFactory(self.sid, self.server_id, config.nodename,
                                           request.account.name, request.user, config.cluster)
        self.cgroup = None
        self.recording = None
        self.backpressure = None
        self.child = None
        self._child_pipes = None
        self.child_pidfd = -1
        self.hangup_deadline = None
        self.start_ns = time.time_ns()
        self.terminal = None         # the session's own pty and its relay, when it has a terminal
        self.terminal_summary = None

    # -- set up ------------------------------------------------------------------------------

    def open_terminal(self):
        """Before the kernel side and its imports: the relay is a fork of this process, and
        the fewer pages it has by then, the fewer it holds (docs/PERFORMANCE.md)."""
        env_term = login_environment(self.request, self.sid).get("TERM", "")
        self.terminal = terminal.open_for_session(self.config, self.config.log_dir,
                                                  self.server_id, self.sid, env_term)

    def start_recording(self):
        """cgroup, then the session's rings registered with the programs, then the watchdog
        armed: nothing of the session can run before all three."""
        if not self.config.enabled:
            return
        if self.watchdog is None:
            raise EnhrecError("a recorded session needs its watchdog: start it with enhrec-wrap")
        from enhrec_wrap.session.recording import Recording   # the kernel side, when recording
        self.cgroup = SessionCgroup.create(self.config.cgroup_path, self.sid)
        self.recording = Recording.start(self.config, self.cgroup.id, self.ledger)
        self.backpressure = Backpressure(self.cgroup, self.recording.reader)
        self.watchdog.arm(self._watchdog_brief(), self.store.lock.fd, self.cgroup.lock_fd)
        self.recording.wake_on(self.watchdog.pidfd)

    def _watchdog_brief(self) -> dict:
        """What the watchdog needs to end the session if we die (salvage.py)."""
        return {"sid": self.sid, "server_id": self.server_id, "log_dir": self.config.log_dir,
                "lock_path": self.store.lock.path, "cgroup_dir": self.cgroup.path,
                "cgroup_id": self.cgroup.id, "version": self.recording.version,
                "idle_unload_seconds": self.config.idle_unload_seconds,
                "envelope": self.factory.envelope, "end_fields": self._end_fields()}

    def write_start(self):
        fields = {"interactive": self.request.interactive,
                  "enhanced_recording": self.config.enabled,
                  "session_recording": self._session_recording(),
                  "initial_command": list(self.request.command or []),
                  "schema_version": events.SCHEMA_VERSION}
        size = _terminal_size()
        if size:
            fields["size"] = size
        if self.cgroup:
            fields["cgroup_id"] = self.cgroup.id
        fields.update(self.request.connection_fields)
        fields.update(self.request.start_fields)
        fields["initial_command"], cut = initial_command(fields["initial_command"])
        if cut:
            fields["initial_command_truncated"] = True
        self._write([self.factory.make(events.SESSION_START, self.start_ns, **fields)], strict=True)

    # -- the child ---------------------------------------------------------------------------

    def fork_child(self):
        """Forks the child, which waits for its go. It opens no file before its exec (its
        seccomp filter, its groups and the module that looks its program up are made here),
        so none of the wrapper's set-up of it can be recorded, whenever it reaches the cgroup."""
        path, argv = child_argv(self.request)
        env = login_environment(self.request, self.sid)
        cwd = self.request.cwd
        if cwd is None and self.request.command is None:
            cwd = self.request.account.home
        account = self.request.account
        groups = supplementary_groups(account)
        seccomp_filter = seccomp.build(*self._refusals())
        if "/" not in path:
            import shutil   # for the child's lookup of the program, imported here
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(err_r)
            _child(account, groups, path, argv, env, cwd, go_r, err_w, seccomp_filter,
                   self.terminal)
        os.close(go_r)
        os.close(err_w)
        self.child = pid
        self._child_pipes = (go_w, err_r)
        if self.terminal:
            self.terminal.after_spawn()

    def start_child(self):
        """Lets the child run, once it is in the cgroup and the rings are registered. Returns
        an EnhrecError when the exec failed (command not found ...), else None."""
        go_w, err_r = self._child_pipes
        pid = self.child
        try:
            if self.cgroup:
                # Its write waits for an RCU grace period after a quiet spell (11-14 ms here).
                # Made in a thread beside the registration's it was slower, not faster: the
                # pending migration holds every fork on the host back, the watchdog's too.
                self.cgroup.add(pid)
                self.child_pidfd = os.pidfd_open(pid)
                self.recording.wake_on(self.child_pidfd)   # its exit is written at once
                self.recording.wait_registered()
        except BaseException:
            os.kill(pid, signal.SIGKILL)   # never let it run unrecorded
            os.waitpid(pid, 0)
            self.child = None
            os.close(go_w)
            os.close(err_r)
            raise
        if self.terminal:
            self.terminal.hand_over()
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:
            pass   # the child failed during its set-up; its reason is on the error pipe
        finally:
            os.close(go_w)
        failure = _read_all(err_r)
        os.close(err_r)
        if failure:
            # A name that is not UTF-8 is shown with its bytes as \xNN, on one line.
            kind, _, message = failure.decode(errors="backslashreplace").partition(":")
            return EnhrecError(message, Failure[kind])
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
            self.end_reason = END_HANGUP if signum == signal.SIGHUP else END_TERMINATED

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
            self._check_terminal()
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
                self._check_terminal()
                if self.hangup_deadline and time.monotonic() > self.hangup_deadline:
                    break
            if not self.cgroup.populated():
                return 0
        lingering = len(self.cgroup.pids())
        self.cgroup.kill_and_wait()
        return lingering

    def _check_terminal(self):
        """A failed write of the terminal recording is a failed write of the log."""
        if self.terminal:
            for message in self.terminal.failures():
                self._failed(EnhrecError(message))

    def finish_terminal(self):
        """Once nothing of the session runs: the relay's last output, and its summary."""
        if self.terminal:
            self.terminal_summary = self.terminal.finish()

    def poll(self):
        """Waits for records (woken at once by the child's exit or the watchdog's) and writes
        them in batches of up to 20 ms (RingReader.poll); a watchdog that died ends the session,
        which may never run without one."""
        if self.recording is None:
            time.sleep(POLL_SECONDS)
            return
        records = self.recording.poll(POLL_SECONDS, flush=self.child is None or self._child_exited())
        self.backpressure.update()   # paused while its records pile up, before they are built
        if records:
            self._write(self.recording.events(records, self.factory, self._keep_up))
        if self.end_reason != END_WATCHDOG_DIED and not self.watchdog.alive():
            self.end_reason = END_WATCHDOG_DIED
            _tell_user(WATCHDOG_DIED)
            self.cgroup.kill()

    def _keep_up(self):
        """While a batch is built: the rings read again, and the session paused if its records
        pile up, so that no ring waits for a whole batch's build (backpressure.py)."""
        self.recording.refill()
        self.backpressure.update()

    def _refusals(self) -> tuple[bool, bool]:
        """(refuse io_uring, refuse 32-bit syscalls): what the recorder could not see is refused
        in a recorded session (session/seccomp.py), unless the config allows it."""
        if self.recording is None:
            return False, False
        return self.config.refuse_io_uring, self.config.refuse_32bit

    def _child_exited(self) -> bool:
        return bool(select.select([self.child_pidfd], [], [], 0)[0]) if self.child_pidfd >= 0 else True

    def _write(self, made, strict=False):
        """Each event to both sinks, reported to the ledger around it (ledger.py). `strict`
        (before the session's program runs): a failure raises, so nothing runs. Otherwise
        on_log_failure decides (_log_failed)."""
        if not made:
            return
        lines = [events.encode(e) for e in made]
        ledger = self.ledger
        settled = self.recording.settled() if self.recording else ledger.state.settled
        undecodable = self.recording.undecodable() if self.recording else {}
        ledger.begin_batch(made[0]["ei"], made[-1]["ei"] + 1, settled, undecodable)
        logged = True
        try:
            # The session files then get the lines as sealed into the host's chain, byte for byte.
            lines = self.log.write(lines, announce=ledger.writing)
            self.logged = True
        except EnhrecError as e:
            if strict:
                raise
            logged = False
            self._log_failed("audit_log", e, len(lines))
        try:
            self.store.write(made, lines)
            self.logged = True
        except EnhrecError as e:
            if strict:
                raise
            # The store reports failed batches late (it writes in a thread): their count.
            self._log_failed("session_files", e, getattr(e, "unwritten", len(lines)))
        ended = logged and made[-1]["event"] == events.SESSION_END[0]
        ledger.end_batch(self.unwritten.get("audit_log", 0),
                         self.unwritten.get("session_files", 0), ended)
        if self.store.lock.gone():
            self._renew_lock()

    def _renew_lock(self):
        """Someone removed the session's lock file (rm -rf of the log): without one, recovery
        could not find the session if we died. A new one, handed to a new watchdog too (a second
        arm starts one holding it, then retires the old)."""
        try:
            self.store.renew_lock()
        except EnhrecError as e:
            self._log_failed("session_files", e, 0)
            return
        if self.watchdog and self.watchdog.armed:
            self.watchdog.arm(self._watchdog_brief(), self.store.lock.fd, self.cgroup.lock_fd)
            self.recording.wake_on(self.watchdog.pidfd)   # the new one's death wakes us too

    def _log_failed(self, sink, error, count):
        """`close` ends the session at the first failure (fail closed); `continue` keeps it and
        counts what could not be written. Either way the user is told, once."""
        self.write_failures += 1
        self.unwritten[sink] = self.unwritten.get(sink, 0) + count
        self._failed(error)

    def _failed(self, error):
        if self.log_failure is not None:
            return
        self.log_failure = error
        if self.config.on_log_failure == "continue":
            _tell_user(f"{error}; the session goes on and what cannot be written is lost "
                       "(on_log_failure: continue)")
            return
        _tell_user(f"{error}; the session is ended (on_log_failure: close)")
        self.end_reason = END_LOG_FAILURE
        if self.cgroup:
            self.cgroup.kill()
        elif self.child:
            os.kill(self.child, signal.SIGKILL)

    # -- the end -----------------------------------------------------------------------------

    def _session_recording(self) -> str:
        """Teleport's recording mode: `node` (recorded at this host) when the session's output
        is recorded (session/terminal.py), else `off`."""
        return RECORDED_AT_NODE if self.terminal else events.SESSION_RECORDING

    def _end_fields(self) -> dict:
        """session.end's fields known from the start (the watchdog's copy ends with these too)."""
        return {"enhanced_recording": self.config.enabled,
                "session_recording": self._session_recording(),
                "interactive": self.request.interactive,
                "participants": [self.request.user],
                "session_start": events.rfc3339(self.start_ns),
                "schema_version": events.SCHEMA_VERSION,
                **self.request.connection_fields}

    def write_end(self, exit_status: int, killed: int):
        fields = self._end_fields()
        if self.recording:
            self.backpressure.release()
            self._write(self.recording.events(self.recording.drain(), self.factory))
            fields.update(self.recording.lost())
            fields.update(self.backpressure.fields())
            fields["killed_processes"] = killed
            if not all(self._refusals()):
                fields["partially_audited"] = True   # io_uring or 32-bit calls were allowed
        self._count_store_failures()
        fields.update(session_stop=events.rfc3339(time.time_ns()), exit_status=exit_status,
                      end_reason=self.end_reason)
        if self.unwritten:
            fields["unwritten_events"] = dict(self.unwritten)
        removed = {"audit_log": self.log.removed(), "session_files": self.store.removed_events()}
        if any(removed.values()):
            fields["removed_events"] = {k: v for k, v in removed.items() if v}
        if self.terminal_summary is not None:
            fields["terminal_recording"] = self.terminal_summary
        failures = self.write_failures
        self._write([self.factory.make(events.SESSION_END, **fields)])
        self.ended = self.write_failures == failures

    def _count_store_failures(self):
        """Waits until every batch given to the store is in its files, or counted: it reports a
        failure late (from its thread), and session.end must count them all."""
        try:
            self.store.flush()
        except EnhrecError as e:
            self._log_failed("session_files", e, e.unwritten)
            # The last batch's end_batch again: only its counts change, so that the ledger has
            # them should we die before session.end is written.
            self.ledger.end_batch(self.unwritten.get("audit_log", 0),
                                  self.unwritten.get("session_files", 0))

    def close(self):
        """Undo of everything set up: runs whatever happened before. The watchdog goes last: a
        death before that is still its to handle."""
        if self.child:
            os.kill(self.child, signal.SIGKILL)
            os.waitpid(self.child, 0)
        if self.child_pidfd >= 0:
            os.close(self.child_pidfd)
        if self.cgroup:
            if self.cgroup.populated():
                self.cgroup.kill_and_wait()
            self.cgroup.remove()
        if self.terminal:
            self.terminal.close()   # the real terminal as it was, before any message
        release = None
        if self.recording:
            # The watchdog takes the rings out while we exit (idle.release_session), unless it
            # died: then we do it ourselves.
            watchdog_alive = self.watchdog.alive()
            if watchdog_alive:
                release = self.recording.release_order(self.config.idle_unload_seconds)
            self.recording.close(None if watchdog_alive else self.config.idle_unload_seconds)
        self.log.close()
        try:
            # Not ended (session.end missing somewhere): the lock file stays for recovery. A
            # session that logged nothing (it failed before its start) has nothing to repair.
            self.store.close(ended=self.ended or not self.logged)
        except EnhrecError as e:
            self._log_failed("session_files", e, getattr(e, "unwritten", 0))
        if self.cgroup:
            self.cgroup.close()
        if self.watchdog:
            self.watchdog.stop(release)


def run(config, request: Request, watchdog) -> int:
    """Runs a recorded session; returns the exit status (the command's, or 128+signal)."""
    recovery.repair_at_start(config)   # sessions whose recorder died: end them, free their cgroups
    session = Session(config, request, watchdog)
    try:
        session.open_terminal()
        session.start_recording()
        session.write_start()
        session.install_signal_handlers()
        session.fork_child()
        exec_failure = session.start_child()
        status = session.wait_child()
        exit_status = exit_status_of(status)
        killed = session.finish_lingering()
        session.finish_terminal()
        session.write_end(exit_status, killed)
    finally:
        session.close()
    if exec_failure:
        raise exec_failure
    return exit_status


def initial_command(command: list[str]) -> tuple[list[str], bool]:
    """The command as session.start records it: its first MAX_INITIAL_COMMAND_BYTES, and
    whether it was cut."""
    kept, size = [], 0
    for arg in command:
        raw = os.fsencode(arg)
        if size + len(raw) + 1 > MAX_INITIAL_COMMAND_BYTES:
            kept.append(os.fsdecode(raw[:MAX_INITIAL_COMMAND_BYTES - size - 1]))
            return kept, True
        kept.append(arg)
        size += len(raw) + 1
    return kept, False


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
    """For a failure while the session runs, which cannot wait for cli/wrap.py: the session goes on
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


def _child(account, groups, path, argv, env, cwd, go_fd, err_fd, seccomp_filter,
           session_terminal=None):
    """In the forked child: never returns. Reports a failure as b"<Failure name>:<message>" on
    err_fd (close-on-exec, so a successful exec reports nothing).

    All set-up happens before the go signal, outside the session's cgroup, so that the recording
    starts with the user's own program and not with the wrapper's preparations."""
    try:
        if session_terminal:
            session_terminal.child_side()
        _prepare_child(account, groups, cwd, (go_fd, err_fd), seccomp_filter)
        program = _find_program(path, env["PATH"])
        if os.read(go_fd, 1) != b"g":
            # The parent could not put us in the cgroup: run nothing.
            os._exit(NOT_STARTED_STATUS[Failure.FAILED])
        os.close(go_fd)
    except EnhrecError as e:
        _report(err_fd, e.failure, str(e))
    except BaseException as e:  # noqa: BLE001 - the child must never return into the parent
        _report(err_fd, Failure.FAILED, f"cannot start the session: {e}")
    try:
        os.execve(program, argv, env)
    except FileNotFoundError:
        _report(err_fd, Failure.COMMAND_NOT_FOUND, f"{path}: command not found")
    except BaseException as e:  # noqa: BLE001
        _report(err_fd, Failure.COMMAND_NOT_EXECUTABLE, f"{path}: {getattr(e, 'strerror', None) or e}")


def _prepare_child(account, groups, cwd, keep_fds, seccomp_filter):
    for sig in CHILD_DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    low = 3   # nothing of the wrapper's (log, BPF maps) may reach the user's program
    for fd in sorted(keep_fds):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    priority.restore_caller()    # the recorder's boost is not the session's
    seccomp.install(seccomp_filter)   # as root: without no_new_privs, setuid programs still work
    drop_privileges(account, groups)
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError:
            os.chdir("/")   # as login(1) does when the home directory is unusable


def _find_program(path, search_path):
    """The file execvp would run, looked up as the session's user."""
    if "/" in path:
        return path
    import shutil   # imported by fork_child already: no file is opened here
    found = shutil.which(path, path=search_path)
    if found is None:
        raise EnhrecError(f"{path}: command not found", Failure.COMMAND_NOT_FOUND)
    return found


def _report(fd, failure, message):
    try:
        os.write(fd, f"{failure.name}:{message}".encode(errors="surrogateescape"))
    finally:
        os._exit(NOT_STARTED_STATUS.get(failure, NOT_STARTED_STATUS[Failure.FAILED]))
