"""The kernel events of a session: decoded ring-buffer records (kernel/decode.py) to the fields
of session.command, session.disk, session.network, session.refused and session.io_uring
(docs/events.md), numbered by the session's event factory (teleport.py) in time order.

Each record is a whole event: a successful exec is one record at sched_process_exec, a failed
one one record at its syscall's exit, an open one record at its exit, a connect one record at
connect()'s exit (or at the hook when there is no connect() call). Nothing is joined, so nothing
is held back between batches.

The one exec followed from the kernel to the log: bpf_programs/enhrec.h (struct exec_event),
bpf_programs/recorder.c and exec.h (filled at sched_process_exec), kernel/decode.py (its layout
from the loaded program), and here (its fields).
"""

import operator

from enhrec_wrap.events import kinds
from enhrec_wrap.events.kinds import OPERATION_CONNECT, OPERATION_SEND, SESSION_DISK
from enhrec_wrap.events.teleport import AT_FDCWD, ACTION_OBSERVED, text
from enhrec_wrap.kernel import abi, paths

AF_INET6 = 10
V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"   # ::ffff:0:0/96
IPPROTO_TCP, IPPROTO_UDP = 6, 17
AUDIT_ARCH_I386 = 0x40000003
ARCH_NAMES = {0xC000003E: "x86_64", AUDIT_ARCH_I386: "i386"}
# Names of the refused calls one sees: the io_uring calls (x86_64), and the i386 calls a 32-bit
# program makes first or a bypass tries (arch/x86/entry/syscalls/syscall_32.tbl).
SYSCALL_NAMES = {
    ("x86_64", 425): "io_uring_setup", ("x86_64", 426): "io_uring_enter",
    ("x86_64", 427): "io_uring_register",
    ("i386", 1): "exit", ("i386", 3): "read", ("i386", 4): "write", ("i386", 5): "open",
    ("i386", 11): "execve", ("i386", 45): "brk", ("i386", 90): "mmap", ("i386", 102): "socketcall",
    ("i386", 122): "uname", ("i386", 192): "mmap2", ("i386", 243): "set_thread_area",
    ("i386", 252): "exit_group", ("i386", 295): "openat", ("i386", 359): "socket",
    ("i386", 362): "connect", ("i386", 369): "sendto", ("i386", 370): "sendmsg",
    ("i386", 384): "arch_prctl",
}
# session.disk's `via` of the records that are no open-like call (docs/events.md)
OPEN_SOURCES = {abi.OPEN_FROM_UNIX_CONNECT: "unix_connect",
                abi.OPEN_FROM_PIDFD_GETFD: "pidfd_getfd", abi.OPEN_FROM_PTRACE: "ptrace_attach"}
REFUSED_ACTIONS = {abi.REFUSED_ERRNO: "errno", abi.REFUSED_KILLED: "killed"}
# include/uapi/linux/io_uring.h enum io_uring_op
URING_OPERATIONS = (
    "NOP", "READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "POLL_ADD", "POLL_REMOVE",
    "SYNC_FILE_RANGE", "SENDMSG", "RECVMSG", "TIMEOUT", "TIMEOUT_REMOVE", "ACCEPT",
    "ASYNC_CANCEL", "LINK_TIMEOUT", "CONNECT", "FALLOCATE", "OPENAT", "CLOSE", "FILES_UPDATE",
    "STATX", "READ", "WRITE", "FADVISE", "MADVISE", "SEND", "RECV", "OPENAT2", "EPOLL_CTL",
    "SPLICE", "PROVIDE_BUFFERS", "REMOVE_BUFFERS", "TEE", "SHUTDOWN", "RENAMEAT", "UNLINKAT",
    "MKDIRAT", "SYMLINKAT", "LINKAT", "MSG_RING", "FSETXATTR", "SETXATTR", "FGETXATTR",
    "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC", "SENDMSG_ZC", "READ_MULTISHOT", "WAITID",
    "FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_WAITV", "FIXED_FD_INSTALL", "FTRUNCATE", "BIND",
    "LISTEN", "RECV_ZC", "EPOLL_WAIT", "READV_FIXED", "WRITEV_FIXED", "PIPE",
)


