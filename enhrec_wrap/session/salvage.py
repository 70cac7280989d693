"""Ending a session whose recorder is gone, with everything that can still be known.

Run by the session's watchdog once it has killed the session's processes (watchdog.py), so that
nothing can add to the rings any more. From the ledger (ledger.py) it knows how far the recorder
read each ring, what it had taken and not written, and whether it died writing a batch; from the
rings it drains what the recorder never read; from the kernel's counters what was dropped. It
writes those events and a session.end {incomplete: true} with exact lost counts to the daily log
and the session files, takes the session out of the programs' maps, and removes its lock file.
"""

import fcntl
import os
import sys
import time
import zlib

import orjson

from enhrec_wrap.events import teleport as events
from enhrec_wrap.events.kernel import KernelEvents
from enhrec_wrap.kernel import abi
from enhrec_wrap.kernel.decode import Decoder
from enhrec_wrap.kernel import idle
from enhrec_wrap.kernel.host import HostLock, HostPrograms
from enhrec_wrap.kernel.rings import RingReader, SessionRings
from enhrec_wrap.log import layout, session_lock, store
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.log.files import open_regular
from enhrec_wrap.session import ledger

RECORDER_DIED = "recorder_died"
REASONS = {
    RECORDER_DIED: "the recorder died (killed, crashed or out of memory); its watchdog killed the "
                   "session's processes and ended the session",
}


def finish(session: dict, state: ledger.State, reason: str, killed: int, lock_fd: int):
    """Ends the session; `lock_fd` is its lock file, held, which is released (and removed once
    session.end is written)."""
    lock = session_lock.OpenLock(session["lock_path"], lock_fd)
    ended = False
    try:
        _settle_pending_batch(session, state)
        envelope = session["envelope"]
        factory = events.EventFactory(session["sid"], envelope["server_id"],
                                      envelope["server_hostname"], envelope["login"],
                                      envelope["user"], envelope["cluster_name"])
        factory.next_ei = state.next_ei
        with HostLock():
            host = HostPrograms.open(session["version"])
            rings = SessionRings.adopt(host, session["cgroup_id"]) if host else None
        # A recorder that died closing, after its session.end was in the daily log, gets no
        # second one, which would contradict it: the lock stays, and recovery copies that one
        # to the session files if they lack it (recovery.end_session).
        if not state.ended:
            made, lost = _drain(state, host, rings, factory)
            fields = dict(session["end_fields"], session_stop=events.rfc3339(time.time_ns()),
                          incomplete=True, incomplete_reason=REASONS[reason], end_reason=reason,
                          killed_processes=killed, **lost)
            unwritten = {"audit_log": state.unwritten_log, "session_files": state.unwritten_files}
            if any(unwritten.values()):
                fields["unwritten_events"] = {k: v for k, v in unwritten.items() if v}
            made.append(factory.make(events.SESSION_END, **fields))
            _write(session, made, catch_up=not state.unwritten_files)
            ended = True
        if rings is not None:
            with HostLock():
                rings.unregister()
                idle.start_if_last(host, session["idle_unload_seconds"])
            rings.close()
    finally:
        lock.release(ended=ended)


# --- the batch the recorder may have died writing -------------------------------------------

def _settle_pending_batch(session: dict, state: ledger.State):
    """Decides from the daily file whether the batch being written is all there (its CRC-32
    matches), and settles it if so. A batch cut short is taken out of the file when nobody wrote
    after it, and its events are lost (they are not settled, so they are counted)."""
    if state.state != ledger.WRITING:
        return
    if not state.batch_length:   # died before the write began
        state.next_ei = state.batch_first_ei
        return
    day = str(state.batch_day)
    path = layout.day_file(session["log_dir"], session["server_id"],
                           layout.day_start(f"{day[:4]}-{day[4:6]}-{day[6:]}"))
    written = reuse_ei = False
    try:
        fd = open_regular(path, os.O_RDWR)
    except OSError:
        fd = -1   # gone: what went to it went with it
        reuse_ei = True
    if fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (state.batch_dev, state.batch_ino):
                reuse_ei = True   # the recorder was writing to a file since replaced
            else:
                data = os.pread(fd, state.batch_length, state.batch_offset)
                if len(data) == state.batch_length and zlib.crc32(data) == state.batch_crc:
                    written = True
                elif st.st_size < state.batch_offset + state.batch_length:
                    os.ftruncate(fd, state.batch_offset)   # nobody wrote after: take it out
                    reuse_ei = True
        finally:
            os.close(fd)
    if written:
        state.settled, state.next_ei = state.batch_settled, state.batch_next_ei
    else:
        state.next_ei = state.batch_first_ei if reuse_ei else state.batch_next_ei


