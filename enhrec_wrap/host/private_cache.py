"""A directory of JSON entries only root can have written, for what a start would rather not
work out again: the compiled programs (kernel/program_cache.py) and what a config file says
(config/cache.py). An entry anyone else could have written is never read: the directory, the one
it is in when that is a cache too, and each entry must be the owner's alone, since whoever
could write them would choose the programs root loads or the settings it runs with. Writes are
atomic (a reader sees all of an entry or none of it) and best effort (a session never fails for
a cache); the newest `keep` entries stay."""

import os
import stat

import orjson

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PrivateCache:
    """`directory`'s entries, `<key>.json`; `within` is the private cache directory that holds
    `directory`, if any (checked and made first)."""

    def __init__(self, directory: str, keep: int, owner_uid: int = 0, within: str | None = None):
        self.directory = directory
        self.keep = keep
        self.owner_uid = owner_uid
        self.within = within

    def read(self, key: str):
        """The entry stored under key, or None (absent, unreadable, not the owner's alone)."""
        dir_fd = self._dir_fd(create=False)
        if dir_fd is None:
            return None
        try:
            fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not self._owners_alone(fd):
                return None
            with open(fd, "rb", closefd=False) as f:
                return orjson.loads(f.read())
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def write(self, key: str, entry) -> None:
        """Stores entry under key and keeps the newest `keep` entries."""
        dir_fd = self._dir_fd(create=True)
        if dir_fd is None:
            return
        tmp = f".{key}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
            with open(fd, "wb") as f:
                f.write(orjson.dumps(entry))
            os.rename(tmp, f"{key}.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            self._keep_newest(dir_fd)
        except OSError:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
        finally:
            os.close(dir_fd)

    def _keep_newest(self, dir_fd: int):
        entries = []
        for name in os.listdir(dir_fd):
            if name.endswith(".json") and not name.startswith("."):
                entries.append((os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns,
                                name))
        for _, name in sorted(entries, reverse=True)[self.keep:]:
            os.unlink(name, dir_fd=dir_fd)

    def _dir_fd(self, create: bool) -> int | None:
        """The directory, opened, if it (and `within`) is the owner's alone; else None."""
        if create:
            for path in (self.within, self.directory):
                try:
                    if path:
                        os.mkdir(path, 0o700)
                except FileExistsError:
                    pass
                except OSError:
                    return None
        try:
            fd = os.open(self.within or self.directory, _DIR_FLAGS)
        except OSError:
            return None
        if self.within and self._owners_alone(fd):
            outer = fd
            try:   # opened in the checked one: no path swapped in between
                fd = os.open(os.path.relpath(self.directory, self.within), _DIR_FLAGS,
                             dir_fd=outer)
            except OSError:
                return None
            finally:
                os.close(outer)
        if not self._owners_alone(fd):
            os.close(fd)
            return None
        return fd

    def _owners_alone(self, fd: int) -> bool:
        st = os.fstat(fd)
        return st.st_uid == self.owner_uid and not stat.S_IMODE(st.st_mode) & 0o077
