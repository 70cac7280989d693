"""The log's values as text for a terminal: escaped so that nothing from the log can drive the
admin's terminal, and the few phrases every view of an event shares (its command line, its
result, its open mode, an address)."""

import errno
import shlex

from enhrec_wrap.events.kinds import COMMAND, DISK, END, NETWORK, START

# The word each kind is shown with (and that --event takes).
KIND_WORDS = {START: "start", END: "end", COMMAND: "exec", DISK: "open", NETWORK: "connect"}

# open(2) flags as Linux numbers them (the log records the flags as given).
O_ACCMODE, O_CREAT, O_TRUNC, O_APPEND, O_DIRECTORY = 0o3, 0o100, 0o1000, 0o2000, 0o200000

# Terminal control characters from the log (a user can put ESC in argv) must never reach the
# admin's terminal as they are.
_CONTROL = {c: f"\\x{c:02x}" for c in list(range(0x20)) + list(range(0x7f, 0xa0))}
_CONTROL.update({0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r"})


def safe(text) -> str:
    return str(text).translate(_CONTROL)


def command_line(e: dict) -> str:
    argv = e.get("argv") if isinstance(e.get("argv"), list) else []
    words = [safe(e.get("path", "?"))] + [safe(a) for a in argv]
    line = shlex.join(words)
    if e.get("argv_truncated"):
        line += " ..."
    return line


def result_text(rc) -> str:
    if rc is None:
        return "result unknown"
    if isinstance(rc, int) and rc < 0:
        return errno.errorcode.get(-rc, f"error {-rc}")
    return ""


def open_mode(flags) -> str:
    if not isinstance(flags, int):
        return "?"
    mode = {0: "r", 1: "w", 2: "rw"}.get(flags & O_ACCMODE, "?")
    extra = [name for bit, name in ((O_CREAT, "creat"), (O_TRUNC, "trunc"), (O_APPEND, "append"),
                                    (O_DIRECTORY, "dir")) if flags & bit]
    return "+".join([mode] + extra)


def endpoint(addr, port) -> str:
    addr = safe(addr)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def host_of(address: str) -> str:
    """10.1.2.3:5555 -> 10.1.2.3, [2001:db8::1]:22 -> 2001:db8::1"""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]")


def human_time(stamp) -> str:
    """2026-11-28T05:49:07.883Z -> 2026-11-28 05:49:07.883"""
    return safe(stamp).replace("T", " ").rstrip("Z") if stamp else "?"


def duration_text(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