# A batch's build pauses for the caller's `between` after this many records (about 1 ms).
BETWEEN_RECORDS = 128
# Entries each of the open path's memos holds before it starts again: a file's took 760 bytes
# (measured, paths of 50 bytes), so at most about 0.8 MB; an open's line format and fields
# about 1.5 KB (2.3 MB at most, with the key's values).
MEMO_ENTRIES = 1024
# What _process_fields reads of a record, and every field of a record's header (enhrec.h
# struct event_header): the rest of an open record is its file's.
PROCESS_VALUES = ("pid", "ppid", "cgroup_id", "comm")
HEADER_VALUES = ("ts_ns", "cgroup_id", "pid", "tid", "ppid", "type", "tail_len", "comm")


class KernelEvents:
    """Builds the events of one session's records."""

    def __init__(self, decoder=None):
        self.decoder = decoder   # None: build() only, of records given as dicts (unit tests)
        self._builders = {
            abi.RECORD_EXEC: (kinds.SESSION_COMMAND, _exec),
            abi.RECORD_EXEC_FAILED: (kinds.SESSION_COMMAND, _failed_exec),
            abi.RECORD_OPEN: (kinds.SESSION_DISK, _open),
            abi.RECORD_CONNECT: (kinds.SESSION_NETWORK, _connect),
            abi.RECORD_SEND: (kinds.SESSION_NETWORK, _connect),
            abi.RECORD_REFUSED: (kinds.SESSION_REFUSED, _refused),
            abi.RECORD_URING: (kinds.SESSION_IO_URING, _uring),
        }
        self._opens = None if decoder is None else OpenFields(decoder)
        # An open's line format, fields and escaped names (_open_line), by OpenFields.key, for
        # the factory they were made for: one lookup for a repeated open. Measured on 20,000
        # real opens of one path (thread CPU time, batches of 512, best of 6): a batch's
        # events 1.87-1.89 us an open when its parts were looked up (0.36 us) and then its
        # format by the parts' ids (the rest of 0.86 us), 1.52-1.63 us this way.
        self._lines = {}
        self._lines_for = None

    def events(self, records: list, factory, between=None) -> list:
        """The events of a batch of records (decode.Decoder.raw_all tuples), in time order.
        `between` is called after every BETWEEN_RECORDS of them (the recorder reads its rings
        again there, so that building a batch never leaves them unread for long).

        Opens, nearly every event of a busy session, take OpenFields' way: the same fields
        as build() gives, made from the record's values without a dict of the record, and
        then (when nothing in them was escaped) made as their line at once, an
        events.EncodedEvent: the same bytes as encode() makes of the dict
        (EventFactory.line_format, from_format)."""
        if factory is not self._lines_for:   # the formats hold the factory's envelope
            self._lines.clear()
            self._lines_for = factory
        as_dict, build = self.decoder.as_dict, self.build
        make, from_format = factory.make_from, factory.from_format
        lines, open_key = self._lines, self._opens.key
        to_epoch = factory.monotonic_to_epoch_ns
        made = []
        append = made.append
        for n, (ts, record_type, values, tail) in enumerate(sorted(records, key=_first), 1):
            if record_type == abi.RECORD_OPEN:
                key = (tail, open_key(values))
                line = lines.get(key)
                if line is None:
                    line = self._open_line(key, values, tail, factory)
                line_format, fields, escaped = line
                if line_format is not None:
                    append(from_format(SESSION_DISK, ts + to_epoch, line_format))
                elif escaped:
                    append(make(SESSION_DISK, ts + to_epoch,
                                {**fields, "escaped_fields": list(escaped)}))
                else:
                    append(make(SESSION_DISK, ts + to_epoch, fields))
            else:
                kind, fields = build(as_dict(record_type, values, tail))
                append(make(kind, ts + to_epoch, fields))
            if between is not None and n % BETWEEN_RECORDS == 0:
                between()
        return made

    def _open_line(self, key, values, tail, factory) -> tuple:
        """(line format or None, fields, escaped names) of an open, remembered by all its
        values but the time and the thread (OpenFields.key): the format when nothing in the
        fields was escaped (EventFactory.line_format)."""
        process, file, escaped = self._opens.parts(values, tail)
        fields = {**process, **file}
        line_format = None if escaped else factory.line_format(SESSION_DISK, fields)
        return OpenFields._remember(self._lines, key, (line_format, fields, escaped))

    def build(self, record: dict) -> tuple:
        """(kind, fields) of one record, as decode.Decoder.as_dict gives it. Each kind's builder
        adds its fields to the process's, and names in `escaped` each text field it escaped."""
        kind, build = self._builders[record["type"]]
        escaped = []
        fields = _process_fields(record, escaped)
        build(record, fields, escaped)
        if escaped:
            fields["escaped_fields"] = escaped
        return kind, fields


