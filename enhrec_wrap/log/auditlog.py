"""The on-disk audit log, laid out like Teleport's file backend.

    <data_dir>/host_uuid                                  the server id
    <data_dir>/log/<server_id>/YYYY-MM-DD.00:00:00.log    every event of every session that UTC day
    <data_dir>/log/events.log -> <server_id>/YYYY-MM-DD.00:00:00.log

Several wrappers (one per login session) append to the same day file at once, so each batch of
lines goes out as one append under an exclusive flock. Directories are 0700 and files 0600, owned
by the writer (root): audit logs reveal what every user ran.
"""

import errno
import fcntl
import functools
import os
import re
import secrets
import stat
import time
import uuid

from enhrec_wrap.errors import EnhrecError

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_HOST_UUID = "host_uuid"
_SYMLINK = "events.log"
# More than any UUID; a bigger host_uuid is corrupt anyway and need not be read whole.
_MAX_ID_BYTES = 4096
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

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


def load_or_create_server_id(data_dir: str) -> str:
    """Return the host's UUID from <data_dir>/host_uuid, creating it on first use.

    The file is Teleport's, so a host that also runs Teleport keeps one server id for both.
    """
    path = os.path.join(data_dir, _HOST_UUID)
    try:
        # An existing data_dir may be Teleport's: its mode is Teleport's business.
        _ensure_private_dir(data_dir, tighten_existing=False)
        text = _read_id(path)
        if text is None:
            _publish_new_id(data_dir, path)
            # Read back rather than trust our own id: a concurrent first session may have won.
            text = _read_id(path) or ""
    except OSError as err:
        raise EnhrecError(
            f"cannot read or create the server id {path}: {_reason(err)}: {_fix(err, data_dir)}"
        ) from None
    if not _UUID_RE.fullmatch(text):
        raise EnhrecError(
            f"corrupt server id in {path} (expected a UUID, found {text[:40]!r}): restore the file "
            f"from a backup, or delete it to create a new id (the log directory is named after it)"
        )
    return text


def _read_id(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, _MAX_ID_BYTES)
    finally:
        os.close(fd)
    # Teleport writes the bare UUID; tolerate a trailing newline added by hand.
    return data.decode("utf-8", "replace").strip()


def _publish_new_id(data_dir: str, path: str) -> None:
    """Make host_uuid appear complete or not at all, and only once among racing sessions."""
    tmp = _unique_name(data_dir, _HOST_UUID)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            _make_private(fd, _FILE_MODE)
            _write_all(fd, str(uuid.uuid4()).encode())
            # The id names the log directory: a crash must not leave an empty host_uuid behind.
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # Unlike rename, link refuses to replace: the first session to get here wins.
            os.link(tmp, path)
        except FileExistsError:
            return
        _fsync_dir(data_dir)
    finally:
        os.unlink(tmp)


