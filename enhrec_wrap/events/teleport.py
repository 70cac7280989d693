"""Audit events in Teleport's format: the envelope every event shares, the one factory that
numbers a session's events, the encoding of a line, and the reversible escaping of bytes that
are not UTF-8. The kernel events' own fields are kernel.py's. The schema is docs/events.md."""

import os
import time

import orjson

# The kinds are declared in kinds.py; the factory's callers name them as events.SESSION_START ...
from enhrec_wrap.events.kinds import (NAMESPACE, SESSION_COMMAND, SESSION_DISK,  # noqa: F401
                                      SESSION_END, SESSION_NETWORK, SESSION_START)
from enhrec_wrap.events.timestamps import rfc3339

# 3: the chain fields of the daily files (docs/events.md, "The chain fields").
SCHEMA_VERSION = 3

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


class _RandomUUIDs:
    """Version 4 UUID strings, as str(uuid.uuid4()) makes them, from one os.urandom call per
    thousand (uuid4 costs 4 us an event, a third of the event's cost)."""

    _BATCH = 1024
    # The variant nibble (RFC 4122: binary 10xx) for each possible random nibble.
    _VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}

    def __init__(self):
        self._hex = ""
        self._next = 0

    def __call__(self) -> str:
        i = self._next
        if i >= len(self._hex):
            self._hex = os.urandom(16 * self._BATCH).hex()
            i = 0
        self._next = i + 32
        h = self._hex
        return (f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-"
                f"{self._VARIANT[h[i + 16]]}{h[i + 17:i + 20]}-{h[i + 20:i + 32]}")


def random_uuid() -> str:
    """A version 4 UUID string, as str(uuid.uuid4()) makes it, without the uuid module (which
    brings platform and its regular expressions to every start)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_RandomUUIDs._VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


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
        self._uuid = _RandomUUIDs()

    def make(self, kind, epoch_ns=None, **fields):
        return self.make_from(kind, time.time_ns() if epoch_ns is None else epoch_ns, fields)

    def make_from(self, kind, epoch_ns, fields):
        """make() with the fields as a dict (the hot path: no keyword arguments to pack)."""
        ei = self.next_ei
        self.next_ei = ei + 1
        return {"ei": ei, "event": kind[0], "code": kind[1], "uid": self._uuid(),
                "time": rfc3339(epoch_ns), **self.envelope, **fields}

    def make_from_parts(self, kind, epoch_ns, process, fields):
        """make_from(kind, epoch_ns, {**process, **fields}) without that dict between."""
        ei = self.next_ei
        self.next_ei = ei + 1
        return {"ei": ei, "event": kind[0], "code": kind[1], "uid": self._uuid(),
                "time": rfc3339(epoch_ns), **self.envelope, **process, **fields}


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
