"""The session's child: its first process, from the fork to its exec of the user's program.

Everything the child needs is made in the parent before the fork (`make_plan`): its seccomp filter,
its groups, its environment, the module that looks its program up. So the child opens no file
before its exec, and none of the wrapper's set-up of it can be recorded, whenever it reaches
the session's cgroup. It then waits for its go (`Child.release`), which the session gives once
the child is in the cgroup and the rings are registered; in the meantime it has restored its
signals, closed the wrapper's fds, installed its seccomp filter and, last, dropped its
privileges (host/privileges.py). Whatever fails there, it execs nothing and reports why.
"""

import collections
import os
import select
import signal

from enhrec_wrap.errors import EnhrecError, Failure
from enhrec_wrap.host import priority
from enhrec_wrap.host.privileges import drop_privileges, supplementary_groups
from enhrec_wrap.session import seccomp

# The session's exit status (session.end's exit_status) when its command never ran, as env(1)
# and shells give it: the forked child exits with it.
NOT_STARTED_STATUS = {
    Failure.COMMAND_NOT_FOUND: 127,
    Failure.COMMAND_NOT_EXECUTABLE: 126,
    Failure.FAILED: 125,
}
# Signals a terminal sends to its foreground group: the session's to handle, not the wrapper's.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
# Everything the child must get back to default: Python ignores SIGPIPE and SIGXFSZ itself.
CHILD_DEFAULT_SIGNALS = TERMINAL_SIGNALS + FORWARDED_SIGNALS + (signal.SIGPIPE, signal.SIGXFSZ)
KEPT_ENVIRONMENT = ("TERM", "LANG")
USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def login_environment(request, sid: str, inherited=os.environ) -> dict:
    """A clean login environment, as login(1) and `su -` build it; nothing else is inherited."""
    account = request.account
    env = {name: inherited[name] for name in KEPT_ENVIRONMENT if name in inherited}
    env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell,
               PATH=ROOT_PATH if account.uid == 0 else USER_PATH)
    env.update(request.environment)
    env["ENHREC_SESSION_ID"] = sid
    return env


def child_argv(request) -> tuple[str, list[str]]:
    """(file to exec, argv): the command as given, or the login shell with a `-` argv[0]."""
    if request.command:
        return request.command[0], list(request.command)
    shell = request.account.shell
    return shell, ["-" + os.path.basename(shell)]


# What the child does between its fork and its exec, all of it made before the fork: the
# account it becomes and its supplementary groups, the program as given (looked up in PATH when
# it has no /), its argv, environment and directory, and seccomp.build's filter (None when
# nothing is refused). A tuple: a dataclass here cost half a millisecond of every start.
Plan = collections.namedtuple("Plan", "account groups path argv env cwd seccomp_filter")


def make_plan(request, sid: str, refusals: tuple[bool, bool]) -> Plan:
    """The child's plan for the session's `request` (lifecycle.Request)."""
    path, argv = child_argv(request)
    env = login_environment(request, sid)
    cwd = request.cwd
    if cwd is None and request.command is None:
        cwd = request.account.home
    account = request.account
    groups = supplementary_groups(account)
    seccomp_filter = seccomp.build(*refusals)
    if "/" not in path:
        import shutil  # noqa: F401 - for the child's lookup of the program, imported here
    return Plan(account, groups, path, argv, env, cwd, seccomp_filter)


class Child:
    """The parent's side of the forked child: its go and error pipes, its pidfd, its reaping."""

    def __init__(self, pid: int, go_w: int, err_r: int):
        self.pid = pid
        self._pipes = (go_w, err_r)
        self.pidfd = -1
        self.reaped = False

    @classmethod
    def fork(cls, plan: Plan, session_terminal=None) -> "Child":
        """Forks the child, which carries out `plan` and then waits for its go."""
        go_r, go_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_w)
            os.close(err_r)
            _child(plan, go_r, err_w, session_terminal)
        os.close(go_r)
        os.close(err_w)
        return cls(pid, go_w, err_r)

    def watch(self) -> int:
        """Its pidfd, readable once it has exited."""
        self.pidfd = os.pidfd_open(self.pid)
        return self.pidfd

    def abort(self):
        """Before its go: killed and reaped, so that it never runs unrecorded."""
        go_w, err_r = self._pipes
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.reaped = True
        os.close(go_w)
        os.close(err_r)

    def release(self) -> EnhrecError | None:
        """Lets it exec. Returns an EnhrecError when the exec failed (command not found ...),
        else None."""
        go_w, err_r = self._pipes
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

    def send(self, signum: int):
        """A signal, unless it has been reaped (its pid may be another's by now)."""
        if not self.reaped:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self) -> int | None:
        """Its wait status once it has exited (it is reaped then), else None at once."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.reaped = True
            return status
        return None

    def exited(self) -> bool:
        """Whether it has exited, by its pidfd (True when it is not watched)."""
        if self.reaped or self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def close(self):
        if not self.reaped:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.reaped = True
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _read_all(fd) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# -- in the forked child ---------------------------------------------------------------------

def _child(plan, go_fd, err_fd, session_terminal=None):
    """In the forked child: never returns. Reports a failure as b"<Failure name>:<message>" on
    err_fd (close-on-exec, so a successful exec reports nothing).

    All set-up happens before the go signal, outside the session's cgroup, so that the recording
    starts with the user's own program and not with the wrapper's preparations."""
    path = plan.path
    try:
        if session_terminal:
            session_terminal.child_side()
        _prepare_child(plan.account, plan.groups, plan.cwd, (go_fd, err_fd), plan.seccomp_filter)
        program = _find_program(path, plan.env["PATH"])
        if os.read(go_fd, 1) != b"g":
            # The parent could not put us in the cgroup: run nothing.
            os._exit(NOT_STARTED_STATUS[Failure.FAILED])
        os.close(go_fd)
    except EnhrecError as e:
        _report(err_fd, e.failure, str(e))
    except BaseException as e:  # noqa: BLE001 - the child must never return into the parent
        _report(err_fd, Failure.FAILED, f"cannot start the session: {e}")
    try:
        os.execve(program, plan.argv, plan.env)
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
    import shutil   # imported by make_plan() already: no file is opened here
    found = shutil.which(path, path=search_path)
    if found is None:
        raise EnhrecError(f"{path}: command not found", Failure.COMMAND_NOT_FOUND)
    return found


def _report(fd, failure, message):
    try:
        os.write(fd, f"{failure.name}:{message}".encode(errors="surrogateescape"))
    finally:
        os._exit(NOT_STARTED_STATUS.get(failure, NOT_STARTED_STATUS[Failure.FAILED]))
