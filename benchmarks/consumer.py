"""The consumer's throughput: how many events per second user space decodes, builds and writes,
measured on real records.

A session (the installed enhrec_wrap.session.lifecycle.Session, with a ring big enough for all of it) runs
`openloop N` to its end while nobody consumes, so N open records wait in the ring. Then the
clock runs while the session's own code copies them out of the ring (Probes._read_rings), hands
them on in chunks (Probes._hand_on: decode) and writes them (Session._flush_records: the exec
join, event dicts, JSON, the audit log and the session files), as while recording. A second run replaces the session-files sink with nothing, to
show what that sink costs.

Run as: venv-python -I consumer.py OPENLOOP TARGET N DATA_DIR [--no-session-files]
Prints one JSON object.
"""

import json
import os
import resource
import sys
import time

from enhrec_wrap.kernel.loader import HAND_RECORDS, possible_cpus
from enhrec_wrap.config import Config
from enhrec_wrap.host.privileges import account_by_uid
from enhrec_wrap.session.lifecycle import Request, Session

RECORD_BYTES = 128   # an open record of a short path, with the ring's header, rounded up


def main():
    openloop, target, n, data_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    no_files = "--no-session-files" in sys.argv[5:]
    pages = -(-n * RECORD_BYTES // 4096)
    config = Config(data_dir=data_dir, disk_buffer_size=-(-pages // possible_cpus()))
    request = Request(account=account_by_uid(0), user="root",
                      command=[openloop, str(n), target], interactive=False)
    session = Session(config, request)
    try:
        session.start_recording()
        session.write_start()
        if no_files:
            session.store.write = lambda made, lines: None
        # The workload's stdout (its loop time) is not ours to print.
        saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        try:
            failure = session.spawn()
            os.waitpid(session.child, 0)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)
        session.child = None
        if failure:
            raise failure
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        written_before = session.factory.next_ei
        probes = session.probes
        while True:   # Probes.poll's work, without the waiting
            probes._read_rings()
            if not probes._backlog:
                break
            probes._hand_on(HAND_RECORDS)
            session._flush_records()
        if not no_files and hasattr(session.store, "flush"):
            session.store.flush()   # written means in the files: the store compresses in a thread
        elapsed = time.perf_counter() - start
        written = session.factory.next_ei - written_before
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        lost = session.probes.lost_counts()
        session.write_end(0, 0)
    finally:
        session.close()
    print(json.dumps({"events": written, "seconds": elapsed, "events_per_second": written / elapsed,
                      "lost": lost, "page_faults": faults, "session_files": not no_files}))


main()
