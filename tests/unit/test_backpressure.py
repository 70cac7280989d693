"""session/backpressure.py's decisions, with a reader and a cgroup that only say and note."""

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.session.backpressure import Backpressure


class Reader:
    def __init__(self):
        self.backlog = 0

    def pressed(self):
        return self.backlog >= 10

    def relieved(self):
        return self.backlog <= 2


class Cgroup:
    def __init__(self, fail_on=()):
        self.writes = []
        self.fail_on = set(fail_on)

    def freeze(self, frozen):
        if frozen in self.fail_on:
            raise EnhrecError("cannot write cgroup.freeze")
        self.writes.append(frozen)


def test_pauses_when_pressed_and_resumes_only_when_relieved():
    reader, cgroup = Reader(), Cgroup()
    pressure = Backpressure(cgroup, reader)
    for backlog, frozen in ((5, []), (12, [True]), (20, [True]), (6, [True]), (2, [True, False]),
                            (9, [True, False]), (10, [True, False, True])):
        reader.backlog = backlog
        pressure.update()
        assert cgroup.writes == frozen, backlog
    assert pressure.fields()["pauses"] == 2
    pressure.release()
    assert cgroup.writes[-1] is False and pressure.frozen_at is None
    assert pressure.fields()["paused_seconds"] >= 0.0


def test_a_freezer_that_fails_pauses_nothing_from_then_on():
    reader, cgroup = Reader(), Cgroup(fail_on={True})
    pressure = Backpressure(cgroup, reader)
    reader.backlog = 50
    pressure.update()
    pressure.update()
    assert pressure.broken and pressure.fields() == {"pauses": 0, "paused_seconds": 0.0}


def test_a_failed_resume_is_tried_again():
    reader, cgroup = Reader(), Cgroup()
    pressure = Backpressure(cgroup, reader)
    reader.backlog = 50
    pressure.update()
    cgroup.fail_on = {False}
    reader.backlog = 0
    pressure.update()
    assert pressure.frozen_at is not None   # still paused: its resume failed
    cgroup.fail_on = set()
    pressure.update()
    assert cgroup.writes == [True, False] and pressure.frozen_at is None
