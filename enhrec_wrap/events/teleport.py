"""Audit events in Teleport's format: the envelope every event shares, the one factory that
numbers a session's events, the encoding of a line, and the reversible escaping of bytes that
are not UTF-8. The kernel events' own fields are kernel.py's. The schema is docs/events.md."""

import itertools
import os
import time

import orjson

# The kinds are declared in kinds.py; the factory's callers name them as events.SESSION_START ...
from enhrec_wrap.events.kinds import (NAMESPACE, SESSION_COMMAND, SESSION_DISK,  # noqa: F401
                                      SESSION_END, SESSION_NETWORK, SESSION_START)
from enhrec_wrap.events.timestamps import rfc3339

# 3: the chain fields of the daily files (docs/events.md, "The chain fields").
SCHEMA_VERSION = 4

AT_FDCWD = -100

# Teleport's enums (events.proto): SessionNetwork.NetworkOperation is CONNECT 0, SEND 1;
# EventAction is OBSERVED 0, DENIED 1 (we deny nothing).
NETWORK_CONNECT = 0
ACTION_OBSERVED = 0

# session.command's return_code when the exec's result was not observed. Teleport's Go struct
# has `int32 ReturnCode`: it decodes both `null` and a missing key as 0, success. This one is an
# int32 (it decodes) and far outside execve's results (0 or -4095..-1), so no reader can take it
# for success or for a real errno; `return_code_unknown: true` says what it means.
RETURN_CODE_UNKNOWN = -2**31

# Teleport's session_recording: how the terminal is recorded. "off": it is not (only kernel
# events are); "node" once the terminal is recorded here, at the node.
SESSION_RECORDING = "off"


def text(raw: bytes) -> tuple[str, bool]:
    """Bytes as a JSON-safe string, and whether they had to be escaped.

    Valid UTF-8 is kept as it is. Anything else is escaped reversibly: each byte that is not part
    of valid UTF-8 becomes `\\xNN` and each backslash becomes `\\\\`; the event lists the escaped
    fields in `escaped_fields` so that a reader knows to undo it (see `unescape`).
    """
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        doubled = raw.replace(b"\\", b"\\\\")
        return doubled.decode("utf-8", errors="backslashreplace"), True


def unescape(value: str) -> bytes:
    """The exact bytes behind a string that `text` escaped."""
    out, i = bytearray(), 0
    while i < len(value):
        if value.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif value.startswith("\\x", i):
            out.append(int(value[i + 2:i + 4], 16))
            i += 4
        else:
            out += value[i].encode("utf-8")
            i += 1
    return bytes(out)