# --- what the rings still hold --------------------------------------------------------------

def _drain(state: ledger.State, host, rings, factory):
    """The events of what the recorder never read, and the session.end lost counts."""
    kernel_lost = dict.fromkeys(range(abi.STREAM_COUNT), 0)
    undecodable = {s: state.undecodable[s] for s in abi.RING_STREAM_NAMES}
    made = []
    if rings is not None:
        for stream, ring in rings.rings.items():
            if ring.consumed < state.positions[stream]:
                ring.release(state.positions[stream])   # the recorder took these: in the ledger
        decoder = Decoder(fields=host.fields)
        reader = RingReader(rings, decoder)
        records = reader.drain()
        made = KernelEvents(decoder).events(records, factory)
        for stream, count in reader.undecodable.items():
            undecodable[stream] += count
        kernel_lost = rings.kernel_lost()
        reader.close()
    unsettled = [taken - settled for taken, settled in zip(state.taken, state.settled)]
    return made, ledger.lost_fields(kernel_lost, undecodable, unsettled)


def _write(session: dict, made: list, catch_up: bool):
    """To the daily log, then to new parts of the session files, after what they lack of the
    daily log's (`catch_up`: when no batch failed there, so that none is counted unwritten)."""
    behind, behind_lines = _behind(session) if catch_up else ([], [])
    lines = [events.encode(e) for e in made]
    log = AuditLog(session["log_dir"], session["server_id"])
    try:
        lines = log.write(lines)   # as sealed into the chain, for the session files too
    finally:
        log.close()
    writer = store.SessionStore.continue_session(session["log_dir"], session["server_id"],
                                                 session["sid"], store.last_parts(
                                                     session["log_dir"], session["server_id"],
                                                     session["sid"]))
    writer.write(behind + made, behind_lines + lines)
    writer.close(ended=True)


def _behind(session: dict) -> tuple[list, list]:
    """(events, lines) the daily log has after the session files' last event: the store's
    writer thread is milliseconds behind the daily log, and a recorder killed then left those
    only there (512 events of an open loop in one of 4 kills here), missing from the session
    files without a count. They are at the daily log's end: today's file, or yesterday's."""
    from enhrec_wrap.log import reader   # only a dead recorder's session is read back
    sid = session["sid"]
    log = reader.LogDir(session["log_dir"])
    directory = layout.session_files_dir(session["log_dir"], session["server_id"])
    last = -1
    for path in log.event_parts(sid, directory):
        for event, _ in reader.events_of(reader.gz_lines(path)):
            ei = event.get("ei")
            if event.get("sid") == sid and isinstance(ei, int) and ei > last:
                last = ei
    now = time.time()
    first_day = max(layout.day_of(now - 86400), session["end_fields"]["session_start"][:10])
    found = {}
    for event, line in reader.day_events(log, first_day, layout.day_of(now),
                                         must_contain=(sid.encode(),)):
        ei = event.get("ei")
        if event.get("sid") == sid and isinstance(ei, int) and ei > last:
            found[ei] = (event, line)
    pairs = [found[ei] for ei in sorted(found)]
    return [e for e, _ in pairs], [line for _, line in pairs]


# --- run by the watchdog ------------------------------------------------------------------------

def main(argv=None) -> int:
    """`python -I -m enhrec_wrap.session.salvage KILLED`, exec'd by the watchdog's shell once it
    has counted (KILLED) and killed the session's processes: with the cgroup directory, the lock
    file, the ledger and the brief at the fds watchdog.py gives them."""
    from enhrec_wrap.host.cgroup import SessionCgroup
    from enhrec_wrap.session import watchdog
    argv = sys.argv[1:] if argv is None else argv
    killed = int(argv[0]) if argv and argv[0].isdigit() else 0
    _tell_terminal(f"enhrec-wrap: {watchdog.RECORDER_DIED}")
    try:
        session = orjson.loads(_read_all(watchdog.BRIEF_FD))
        state = ledger.read(ledger.map_page(watchdog.LEDGER_FD))
        cgroup = SessionCgroup(session["cgroup_dir"])
        emptied = cgroup.kill_and_wait()   # killed by the shell already: whatever forked since
        finish(session, state, RECORDER_DIED, killed, lock_fd=watchdog.LOCK_FD)
        if emptied:
            cgroup.remove()
    except Exception as e:  # noqa: BLE001 - the next start's recovery ends it instead
        _tell_terminal(f"enhrec-wrap: could not end the session ({e}); the next session start "
                       "or `enhrec doctor --repair` ends it")
        return 1
    return 0


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _tell_terminal(message: str) -> None:
    try:
        os.write(2, f"\r\n{message}\r\n".encode())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
