"""Events: compatibility with the reference's documented events, escaping of non-UTF-8 bytes, time
format, and the fields made from decoded kernel records."""

import json
import os
import random
import re
import uuid
from pathlib import Path

import orjson
import pytest

from enhrec_wrap.events import teleport as events
from enhrec_wrap.events.timestamps import rfc3339_ascii
from enhrec_wrap.config import Config
from enhrec_wrap.host.privileges import Account
from enhrec_wrap.events.kernel import KernelEvents
from enhrec_wrap.session.lifecycle import Request, Session

# A copy of ../shared/fixtures/reference-events.jsonl (the events exactly as the reference
# documents them), kept in the tree so that a clone tests without ../shared beside it.
REFERENCE_EVENTS = Path(os.environ.get(
    "ENHREC_REFERENCE_EVENTS",
    Path(__file__).resolve().parents[1] / "fixtures" / "reference-events.jsonl"))
TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
SERVER_ID = "5d2f4d7a-92c4-4c1e-8b3c-7b0e1f6a9d10"


def json_type(value):
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}[type(value)]


def element_types(value):
    return {json_type(v) for v in value} if isinstance(value, list) else None


# --- events made of records ----------------------------------------------------------------------

def command_event(record):
    kind, fields = KernelEvents().build(record)
    assert kind == events.SESSION_COMMAND
    factory = events.EventFactory(SID, SERVER_ID, "node", "root", "benarent", "main")
    return orjson.loads(events.encode(factory.make(kind, 0, **fields)))


def session_events(tmp_path, command=("true",)):
    """session.start and session.end as Session writes them (recording off: no BPF needed)."""
    config = Config(data_dir=str(tmp_path), enabled=False, nodename="node")
    account = Account("benarent", os.getuid(), os.getgid(), str(tmp_path), "/bin/sh")
    session = Session(config, Request(account=account, user="benarent", command=list(command),
                                      interactive=True))
    try:
        session.write_start()
        session.write_end(exit_status=0, killed=0)
    finally:
        session.close()
    with open(tmp_path / "log" / "events.log", "rb") as f:
        return [orjson.loads(line) for line in f.read().splitlines()]


# --- the reference's events ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    assert REFERENCE_EVENTS.is_file(), (
        f"{REFERENCE_EVENTS} is missing: restore tests/fixtures/ from git")
    found = {}
    for line in REFERENCE_EVENTS.read_text().splitlines():
        event = json.loads(line)
        found[event["event"]] = event
    assert set(found) == {"session.command", "session.end"}
    return found


def assert_same_shape(ours, theirs):
    missing = sorted(theirs.keys() - ours.keys())
    assert not missing, f"{ours['event']} lacks the reference's fields {missing}"
    for key, value in theirs.items():
        assert json_type(ours[key]) == json_type(value), (
            f"{ours['event']}.{key}: ours is {json_type(ours[key])}, the reference's {json_type(value)}")
        if element_types(value):
            assert element_types(ours[key]) == element_types(value), f"{ours['event']}.{key}"


def test_session_command_has_the_reference_fields_and_types(reference, records):
    ours = command_event(records.exec(2653, b"/bin/ping", [b"ping", b"google.com"], comm=b"ping"))
    assert_same_shape(ours, reference["session.command"])
    assert (ours["code"], ours["path"], ours["argv"], ours["program"]) == \
        ("T4000I", "/bin/ping", ["google.com"], "ping")
    assert (ours["pid"], ours["ppid"], ours["return_code"]) == (2653, 2660, 0)


def test_session_end_has_the_reference_fields_and_types(reference, tmp_path):
    start, end = session_events(tmp_path)
    assert (start["event"], end["event"]) == ("session.start", "session.end")
    assert_same_shape(end, reference["session.end"])
    assert end["participants"] == ["benarent"] and end["code"] == "T2004I"
    assert (start["ei"], end["ei"]) == (0, 1)
    assert TIME_FORMAT.match(end["session_start"]) and TIME_FORMAT.match(end["session_stop"])


# --- escaping ------------------------------------------------------------------------------------

def test_text_keeps_utf8_and_escapes_the_rest():
    assert events.text(b"abc") == ("abc", False)
    assert events.text("a\\b\n\u20ac".encode()) == ("a\\b\n\u20ac", False)
    assert events.text(b"\xff") == ("\\xff", True)
    assert events.text(b"\\\xff\xfeA") == ("\\\\\\xff\\xfeA", True)
    assert events.text(b"\xe2\x82 \xe2\x82\xac") == ("\\xe2\\x82 \u20ac", True)


