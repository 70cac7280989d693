"""What enhrec writes beside its answer: progress and remarks on stderr, JSON lines on stdout."""

import sys
import time

import click
import orjson

from enhrec_wrap.inspect import gaps
from enhrec_wrap.log.file_lines import MAX_LINE_BYTES

PROG = "enhrec"


class Progress:
    """"reading <file> 42%" on stderr, only on a terminal and only once a read takes a while."""

    DELAY = 1.0

    def __init__(self):
        self.enabled = sys.stderr.isatty()
        self.began = time.monotonic()
        self.total = 0
        self.shown = False
        self.last = 0.0

    def start(self, total: int):
        self.total = max(total, 1)

    def update(self, done: int, label: str):
        now = time.monotonic()
        if not self.enabled or now - self.began < self.DELAY or now - self.last < 0.2:
            return
        self.last = now
        self.shown = True
        sys.stderr.write(f"\r\x1b[K{PROG}: reading {label} {min(100, done * 100 // self.total)}%")
        sys.stderr.flush()

    def finish(self):
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def note(message: str):
    """A remark on stderr that is not an error (skipped lines, totals)."""
    click.echo(f"{PROG}: {message}", err=True)


class SkipReport:
    """Says what a read skipped (reader.Stats): each file, and the lines by why. Called again
    (tail -f), it says only what is new since."""

    def __init__(self):
        self.files = set()
        self.corrupt = self.long = 0

    def __call__(self, stats):
        for path, why in stats.skipped_files:
            if (path, why) not in self.files:
                self.files.add((path, why))
                note(f"{path}: {why}")
        if stats.corrupt_lines > self.corrupt:
            note(f"skipped {stats.corrupt_lines - self.corrupt} line(s) that are not JSON events")
            self.corrupt = stats.corrupt_lines
        if stats.long_lines > self.long:
            note(f"skipped {stats.long_lines - self.long} line(s) longer than "
                 f"{MAX_LINE_BYTES >> 20} MiB (no event is that long)")
            self.long = stats.long_lines


def report_skipped(stats):
    SkipReport()(stats)


class MissingReport:
    """Says which events of which sessions are missing from the log read ({sid: the `ei`
    ranges}, inspect/gaps): a hole is never silence. Called again (tail -f), only what is
    new."""

    def __init__(self):
        self.told = {}

    def __call__(self, missing: dict):
        new = {sid: holes for sid, holes in missing.items()
               if gaps.count(holes) > self.told.get(sid, 0)}
        if not new:
            return
        total = sum(gaps.count(holes) - self.told.get(sid, 0) for sid, holes in new.items())
        shown = "; ".join(f"{sid[:8]} {gaps.text(holes, 2)}" for sid, holes in list(new.items())[:3])
        more = f"; and {len(new) - 3} more" if len(new) > 3 else ""
        note(f"{total} event(s) of {len(new)} session(s) missing from the log ({shown}{more}): "
             "`enhrec show SID` says what its session.end knows of why")
        for sid, holes in new.items():
            self.told[sid] = gaps.count(holes)


def write_json_line(data: bytes):
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")


def json_line(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
