"""Audit events in Teleport's format: the envelope every event shares, and the fields of the three
kernel events built from decoded ring-buffer records. The schema is docs/events.md."""

import ipaddress
import os
import time
import uuid

import orjson

from enhrec_wrap import decode

SCHEMA_VERSION = 1

SESSION_START = ("session.start", "T2000I")
SESSION_END = ("session.end", "T2004I")
SESSION_COMMAND = ("session.command", "T4000I")
SESSION_DISK = ("session.disk", "T4001I")
SESSION_NETWORK = ("session.network", "T4002I")

AT_FDCWD = -100
AF_INET6 = 10


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


def rfc3339(epoch_ns: int) -> str:
    """UTC, millisecond precision, `Z` suffix: the reference's `time` format."""
    seconds, rest = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


class EventFactory:
    """Makes the events of one session: numbers them (`ei` 0, 1, 2 ... with no gaps) and gives
    each the envelope fields."""

    def __init__(self, sid, server_id, hostname, login, user):
        self.envelope = {
            "sid": sid, "namespace": "default", "server_id": server_id,
            "server_hostname": hostname, "login": login, "user": user,
        }
        self.next_ei = 0
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC; this turns it into wall-clock time.
        self.monotonic_to_epoch_ns = time.time_ns() - time.monotonic_ns()

    def make(self, kind, epoch_ns=None, **fields):
        name, code = kind
        event = {"ei": self.next_ei, "event": name, "code": code, "uid": str(uuid.uuid4()),
                 "time": rfc3339(time.time_ns() if epoch_ns is None else epoch_ns)}
        event.update(self.envelope)
        event.update(fields)
        self.next_ei += 1
        return event

    def kernel_time(self, ts_ns):
        return ts_ns + self.monotonic_to_epoch_ns


def encode(event) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


class KernelEvents:
    """Turns decoded records into the fields of session.command/disk/network events.

    An exec arrives as two records: its arguments at syscall entry and its return code at exit
    (after a successful exec the caller's memory is gone, so argv cannot wait for the exit).
    They are joined here by process id.
    """

    def __init__(self, resolve_paths=True):
        self.pending_execs = {}
        self.resolve_paths = resolve_paths

    def feed(self, record):
        """Returns (kind, ts_ns, fields) for a complete event, or None."""
        record_type = record["type"]
        if record_type == decode.RECORD_EXEC:
            self.pending_execs[record["pid"]] = record
            return None
        if record_type == decode.RECORD_EXEC_RESULT:
            started = self.pending_execs.pop(record["pid"], None)
            if started is None:
                return None   # its argument record was lost, and counted as lost in the kernel
            return self._command(started, record["ret"], record["comm"])
        if record_type == decode.RECORD_OPEN:
            return self._disk(record)
        if record_type == decode.RECORD_CONNECT:
            return self._network(record)
        return None

    def unfinished(self):
        """Execs whose result never came (the result record was lost, or the task died inside
        execve): logged with `return_code` null rather than dropped."""
        pending, self.pending_execs = self.pending_execs, {}
        return [self._command(r, None, r["comm"]) for r in pending.values()]

    def _command(self, record, ret, comm):
        filename, args, cut = decode.split_exec_tail(record)
        fields = _process_fields(record, comm)
        escaped = []
        fields["path"] = _text_field(filename, "path", escaped)
        fields["argv"] = [_text_field(a, f"argv.{i}", escaped) for i, a in enumerate(args[1:])]
        fields["return_code"] = ret
        fields["argv_truncated"] = cut
        if record["dirfd"] != AT_FDCWD:
            fields["dirfd"] = record["dirfd"]
        if record["truncated"] & decode.ARGV_UNREADABLE:
            fields["argv_unreadable"] = True
        if escaped:
            fields["escaped_fields"] = escaped
        return SESSION_COMMAND, record["ts_ns"], fields

    def _disk(self, record):
        path, readable = decode.open_path(record)
        fields = _process_fields(record, record["comm"])
        escaped = []
        fields["path"] = _text_field(path, "path", escaped)
        fields["flags"] = record["flags"]
        fields["return_code"] = record["ret"]
        if not readable:
            fields["path_unreadable"] = True
        elif self.resolve_paths and not path.startswith(b"/"):
            absolute = _absolute_path(record["pid"], record["dirfd"], path)
            if absolute is not None:
                fields["abs_path"] = _text_field(absolute, "abs_path", escaped)
        if escaped:
            fields["escaped_fields"] = escaped
        return SESSION_DISK, record["ts_ns"], fields

    def _network(self, record):
        fields = _process_fields(record, record["comm"])
        version = 6 if record["family"] == AF_INET6 else 4
        size = 16 if version == 6 else 4
        is_tcp = bool(record["flags"] & decode.CONNECT_TCP)
        fields["src_addr"] = str(ipaddress.ip_address(record["saddr"][:size]))
        fields["dst_addr"] = str(ipaddress.ip_address(record["daddr"][:size]))
        fields["dst_port"] = record["dport"]
        fields["version"] = version
        fields["protocol"] = "tcp" if is_tcp else "other"
        if is_tcp and record["sport"]:
            fields["src_port"] = record["sport"]
        if record["flags"] & decode.CONNECT_NO_SYSCALL:
            fields["return_code"] = None
        else:
            fields["return_code"] = record["ret"]
        return SESSION_NETWORK, record["ts_ns"], fields


def _process_fields(record, comm):
    program, _ = text(comm)
    return {"pid": record["pid"], "ppid": record["ppid"] or _proc_ppid(record["pid"]),
            "cgroup_id": record["cgroup_id"], "program": program}


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


def _absolute_path(pid, dirfd, path):
    """A relative open path made absolute with the process's cwd (or dirfd) as /proc shows it
    now: best effort, None once the process is gone."""
    base = f"/proc/{pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{pid}/fd/{dirfd}"
    try:
        return os.path.normpath(os.path.join(os.readlink(base.encode()), path))
    except OSError:
        return None
