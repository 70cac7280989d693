"""Recording.poll's wait (session/recording.py): it grows while the rings give nothing, up to
IDLE_POLL_SECONDS, and any record, a backlog or a flush brings it back to the caller's."""

from enhrec_wrap.session import recording


class FakeReader:
    def __init__(self):
        self.timeouts = []
        self.taken = [0] * 16
        self.waiting = 0

    def poll(self, timeout, flush):
        self.timeouts.append(timeout)
        return []

    def backlog(self):
        return self.waiting


def quiet_recording():
    rec = recording.Recording.__new__(recording.Recording)
    rec.reader = FakeReader()
    rec._wait, rec._seen = 0.0, 0
    return rec


def test_the_wait_doubles_while_quiet_up_to_the_idle_bound():
    rec = quiet_recording()
    for _ in range(8):
        rec.poll(0.05, flush=False)
    assert rec.reader.timeouts == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5]
    assert recording.IDLE_POLL_SECONDS == 0.5


def test_a_record_brings_the_wait_back():
    rec = quiet_recording()
    for _ in range(4):
        rec.poll(0.05, flush=False)
    rec.reader.taken[3] += 1          # the next look (after 0.5 s) finds a record
    rec.poll(0.05, flush=False)
    rec.poll(0.05, flush=False)
    assert rec.reader.timeouts[-2:] == [0.5, 0.05]


def test_a_backlog_or_a_flush_keeps_the_callers_wait():
    rec = quiet_recording()
    rec.reader.waiting = 3
    for _ in range(3):
        rec.poll(0.05, flush=False)
    assert rec.reader.timeouts == [0.05] * 3
    rec.reader.waiting = 0
    for _ in range(3):
        rec.poll(0.05, flush=False)
    rec.poll(0.05, flush=True)
    rec.poll(0.05, flush=False)
    assert rec.reader.timeouts[3:] == [0.05, 0.1, 0.2, 0.05, 0.05]