class OpenFields:
    """An open record's session.disk fields in two parts, each remembered by the values that
    make it: the process's (pid, ppid, cgroup_id, program) and the file's (path ... via).

    Both are pure functions of the record's values, made on a miss by the same code as
    build() (_process_fields, _open), so an event is the same whichever way it was made,
    byte for byte (tests/unit/test_open_fields.py). A busy session opens the same few files
    from the same few processes: measured on 20,000 real open records of one path (thread
    CPU time), building each open's fields from a dict of its record (decode.as_dict, _open,
    the path's resolution, text()) cost 3.2 to 3.4 us a record; the two lookups 0.47 us."""

    def __init__(self, decoder):
        layout = decoder.layouts[abi.RECORD_OPEN]
        self._as_dict = decoder.as_dict
        index = layout.index
        self._process_key = operator.itemgetter(*(index[n] for n in PROCESS_VALUES))
        # Every value but the header's (the open's result, flags, the file's walk, request_len,
        # via_uring ...), and the tail: more than _open reads, never less.
        self._file_key = operator.itemgetter(*(i for n, i in index.items()
                                               if n not in HEADER_VALUES))
        # Both keys' values in one, and the tail with them: what an open's event is made of.
        self.key = operator.itemgetter(*(i for n, i in index.items()
                                         if n in PROCESS_VALUES or n not in HEADER_VALUES))
        self._processes = {}
        self._files = {}

    def parts(self, values, tail) -> tuple:
        """(process fields, file fields, escaped_fields or None). The dicts are shared between
        events: they are read, never changed."""
        process_key = self._process_key(values)
        process = self._processes.get(process_key)
        if process is None:
            process = self._remember(self._processes, process_key, self._process(values, tail))
        file_key = (tail, self._file_key(values))
        file = self._files.get(file_key)
        if file is None:
            file = self._remember(self._files, file_key, self._file(values, tail))
        if process[1] or file[1]:
            return process[0], file[0], [*process[1], *file[1]]
        return process[0], file[0], None

    def _process(self, values, tail) -> tuple:
        escaped = []
        fields = _process_fields(self._as_dict(abi.RECORD_OPEN, values, tail), escaped)
        return fields, tuple(escaped)

    def _file(self, values, tail) -> tuple:
        escaped, fields = [], {}
        _open(self._as_dict(abi.RECORD_OPEN, values, tail), fields, escaped)
        return fields, tuple(escaped)

    @staticmethod
    def _remember(memo: dict, key, value):
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[key] = value
        return value


# A record's time stamp, its first item: itemgetter sorts a batch without a Python call per
# record (measured, 512 records: 26.5 -> 9.2 ns a record).
_first = operator.itemgetter(0)


# --- the fields of each kind --------------------------------------------------------------------

def _exec(record, fields, escaped):
    """A successful exec as the kernel did it (exec.h): the new image's argv, the kernel's copy
    of the filename, the binary that really runs."""
    tail, flags = record["tail"], record["flags"]
    at = 0
    argv_raw, at = tail[:record["argv_len"]], record["argv_len"]
    filename, at = tail[at:at + record["filename_len"]].rstrip(b"\0"), at + record["filename_len"]
    interp, at = tail[at:at + record["interp_len"]].rstrip(b"\0"), at + record["interp_len"]
    binary, at = tail[at:at + record["binary.path_len"]], at + record["binary.path_len"]
    cwd, at = tail[at:at + record["cwd.path_len"]], at + record["cwd.path_len"]
    binary_fs = tail[at:at + record["binary_fs.path_len"]]
    argv = argv_raw.split(b"\0")
    if argv and argv[-1] == b"":
        argv.pop()   # the NUL that ends the last string
    path = filename
    if flags & abi.EXEC_CWD:
        fields["requested_path"] = _text_field(filename, "requested_path", escaped)
        path = _absolute(paths.resolved_path(cwd, record["cwd.path_flags"],
                                             record["cwd.fs_magic"], record["cwd.ino"]),
                         filename)
    fields["path"] = _text_field(path, "path", escaped)
    fields["path_source"] = "kernel"
    fields["argv"] = [_text_field(a, f"argv.{i}", escaped) for i, a in enumerate(argv[1:])]
    fields["return_code"] = 0
    fields["argv_truncated"] = bool(flags & abi.EXEC_ARGV_TRUNCATED)
    if flags & abi.EXEC_ARGV_UNREADABLE:
        fields["argv_unreadable"] = True
    executable = paths.resolved_path(binary, record["binary.path_flags"],
                                     record["binary.fs_magic"], record["binary.ino"])
    fields["executable"] = _text_field(executable, "executable", escaped)
    if flags & abi.EXEC_BINARY_FS:
        _fs_path(fields, "executable_fs_path", binary_fs, record["binary_fs.path_flags"],
                 record, "binary", executable, escaped)
        fields["executable_device"] = paths.device(record["binary.dev"])
    fields["executable_inode"] = record["binary.ino"]
    fields["executable_size"] = record["size"]
    if flags & abi.EXEC_SCRIPT:
        fields["interpreter"] = _text_field(interp, "interpreter", escaped)


