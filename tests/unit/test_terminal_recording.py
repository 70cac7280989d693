"""The terminal recording's format (log/terminal_recording.py) and what is made of it
(inspect/replay.py): frames, the size bound, crashes, write failures, asciicast, replay timing."""

import gzip
import json
import os
import shutil
import zlib

import pytest

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.inspect import replay
from enhrec_wrap.log import terminal_recording as rec

SID = "4f1c2b9e-0000-4000-8000-000000000001"


class Clock:
    def __init__(self):
        self.ns = 10**12

    def __call__(self):
        return self.ns

    def advance(self, seconds):
        self.ns += int(seconds * 1e9)


@pytest.fixture
def clock():
    return Clock()


def writer(tmp_path, clock, limit=1 << 20):
    w = rec.Writer(str(tmp_path / "sessions" / "default"), SID,
                   {"sid": SID, "width": 80, "height": 24, "term": "xterm",
                    "input_recorded": False}, limit, clock=clock)
    os.makedirs(tmp_path / "sessions", exist_ok=True)
    w.start()
    return w


def frames(tmp_path):
    return list(rec.read_frames(rec.part_paths(str(tmp_path / "sessions" / "default"), SID)))


def test_frames_round_trip_with_their_times(tmp_path, clock):
    w = writer(tmp_path, clock)
    clock.advance(0.5)
    w.output(b"hello \xff\r\n")
    clock.advance(0.25)
    w.resize(100, 30)
    w.input(b"ls\r")
    w.close()
    got = frames(tmp_path)
    assert [f.kind for f in got] == [b"h", b"o", b"r", b"i", b"e"]
    assert [f.time for f in got] == [0, 500_000, 750_000, 750_000, 750_000]
    head = got[0].json()
    assert head["format"] == "enhrec-tty" and head["version"] == 1 and head["part"] == 0
    assert (head["width"], head["height"]) == (80, 24)
    assert got[1].data == b"hello \xff\r\n" and got[2].data == b"100x30"
    assert got[-1].json() == {"recorded_bytes": 12, "truncated": False, "bytes_not_kept": 0,
                              "unwritten_bytes": 0, "input_recorded": False}
    path = rec.part_paths(str(tmp_path / "sessions" / "default"), SID)[0]
    assert os.path.basename(path) == f"{SID}-0.tty.gz"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700


def test_the_size_bound_keeps_exactly_the_limit(tmp_path, clock):
    w = writer(tmp_path, clock, limit=10)
    w.output(b"1234567")
    w.output(b"89abcdef")
    w.output(b"more")
    w.resize(10, 10)   # nothing is written past the bound
    w.close()
    got = frames(tmp_path)
    assert b"".join(f.data for f in got if f.kind == b"o") == b"123456789a"
    assert [f.kind for f in got] == [b"h", b"o", b"o", b"t", b"e"]
    assert got[3].json() == {"limit": 10}
    assert w.summary() == {"recorded_bytes": 10, "truncated": True, "bytes_not_kept": 9,
                           "unwritten_bytes": 0, "input_recorded": False}


def test_a_crashed_recording_reads_to_its_last_flush(tmp_path, clock):
    w = writer(tmp_path, clock)
    w.output(b"first")
    w.flush()
    w.output(b"second, never flushed")
    path = rec.part_paths(str(tmp_path / "sessions" / "default"), SID)[0]
    crashed = tmp_path / "crashed"
    os.makedirs(crashed / "sessions" / "default")
    shutil.copy(path, crashed / "sessions" / "default")   # what a SIGKILL leaves
    got = frames(crashed)
    assert [(f.kind, f.data) for f in got[1:]] == [(b"o", b"first")]


def test_a_long_recording_is_a_standard_gzip_stream_at_every_flush(tmp_path, clock):
    """Written by ISA-L, read by zlib and by Python's gzip: binary and text, about 1.5 MB in
    chunks of many sizes, a sync flush after every seventh (as the relay flushes every 5 ms)."""
    chunks = [os.urandom(4095), bytes(range(256)) * 64, b"\x00" * 9000, b"\x1b[31mred\x1b[0m\r\n",
              b"".join(b"%08d line of text\r\n" % n for n in range(3000))]
    w = writer(tmp_path, clock, limit=16 << 20)
    sent = [chunks[n % len(chunks)][n % 7:] for n in range(120)]
    for n, data in enumerate(sent):
        clock.advance(0.001)
        w.output(data)
        if n % 7 == 6:
            w.flush()
    path = rec.part_paths(str(tmp_path / "sessions" / "default"), SID)[0]
    with open(path, "rb") as f:
        at_last_flush = f.read()   # after the 119th output: what a crash then would leave
    w.close()
    got = frames(tmp_path)
    assert [f.data for f in got if f.kind == b"o"] == sent
    framed = [rec.FRAME.pack(f.kind, len(f.data), f.time) + f.data for f in got]
    with gzip.open(path) as f:
        assert f.read() == b"".join(framed)
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(at_last_flush) == \
        b"".join(framed[:1 + 119])


