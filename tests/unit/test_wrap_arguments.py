"""enhrec-wrap's argument grammar (cli/wrap_command.parse): options, then the command."""

import pytest

from enhrec_wrap.cli import wrap_command
from enhrec_wrap.errors import EnhrecError


def parsed(*argv):
    a = wrap_command.parse(argv)
    return a.config_path, a.user_name, a.ssh_mode, a.command


@pytest.mark.parametrize("argv, expected", [
    ((), (None, None, False, ())),
    (("bash",), (None, None, False, ("bash",))),
    (("--", "ls", "-l"), (None, None, False, ("ls", "-l"))),
    (("--config", "/x.yaml", "--user", "bob", "id"), ("/x.yaml", "bob", False, ("id",))),
    (("--config=/x.yaml", "--user=bob", "--", "id"), ("/x.yaml", "bob", False, ("id",))),
    (("--ssh",), (None, None, True, ())),
    # The command's own options are its own, after the first word that is not ours.
    (("make", "--config", "-j2"), (None, None, False, ("make", "--config", "-j2"))),
    (("--", "--ssh"), (None, None, False, ("--ssh",))),
    (("-",), (None, None, False, ("-",))),
    (("--config", "--ssh"), ("--ssh", None, False, ())),   # a value may look like an option
])
def test_grammar(argv, expected):
    assert parsed(*argv) == expected


@pytest.mark.parametrize("argv, message", [
    (("--bogus",), "no such option: --bogus: see `enhrec-wrap --help`"),
    (("-x", "ls"), "no such option: -x"),
    (("--config",), "--config needs a value"),
    (("--user",), "--user needs a value"),
    (("--config", "a", "--config", "b"), "--config given twice"),
    (("--ssh=yes",), "--ssh takes no value"),
])
def test_bad_arguments_are_one_line(argv, message):
    with pytest.raises(EnhrecError) as error:
        wrap_command.parse(argv)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_help_and_version_answer_without_running(capsys):
    assert wrap_command.main(["--help"], watchdog=None) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: enhrec-wrap ") and all(
        o in out for o in ("--config FILE", "--user NAME", "--ssh", "--version", "-h, --help"))
    assert wrap_command.main(["--version"], watchdog=None) == 0
    assert capsys.readouterr().out.startswith("enhrec-wrap, version ")
