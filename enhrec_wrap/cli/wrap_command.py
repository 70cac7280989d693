"""`enhrec-wrap`'s arguments, and the session request it builds from them and from the caller's
identity. cli/wrap.py runs it and turns its failures into exit codes.

The arguments are parsed here by hand, not with click as `enhrec`'s are: the grammar is four
options and a command, and click's import (22 ms and 1 MB, with its regular expressions) would
be a fifth of every login's start (docs/PERFORMANCE.md).
"""

import os
import sys

from enhrec_wrap import __version__
from enhrec_wrap.errors import EnhrecError

PROG = "enhrec-wrap"
HELP = f"""\
Usage: {PROG} [OPTIONS] [--] [COMMAND [ARG]...]

  Record a session: every exec, file open and connect of COMMAND (default: your
  login shell) and of everything it starts, as Teleport audit events.

  Exit status: the command's, or 128+N when it died of signal N; 125 when
  recording could not be set up (nothing was run); 126 when COMMAND is not
  executable; 127 when it is not found.

Options:
  --config FILE  YAML config (default /etc/enhrec-wrap/enhrec.yaml, else
                 built-in defaults).
  --user NAME    Run the session as NAME (root only). Default: the sudo caller,
                 else you.
  --ssh          Run as sshd's ForceCommand through sudo: the session sshd asked
                 for (SSH_ORIGINAL_COMMAND, else the login shell) for the sudo
                 caller.
  --version      Show the version and exit.
  -h, --help     Show this message and exit.
"""
# option -> the Arguments attribute its value goes to
VALUE_OPTIONS = {"--config": "config_path", "--user": "user_name"}


class Arguments:
    def __init__(self):
        self.config_path = None
        self.user_name = None
        self.ssh_mode = False
        self.command = ()
        self.answer = None   # --help or --version: what to print instead of running


def parse(argv) -> Arguments:
    """The options, then COMMAND: the first word that is not an option, or everything after
    `--`. Raises EnhrecError (one line) for anything else."""
    args, words, seen = Arguments(), list(argv), set()
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            words.insert(0, word)
            break
        name, has_value, value = word.partition("=")
        if name in ("-h", "--help", "--version", "--ssh") and not has_value:
            if name == "--ssh":
                args.ssh_mode = True
            elif args.answer is None:
                args.answer = HELP if name != "--version" else f"{PROG}, version {__version__}\n"
            continue
        if name in ("-h", "--help", "--version", "--ssh"):
            raise EnhrecError(f"{name} takes no value: see `{PROG} --help`")
        if name not in VALUE_OPTIONS:
            raise EnhrecError(f"no such option: {name}: see `{PROG} --help`")
        if name in seen:
            raise EnhrecError(f"{name} given twice: give it once")
        if not has_value:
            if not words:
                raise EnhrecError(f"{name} needs a value: see `{PROG} --help`")
            value = words.pop(0)
        seen.add(name)
        setattr(args, VALUE_OPTIONS[name], value)
    args.command = tuple(words)
    return args


def main(argv, watchdog) -> int:
    """Runs what the arguments ask for; returns the exit status."""
    args = parse(argv)
    if args.answer is not None:
        sys.stdout.write(args.answer)
        return 0
    return enhrec_wrap(watchdog, args.config_path, args.user_name, args.ssh_mode, args.command)


def enhrec_wrap(watchdog, config_path, user_name, ssh_mode, command):
    """A recorded session for the caller, or under sshd (--ssh) for the sudo caller."""
    from enhrec_wrap.config import load_config
    from enhrec_wrap.session.lifecycle import run

    require_root()
    if ssh_mode:
        caller = check_ssh_caller(config_path, user_name, command)
        config = load_config(config_path)
        return run(config, ssh_request(caller, user_name, command), watchdog)
    config = load_config(config_path)
    request = local_request(user_name, command)
    return run_with_pam(config, request, watchdog)


def local_request(user_name, command):
    from enhrec_wrap.session.lifecycle import Request

    caller = caller_account()
    account = caller
    if user_name is not None:
        account = account_for_user_option(user_name)
    return Request(account=account, user=caller.name, command=list(command) or None,
                   interactive=sys.stdin.isatty())


def run_with_pam(config, request, watchdog):
    """A login for the account, as `runuser -l` makes one: PAM's account check (a refused
    account gets nothing run), a PAM session around the recorded one, and PAM's environment."""
    from enhrec_wrap.login import pam
    from enhrec_wrap.session.lifecycle import run

    pam_session = pam.open_session(request.account.name, request.user)
    try:
        request.environment.update(pam_session.environment)
        return run(config, request, watchdog)
    finally:
        pam_session.close()


def check_ssh_caller(config_path, user_name, command):
    """`--ssh` is what every user may run through sudo: from anyone but root it takes nothing
    that could change what runs or how it is recorded, and it never starts a session inside a
    recorded one (the outer session would lose sight of everything started in the inner one)."""
    from enhrec_wrap.login.ssh import enclosing_session

    caller = caller_account()
    if caller.uid == 0:
        return caller
    given = [name for name, value in (("--config", config_path), ("--user", user_name),
                                      ("COMMAND", command)) if value]
    if given:
        raise EnhrecError(f"--ssh takes no {', '.join(given)} from a non-root caller: "
                          f"sshd's ForceCommand must be exactly `sudo -n {PROG} --ssh`")
    inside = enclosing_session()
    if inside:
        raise EnhrecError(f"already inside recorded session {inside}: --ssh is for starting "
                          "an SSH login's session, not for use within one")
    return caller


def ssh_request(caller, user_name, command):
    """The session sshd was asked for, for the sudo caller (root may name another account and
    command). sshd has already run PAM for it, so there is no PAM here."""
    from enhrec_wrap.session.lifecycle import Request
    from enhrec_wrap.login.ssh import ssh_login

    account = caller if user_name is None else account_for_user_option(user_name)
    login = ssh_login(account, os.environ)
    return Request(account=account, user=account.name, command=list(command) or login.command,
                   interactive=login.interactive, start_fields=login.start_fields,
                   connection_fields=login.connection_fields,
                   environment=login.environment, cwd=working_directory(),
                   client_fds=(1, 2))


def working_directory():
    """Where sshd started us (the home directory, or / when that was unusable): the session
    starts there, while the wrapper itself, running as root, leaves a directory the user owns."""
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    os.chdir("/")
    return cwd


def require_root():
    if os.geteuid() != 0:
        raise EnhrecError("must run as root: start it with sudo, e.g. `sudo enhrec-wrap -- bash`")


def caller_account():
    """Who started us: the sudo caller (sudo sets SUDO_UID, and only root can run us, so it is
    sudo's own value), else the real uid."""
    from enhrec_wrap.host.privileges import account_by_uid

    sudo_uid = os.environ.get("SUDO_UID", "")
    return account_by_uid(int(sudo_uid) if sudo_uid.isdigit() else os.getuid())


def account_for_user_option(name):
    from enhrec_wrap.host.privileges import account_by_name

    if os.getuid() != 0:
        raise EnhrecError("--user is for root only: run as root, or without --user")
    return account_by_name(name)
