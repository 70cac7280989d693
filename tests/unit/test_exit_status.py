"""Exit statuses are chosen in cli/ alone, from the kind of failure; the lower layers name kinds."""

import pytest

from enhrec_wrap.cli import enhrec, wrap
from enhrec_wrap.errors import EnhrecError, Failure
from enhrec_wrap.session import child


@pytest.mark.parametrize("failure", list(Failure))
def test_the_wrapper_exits_with_the_status_the_session_records(failure):
    # A command that never ran: session.end's exit_status is the forked child's, and the
    # wrapper must say the same.
    recorded = child.NOT_STARTED_STATUS.get(failure, child.NOT_STARTED_STATUS[Failure.FAILED])
    assert wrap.exit_status(EnhrecError("x", failure)) == recorded


def test_wrapper_statuses_are_those_of_env():
    assert wrap.exit_status(EnhrecError("x")) == 125
    assert wrap.exit_status(EnhrecError("x", Failure.COMMAND_NOT_EXECUTABLE)) == 126
    assert wrap.exit_status(EnhrecError("x", Failure.COMMAND_NOT_FOUND)) == 127


@pytest.mark.parametrize("failure, status", [(Failure.FAILED, 2), (Failure.NO_MATCH, 1),
                                             (Failure.CANNOT_RECORD, 1),
                                             (Failure.COMMAND_NOT_FOUND, 2)])
def test_enhrec_statuses(monkeypatch, capsys, failure, status):
    def failing(*_args, **_kwargs):
        raise EnhrecError("what failed: how to fix it", failure)

    monkeypatch.setattr(enhrec, "load_config", failing)
    with pytest.raises(SystemExit) as done:
        enhrec.main(["sessions"])
    assert done.value.code == status
    assert capsys.readouterr().err == "enhrec: what failed: how to fix it\n"
