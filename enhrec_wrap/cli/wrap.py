"""`enhrec-wrap`: the process. The only place, with cli/enhrec.py, that prints errors and
chooses exit codes; the arguments are cli/wrap_command.py's.

The session's watchdog (session/watchdog.py) is started once the session has a cgroup.
"""

import os
import sys

from enhrec_wrap.errors import EnhrecError, Failure

PROG = "enhrec-wrap"
# Besides the command's own status (or 128+N when it died of signal N), as env(1) has them.
EXIT_SETUP_FAILED = 125
EXIT_STATUS = {
    Failure.COMMAND_NOT_FOUND: 127,
    Failure.COMMAND_NOT_EXECUTABLE: 126,
}


def make_standard_fds_safe():
    """A closed fd 0, 1 or 2 would be reused by the log or a BPF map, and the session's output
    would land in it: point any closed one at /dev/null first (tlog does the same)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def exit_status(error: EnhrecError) -> int:
    """125 when recording could not be set up (nothing was run), 126/127 when the command could
    not be run: the status its session's end records too."""
    return EXIT_STATUS.get(error.failure, EXIT_SETUP_FAILED)


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv=None):
    make_standard_fds_safe()
    from enhrec_wrap.host import priority
    from enhrec_wrap.session.watchdog import Watchdog
    priority.boost()   # the watchdog too
    watchdog = Watchdog()
    try:
        status = _run(argv, watchdog)
    finally:
        watchdog.stop()   # no session, or one that ended: it goes without killing anything
    # Everything is written and closed (the session's files, its log, its terminal): the
    # interpreter's teardown of its modules would only add 23 ms to every session's end.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _run(argv, watchdog) -> int:
    from enhrec_wrap.cli import wrap_command
    try:
        status = wrap_command.main(sys.argv[1:] if argv is None else argv, watchdog)
    except EnhrecError as e:
        fail(str(e), exit_status(e))
    except KeyboardInterrupt:
        fail("interrupted before the session started", EXIT_SETUP_FAILED)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        fail(f"internal error: {type(e).__name__}: {e}: please report this", EXIT_SETUP_FAILED)
    return status if isinstance(status, int) else 0
