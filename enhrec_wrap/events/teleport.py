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
from enhrec_wrap.events.timestamps import rfc3339, rfc3339_ascii

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
# Where each group of a UUID's 32 hex digits goes in its 36 characters (8-4-4-4-12).
_UUID_GROUPS = ((0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12))


def _uuid_batch(count: int = _UUID_BATCH) -> list[bytes]:
    """`count` version 4 UUIDs as the ASCII bytes of str(uuid.uuid4()), from one os.urandom
    call: uuid4 cost 4 us an event, a third of the event's cost. The hex digits are moved into
    place a column at a time for the whole batch (32 slice copies, 4 for the dashes, 1 for a
    separator), then split: formatting each UUID on its own cost 0.4 us."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    digits = raw.hex().encode()
    out = bytearray(b"-" * (37 * count))
    for source, target, width in _UUID_GROUPS:
        for i in range(width):
            out[target + i::37] = digits[source + i::32]
    out[36::37] = b" " * count
    return bytes(out).split()


def random_uuids():
    """A function that returns a new version 4 UUID at each call, the ASCII bytes of its
    string, made a batch at a time, then the next of an iterator. Measured in a batch's build
    of 20,000 real opens (thread CPU time): 0.65 us an event for a UUID formatted at each call
    from a buffer of random hex, 0.40 us formatted one by one in a list comprehension; a
    batch's UUIDs made column by column 0.36 -> 0.14 us a UUID."""
    return itertools.chain.from_iterable(iter(_uuid_batch, None)).__next__


def random_uuid() -> str:
    """A version 4 UUID string, as str(uuid.uuid4()) makes it, without the uuid module (which
    brings platform and its regular expressions to every start)."""
    return _uuid_batch(1)[0].decode()


# What a line format (EventFactory.line_format) holds where each event has its own value: made
# by make_from itself with these in place of the ei, the uid and the time, encoded by encode(),
# and then each one's JSON found and cut out (a NUL, which orjson writes as \u0000, is in no
# kernel or envelope string; a format where one is not found exactly once, in this order, is
# not made).
_SLOT_EI, _SLOT_UID, _SLOT_TIME = "\0ei\0", "\0uid\0", "\0time\0"


class EncodedEvent:
    """An event made as its line at once (EventFactory.from_format), with what the sinks
    place a line by: its "ei" and its "event", read by subscript as a dict's are (the item of
    the attribute of that name: object.__getattribute__ itself, in C, costs no Python call per
    event). Any other field is in the line."""

    __slots__ = ("ei", "event", "line")
    __getitem__ = object.__getattribute__

    def as_dict(self) -> dict:
        """The event's fields, read back from its line (for readers and tests, not the sinks)."""
        return orjson.loads(self.line)


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
        self._uuid = random_uuids()   # ASCII bytes: a line's format takes them as they are

    def make(self, kind, epoch_ns=None, **fields):
        return self.make_from(kind, time.time_ns() if epoch_ns is None else epoch_ns, fields)

    def make_from(self, kind, epoch_ns, fields):
        """make() with the fields as a dict (the hot path: no keyword arguments to pack)."""
        ei = self.next_ei
        self.next_ei = ei + 1
        return {"ei": ei, "event": kind[0], "code": kind[1], "uid": self._uuid().decode(),
                "time": rfc3339(epoch_ns), **self.envelope, **fields}

    def line_format(self, kind, fields) -> bytes | None:
        """The line that make_from(kind, ..., fields) and encode() make, as a bytes format of
        its ei (%d), uid and time (%s), for from_format(); None if the slots cannot be told
        apart in it. Made by make_from and encode themselves, so that a line filled in is
        the same bytes as the event's dict encoded."""
        next_ei, uuid = self.next_ei, self._uuid
        try:
            self._uuid = _SLOT_UID.encode
            event = self.make_from(kind, 0, fields)
        finally:
            self.next_ei, self._uuid = next_ei, uuid
        event["ei"], event["time"] = _SLOT_EI, _SLOT_TIME
        line = encode(event).replace(b"%", b"%%")
        slots = [orjson.dumps(slot) for slot in (_SLOT_EI, _SLOT_UID, _SLOT_TIME)]
        if any(line.count(slot) != 1 for slot in slots) or not (
                line.index(slots[0]) < line.index(slots[1]) < line.index(slots[2])):
            return None
        ei_slot, uid_slot, time_slot = slots
        return (line.replace(ei_slot, b"%d").replace(uid_slot, b'"%s"')
                .replace(time_slot, b'"%s"'))

    def from_format(self, kind, epoch_ns, line_format: bytes) -> EncodedEvent:
        """The next event, made as its line from a line_format() of its fields: the same bytes
        as encode(make_from(kind, epoch_ns, fields)). For fields that repeat (the kernel
        events' opens, events/kernel.py), whose callers keep the format. Measured for an
        open's 23 fields (thread CPU time): 0.58-0.67 us an event's dict copied from a kept
        event and encoded by orjson, 0.25 us its line from the format."""
        ei = self.next_ei
        self.next_ei = ei + 1
        event = _new_encoded(EncodedEvent)
        event.ei = ei
        event.event = kind[0]
        event.line = line_format % (ei, self._uuid(), rfc3339_ascii(epoch_ns))
        return event


_new_encoded = object.__new__


def encode(event) -> bytes:
    if event.__class__ is EncodedEvent:
        return event.line
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
