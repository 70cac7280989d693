"""`enhrec-wrap`: the command line. The only place that prints errors and chooses exit codes."""

import os
import sys

import click

from enhrec_wrap import __version__
from enhrec_wrap.errors import EXIT_SETUP_FAILED, EnhrecError

PROG = "enhrec-wrap"


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "allow_interspersed_args": False})
@click.option("--config", "config_path", metavar="FILE",
              help="YAML config (default /etc/enhrec-wrap/enhrec.yaml, else built-in defaults).")
@click.option("--user", "user_name", metavar="NAME",
              help="Run the session as NAME (root only). Default: the sudo caller, else you.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.version_option(__version__, prog_name=PROG)
def enhrec_wrap(config_path, user_name, command):
    """Record a session: every exec, file open and connect of COMMAND (default: your login
    shell) and of everything it starts, as Teleport audit events.

    Exit status: the command's, or 128+N when it died of signal N; 125 when recording could not
    be set up (nothing was run); 126 when COMMAND is not executable; 127 when it is not found.
    """
    from enhrec_wrap.config import load_config
    from enhrec_wrap.session import Request, run

    require_root()
    config = load_config(config_path)
    caller = caller_account()
    account = caller
    if user_name is not None:
        account = account_for_user_option(user_name)
    request = Request(account=account, user=caller.name, command=list(command) or None,
                      interactive=sys.stdin.isatty())
    return run(config, request)


def require_root():
    if os.geteuid() != 0:
        raise EnhrecError("must run as root: start it with sudo, e.g. `sudo enhrec-wrap -- bash`")


def caller_account():
    """Who started us: the sudo caller (sudo sets SUDO_UID, and only root can run us, so it is
    sudo's own value), else the real uid."""
    from enhrec_wrap.privileges import account_by_uid

    sudo_uid = os.environ.get("SUDO_UID", "")
    return account_by_uid(int(sudo_uid) if sudo_uid.isdigit() else os.getuid())


def account_for_user_option(name):
    from enhrec_wrap.privileges import account_by_name

    if os.getuid() != 0:
        raise EnhrecError("--user is for root only: run as root, or without --user")
    return account_by_name(name)


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
    try:
        status = enhrec_wrap.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.UsageError as e:
        fail(f"{e.format_message()}: see `{PROG} --help`", EXIT_SETUP_FAILED)
    except EnhrecError as e:
        fail(str(e), e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        fail("interrupted before the session started", EXIT_SETUP_FAILED)
    sys.exit(status if isinstance(status, int) else 0)
