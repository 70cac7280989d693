"""`enhrec-wrap`: the process. The only place, with cli/enhrec.py, that prints errors and
chooses exit codes; the arguments are cli/wrap_command.py's.

The session's watchdog is forked first of all, before the imports (session/watchdog.py): a fork
of a just-started Python costs 3 MB of memory, one made after click and the rest 8 MB.
"""

import os
import sys

from enhrec_wrap.errors import EXIT_SETUP_FAILED, EnhrecError

PROG = "enhrec-wrap"


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


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv=None):
    make_standard_fds_safe()
    from enhrec_wrap.session.watchdog import Watchdog
    watchdog = Watchdog.fork()
    try:
        status = _run(argv, watchdog)
    finally:
        watchdog.stop()   # no session, or one that ended: it goes without killing anything
    sys.exit(status)


def _run(argv, watchdog) -> int:
    import click

    from enhrec_wrap.cli.wrap_command import enhrec_wrap
    try:
        status = enhrec_wrap.main(args=argv, prog_name=PROG, standalone_mode=False, obj=watchdog)
    except click.UsageError as e:
        fail(f"{e.format_message()}: see `{PROG} --help`", EXIT_SETUP_FAILED)
    except EnhrecError as e:
        fail(str(e), e.exit_code)
    except click.exceptions.Exit as e:
        return e.exit_code
    except (click.Abort, KeyboardInterrupt):
        fail("interrupted before the session started", EXIT_SETUP_FAILED)
    return status if isinstance(status, int) else 0
