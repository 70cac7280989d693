"""The log's values as text for a terminal: escaped so that nothing from the log can drive the
admin's terminal, and the few phrases every view of an event shares (its command line, its
result, its open mode, an address)."""

import errno
import shlex

from enhrec_wrap.events.kinds import COMMAND, DISK, END, IO_URING, NETWORK, REFUSED, START

# The word each kind is shown with (and that --event takes).
KIND_WORDS = {START: "start", END: "end", COMMAND: "exec", DISK: "open", NETWORK: "connect",
              REFUSED: "refused", IO_URING: "io_uring"}

# open(2) flags as Linux numbers them (the log records the flags as given).
O_ACCMODE, O_CREAT, O_TRUNC, O_APPEND, O_DIRECTORY = 0o3, 0o100, 0o1000, 0o2000, 0o200000

# Nothing from the log may drive the admin's terminal or disguise what it shows: a user can put
# ESC in argv, or U+202E (right-to-left override) in a file name so that `gpj.sh` reads `hs.jpg`.
# Every character Python does not call printable (controls, format and bidi controls, separators
# other than the space, surrogates, unassigned code points) is shown as an escape, and so is the
# backslash, so that the text `\x1b` in a name (shown `\\x1b`) never looks like a real ESC
# (shown `\x1b`). The escapes are distinct from the log's own for bytes that are not UTF-8
# (events/teleport.py text(): `\xNN`, always 0x80 or above, and `\\`), which are shown as
# they are: `\xNN` for characters below 0x80 only, `\uNNNN` and `\UNNNNNNNN` above.
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xffff else f"\\U{code:08x}"


def safe(text, escaped: bool = False) -> str:
    """Text from the log as it may be shown; `escaped`: it is a field the log lists in
    escaped_fields, whose backslashes are already the log's escapes."""
    text = str(text)
    if not escaped:
        text = text.replace("\\", "\\\\")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def escaped_names(e: dict) -> frozenset:
    names = e.get("escaped_fields")
    return frozenset(names) if isinstance(names, list) else frozenset()


def shown(e: dict, name: str, default: str = "?") -> str:
    """The event's text field `name`, shown safely."""
    value = e.get(name)
    if value is None:
        return default
    return safe(value, name in escaped_names(e))


def shown_argv(e: dict) -> list[str]:
    argv = e.get("argv") if isinstance(e.get("argv"), list) else []
    names = escaped_names(e)
    return [safe(a, f"argv.{i}" in names) for i, a in enumerate(argv)]


def opened_path_field(e: dict) -> str:
    """Which field names the file an open reached: `path` (schema 2: the kernel's resolved path
    of the file opened, or for a failed open the caller's request), or schema 1's `abs_path`."""
    return "abs_path" if "abs_path" in e and "path_source" not in e else "path"


def opened_path(e: dict) -> str:
    """The file of an open, shown; with the path the caller asked for when that differs."""
    text = shown(e, opened_path_field(e))
    if isinstance(e.get("requested_path"), str):
        text += f" (asked for {shown(e, 'requested_path')})"
    return text


def command_line(e: dict) -> str:
    words = [shown(e, "path")] + shown_argv(e)
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


# session.disk events that are not an open (docs/events.md, `via`), shown by what they did.
_DISK_VERBS = {"unix_connect": "connect unix", "pidfd_getfd": "take fd", "ptrace_attach": "ptrace"}


def disk_action(e: dict) -> tuple[str, str, str]:
    """(verb, mode, path text) of a session.disk event: ("open", "r+creat", the file) for an
    open; a unix connect has no open mode, and a ptrace attach names its task's executable
    and pid (the task, not a file, is what it reached)."""
    via = e.get("via")
    verb = _DISK_VERBS.get(via, "open")
    if via == "unix_connect":
        return verb, "", opened_path(e)
    if via == "ptrace_attach":
        return verb, "", f"{opened_path(e)} (pid {shown(e, 'target_pid')})"
    return verb, open_mode(e.get("flags")), opened_path(e)


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