def _fs_path(fields, name, components, flags, record, walked, path, escaped):
    """The file's path from its filesystem's own root (the second walk, path.h fs_only), when
    it says something `path` does not: where the file is, whatever mounts the caller's
    namespace shows (PATH_USER_NS) or its chroot hides. With `device`, the caller cannot fake
    it."""
    fs_path = paths.resolved_path(components, flags | record[f"{walked}.path_flags"]
                                  & abi.PATH_DELETED, record[f"{walked}.fs_magic"],
                                  record[f"{walked}.ino"])
    if fs_path != path:
        fields[name] = _text_field(fs_path, name, escaped)


def _absolute(directory: bytes, name: bytes) -> bytes:
    """A relative exec filename made absolute with its cwd, as the kernel looked it up: no
    normalisation (`..` after a symlink is the link target's parent, which only the kernel
    knows), but a leading "./", which never changes the meaning, goes."""
    while name.startswith(b"./"):
        name = name[2:]
    return directory.rstrip(b"/") + b"/" + name


def _failed_exec(record, fields, escaped):
    """An exec that failed: only the caller's claim exists, read from its memory."""
    tail = record["tail"]
    filename = tail[:record["filename_len"]].rstrip(b"\0")
    args = tail[record["filename_len"]:].split(b"\0")[:record["argc"]]
    cut = record["truncated"] != 0 or any(len(a) >= abi.ARG_READ_MAX - 1 for a in args)
    fields["path"] = _text_field(filename, "path", escaped)
    fields["path_source"] = "caller"
    fields["argv"] = [_text_field(a, f"argv.{i}", escaped) for i, a in enumerate(args[1:])]
    fields["return_code"] = record["ret"]
    fields["argv_truncated"] = cut
    if record["dirfd"] != AT_FDCWD:
        fields["dirfd"] = record["dirfd"]
    if record["truncated"] & abi.ARGV_UNREADABLE:
        fields["argv_unreadable"] = True


def _open(record, fields, escaped):
    """An open: the file the kernel opened (its struct file's path), and the caller's request."""
    tail, file_flags = record["tail"], record["file.path_flags"]
    length, fs_length = record["file.path_len"], record["fs.path_len"]
    components, fs_components = tail[:length], tail[length:length + fs_length]
    request = tail[length + fs_length:][:record["request_len"]]
    unix_connect = record["source"] == abi.OPEN_FROM_UNIX_CONNECT
    request = _unix_name(request) if unix_connect else request.rstrip(b"\0")
    opened = record["ret"] >= 0 and not file_flags & abi.PATH_NO_FILE
    if opened:
        if file_flags & abi.PATH_UNIX_ABSTRACT:
            path = b"@" + components   # the kernel's copy of the peer's abstract name
        else:
            path = paths.resolved_path(components, file_flags, record["file.fs_magic"],
                                       record["file.ino"])
        fields["path"] = _text_field(path, "path", escaped)
        fields["path_source"] = "kernel"
        if record["request_len"] and request != path:
            fields["requested_path"] = _text_field(request, "requested_path", escaped)
        if fs_length:
            _fs_path(fields, "fs_path", fs_components, record["fs.path_flags"], record, "file",
                     path, escaped)
    else:
        fields["path"] = _text_field(request, "path", escaped)
        fields["path_source"] = "caller"
        file_flags &= ~abi.PATH_NO_FILE   # said by path_source
    fields["flags"] = record["flags"]
    fields["return_code"] = record["ret"]
    flag_names = paths.flag_names(file_flags & ~abi.PATH_COMPLETE)
    if flag_names:
        fields["path_flags"] = flag_names
    if opened and not file_flags & abi.PATH_UNIX_ABSTRACT:   # an abstract name has no file
        fields["inode"] = record["file.ino"]
        fields["device"] = paths.device(record["file.dev"])
        fields["mount_id"] = record["file.mnt_id"]
    if record["via_uring"]:
        fields["via"] = "io_uring"
    elif record["source"] in OPEN_SOURCES:
        fields["via"] = OPEN_SOURCES[record["source"]]
        if record["source"] == abi.OPEN_FROM_PTRACE:
            fields["target_pid"] = record["dirfd"]


