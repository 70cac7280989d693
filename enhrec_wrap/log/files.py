"""Root-only files and directories, and the one-line message of a file operation that failed.

Everything the audit log writes goes through these: directories are 0700 and files 0600, owned
by the writer (root), whatever the umask or an earlier owner left, because audit logs reveal what
every user ran. Nothing here follows a symlink planted where a log file belongs.
"""

import errno
import fcntl
import os
import stat

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.host import paths

DIR_MODE = 0o700
FILE_MODE = 0o600

_FIXES = {
    errno.ENOSPC: "free disk space in {dir}",
    errno.EDQUOT: "free disk space in {dir} or raise root's quota",
    errno.EROFS: "remount the file system of {dir} read-write, or set teleport.data_dir to a writable one",
    errno.EACCES: "run as root and check the mode, attributes (lsattr) and mount options of {dir}",
    errno.EPERM: "run as root and check the mode, attributes (lsattr) and mount options of {dir}",
    errno.ENOENT: "make sure {dir} and its parents exist as directories, or set teleport.data_dir elsewhere",
    errno.ENOTDIR: "make sure {dir} and its parents exist as directories, or set teleport.data_dir elsewhere",
    errno.ELOOP: "replace the symlink in {dir} by a regular file; the audit log never follows symlinks",
    errno.EIO: "check the disk holding {dir} (dmesg)",
}
_DEFAULT_FIX = "check that {dir} is a writable local directory"


class NotRegularFile(OSError):
    """A FIFO, directory, device or socket where a file of the log belongs (planted, or a
    leftover): refused, never opened for good, never waited for."""

    def __str__(self):
        return f"{self.filename} is {self.strerror}"


def error(what: str, err: OSError, directory: str) -> EnhrecError:
    """`<what>: <why>: <how to fix it>` for a failed operation on a file in `directory`."""
    return EnhrecError(f"{what}: {reason_and_fix(err, directory)}")


def reason_and_fix(err: OSError, directory: str) -> str:
    """`<why>: <how to fix it>`: what is really wrong with `directory` when errno does not say
    it (a kernel file system answers ENOENT, a file where a directory belongs EEXIST)."""
    if isinstance(err, NotRegularFile):
        return f"{err.filename} is {err.strerror}: move it away; the audit log is regular files only"
    pseudo = paths.pseudo_file_system(directory)
    if pseudo:
        return (f"{paths.nearest_existing(directory)} is on a {pseudo} file system, which cannot "
                "hold the audit log: set teleport.data_dir to a directory on a disk")
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        blocker = paths.not_a_directory(directory)
        if blocker:
            return (f"{blocker[0]} is {blocker[1]}, not a directory: move it away, or set "
                    "teleport.data_dir elsewhere")
    return f"{_reason(err)}: {_fix(err, directory)}"


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _fix(err: OSError, directory: str) -> str:
    return _FIXES.get(err.errno, _DEFAULT_FIX).format(dir=directory)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def open_regular(path: str, flags: int, mode: int = FILE_MODE) -> int:
    """An fd of `path` opened with `flags`, which must be a regular file: anything else raises
    NotRegularFile. O_NONBLOCK for the open only: opening a FIFO for reading waits for a writer,
    and for writing waits for a reader, forever (a session's start hung on a FIFO planted as
    the day file or host_uuid). O_NOFOLLOW: a planted symlink never redirects root's writes or
    reads. O_NOCTTY: a terminal device never becomes the recorder's."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ENXIO:   # a FIFO opened for writing with no reader
            raise _not_regular(path, os.lstat(path).st_mode) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_regular(path, st.st_mode)
    if not flags & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _not_regular(path: str, mode: int) -> NotRegularFile:
    return NotRegularFile(errno.EINVAL, f"{kind_of(mode)}, not a regular file", path)


def kind_of(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "a special file"


def open_private_file(path: str) -> int:
    """An fd appending to `path`, a regular file, created 0600 when missing."""
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        make_private(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_private_dir(path: str, tighten_existing: bool = True) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not tighten_existing:
            return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        make_private(fd, DIR_MODE)
    finally:
        os.close(fd)


def ensure_private_dirs(top: str, bottom: str) -> None:
    """ensure_private_dir() of `top` and of each directory below it down to `bottom`."""
    ensure_private_dir(top)
    path = top
    for name in os.path.relpath(bottom, top).split(os.sep):
        if name != os.curdir:
            path = os.path.join(path, name)
            ensure_private_dir(path)


def make_private(fd: int, mode: int) -> None:
    """Give fd's file exactly `mode` and our owner, whatever the umask or a previous owner did."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
    owner = (os.geteuid(), os.getegid())
    if (st.st_uid, st.st_gid) != owner:
        os.fchown(fd, *owner)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unique_name(directory: str, base: str) -> str:
    """A hidden name in `directory` for a file that is renamed or linked into place once whole."""
    # Unique across processes and retries, so concurrent wrappers never collide.
    return os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(8).hex()}.tmp")