PIECES = [b"\\", b"\\x", b"x", b"41", b"ff", b"a", b"\n", b"\0", "\u00e9".encode(),
          "\u20ac".encode(), "\U0001f600".encode(), b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf",
          b"\xff", b"\x80"]


def random_bytes(rng):
    parts = []
    for _ in range(rng.randrange(0, 12)):
        if rng.random() < 0.3:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4))))
        else:
            parts.append(rng.choice(PIECES))
    return b"".join(parts)


def test_text_unescape_round_trip():
    rng = random.Random(20261128)
    escaped_seen = 0
    for _ in range(5000):
        raw = random_bytes(rng)
        value, escaped = events.text(raw)
        # Whatever the bytes, the value must survive JSON (orjson refuses lone surrogates).
        assert orjson.loads(orjson.dumps(value)) == value
        if escaped:
            escaped_seen += 1
            assert events.unescape(value) == raw, raw
        else:
            assert value.encode("utf-8") == raw, raw
    assert escaped_seen > 1000


def test_command_with_non_utf8_and_newline_arguments(records):
    event = command_event(records.exec(2653, b"/bin/echo",
                                       [b"echo", b"ok", b"\xff\xfeA\\B", b"line1\nline2"],
                                       comm=b"echo"))
    assert event["argv"] == ["ok", "\\xff\\xfeA\\\\B", "line1\nline2"]
    assert event["escaped_fields"] == ["argv.1"]
    assert events.unescape(event["argv"][1]) == b"\xff\xfeA\\B"


def test_non_utf8_path_of_a_failed_exec_is_escaped_and_the_callers_claim(records):
    event = command_event(records.failed_exec(2653, b"/tmp/\xffprog", [b"prog"], -2, comm=b"sh"))
    assert event["path"] == "/tmp/\\xffprog" and event["escaped_fields"] == ["path"]
    assert event["return_code"] == -2 and event["path_source"] == "caller"


def test_non_utf8_program_name_is_listed_in_escaped_fields(records):
    """docs/events.md: program names are bytes too, and every escaped field is listed."""
    event = command_event(records.exec(2653, b"/tmp/x", [b"x"], comm=b"\xffbad"))
    assert event["program"] == "\\xffbad"
    assert "program" in event.get("escaped_fields", []), event


def test_strings_from_bytes_that_are_not_utf8_are_encoded_escaped():
    """A command line or SSH variable that is not UTF-8 reaches Python as lone surrogates
    (os.fsdecode), which JSON cannot hold: encode() escapes them as text() escapes bytes."""
    raw = [b"/tmp/\xff\xfe-prog", b"\xfa\\x", b"fine"]
    event = {"ei": 0, "event": "session.start", "initial_command": [os.fsdecode(a) for a in raw],
             "addr.remote": os.fsdecode(b"\x80:22"), "login": "alice"}
    line = orjson.loads(events.encode(event))
    assert line["escaped_fields"] == ["initial_command.0", "initial_command.1", "addr.remote"]
    assert [events.unescape(a) for a in line["initial_command"][:2]] == raw[:2]
    assert line["initial_command"][2] == "fine" and line["login"] == "alice"
    assert events.unescape(line["addr.remote"]) == b"\x80:22"
    assert event["initial_command"][2] == "fine" and "escaped_fields" not in event   # a copy


def test_an_exec_is_the_kernels_facts(records):
    """The new image's argv without argv[0], the binary that runs, the script's interpreter,
    a relative filename made absolute with the cwd (no normalisation), and return_code 0."""
    event = command_event(records.exec(7, b"./run.sh", [b"/bin/sh", b"./run.sh", b"a"],
                                       executable=b"/usr/bin/dash", interp=b"/bin/sh",
                                       cwd=b"/home/alice", size=125640))
    assert event["path"] == "/home/alice/run.sh" and event["requested_path"] == "./run.sh"
    assert event["argv"] == ["./run.sh", "a"]
    assert (event["executable"], event["interpreter"]) == ("/usr/bin/dash", "/bin/sh")
    assert (event["executable_size"], event["return_code"]) == (125640, 0)
    assert event["path_source"] == "kernel" and "return_code_unknown" not in event


def test_a_failed_exec_keeps_its_errno_and_dirfd(records):
    event = command_event(records.failed_exec(7, b"nope", [b"nope"], -2, dirfd=5))
    assert (event["path"], event["return_code"], event["dirfd"]) == ("nope", -2, 5)
    assert "executable" not in event


