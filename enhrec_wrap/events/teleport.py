"""Audit events in Teleport's format: the envelope every event shares, and the fields of the three
kernel events built from decoded ring-buffer records. The schema is docs/events.md."""

import os
import time

import orjson

# The kinds are declared in kinds.py; the factory's callers name them as events.SESSION_START ...
from enhrec_wrap.events.kinds import (SESSION_COMMAND, SESSION_DISK, SESSION_END,  # noqa: F401
                                      SESSION_NETWORK, SESSION_START)
from enhrec_wrap.events.timestamps import rfc3339
from enhrec_wrap.kernel import abi, decode

SCHEMA_VERSION = 2

AT_FDCWD = -100
AF_INET6 = 10

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


class EventFactory:
    """Makes the events of one session: numbers them (`ei` 0, 1, 2 ... with no gaps) and gives
    each the envelope fields."""

    def __init__(self, sid, server_id, hostname, login, user, cluster_name):
        self.envelope = {
            "sid": sid, "namespace": "default", "server_id": server_id,
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

    def kernel_time(self, ts_ns):
        return ts_ns + self.monotonic_to_epoch_ns


def encode(event) -> bytes:
    # A copy of exactly the line's size: orjson returns its whole working buffer (8 KiB here),
    # shrunk, and a batch of those left glibc's heap in 8 KiB holes, growing and trimmed back
    # by 34 MB a batch, every page faulted in again: 8.7 us an event instead of 1.4.
    return memoryview(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)).tobytes()


