"""The session's lock file, <server dir>/open-sessions/<sid>.lock (layout.py).

It says "this session has not been ended": it is created (and flock-ed by the recorder for as
long as it runs) before anything else, and removed only once session.end is written. A lock file
nobody holds is a session whose recorder died: see recovery.py.
"""

import fcntl
import os
import time

from enhrec_wrap.log import layout
from enhrec_wrap.log.files import FILE_MODE, NotRegularFile, ensure_private_dirs, error, open_regular

# A lock file gets its name microseconds after it is made (OpenLock.create): a hidden one this
# old belongs to a recorder that died in between, a younger one may be about to be named.
UNNAMED_LOCK_GRACE_SECONDS = 30.0


class OpenLock:
    """The session's lock file: exists from the start until the session is properly ended, and
    is flock-ed by whoever is writing the session (its recorder, or a repair)."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def create(cls, log_dir: str, server_id: str, sid: str) -> "OpenLock":
        directory = layout.open_sessions_dir(log_dir, server_id)
        path = layout.lock_path(log_dir, server_id, sid)
        # Locked under a hidden name first: a lock file that can be seen is always held.
        hidden = layout.hidden_lock_path(log_dir, server_id, sid)
        fd = -1
        try:
            ensure_private_dirs(log_dir, directory)
            fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(hidden, path)
        except OSError as err:
            if fd >= 0:
                os.close(fd)   # a hidden leftover is removed by recovery
            raise error(f"cannot create the session lock {path}", err, directory) from None
        return cls(path, fd)

    @classmethod
    def try_take(cls, path: str) -> "OpenLock | None":
        """The lock of a session nobody is writing, or None when it is held or already gone."""
        try:
            fd = open_regular(path, os.O_RDWR)
        except (FileNotFoundError, IsADirectoryError, NotRegularFile):
            return None   # gone, or something else planted under a lock's name: no session
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Whoever held it before us may have ended the session and removed the file meanwhile.
            if os.fstat(fd).st_nlink == 0:
                raise BlockingIOError
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(path, fd)

    def gone(self) -> bool:
        """Whether someone removed our lock file (or put another in its place): a session
        without one would not be found by recovery if its recorder died."""
        return not still_there(self.fd, self.path)

    def release(self, ended: bool) -> None:
        """Ended: the file goes (there is nothing to repair). Else it stays, unheld, for recovery."""
        if self.fd < 0:
            return
        if ended:
            try:
                os.unlink(self.path)   # before unlocking, so no one takes a lock on a dead name
            except FileNotFoundError:
                pass
        os.close(self.fd)
        self.fd = -1


def stale_locks(log_dir: str, server_id: str):
    """(sid, its lock, now ours) for each session whose lock nobody holds: its recorder is gone
    (recovery.py ends it). The caller releases each lock. Hidden lock files of recorders that
    died before naming theirs are removed on the way."""
    directory = layout.open_sessions_dir(log_dir, server_id)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if layout.is_hidden_lock_file(name):
            _drop_unnamed(path)
            continue
        sid = layout.sid_of_lock_file(name)
        if sid:
            lock = OpenLock.try_take(path)
            if lock is not None:   # else live, or just repaired by someone else
                yield sid, lock


def _drop_unnamed(path: str) -> None:
    lock = OpenLock.try_take(path)
    if lock is not None:
        lock.release(ended=time.time() - os.fstat(lock.fd).st_mtime > UNNAMED_LOCK_GRACE_SECONDS)


def is_live(log_dir: str, server_id: str, sid: str) -> bool:
    """Whether a recorder is writing the session now: it holds the session's lock."""
    try:
        fd = open_regular(layout.lock_path(log_dir, server_id, sid), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def still_there(fd: int, path: str) -> bool:
    """Whether the file open at fd is still the one at path."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    ours = os.fstat(fd)
    return ours.st_nlink > 0 and (on_disk.st_dev, on_disk.st_ino) == (ours.st_dev, ours.st_ino)
