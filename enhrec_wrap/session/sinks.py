"""The session's two sinks, and what a failure of either does.

Every batch of events goes to both: the host's daily files (log/auditlog.py) first, sealed into
the chain, then the session's own files (log/store.py), which get the lines as sealed, byte for
byte. The ledger the recorder shares with its watchdog (ledger.py) is told before and after each
batch, so that a watchdog ending the session of a dead recorder knows what is written.

A failed write is counted per sink, and on_log_failure decides: `close` ends the session at the
first failure (fail closed), `continue` keeps it and counts what could not be written. Either way
the user is told, once.
"""

import os

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.events import teleport as events
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.store import SessionStore


class Sinks:
    def __init__(self, config, server_id: str, sid: str, ledger, clock, end_session):
        """`end_session`: what on_log_failure `close` does at the first failure."""
        self.log = AuditLog(config.log_dir, server_id, clock=clock,
                            epoch_seconds=config.key_epoch_seconds)
        # The second sink: the session's own files, and the lock that marks it as not ended.
        try:
            self.store = SessionStore.create(config.log_dir, server_id, sid)
        except BaseException:
            self.log.close()   # the session is never made, so nobody else can close it
            raise
        self.ledger = ledger
        self.on_log_failure = config.on_log_failure
        self.end_session = end_session
        self.log_failure = None      # the first write failure, told to the user once
        self.write_failures = 0
        self.unwritten = {}          # sink -> events it could not take
        self.logged = False          # a sink took a batch: there is a session to end

    def write(self, made: list, settled: list, undecodable: dict, strict: bool = False):
        """Each event to both sinks, reported to the ledger around it (ledger.py): `settled`
        and `undecodable` are the records the batch accounts for. `strict` (before the session's
        program runs): a failure raises, so nothing runs. Otherwise on_log_failure decides."""
        lines = [events.encode(e) for e in made]
        ledger = self.ledger
        ledger.begin_batch(made[0]["ei"], made[-1]["ei"] + 1, settled, undecodable)
        logged = True
        try:
            # The session files then get the lines as sealed into the host's chain, byte for byte.
            lines = self.log.write(lines, announce=ledger.writing)
            self.logged = True
        except EnhrecError as e:
            if strict:
                raise
            logged = False
            self.log_failed("audit_log", e, len(lines))
        try:
            self.store.write(made, lines)
            self.logged = True
        except EnhrecError as e:
            if strict:
                raise
            # The store reports failed batches late (it writes in a thread): their count.
            self.log_failed("session_files", e, getattr(e, "unwritten", len(lines)))
        ended = logged and made[-1]["event"] == events.SESSION_END[0]
        ledger.end_batch(self.unwritten.get("audit_log", 0),
                         self.unwritten.get("session_files", 0), ended)

    def log_failed(self, sink: str, error: EnhrecError, count: int):
        """A write of `count` events to `sink` failed."""
        self.write_failures += 1
        self.unwritten[sink] = self.unwritten.get(sink, 0) + count
        self.failed(error)

    def failed(self, error: EnhrecError):
        """`close` ends the session at the first failure (fail closed); `continue` keeps it and
        counts what could not be written. Either way the user is told, once."""
        if self.log_failure is not None:
            return
        self.log_failure = error
        if self.on_log_failure == "continue":
            tell_user(f"{error}; the session goes on and what cannot be written is lost "
                      "(on_log_failure: continue)")
            return
        tell_user(f"{error}; the session is ended (on_log_failure: close)")
        self.end_session()

    def count_store_failures(self):
        """Waits until every batch given to the store is in its files, or counted: it reports a
        failure late (from its thread), and session.end must count them all."""
        try:
            self.store.flush()
        except EnhrecError as e:
            self.log_failed("session_files", e, e.unwritten)
            # The last batch's end_batch again: only its counts change, so that the ledger has
            # them should we die before session.end is written.
            self.ledger.end_batch(self.unwritten.get("audit_log", 0),
                                  self.unwritten.get("session_files", 0))

    def removed(self) -> dict:
        """Events of ours that someone removed from each sink's files under us."""
        return {"audit_log": self.log.removed(), "session_files": self.store.removed_events()}

    def close(self, ended: bool):
        """`ended`: session.end is in both sinks."""
        self.log.close()
        try:
            # Not ended (session.end missing somewhere): the lock file stays for recovery. A
            # session that logged nothing (it failed before its start) has nothing to repair.
            self.store.close(ended=ended or not self.logged)
        except EnhrecError as e:
            self.log_failed("session_files", e, getattr(e, "unwritten", 0))


def tell_user(message: str) -> None:
    """For a failure while the session runs, which cannot wait for cli/wrap.py: the session goes on
    (or is being ended) and the user must know now. Raw mode on a terminal needs the \\r."""
    try:
        end = "\r\n" if os.isatty(2) else "\n"
        os.write(2, f"enhrec-wrap: {message}{end}".encode(errors="replace"))
    except OSError:
        pass
