"""One recorded session, from session.start to session.end.

Order matters and is the point of this module: the programs are attached and filtering on the
session's cgroup before the child may exec anything, and the child is inside the cgroup before it
runs a single instruction of the user's program. Whatever fails before the exec stops the session
with nothing run (fail closed).

Beside it: the child's side of the fork (child.py), the two sinks every batch goes to and what
their failures do (sinks.py), and the root-only operations, reached through one object that a
test can replace (privileged.py).
"""

import os
import select
import signal
import time

from enhrec_wrap.events import teleport as events
from enhrec_wrap.session import recovery, terminal
from enhrec_wrap.log.server_id import load_or_create_server_id
from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.host.privileges import Account
from enhrec_wrap.session.backpressure import Backpressure
from enhrec_wrap.session.child import (FORWARDED_SIGNALS, TERMINAL_SIGNALS, login_environment,
                                       make_plan)
from enhrec_wrap.session.ledger import Ledger, new_page
from enhrec_wrap.session.privileged import Privileged
from enhrec_wrap.session.sinks import Sinks, tell_user

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
# session.start's initial_command keeps this much of the command (its bytes and one for each
# argument's end, as the kernel counts them): 2 MiB of arguments, escaped, would make a line of
# 10 MB, longer than readers take (file_lines.MAX_LINE_BYTES). The exec events hold 32 KiB.
MAX_INITIAL_COMMAND_BYTES = 64 << 10


class Request:
    """What to run, for whom. Built by the CLI from arguments and the caller's identity. Not a
    dataclass: that would import dataclasses into every start (host/privileges.py)."""

    def __init__(self, account: Account, user: str, command: list[str] | None, interactive: bool,
                 start_fields=None, connection_fields=None, environment=None,
                 cwd: str | None = None, client_fds: tuple = ()):
        self.account = account       # the OS account the session runs as (`login`)
        self.user = user             # the identity that logged in (`user`)
        self.command = command       # None: the account's login shell
        self.interactive = interactive
        self.start_fields = start_fields or {}             # extra session.start fields (ssh)
        self.connection_fields = connection_fields or {}   # extra start and end fields (ssh)
        self.environment = environment or {}               # extra variables for the session
        self.cwd = cwd               # where it starts; None: home for the login shell, else ours
        self.client_fds = client_fds   # outputs whose reader vanishing means the client is gone