class KernelEvents:
    """Turns decoded records into the fields of session.command/disk/network events.

    An exec arrives as two records: its arguments at syscall entry and its return code at exit
    (after a successful exec the caller's memory is gone, so argv cannot wait for the exit).
    They are joined here by process id.
    """

    def __init__(self, resolve_paths=True):
        self.pending_execs = {}
        self.resolve_paths = resolve_paths
        # Execs whose result never came and whose process exec'd again since (a lost result
        # record, or two threads in execve at once): to be logged with return_code null.
        self.superseded = []
        self._bases = {}

    def feed_many(self, records):
        """feed() of a batch: returns the complete events [(kind, ts_ns, fields)], including
        the superseded execs (return_code null) it came across."""
        self._bases = {}   # working directories, looked up once per process and batch
        completed = []
        feed = self.feed
        for record in records:
            event = feed(record)
            if event is not None:
                completed.append(event)
        if self.superseded:
            completed.extend(self._command(r, None, r["comm"]) for r in self.superseded)
            self.superseded = []
        return completed

    def events(self, records, decoder, factory):
        """The hot path: one batch of records as decode.Decoder.raw_from() returns them, to
        complete events (dicts, as factory.make() makes them), numbered in time order. The same
        events as feed_many() then factory.make_from(); but an open of an absolute UTF-8 path
        by a known parent (nearly all of them) is built straight from the record's values, with
        no dict per record and one per event. Anything else goes through feed()."""
        self._bases = {}
        as_dict, feed = decoder.as_dict, self.feed
        pending = []   # (ts_ns, values, tail) of opens, or (ts_ns, None, (kind, fields))
        for ts, record_type, values, tail in records:
            if record_type == abi.RECORD_OPEN:
                pending.append((ts, values, tail))
            else:
                event = feed(as_dict(record_type, values, tail))
                if event is not None:
                    pending.append((event[1], None, event))
        if self.superseded:
            for r in self.superseded:
                event = self._command(r, None, r["comm"])
                pending.append((event[1], None, event))
            self.superseded = []
        pending.sort(key=_first)

        at = decoder.layouts[abi.RECORD_OPEN].index
        p_pid, p_ppid, p_cgroup, p_comm = at["pid"], at["ppid"], at["cgroup_id"], at["comm"]
        p_ret, p_flags = at["ret"], at["flags"]
        envelope, uuid = factory.envelope, factory._uuid
        offset, ei = factory.monotonic_to_epoch_ns, factory.next_ei
        disk_name, disk_code = SESSION_DISK
        programs = _raw_programs
        made = []
        for ts, values, tail in pending:
            if values is not None:
                comm = values[p_comm]
                program = programs.get(comm)
                if program is None:
                    if len(programs) > 4096:
                        programs.clear()
                    program = programs[comm] = text(comm.split(b"\0", 1)[0])
                ppid = values[p_ppid]
                if tail and tail[0] == 0x2f and ppid and not program[1]:   # "/"
                    try:
                        path = tail.split(b"\0", 1)[0].decode()
                    except UnicodeDecodeError:
                        path = None
                    if path is not None:
                        made.append({
                            "ei": ei, "event": disk_name, "code": disk_code, "uid": uuid(),
                            "time": rfc3339(ts + offset), **envelope,
                            "pid": values[p_pid], "ppid": ppid, "cgroup_id": values[p_cgroup],
                            "program": program[0], "path": path, "flags": values[p_flags],
                            "return_code": values[p_ret]})
                        ei += 1
                        continue
                kind, _, fields = self._disk(as_dict(abi.RECORD_OPEN, values, tail))
            else:
                kind, _, fields = tail
            made.append({"ei": ei, "event": kind[0], "code": kind[1], "uid": uuid(),
                         "time": rfc3339(ts + offset), **envelope, **fields})
            ei += 1
        factory.next_ei = ei
        return made

    def feed(self, record):
        """Returns (kind, ts_ns, fields) for a complete event, or None."""
        record_type = record["type"]
        if record_type == abi.RECORD_OPEN:
            return self._disk(record)
        if record_type == abi.RECORD_EXEC:
            earlier = self.pending_execs.get(record["pid"])
            if earlier is not None:
                self.superseded.append(earlier)
            self.pending_execs[record["pid"]] = record
            return None
        if record_type == abi.RECORD_EXEC_RESULT:
            started = self.pending_execs.pop(record["pid"], None)
            if started is None:
                return None   # its argument record was lost, and counted as lost in the kernel
            return self._command(started, record["ret"], record["comm"])
        if record_type == abi.RECORD_CONNECT:
            return self._network(record)
        return None

    def held_by_type(self) -> dict:
        """Records held until their exec's result comes, by record type (session/ledger.py)."""
        return {abi.RECORD_EXEC: len(self.pending_execs) + len(self.superseded)}

    def unfinished(self):
        """Execs whose result never came (the result record was lost, or the task died inside
        execve): logged with `return_code` null rather than dropped."""
        left = self.superseded + list(self.pending_execs.values())
        self.superseded, self.pending_execs = [], {}
        return [self._command(r, None, r["comm"]) for r in left]

    def _command(self, record, ret, comm):
        filename, args, cut = decode.split_exec_tail(record)
        escaped = []
        fields = _process_fields(record, comm, escaped)
        fields["path"] = _text_field(filename, "path", escaped)
        fields["argv"] = [_text_field(a, f"argv.{i}", escaped) for i, a in enumerate(args[1:])]
        if ret is None:
            fields["return_code"] = RETURN_CODE_UNKNOWN
            fields["return_code_unknown"] = True
        else:
            fields["return_code"] = ret
        fields["argv_truncated"] = cut
        if record["dirfd"] != AT_FDCWD:
            fields["dirfd"] = record["dirfd"]
        if record["truncated"] & abi.ARGV_UNREADABLE:
            fields["argv_unreadable"] = True
        if escaped:
            fields["escaped_fields"] = escaped
        return SESSION_COMMAND, record["ts_ns"], fields

    def _disk(self, record):
        path, readable = decode.open_path(record)
        escaped = []
        fields = _process_fields(record, record["comm"], escaped)
        try:
            fields["path"] = path.decode()
        except UnicodeDecodeError:
            fields["path"] = _text_field(path, "path", escaped)
        fields["flags"] = record["flags"]
        fields["return_code"] = record["ret"]
        if not readable:
            fields["path_unreadable"] = True
        elif self.resolve_paths and not path.startswith(b"/"):
            key = (record["pid"], record["dirfd"])
            base = self._bases.get(key, False)
            if base is False:
                base = self._bases[key] = _base_directory(*key)
            absolute = None if base is None else os.path.normpath(os.path.join(base, path))
            if absolute is not None:
                fields["abs_path"] = _text_field(absolute, "abs_path", escaped)
        if escaped:
            fields["escaped_fields"] = escaped
        return SESSION_DISK, record["ts_ns"], fields

    def _network(self, record):
        escaped = []
        fields = _process_fields(record, record["comm"], escaped)
        version = 6 if record["family"] == AF_INET6 else 4
        size = 16 if version == 6 else 4
        is_tcp = bool(record["flags"] & abi.CONNECT_TCP)
        import ipaddress   # here: 5 ms of every session's start, for the sessions that connect
        fields["src_addr"] = str(ipaddress.ip_address(record["saddr"][:size]))
        fields["dst_addr"] = str(ipaddress.ip_address(record["daddr"][:size]))
        fields["dst_port"] = record["dport"]
        fields["version"] = version
        fields["operation"] = NETWORK_CONNECT
        fields["action"] = ACTION_OBSERVED
        fields["protocol"] = "tcp" if is_tcp else "other"
        if is_tcp and record["sport"]:
            fields["src_port"] = record["sport"]
        # Not `return_code`: consumers of Teleport's events take that for the process's exit code.
        if record["flags"] & abi.CONNECT_NO_SYSCALL:
            fields["connect_return_code"] = None
        else:
            fields["connect_return_code"] = record["ret"]
        if escaped:
            fields["escaped_fields"] = escaped
        return SESSION_NETWORK, record["ts_ns"], fields


def _process_fields(record, comm, escaped):
    """pid, ppid, cgroup_id and program; "program" goes to `escaped` when it had to be."""
    program = _programs.get(comm)
    if program is None:
        if len(_programs) > 4096:
            _programs.clear()
        program = _programs[comm] = text(comm)
    if program[1]:
        escaped.append("program")
    return {"pid": record["pid"], "ppid": record["ppid"] or _proc_ppid(record["pid"]),
            "cgroup_id": record["cgroup_id"], "program": program[0]}


_programs = {}   # comm bytes -> text(comm): a session runs few different programs
_raw_programs = {}   # the same, keyed by the kernel's NUL-padded 16 bytes


def _first(item):
    return item[0]


def _text_field(raw, name, escaped):
    value, was_escaped = text(raw)
    if was_escaped:
        escaped.append(name)
    return value


def _proc_ppid(pid):
    """The parent from /proc when the kernel side had none (the session's first process, whose
    fork happened before it joined the cgroup). 0 when the process is already gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _base_directory(pid, dirfd):
    """The directory a relative path of `pid` starts from (bytes), as /proc shows it now; None
    once the process is gone."""
    link = f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
    try:
        return os.readlink(link.encode())
    except OSError:
        return None
