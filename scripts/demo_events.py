#!/usr/bin/python3
"""Print one session's events from the audit log, one line each, and check that commands were recorded.

Usage: demo_events.py [--no-print] [--expect NAME]... [--wait SECONDS] EVENTS_LOG SID

Each line: time, event type, then for session.command `path argv return_code`, for session.disk
`path flags return_code`, for session.network `dst_addr:dst_port connect_return_code`. Exits 1 unless, for
every --expect NAME, a session.command whose executed file is named NAME was recorded.
Runs with Debian's /usr/bin/python3 and the standard library only.
"""

import argparse
import json
import os
import shlex
import sys
import time


def read_session(log_path: str, sid: str) -> tuple[list[dict], int]:
    events, unreadable = [], 0
    with open(log_path, "rb") as f:
        for raw in f:
            if sid.encode() not in raw:
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                unreadable += 1
                continue
            if event.get("sid") == sid:
                events.append(event)
    events.sort(key=lambda e: e.get("ei", 0))
    return events, unreadable


def describe(event: dict) -> str:
    kind = event.get("event", "?")
    rc = f"rc={event.get('connect_return_code' if kind == 'session.network' else 'return_code')}"
    if kind == "session.command":
        detail = f"{shlex.join([str(event.get('path')), *(event.get('argv') or [])])}  {rc}"
    elif kind == "session.disk":
        flags = event.get("flags")
        flags = f"{flags:#o}" if isinstance(flags, int) else flags  # open(2) flags read best in octal
        detail = f"{event.get('path')} flags={flags}  {rc}"
    elif kind == "session.network":
        detail = f"{event.get('dst_addr')}:{event.get('dst_port')}  {rc}"
    elif kind == "session.start":
        detail = f"login={event.get('login')} command={shlex.join(event.get('initial_command') or [])}"
    elif kind == "session.end":
        detail = f"interactive={event.get('interactive')}"
    else:
        detail = ""
    return f"{event.get('time', '?'):<24}  {kind:<16}  {detail}".rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("sid")
    parser.add_argument("--expect", action="append", default=[], metavar="NAME",
                        help="a program that must appear as a session.command (repeatable)")
    parser.add_argument("--no-print", action="store_true", help="only check, print no events")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds to wait for the session.end event to reach the log")
    args = parser.parse_args()

    deadline = time.monotonic() + args.wait
    while True:
        try:
            events, unreadable = read_session(args.log, args.sid)
        except FileNotFoundError:
            events, unreadable = [], 0
        ended = any(e.get("event") == "session.end" for e in events)
        if ended or time.monotonic() >= deadline:
            break
        time.sleep(0.2)

    if not events:
        print(f"demo: no events for session {args.sid} in {args.log}", file=sys.stderr)
        return 1
    if not args.no_print:
        for event in events:
            print(describe(event))
    if unreadable:
        print(f"demo: {unreadable} line(s) naming this session are not JSON", file=sys.stderr)
    if not ended:
        print("demo: WARNING: no session.end event for this session", file=sys.stderr)

    counts: dict[str, int] = {}
    for event in events:
        counts[event.get("event", "?")] = counts.get(event.get("event", "?"), 0) + 1
    print("\ndemo: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))

    executed = {os.path.basename(e.get("path") or "") for e in events if e.get("event") == "session.command"}
    missing = [name for name in args.expect if name not in executed]
    for name in args.expect:
        print(f"demo: session.command {name:<6} {'recorded' if name not in missing else 'MISSING'}")
    if missing:
        print(f"demo: FAILED: not recorded: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
