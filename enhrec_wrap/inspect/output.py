"""What enhrec writes beside its answer: progress and remarks on stderr, JSON lines on stdout."""

import sys
import time

import click
import orjson

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


def report_skipped(stats):
    if stats.corrupt_lines:
        note(f"skipped {stats.corrupt_lines} line(s) that are not JSON events")


def write_json_line(data: bytes):
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")


def json_line(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