class AuditLog:
    """Appends JSON lines to the current UTC day's file and keeps events.log pointing at it.

    One instance per thread: the flock belongs to the open file, which threads would share.
    """

    def __init__(self, log_dir: str, server_id: str, clock=time.time):
        if server_id in ("", ".", "..") or "/" in server_id:
            raise ValueError(f"server id {server_id!r} cannot name a directory")
        self._log_dir = log_dir
        self._server_id = server_id
        self._clock = clock
        self._fd = -1
        self._path = ""
        # Open now, so an unwritable log stops the session before it starts rather than mid-way.
        self._open(self._current_path())

    def write(self, lines: list[bytes], announce=None) -> None:
        """Append whole lines (each ending in b"\\n") as one batch no other writer can split.

        announce(path, st_dev, st_ino, offset, data), when given, is told where the batch goes,
        under the lock and before the write: the ledger of a recorder that may die mid-write."""
        if not lines:
            return
        path = self._current_path()
        if path != self._path or not self._still_open_at(path):
            self._open(path)
        try:
            _locked_append(self._fd, b"".join(lines),
                           announce and functools.partial(announce, self._path, *self._dev_ino))
        except OSError as err:
            raise self._error(self._path, err) from None

    def close(self) -> None:
        """Close the day file; a later write() opens the current one again."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._path = ""

    def _current_path(self) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(self._clock()))
        return os.path.join(self._log_dir, self._server_id, f"{day}.00:00:00.log")

    def _still_open_at(self, path: str) -> bool:
        """Whether our fd is still the file at path.

        If someone removed the file or its directory, appending to our fd would lose every
        later event silently; reopening recreates it so recording goes on where readers look.
        """
        if self._fd < 0:
            return False
        try:
            on_disk = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        ours = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) == (ours.st_dev, ours.st_ino)

    def _open(self, path: str) -> None:
        try:
            _ensure_private_dir(self._log_dir)
            _ensure_private_dir(os.path.dirname(path))
            fd = _open_private_file(path)
        except OSError as err:
            raise self._error(path, err) from None
        try:
            self._point_symlink(path)
        except BaseException:
            os.close(fd)
            raise
        # Switch only once everything succeeded, so a failed switch is retried by the next write.
        self.close()
        st = os.fstat(fd)
        self._fd, self._path, self._dev_ino = fd, path, (st.st_dev, st.st_ino)

    def _point_symlink(self, path: str) -> None:
        link = os.path.join(self._log_dir, _SYMLINK)
        target = os.path.relpath(path, self._log_dir)
        try:
            if os.readlink(link) == target:
                return
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise self._error(link, err) from None
            # Replacing a regular file here could destroy someone's events: leave it to a human.
            raise EnhrecError(
                f"cannot write the audit log {link}: not a symlink: move it away, "
                f"it must link to the current day's file"
            ) from None
        try:
            _replace_symlink(target, link)
        except OSError as err:
            raise self._error(link, err) from None

    def _error(self, path: str, err: OSError) -> EnhrecError:
        return EnhrecError(f"cannot write the audit log {path}: {_reason(err)}: {_fix(err, self._log_dir)}")


def _locked_append(fd: int, data: bytes, announce=None) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # Under the lock the end of the file is ours alone, so this is where our batch starts.
        start = os.lseek(fd, 0, os.SEEK_END)
        if announce is not None:
            announce(start, data)
        try:
            _write_all(fd, data)
        except OSError:
            # Drop a half-written batch: a partial line would glue onto the next writer's line
            # and make both unparseable.
            _truncate_quietly(fd, start)
            raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _truncate_quietly(fd: int, size: int) -> None:
    # Best effort while already failing: the caller reports the write error, which is the cause.
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def _replace_symlink(target: str, link: str) -> None:
    # A symlink cannot be overwritten in place; building it aside and renaming over the old one
    # means readers always find events.log, and racing wrappers never fail on an existing name.
    tmp = _unique_name(os.path.dirname(link), _SYMLINK)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise


def _open_private_file(path: str) -> int:
    # O_NOFOLLOW: a symlink planted as today's file must not redirect root's appends elsewhere.
    fd = os.open(
        path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, _FILE_MODE
    )
    try:
        _make_private(fd, _FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ensure_private_dir(path: str, tighten_existing: bool = True) -> None:
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        if not tighten_existing:
            return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _make_private(fd, _DIR_MODE)
    finally:
        os.close(fd)


def _make_private(fd: int, mode: int) -> None:
    """Give fd's file exactly `mode` and our owner, whatever the umask or a previous owner did."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
    owner = (os.geteuid(), os.getegid())
    if (st.st_uid, st.st_gid) != owner:
        os.fchown(fd, *owner)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique_name(directory: str, base: str) -> str:
    # Hidden, and unique across processes and retries, so concurrent wrappers never collide.
    return os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _fix(err: OSError, directory: str) -> str:
    return _FIXES.get(err.errno, _DEFAULT_FIX).format(dir=directory)
