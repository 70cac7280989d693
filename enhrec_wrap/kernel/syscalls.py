"""The bpf() and perf_event_open() system calls the kernel side needs (x86-64 numbers), called
directly: BCC can neither load programs it did not compile itself, nor pin them or attach them
through links, nor create a ring buffer for a map it did not declare."""

import ctypes as ct
import os
import re
import resource
import struct

TRACEFS = "/sys/kernel/tracing"
SYS_BPF = 321
SYS_PERF_EVENT_OPEN = 298
# bpf() commands (include/uapi/linux/bpf.h)
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
BPF_MAP_GET_NEXT_KEY, BPF_PROG_LOAD, BPF_OBJ_PIN, BPF_OBJ_GET = 4, 5, 6, 7
BPF_MAP_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 14, 15
BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH, BPF_LINK_CREATE = 26, 27, 28
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_MAP_TYPE_HASH_OF_MAPS = 13
BPF_MAP_TYPE_RINGBUF = 27
BPF_MAP_TYPE_ARRAY = 2
BPF_PERF_EVENT = 41            # attach type of a link to a perf event (a tracepoint's)
BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE = 1, 2
BPF_LD_IMM64 = 0x18
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_ATTR_SIZE = 112
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_DISABLE = 0x2401
_ATTR_SIZE = 128   # of union bpf_attr we fill; the kernel wants the rest zero, and it is
_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _bpf(cmd: int, attr: bytearray) -> int:
    buf = (ct.c_char * len(attr)).from_buffer(attr)
    result = _libc.syscall(ct.c_long(SYS_BPF), ct.c_long(cmd), buf, ct.c_long(len(attr)))
    if result < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _name(name: str) -> bytes:
    """A kernel object name: 15 characters of [A-Za-z0-9_.] (BPF_OBJ_NAME_LEN)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)[:15].encode()


def map_create(map_type, key_size, value_size, max_entries, flags, name, inner_map_fd=0) -> int:
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIIIII", attr, 0, map_type, key_size, value_size, max_entries, flags,
                     inner_map_fd)
    struct.pack_into("16s", attr, 28, _name(name))
    return _bpf(BPF_MAP_CREATE, attr)


def _key_value(cmd, fd: int, key: bytes, value, flags: int = 0):
    k = ct.create_string_buffer(key, len(key))
    v = ct.create_string_buffer(value, len(value)) if isinstance(value, bytes) else \
        ct.create_string_buffer(value)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, ct.addressof(k), ct.addressof(v), flags)
    _bpf(cmd, attr)
    return v.raw


def map_update(fd: int, key: bytes, value: bytes):
    _key_value(BPF_MAP_UPDATE_ELEM, fd, key, value)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes:
    return _key_value(BPF_MAP_LOOKUP_ELEM, fd, key, value_size)


def map_delete(fd: int, key: bytes):
    k = ct.create_string_buffer(key, len(key))
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQ", attr, 0, fd, 0, ct.addressof(k))
    _bpf(BPF_MAP_DELETE_ELEM, attr)


def _batch(cmd, fd: int, keys: list[bytes], values: list[bytes] | None):
    """One batch over a map: after a batch that changes a map of maps the kernel waits for one
    RCU grace period (~13 ms here), where each single update or delete waits for one."""
    k = ct.create_string_buffer(b"".join(keys), sum(map(len, keys)))
    v = ct.create_string_buffer(b"".join(values), sum(map(len, values))) if values else None
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=QQQQII", attr, 0, 0, 0, ct.addressof(k), ct.addressof(v) if v else 0,
                     len(keys), fd)
    _bpf(cmd, attr)


def map_update_batch(fd: int, keys: list[bytes], values: list[bytes]):
    _batch(BPF_MAP_UPDATE_BATCH, fd, keys, values)


def map_delete_batch(fd: int, keys: list[bytes]):
    _batch(BPF_MAP_DELETE_BATCH, fd, keys, None)


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map, as it is at the moment."""
    keys, previous = [], None
    while True:
        k = ct.create_string_buffer(previous, key_size) if previous else None
        following = ct.create_string_buffer(key_size)
        attr = bytearray(_ATTR_SIZE)
        struct.pack_into("=IIQQ", attr, 0, fd, 0, ct.addressof(k) if k else 0,
                         ct.addressof(following))
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except FileNotFoundError:
            return keys
        previous = following.raw
        keys.append(previous)