def _unix_name(sun_path: bytes) -> bytes:
    """A sockaddr_un's sun_path as ss(8) and /proc/net/unix write it: a file name ends at its
    NUL; an abstract name (a NUL first) is "@" and its bytes."""
    if sun_path[:1] == b"\0":
        return b"@" + sun_path[1:]
    return sun_path.split(b"\0", 1)[0]


def _connect(record, fields, escaped):
    """A connect or an unconnected UDP send: the kernel's copy of the destination."""
    import ipaddress   # here: 5 ms of every session's start, for the sessions that connect
    daddr, saddr = record["daddr"], record["saddr"]
    v4 = record["flags"] & abi.CONNECT_IPV4_HOOK or record["family"] != AF_INET6
    if not v4 and daddr[:12] == V4_MAPPED_PREFIX:
        # An IPv6 socket's IPv4-mapped destination (::ffff:a.b.c.d): the packets are IPv4,
        # and a search for a.b.c.d must find it, so it is written as that address.
        v4 = True
        daddr = daddr[12:16]
        saddr = saddr[12:16] if saddr[:12] == V4_MAPPED_PREFIX else bytes(4)
    size = 4 if v4 else 16
    is_tcp = bool(record["flags"] & abi.CONNECT_TCP)
    fields["src_addr"] = str(ipaddress.ip_address(saddr[:size]))
    fields["dst_addr"] = str(ipaddress.ip_address(daddr[:size]))
    fields["dst_port"] = record["dport"]
    fields["version"] = 4 if v4 else 6
    send = record["type"] == abi.RECORD_SEND
    fields["operation"] = OPERATION_SEND if send else OPERATION_CONNECT
    fields["action"] = ACTION_OBSERVED
    fields["protocol"] = ("tcp" if is_tcp or record["protocol"] == IPPROTO_TCP else
                          "udp" if record["protocol"] == IPPROTO_UDP else "other")
    if is_tcp and record["sport"]:
        fields["src_port"] = record["sport"]
    if not send:
        # Not `return_code`: consumers of Teleport's events take that for the process's exit
        # code. None: no connect() call returned one (io_uring, 32-bit socketcall, Fast Open).
        no_call = record["flags"] & abi.CONNECT_NO_SYSCALL
        fields["connect_return_code"] = None if no_call else record["ret"]


def _refused(record, fields, escaped):
    """A call the session's seccomp filter refused."""
    arch = ARCH_NAMES.get(record["arch"], hex(record["arch"]))
    number = record["syscall"]
    fields["syscall"] = SYSCALL_NAMES.get((arch, number), f"{arch}:{number}")
    fields["syscall_nr"] = number
    fields["arch"] = arch
    # Not `action` nor `return_code`: Teleport's names, which Elastic's pipeline renames into a
    # network action and the process's exit code.
    fields["refusal"] = REFUSED_ACTIONS.get(record["action"], str(record["action"]))


def _uring(record, fields, escaped):
    """An io_uring operation, first of its kind in its process (io_uring allowed)."""
    opcode = record["opcode"]
    fields["opcode"] = opcode
    # Not `operation`: Teleport's name for the network operation.
    fields["opcode_name"] = URING_OPERATIONS[opcode] if opcode < len(URING_OPERATIONS) else str(opcode)


def _process_fields(record, escaped) -> dict:
    """pid, ppid, cgroup_id and program; "program" goes to `escaped` when it had to be."""
    comm = record["comm"]
    program = _programs.get(comm)
    if program is None:
        if len(_programs) > 4096:
            _programs.clear()
        program = _programs[comm] = text(comm)
    if program[1]:
        escaped.append("program")
    return {"pid": record["pid"], "ppid": record["ppid"], "cgroup_id": record["cgroup_id"],
            "program": program[0]}


_programs = {}   # comm bytes -> text(comm): a session runs few different programs


def _text_field(raw, name, escaped):
    value, was_escaped = text(raw)
    if was_escaped:
        escaped.append(name)
    return value