def test_random_uuids_are_the_uuid_modules_version_4_of_the_same_random_bytes(monkeypatch):
    """The version and variant bits are set on a whole batch's bytes at once: each string is
    what uuid.UUID(bytes=..., version=4) makes of its 16 random bytes."""
    drawn = []

    def urandom(n):
        drawn.append(random.Random(len(drawn)).randbytes(n))
        return drawn[-1]

    monkeypatch.setattr(os, "urandom", urandom)
    made = events.random_uuids()
    uuids = [made() for _ in range(2 * 1024 + 3)]   # into a third batch
    raw = b"".join(drawn)
    assert len(drawn) == 3
    assert uuids == [str(uuid.UUID(bytes=raw[i:i + 16], version=4)).encode()   # as ASCII
                     for i in range(0, 16 * len(uuids), 16)]
    single = events.random_uuid()
    assert single == str(uuid.UUID(bytes=drawn[-1], version=4))


# --- time and the envelope -----------------------------------------------------------------------

@pytest.mark.parametrize("epoch_ns, expected", [
    (0, "1970-01-01T00:00:00.000Z"),
    (999_999, "1970-01-01T00:00:00.000Z"),         # cut to the millisecond, not rounded
    (1_999_999_999, "1970-01-01T00:00:01.999Z"),
    (1_700_000_000_123_456_789, "2023-11-14T22:13:20.123Z"),
    (1_709_251_199_999_000_000, "2024-02-29T23:59:59.999Z"),
])
def test_rfc3339(epoch_ns, expected):
    assert events.rfc3339(epoch_ns) == expected
    assert TIME_FORMAT.match(expected)


def test_rfc3339_of_a_burst_is_each_stamp_formatted_anew():
    """The last millisecond's stamp is kept: stamps in and out of order, across seconds and
    back, are what a stamp made from scratch says (time.strftime, as the reference does)."""
    import time
    stamps = [1_700_000_000_123_000_000 + d for d in
              (0, 1, 999_999, 1_000_000, 876_999_999, 877_000_000, 5, -1, -1_000_001, 0)]
    for ns in stamps + [-1, -1_000_000_000]:
        seconds, rest = divmod(ns, 1_000_000_000)
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"
        assert events.rfc3339(ns) == expected
        assert rfc3339_ascii(ns) == expected.encode()


def test_event_factory_numbers_events_and_adds_the_envelope():
    factory = events.EventFactory(SID, SERVER_ID, "node", "alice", "bob", "main")
    made = [factory.make(events.SESSION_START, 0), factory.make(events.SESSION_END, extra=1)]
    assert [e["ei"] for e in made] == [0, 1]
    assert [(e["event"], e["code"]) for e in made] == [events.SESSION_START, events.SESSION_END]
    assert made[0]["time"] == "1970-01-01T00:00:00.000Z"
    assert TIME_FORMAT.match(made[1]["time"]) and made[1]["extra"] == 1
    assert len({e["uid"] for e in made}) == 2
    for e in made:
        assert str(uuid.UUID(e["uid"])) == e["uid"]
        assert (e["sid"], e["namespace"], e["server_id"], e["server_hostname"], e["login"],
                e["user"], e["cluster_name"]) == (SID, "default", SERVER_ID, "node", "alice", "bob",
                                                  "main")
    assert events.encode(made[1]).endswith(b"\n") and events.encode(made[1]).count(b"\n") == 1


def test_a_command_of_2_mib_is_cut_so_that_session_start_stays_a_line_readers_take(tmp_path):
    """The kernel passes up to 2 MiB of arguments; escaped, they would make session.start a
    line of 10 MB. Its initial_command keeps the first 64 KiB (1 byte counted per argument's
    end, as the kernel counts its NUL) and says it was cut."""
    from enhrec_wrap.log import file_lines
    from enhrec_wrap.session import lifecycle
    args = [os.fsdecode(b"\xff" * (128 << 10))] * 16
    start, _ = session_events(tmp_path, ["/bin/echo"] + args)
    with open(tmp_path / "log" / "events.log", "rb") as f:
        first = f.readline()
    assert len(first) <= file_lines.MAX_LINE_BYTES
    assert start["initial_command_truncated"] is True
    kept = [events.unescape(a) for a in start["initial_command"]]
    assert kept[0] == b"/bin/echo"
    assert sum(len(a) + 1 for a in kept) == lifecycle.MAX_INITIAL_COMMAND_BYTES
    assert kept[1:] == [b"\xff" * (lifecycle.MAX_INITIAL_COMMAND_BYTES - len(b"/bin/echo") - 2)]
    small, _ = session_events(tmp_path / "small", ["/bin/echo", "hi"])
    assert small["initial_command"] == ["/bin/echo", "hi"]
    assert "initial_command_truncated" not in small