def map_fd_by_id(map_id: int) -> int:
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=I", attr, 0, map_id)
    return _bpf(BPF_MAP_GET_FD_BY_ID, attr)


_MAP_INFO = struct.Struct("=IIIIII16s")   # struct bpf_map_info's first fields


def map_info(fd: int) -> dict:
    """type, id, key_size, value_size, max_entries and name of a map."""
    info = ct.create_string_buffer(_MAP_INFO.size)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQ", attr, 0, fd, _MAP_INFO.size, ct.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    kind, map_id, key_size, value_size, max_entries, _, name = _MAP_INFO.unpack(info.raw)
    return {"type": kind, "id": map_id, "key_size": key_size, "value_size": value_size,
            "max_entries": max_entries, "name": name.rstrip(b"\0").decode(errors="replace")}


def obj_pin(fd: int, path: str):
    p = ct.create_string_buffer(path.encode())
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=QI", attr, 0, ct.addressof(p), fd)
    _bpf(BPF_OBJ_PIN, attr)


def obj_get(path: str) -> int:
    """An fd of the map, program or link pinned at path."""
    p = ct.create_string_buffer(path.encode())
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=QI", attr, 0, ct.addressof(p), 0)
    return _bpf(BPF_OBJ_GET, attr)


def relocate(insns: bytes, new_fd: dict) -> bytes:
    """The program with each map reference (ld_imm64 of a map fd, as BCC emits them) pointing at
    our map instead of the compiling process's."""
    code = bytearray(insns)
    i = 0
    while i + 16 <= len(code):
        if code[i] == BPF_LD_IMM64:
            if code[i + 1] >> 4 in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE):
                old = struct.unpack_from("=i", code, i + 4)[0]
                struct.pack_into("=i", code, i + 4, new_fd[old])   # KeyError: not ours
            i += 16   # ld_imm64 takes two instruction slots
        else:
            i += 8
    return bytes(code)


def prog_load(prog_type: int, insns: bytes, license: str, name: str,
              expected_attach_type: int = 0) -> int:
    code = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(license.encode())
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQ", attr, 0, prog_type, len(insns) // 8, ct.addressof(code),
                     ct.addressof(lic))
    struct.pack_into("16s", attr, 48, _name(name))
    struct.pack_into("=I", attr, 68, expected_attach_type)
    return _bpf(BPF_PROG_LOAD, attr)


def raw_tracepoint_open(prog_fd: int, name: str) -> int:
    """A raw tracepoint attachment: a bpf link (pinnable, like link_create's)."""
    n = ct.create_string_buffer(name.encode())
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=QI", attr, 0, ct.addressof(n), prog_fd)
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, attr)


def tracepoint_event(category: str, event: str) -> int:
    """A perf event on the tracepoint (every task, CPU 0 for the event itself), enabled, with no
    program yet: link_create gives it one. Returns its fd."""
    with open(os.path.join(TRACEFS, "events", category, event, "id")) as f:
        tracepoint_id = int(f.read())
    attr = ct.create_string_buffer(PERF_ATTR_SIZE)
    struct.pack_into("=IIQQQ", attr, 0, PERF_TYPE_TRACEPOINT, PERF_ATTR_SIZE, tracepoint_id, 1,
                     PERF_SAMPLE_RAW)
    struct.pack_into("=I", attr, 48, 1)   # wakeup_events
    fd = _libc.syscall(ct.c_long(SYS_PERF_EVENT_OPEN), attr, ct.c_long(-1), ct.c_long(0),
                       ct.c_long(-1), ct.c_long(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """A bpf link attaching the program to the target (a perf event, a cgroup ...): it stays
    attached for as long as the link lives, which a pin in bpffs makes as long as the pin."""
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIII", attr, 0, prog_fd, target_fd, attach_type, 0)
    return _bpf(BPF_LINK_CREATE, attr)


def raise_memlock():
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (BCC raises it the same way)."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        pass