def test_flushes_are_due_within_milliseconds(tmp_path, clock):
    w = writer(tmp_path, clock)
    assert not w.flush_due()
    w.output(b"x")
    assert w.flush_at is not None and w.flush_at - rec.time.monotonic() <= rec.FLUSH_SECONDS


def test_a_newer_version_is_refused(tmp_path):
    directory = tmp_path / "sessions" / "default"
    os.makedirs(directory)
    header = json.dumps({"format": "enhrec-tty", "version": 99}).encode()
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    data = z.compress(rec.FRAME.pack(b"h", len(header), 0) + header) + z.flush()
    (directory / f"{SID}-0.tty.gz").write_bytes(data)
    with pytest.raises(ValueError, match="version 99 is newer"):
        list(rec.read_frames(rec.part_paths(str(directory), SID)))


def test_a_write_failure_cuts_back_and_a_later_write_starts_a_new_part(tmp_path, clock,
                                                                      monkeypatch):
    w = writer(tmp_path, clock)
    w.output(b"kept")
    w.flush()
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, w.fd)            # the disk is full now
    os.close(full)
    w.output(b"lost!")
    with pytest.raises(EnhrecError, match="cannot write the terminal recording .*-0.tty.gz") as e:
        w.flush()
    assert e.value.unwritten == 5
    w.output(b"also lost")          # within RETRY_SECONDS: counted, not tried
    monkeypatch.setattr(rec.Writer, "RETRY_SECONDS", 0.0)
    w.retry_at = 0.0
    w.output(b"back")
    w.close()
    assert w.summary()["unwritten_bytes"] == 14 and w.summary()["recorded_bytes"] == 8
    paths = rec.part_paths(str(tmp_path / "sessions" / "default"), SID)
    assert [os.path.basename(p) for p in paths] == [f"{SID}-0.tty.gz", f"{SID}-1.tty.gz"]
    got = frames(tmp_path)
    assert [f.data for f in got if f.kind == b"o"] == [b"kept", b"back"]
    assert [f.json()["part"] for f in got if f.kind == b"h"] == [0, 1]


# -- asciicast -------------------------------------------------------------------------------

def frame(kind, seconds, data):
    return rec.Frame(kind, int(seconds * 1e6), data)


HEADER = frame(b"h", 0, json.dumps({"sid": SID, "width": 80, "height": 24, "term": "xterm",
                                    "time_ns": 1_700_000_000 * 10**9}).encode())
START = {"login": "alice", "user": "alice", "server_hostname": "vm", "addr.remote": "10.1.2.3:5555"}