class Session:
    def __init__(self, config, request: Request, watchdog=None, clock=time.time,
                 privileged=None):
        self.config = config
        self.request = request
        # Made at the wrapper's start (cli/wrap.py), its shell started by arm(); a session
        # that records nothing (enabled: false) has nothing for one to guard.
        self.watchdog = watchdog
        # Everything else that needs root: the cgroup, the kernel side, the fork (privileged.py).
        self.privileged = privileged or Privileged()
        self.ledger = watchdog.ledger if watchdog else Ledger(new_page())
        self.sid = events.random_uuid()
        self.server_id = load_or_create_server_id(config.data_dir)
        self.sinks = Sinks(config, self.server_id, self.sid, self.ledger, clock,
                           end_session=self._end_for_log_failure)
        self.ended = False           # session.end is in both sinks
        self.end_reason = END_EXITED
        self.factory = events.EventFactory(self.sid, self.server_id, config.nodename,
                                           request.account.name, request.user, config.cluster)
        self.cgroup = None
        self.recording = None
        self.backpressure = None
        self.child = None            # child.Child, once forked
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
        self.cgroup = self.privileged.create_cgroup(self.config.cgroup_path, self.sid)
        self.recording = self.privileged.start_recording(self.config, self.cgroup.id, self.ledger)
        self.backpressure = Backpressure(self.cgroup, self.recording.reader)
        self.watchdog.arm(self._watchdog_brief(), self.sinks.store.lock.fd, self.cgroup.lock_fd)
        self.recording.wake_on(self.watchdog.pidfd)

    def _watchdog_brief(self) -> dict:
        """What the watchdog needs to end the session if we die (salvage.py)."""
        return {"sid": self.sid, "server_id": self.server_id, "log_dir": self.config.log_dir,
                "lock_path": self.sinks.store.lock.path, "cgroup_dir": self.cgroup.path,
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
        plan = make_plan(self.request, self.sid, self._refusals())
        self.child = self.privileged.fork_child(plan, self.terminal)
        if self.terminal:
            self.terminal.after_spawn()

    def start_child(self):
        """Lets the child run, once it is in the cgroup and the rings are registered. Returns
        an EnhrecError when the exec failed (command not found ...), else None."""
        child = self.child
        try:
            if self.cgroup:
                # Its write waits for an RCU grace period after a quiet spell (11-14 ms here).
                # Made in a thread beside the registration's it was slower, not faster: the
                # pending migration holds every fork on the host back, the watchdog's too.
                self.cgroup.add(child.pid)
                self.recording.wake_on(child.watch())   # its exit is written at once
                self.recording.wait_registered()
        except BaseException:
            child.abort()   # never let it run unrecorded
            raise
        if self.terminal:
            self.terminal.hand_over()
        return child.release()

    # -- while it runs -----------------------------------------------------------------------

    def install_signal_handlers(self):
        for sig in TERMINAL_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._forward)

    def _forward(self, signum, _frame):
        if self.child:
            self.child.send(signum)
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
            status = self.child.wait()
            if status is not None:
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
                self.sinks.failed(EnhrecError(message))

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
        records = self.recording.poll(POLL_SECONDS, flush=self.child is None or self.child.exited())
        self.backpressure.update()   # paused while its records pile up, before they are built
        if records:
            self._write(self.recording.events(records, self.factory, self._keep_up))
        if self.end_reason != END_WATCHDOG_DIED and not self.watchdog.alive():
            self.end_reason = END_WATCHDOG_DIED
            tell_user(WATCHDOG_DIED)
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

    def _write(self, made, strict=False):
        """Each event to both sinks (sinks.py). `strict` (before the session's program runs):
        a failure raises, so nothing runs. Otherwise on_log_failure decides."""
        if not made:
            return
        settled = self.recording.settled() if self.recording else self.ledger.state.settled
        undecodable = self.recording.undecodable() if self.recording else {}
        self.sinks.write(made, settled, undecodable, strict)
        if self.sinks.store.lock.gone():
            self._renew_lock()

    def _renew_lock(self):
        """Someone removed the session's lock file (rm -rf of the log): without one, recovery
        could not find the session if we died. A new one, handed to a new watchdog too (a second
        arm starts one holding it, then retires the old)."""
        try:
            self.sinks.store.renew_lock()
        except EnhrecError as e:
            self.sinks.log_failed("session_files", e, 0)
            return
        if self.watchdog and self.watchdog.armed:
            self.watchdog.arm(self._watchdog_brief(), self.sinks.store.lock.fd, self.cgroup.lock_fd)
            self.recording.wake_on(self.watchdog.pidfd)   # the new one's death wakes us too

    def _end_for_log_failure(self):
        """on_log_failure `close`: the log could not be written, so the session is ended."""
        self.end_reason = END_LOG_FAILURE
        if self.cgroup:
            self.cgroup.kill()
        elif self.child:
            self.child.send(signal.SIGKILL)

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
        self.sinks.count_store_failures()
        fields.update(session_stop=events.rfc3339(time.time_ns()), exit_status=exit_status,
                      end_reason=self.end_reason)
        if self.sinks.unwritten:
            fields["unwritten_events"] = dict(self.sinks.unwritten)
        removed = self.sinks.removed()
        if any(removed.values()):
            fields["removed_events"] = {k: v for k, v in removed.items() if v}
        if self.terminal_summary is not None:
            fields["terminal_recording"] = self.terminal_summary
        failures = self.sinks.write_failures
        self._write([self.factory.make(events.SESSION_END, **fields)])
        self.ended = self.sinks.write_failures == failures

    def close(self):
        """Undo of everything set up: runs whatever happened before. The watchdog goes last: a
        death before that is still its to handle."""
        if self.child:
            self.child.close()
        if self.cgroup:
            if self.cgroup.populated():
                self.cgroup.kill_and_wait()
            self.cgroup.remove()
        if self.terminal:
            self.terminal.close()   # the real terminal as it was, before any message
        release = None
        if self.recording:
            # The watchdog takes the rings out while we exit (idle.release_session), unless it
            # died or was never started (its arm failed): then we do it ourselves.
            watchdog_alive = self.watchdog.armed and self.watchdog.alive()
            if watchdog_alive:
                release = self.recording.release_order(self.config.idle_unload_seconds)
            self.recording.close(None if watchdog_alive else self.config.idle_unload_seconds)
        self.sinks.close(self.ended)
        if self.cgroup:
            self.cgroup.close()
        if self.watchdog:
            self.watchdog.stop(release)


def run(config, request: Request, watchdog, privileged=None) -> int:
    """Runs a recorded session; returns the exit status (the command's, or 128+signal).
    `privileged`: the root-only operations (privileged.py), by default the real ones."""
    recovery.repair_at_start(config)   # sessions whose recorder died: end them, free their cgroups
    session = Session(config, request, watchdog, privileged=privileged)
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


def _terminal_size() -> str | None:
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
            return f"{size.columns}:{size.lines}"
        except OSError:
            continue
    return None
