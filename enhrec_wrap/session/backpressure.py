"""Backpressure: a session whose records come faster than its recorder can write them is paused
until the recorder has caught up, so that a burst is recorded whole instead of overflowing the
kernel's ring.

A ring buffer can only absorb a burst of its own size; a static open loop makes records several
times faster than any recorder builds and writes events, so without a pause a long enough loop
always loses records, however large the rings. Instead, once records pile up (the reader's
backlog, or a ring half full: RingReader.pressed), the session's cgroup is frozen: every process
in it stops on its way back to user space, within a fraction of a millisecond here, without a
job-control stop that its parent could see. The recorder goes on writing, and thaws the cgroup
when the backlog is worked off (RingReader.relieved). A busy session is slowed to the rate its
recorder writes at; a quiet one never notices. session.end says how often and how long
(`pauses`, `paused_seconds`).

A frozen session still dies of a fatal signal, so the watchdog's cgroup.kill (the recorder
died) and the session's own end work as always; the session is thawed before its end is
waited for.
"""

import time

from enhrec_wrap.errors import EnhrecError


class Backpressure:
    def __init__(self, cgroup, reader):
        self.cgroup = cgroup
        self.reader = reader
        self.frozen_at = None     # monotonic time of the current pause
        self.pauses = 0
        self.paused_seconds = 0.0
        self.broken = False       # the freezer failed once: the rings and the backlog alone

    def update(self):
        """After each read of the rings: pause or resume the session as the backlog says."""
        if self.frozen_at is None:
            if not self.broken and self.reader.pressed():
                self._set(True)
        elif self.reader.relieved():
            self._set(False)

    def release(self):
        """Resumes a paused session (at its end, before it is waited for)."""
        if self.frozen_at is not None:
            self._set(False)

    def fields(self) -> dict:
        return {"pauses": self.pauses, "paused_seconds": round(self.paused_seconds, 3)}

    def _set(self, frozen: bool):
        try:
            self.cgroup.freeze(frozen)
        except EnhrecError:
            if frozen:
                # A freezer that cannot be written pauses nothing: from now on what the rings
                # cannot hold is counted lost, as without backpressure.
                self.broken = True
            return   # a failed resume is tried again at the next update, and at the end
        now = time.monotonic()
        if frozen:
            self.frozen_at = now
            self.pauses += 1
        else:
            self.paused_seconds += now - self.frozen_at
            self.frozen_at = None