def exec_event(seconds, path, argv, rc=0):
    stamp = replay.datetime.datetime.fromtimestamp(1_700_000_000 + seconds,
                                                   replay.datetime.timezone.utc)
    return {"event": "session.command", "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "path": path, "argv": argv, "return_code": rc, "program": os.path.basename(path)}


def cast(frames_, events=()):
    lines = list(replay.asciicast_lines(frames_, START, list(events)))
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


def test_asciicast_header():
    header, _ = cast([HEADER])
    assert header == {"version": 2, "width": 80, "height": 24, "timestamp": 1_700_000_000,
                      "title": "alice@vm from 10.1.2.3:5555", "env": {"TERM": "xterm"},
                      "enhrec": {"sid": SID, "login": "alice", "user": "alice", "host": "vm",
                                 "remote": "10.1.2.3:5555"}}


def test_utf8_split_between_reads_comes_out_whole_and_invalid_bytes_are_replaced():
    _, body = cast([HEADER, frame(b"o", 1, b"caf\xc3"), frame(b"o", 2, b"\xa9 \xff!"),
                    frame(b"o", 3, b"end \xe2\x82")])
    assert "".join(e[2] for e in body if e[1] == "o") == "café \ufffd!end \ufffd"
    assert [e[0] for e in body] == sorted(e[0] for e in body)


def test_resizes_markers_and_truncation():
    events = [exec_event(0.5, "/usr/bin/ls", ["-la", "/tmp"]),
              exec_event(1.5, "/usr/bin/nope", [], rc=-2),
              exec_event(9.0, "/usr/bin/" + "x" * 80, [])]
    _, body = cast([HEADER, frame(b"o", 1, b"a"), frame(b"r", 1.2, b"100x30"),
                    frame(b"o", 2, b"b"), frame(b"t", 2.5, b'{"limit": 2}')], events)
    assert body[0] == [0.501, "m", "/usr/bin/ls -la /tmp"]
    assert [1.2, "r", "100x30"] in body
    assert [1.501, "m", "/usr/bin/nope (failed: No such file or directory)"] in body
    assert [2.5, "m", "recording truncated at 2 bytes"] in body
    assert body[-1][1] == "m" and body[-1][0] == 9.001 and len(body[-1][2]) == replay.MARKER_WIDTH
    assert [e[0] for e in body] == sorted(e[0] for e in body)


def test_lines_are_written_as_asciinema_writes_them():
    lines = list(replay.asciicast_lines([HEADER, frame(b"o", 0.1234567, "é\x1b[0m".encode())],
                                        START, []))
    assert lines[1] == '[0.123456, "o", "é\\u001b[0m"]'


# -- replay ----------------------------------------------------------------------------------

def play(frames_, events=(), **kwargs):
    r, w = os.pipe()
    slept = []
    replay.play(frames_, list(events), w, sleep=slept.append, **kwargs)
    os.close(w)
    out = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        out += chunk
    os.close(r)
    return out, slept


def test_play_keeps_the_timing_caps_idle_gaps_and_scales_by_speed():
    frames_ = [HEADER, frame(b"o", 1, b"a\r\n"), frame(b"o", 31, b"b\r\n"), frame(b"o", 32, b"c")]
    out, slept = play(frames_)
    assert out == b"a\r\nb\r\nc" and slept == [1.0, 30.0, 1.0]
    _, slept = play(frames_, idle_limit=2, speed=4)
    assert slept == [0.25, 0.5, 0.25]


def test_play_shows_events_between_the_output_and_after_a_full_screen_program():
    events = [exec_event(0.5, "/usr/bin/vim", ["f"]),
              {"event": "session.disk", "time": exec_event(1.5, "x", [])["time"], "flags": 0o1101,
               "path": "f", "abs_path": "/root/f", "return_code": 3, "program": "vim"},
              {"event": "session.disk", "time": exec_event(1.6, "x", [])["time"], "flags": 0,
               "path": "/etc/passwd", "return_code": 3, "program": "vim"},
              {"event": "session.network", "time": exec_event(3.5, "x", [])["time"],
               "dst_addr": "10.0.0.1", "dst_port": 443, "protocol": "tcp", "return_code": 0,
               "program": "curl"}]
    frames_ = [HEADER, frame(b"o", 1, b"\x1b[?1049hscreen"), frame(b"o", 2, b"\x1b[?1049l$ "),
               frame(b"o", 3, b"done\r\n")]
    out, _ = play(frames_, events, show_events=True)
    text = out.decode()
    assert text.index("+0.501s exec /usr/bin/vim f") < text.index("screen")
    # the write came while vim had the screen: shown when it gave the screen back
    assert text.index("\x1b[?1049l") < text.index("+1.501s write /root/f (vim)")
    assert "/etc/passwd" not in text
    assert text.index("done") < text.index("+3.501s connect 10.0.0.1:443 tcp (curl)")


def test_event_lines_cannot_send_escapes():
    events = [exec_event(0.5, "/tmp/\x1b]0;evil\x07", [])]
    out, _ = play([HEADER, frame(b"o", 1, b"x")], events, show_events=True)
    assert b"\x1b]0;evil" not in out and b"\\x1b]0;evil\\x07" in out


def test_what_the_terminal_answers_during_a_replay_is_not_left_to_be_typed():
    master, slave = os.openpty()
    try:
        before = replay.termios.tcgetattr(slave)
        with replay.answerbacks_discarded(slave):
            assert not replay.termios.tcgetattr(slave)[3] & replay.termios.ECHO
            os.write(master, b"\x1b]l rm -rf ~ \x1b\\\n")   # a title report, as a terminal answers
        assert replay.termios.tcgetattr(slave) == before
        os.set_blocking(slave, False)
        with pytest.raises(BlockingIOError):
            os.read(slave, 100)                              # nothing left for the shell
    finally:
        os.close(master)
        os.close(slave)

