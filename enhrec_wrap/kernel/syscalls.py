"""The bpf() and perf_event_open() system calls the cached-program loader needs (x86-64 numbers),
called directly: BCC has no way to load programs it did not compile itself."""

import ctypes as ct
import fcntl
import os
import re
import resource
import struct

TRACEFS = "/sys/kernel/tracing"
SYS_BPF = 321
SYS_PERF_EVENT_OPEN = 298
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD = 0, 1, 2, 5
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE = 1, 2
BPF_LD_IMM64 = 0x18
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_ATTR_SIZE = 112
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
PERF_EVENT_IOC_SET_BPF = 0x40042408
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


def map_create(map_type, key_size, value_size, max_entries, flags, name) -> int:
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
    struct.pack_into("16s", attr, 28, _name(name))
    return _bpf(BPF_MAP_CREATE, attr)


def map_update(fd: int, key: bytes, value: bytes):
    k, v = ct.create_string_buffer(key, len(key)), ct.create_string_buffer(value, len(value))
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, ct.addressof(k), ct.addressof(v), 0)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes:
    k, v = ct.create_string_buffer(key, len(key)), ct.create_string_buffer(value_size)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, ct.addressof(k), ct.addressof(v), 0)
    _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    return v.raw


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


def prog_load(prog_type: int, insns: bytes, license: str, name: str) -> int:
    code = ct.create_string_buffer(insns, len(insns))
    lic = ct.create_string_buffer(license.encode())
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("=IIQQ", attr, 0, prog_type, len(insns) // 8, ct.addressof(code),
                     ct.addressof(lic))
    struct.pack_into("16s", attr, 48, _name(name))
    return _bpf(BPF_PROG_LOAD, attr)


def attach_tracepoint(prog_fd: int, category: str, event: str) -> int:
    """As BCC does it: a perf event on the tracepoint (every task, CPU 0 for the event itself),
    the program set on it, enabled. Returns the perf event's fd."""
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
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def raise_memlock():
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (BCC raises it the same way)."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        pass