_UUID_BATCH = 1024
# A version 4 UUID's fixed bits (RFC 4122), set in the random bytes of a whole batch at once:
# the version (4) in the high nibble of byte 6, the variant (binary 10) in the top of byte 8.
_UUID_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _uuid_batch(count: int = _UUID_BATCH) -> list[str]:
    """`count` version 4 UUID strings, as str(uuid.uuid4()) makes them, from one os.urandom
    call: uuid4 cost 4 us an event, a third of the event's cost."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    h = raw.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * count, 32)]


def random_uuids():
    """A function that returns a new version 4 UUID string at each call, made a batch at a
    time: one string formatted per UUID in a list comprehension, then the next of an iterator.
    Measured in a batch's build of 20,000 real opens (thread CPU time): 0.65 us an event for a
    UUID formatted at each call from a buffer of random hex, 0.40 us this way."""
    return itertools.chain.from_iterable(iter(_uuid_batch, None)).__next__


def random_uuid() -> str:
    """A version 4 UUID string, as str(uuid.uuid4()) makes it, without the uuid module (which
    brings platform and its regular expressions to every start)."""
    return _uuid_batch(1)[0]


# Events kept as templates by make_from_parts before it starts again (the pairs of a session's
# remembered parts: OpenFields keeps 1,024 of each); a template of 23 fields is a dict of 0.8 KB
# (sys.getsizeof), and the parts it holds may be ones OpenFields has let go (0.76 KB a file's):
# 1.6 MB at most.
TEMPLATES = 1024


class EventFactory:
    """Makes the events of one session: numbers them (`ei` 0, 1, 2 ... with no gaps) and gives
    each the envelope fields."""

    def __init__(self, sid, server_id, hostname, login, user, cluster_name):
        self.envelope = {
            "sid": sid, "namespace": NAMESPACE, "server_id": server_id,
            "server_hostname": hostname, "cluster_name": cluster_name, "login": login,
            "user": user,
        }
        self.next_ei = 0
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC; this turns it into wall-clock time.
        self.monotonic_to_epoch_ns = time.time_ns() - time.monotonic_ns()
        self._uuid = random_uuids()
        self._templates = {}   # make_from_parts: (id(process), id(fields), kind) -> its event

    def make(self, kind, epoch_ns=None, **fields):
        return self.make_from(kind, time.time_ns() if epoch_ns is None else epoch_ns, fields)

    def make_from(self, kind, epoch_ns, fields):
        """make() with the fields as a dict (the hot path: no keyword arguments to pack)."""
        ei = self.next_ei
        self.next_ei = ei + 1
        return {"ei": ei, "event": kind[0], "code": kind[1], "uid": self._uuid(),
                "time": rfc3339(epoch_ns), **self.envelope, **fields}

    def make_from_parts(self, kind, epoch_ns, process, fields):
        """make_from(kind, epoch_ns, {**process, **fields}), for parts that never change once
        made (the kernel events' remembered parts, events/kernel.py OpenFields): each pair's
        event is kept whole as a template, and an event is a copy of it with its own ei, uid
        and time. Measured for an open's 23 fields: 0.58-0.60 us an event merged anew from its
        parts, 0.25 us copied from its template."""
        key = (id(process), id(fields), kind)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= TEMPLATES:
                self._templates.clear()
            made = {"ei": None, "event": kind[0], "code": kind[1], "uid": None, "time": None,
                    **self.envelope, **process, **fields}
            # The parts are held with it, so that no other dict can take their ids meanwhile.
            template = self._templates[key] = (made, process, fields)
        event = template[0].copy()
        ei = self.next_ei
        self.next_ei = ei + 1
        event["ei"] = ei
        event["uid"] = self._uuid()
        event["time"] = rfc3339(epoch_ns)
        return event


def encode(event) -> bytes:
    # A copy of exactly the line's size: orjson returns its whole working buffer (8 KiB here),
    # shrunk, and a batch of those left glibc's heap in 8 KiB holes, growing and trimmed back
    # by 34 MB a batch, every page faulted in again: 8.7 us an event instead of 1.4.
    try:
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        # A string that came from bytes which are not UTF-8 (a command line, an SSH variable:
        # Python holds those bytes as lone surrogates, which orjson refuses).
        line = orjson.dumps(escape_surrogates(event), option=orjson.OPT_APPEND_NEWLINE)
    return memoryview(line).tobytes()


def escape_surrogates(event: dict) -> dict:
    """A copy of `event` whose strings holding undecodable bytes (as os.fsdecode leaves them)
    are escaped as text() escapes bytes, each listed in escaped_fields: `key`, or `key.N` for
    the N-th string of a list."""
    escaped = list(event.get("escaped_fields", ()))
    out = dict(event)
    for key, value in event.items():
        if isinstance(value, str):
            out[key] = _fs_text(value, key, escaped)
        elif isinstance(value, list):
            out[key] = [_fs_text(v, f"{key}.{i}", escaped) if isinstance(v, str) else v
                        for i, v in enumerate(value)]
    if escaped:
        out["escaped_fields"] = escaped
    return out


def _fs_text(value: str, name: str, escaped: list) -> str:
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        escaped.append(name)
        return text(os.fsencode(value))[0]
