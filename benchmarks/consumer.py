"""The consumer's throughput: how many events per second user space decodes, builds and writes to
both sinks, measured on real records through the installed package's public entry points.

A recorded session (enhrec_wrap.session.lifecycle.Session with its watchdog, as enhrec-wrap
runs it; its disk ring made big enough for all of it) runs `openloop N` to its end while nobody
consumes, so N open records wait in the ring. Then the clock runs while Session.poll() - what
the wrapper calls while its session runs: the ring read into the backlog, a batch decoded, the
exec join, the events built and encoded, the audit log and the session files written - is
called until the ring is empty, and the session files' writer thread has written everything
(SessionStore.flush). The session then ends as any does, and its log must hold exactly N open
events of the loop's path and no loss, or the run fails.

--no-session-files replaces the second sink (SessionStore.write) with nothing, to show what it
costs. --switch-interval S sets the interpreter's GIL switch interval (sys.setswitchinterval,
default 0.005 s) for the run: how long the session files' thread may wait for the GIL while the
main thread builds events. --profile runs the timed part under cProfile and prints, as a
second JSON line, the main thread's time by module and the top functions: where the time goes
(with cProfile's own overhead, so as shares rather than as speeds).

Run as: venv-python -I consumer.py OPENLOOP TARGET N DATA_DIR [--no-session-files] [--profile]
        [--switch-interval S]
Prints one JSON object (two with --profile).
"""

import os

# Made first, as cli/wrap.py makes it: the session needs its watchdog (started at arm).
from enhrec_wrap.session.watchdog import Watchdog  # noqa: E402

WATCHDOG = Watchdog()

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from enhrec_wrap.config import Config  # noqa: E402
from enhrec_wrap.host.privileges import account_by_uid  # noqa: E402
from enhrec_wrap.kernel.host import possible_cpus  # noqa: E402
from enhrec_wrap.session.lifecycle import Request, Session  # noqa: E402

# Room per open record in the ring (its header, the record and the path; schema 2's are about
# 220 bytes with the benchmark's path): too little is lost records, which fails the run.
RECORD_BYTES = 512


def run_loop(session):
    """Spawns the session's command and waits for it to exit without reaping it (so that
    Session.wait_child can, later) and without consuming a record."""
    saved = os.dup(1)   # the workload's stdout (its loop time) is not ours to print
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        session.fork_child()
        failure = session.start_child()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)
    if failure:
        raise failure
    os.waitid(os.P_PID, session.child.pid, os.WEXITED | os.WNOWAIT)


def ring_bytes_used(session) -> int:
    """Bytes the waiting records take in the session's disk ring."""
    from enhrec_wrap.kernel import abi
    ring = session.recording.reader.rings.rings[abi.STREAM_DISK]
    return round(ring.fill() * ring.size)


def consume(session) -> int:
    """Session.poll() until a poll writes nothing (the child has exited, so its pidfd wakes every
    poll at once: no waiting). Returns the events written."""
    before = session.factory.next_ei
    while True:
        made = session.factory.next_ei
        session.poll()
        if session.factory.next_ei == made:
            break
    session.sinks.store.flush()   # written means in the files: the store compresses in a thread
    return session.factory.next_ei - before


def check_log(data_dir, target, n):
    """The session's log holds exactly n open events of `target` and reports no loss."""
    opens, end = 0, None
    with open(os.path.join(data_dir, "log", "events.log"), "rb") as f:
        for line in f:
            event = json.loads(line)
            if event["event"] == "session.disk" and event.get("path") == target:
                opens += 1
            elif event["event"] == "session.end":
                end = event
    lost = sum(end["lost_events"].values()) if end else None
    if opens != n or lost != 0:
        raise SystemExit(f"consumer: the log holds {opens:,} opens of {n:,}, lost {lost}")


def profile_summary(profiler, top=12) -> dict:
    import pstats
    stats = pstats.Stats(profiler)
    by_module, functions = {}, []
    total = 0.0
    for (path, line, name), (_, calls, tottime, _, _) in stats.stats.items():
        if path == "~":
            module = name.strip("<>").replace("built-in method ", "").replace("method ", "")
        else:
            parts = path.split(os.sep)
            module = "/".join(parts[parts.index("enhrec_wrap"):]) if "enhrec_wrap" in parts \
                else os.path.basename(path)
        by_module[module] = by_module.get(module, 0.0) + tottime
        functions.append((tottime, calls, f"{module}:{name}"))
        total += tottime
    functions.sort(reverse=True)
    return {"seconds": total,
            "by_module": dict(sorted(by_module.items(), key=lambda kv: -kv[1])[:top]),
            "functions": [[name, calls, seconds] for seconds, calls, name in functions[:top]]}


def main():
    openloop, target, n, data_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    options = sys.argv[5:]
    no_files, profile = "--no-session-files" in options, "--profile" in options
    if "--switch-interval" in options:
        sys.setswitchinterval(float(options[options.index("--switch-interval") + 1]))
    pages = -(-n * RECORD_BYTES // 4096)
    config = Config(data_dir=data_dir, disk_buffer_size=-(-pages // possible_cpus()))
    request = Request(account=account_by_uid(0), user="root",
                      command=[openloop, str(n), target], interactive=False)
    session = Session(config, request, WATCHDOG)
    summary = None
    try:
        session.start_recording()
        session.write_start()
        if no_files:
            session.sinks.store.write = lambda made, lines: None
        run_loop(session)
        record_bytes = ring_bytes_used(session) / n
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu, main_cpu = time.process_time(), time.thread_time()
        profiler = None
        if profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        start = time.perf_counter()
        written = consume(session)
        elapsed = time.perf_counter() - start
        if profiler:
            profiler.disable()
            summary = profile_summary(profiler)
        main_cpu = time.thread_time() - main_cpu
        cpu = time.process_time() - cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        exit_status = os.waitstatus_to_exitcode(session.wait_child())
        session.write_end(exit_status, session.finish_lingering())
    finally:
        session.close()
    check_log(data_dir, target, n)
    print(json.dumps({"events": written, "seconds": elapsed, "events_per_second": written / elapsed,
                      "main_thread_cpu": main_cpu, "other_threads_cpu": cpu - main_cpu,
                      "page_faults": faults, "session_files": not no_files,
                      "switch_interval": sys.getswitchinterval(),
                      "record_bytes": record_bytes}))
    if summary:
        print(json.dumps(summary))


main()
