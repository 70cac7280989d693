"""What a path really is when a file cannot be made there: which file system it is on (from
/proc/self/mountinfo), and which part of it is not a directory. For messages that give the real
reason instead of errno's words ("No such file or directory" from /proc, "File exists" for a
regular file where a directory belongs)."""

import os
import stat

# Kernel file systems that hold no files of anyone's making.
PSEUDO_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs", "securityfs", "bpf",
    "configfs", "pstore", "efivarfs", "fusectl", "mqueue", "binfmt_misc", "selinuxfs", "autofs",
    "nsfs", "rpc_pipefs", "hugetlbfs",
})
MOUNTINFO = "/proc/self/mountinfo"


def mount_of(path: str, mountinfo: str = MOUNTINFO) -> tuple[str, str] | None:
    """(mount point, file system type) of the mount holding `path` (resolved), or None when the
    mount table cannot be read."""
    real = os.path.realpath(path)
    best = None
    try:
        with open(mountinfo) as mounts:
            for line in mounts:
                left, _, right = line.partition(" - ")
                point = _unescape(left.split()[4])
                if _is_within(real, point) and (best is None or len(point) >= len(best[0])):
                    best = (point, right.split()[0])
    except (OSError, IndexError):
        return None
    return best


def pseudo_file_system(path: str) -> str | None:
    """The type of the kernel file system `path` (or its nearest existing parent) is on, when it
    is one; else None."""
    found = mount_of(nearest_existing(path))
    return found[1] if found and found[1] in PSEUDO_FILE_SYSTEMS else None


def nearest_existing(path: str) -> str:
    while not os.path.lexists(path) and path not in ("", "/"):
        path = os.path.dirname(path)
    return path or "/"


def not_a_directory(path: str) -> tuple[str, str] | None:
    """(the first of `path` and its parents that exists but is not a directory, what it is), or
    None."""
    parts = []
    current = os.path.abspath(path)
    while current != "/":
        parts.append(current)
        current = os.path.dirname(current)
    for candidate in reversed(parts):
        try:
            st = os.stat(candidate)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return candidate, kind_of(st.st_mode)
    return None


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _is_within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as \\ooo."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
