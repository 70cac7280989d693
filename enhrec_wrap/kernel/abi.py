"""The constants the BPF programs and the Python side share, read from bpf_programs/enhrec.h.

enhrec.h is their one source: every integer `#define NAME value` in it becomes an attribute of
this module (abi.RECORD_EXEC, abi.STREAM_DISK, ...), read from the installed header when this
module is first imported. Nothing here declares a value a second time; the names the Python side
relies on are listed in REQUIRED, so that a header without one fails at import, not at run time.
"""

import os
import re

_TRACEPOINT_PROBE = re.compile(rb"^\s*TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.MULTILINE)
_RAW_TRACEPOINT_PROBE = re.compile(rb"^\s*RAW_TRACEPOINT_PROBE\(\s*(\w+)\s*\)", re.MULTILINE)
# A program of several tracepoints of one category (recorder.c; compiler.attachments()).
_TRACEPOINTS_PROGRAM = re.compile(rb"^int tracepoints__(\w+)\(", re.MULTILINE)
_DEFINE = re.compile(rb"^#define\s+([A-Z][A-Z0-9_]*)\s+(-?(?:0x[0-9a-fA-F]+|\d+))\b", re.MULTILINE)

# What the Python side reads; enhrec.h must define each of them.
REQUIRED = (
    "RECORD_EXEC", "RECORD_EXEC_FAILED", "RECORD_OPEN", "RECORD_CONNECT", "RECORD_SEND",
    "RECORD_REFUSED", "RECORD_URING",
    "STREAM_COMMAND", "STREAM_DISK", "STREAM_NETWORK", "STREAM_COUNT",
    "ARG_READ_MAX", "ARGV_TOO_MANY", "ARGV_DATA_FULL", "ARGV_UNREADABLE",
    "EXEC_ARGV_TRUNCATED", "EXEC_ARGV_UNREADABLE", "EXEC_SCRIPT", "EXEC_CWD", "EXEC_BINARY_FS",
    "PATH_COMPLETE", "PATH_TRUNCATED", "PATH_OUTSIDE_ROOT", "PATH_NO_PARENT", "PATH_DELETED",
    "PATH_RACED", "PATH_NO_FILE", "PATH_FILE_SHARED", "PATH_CHROOT", "PATH_USER_NS", "PATH_UNIX_ABSTRACT",
    "OPEN_FROM_CALL", "OPEN_FROM_UNIX_CONNECT", "OPEN_FROM_PIDFD_GETFD", "OPEN_FROM_PTRACE",
    "CONNECT_TCP", "CONNECT_NO_SYSCALL", "CONNECT_IPV4_HOOK", "REFUSED_ERRNO", "REFUSED_KILLED",
    "MAX_SESSIONS", "WAKE_SHIFT",
)


def program_dir() -> str:
    """The installed bpf_programs package's directory (importlib.resources: 6 ms to import)."""
    import enhrec_wrap.bpf_programs
    return os.path.dirname(os.path.abspath(enhrec_wrap.bpf_programs.__file__))


def read_header() -> bytes:
    with open(os.path.join(program_dir(), "enhrec.h"), "rb") as f:
        return f.read()


def tracepoints() -> list[tuple[str, str]]:
    """(category, event) of every tracepoint program in recorder.c: what `enhrec doctor` checks
    the kernel has before anything is compiled. (A loaded set lists its own, host.py's meta.)"""
    source = _recorder_source()
    single = [(c.decode(), e.decode()) for c, e in _TRACEPOINT_PROBE.findall(source)]
    several = [(category.decode(), f"{prefix.decode()}_{suffix.decode()}")
               for name in _TRACEPOINTS_PROGRAM.findall(source)
               for category, prefix, *suffixes in [name.split(b"__")] for suffix in suffixes]
    return single + several


def raw_tracepoints() -> list[str]:
    """The names of recorder.c's raw tracepoint programs (a raw tracepoint has no category)."""
    return [name.decode() for name in _RAW_TRACEPOINT_PROBE.findall(_recorder_source())]


def _recorder_source() -> bytes:
    with open(os.path.join(program_dir(), "recorder.c"), "rb") as f:
        return f.read()


def parse_defines(header: bytes) -> dict[str, int]:
    return {name.decode(): int(value, 0) for name, value in _DEFINE.findall(header)}


def _load():
    defines = parse_defines(read_header())
    missing = [name for name in REQUIRED if name not in defines]
    if missing:
        raise ImportError(f"bpf_programs/enhrec.h lacks {', '.join(missing)}: reinstall enhrec-wrap")
    globals().update(defines)


_load()

# The ring buffers a session has, by stream number: each is named <stream>_rings in the programs.
RING_STREAM_NAMES = {STREAM_COMMAND: "command", STREAM_DISK: "disk", STREAM_NETWORK: "network"}  # noqa: F821
