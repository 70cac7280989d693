"""What a config file's bytes were found to say (config.py), kept so that a session's start does
not import PyYAML to learn it again: its import is 9 to 12 ms of CPU and 0.9 MB of every
session (config_yaml.py), for a file that rarely changes.

An entry is keyed by the SHA-256 of the file's bytes and of everything that turns them into
settings: config.py and config_yaml.py (the schema and the loader), PyYAML's __init__.py (it
holds its version) and Python's version. The same bytes read by the same code say the same
thing, so an edit, an upgrade or another file is a new key, parsed once. Only files that parsed
are kept, and only root's: like the config itself, an entry anyone else could have written is
never read (config.py also checks each value as its reader would have made it). Beside the
compiled-program cache, which keeps its own entries: this directory is not one of them.
"""

import os
import stat
import sys

import orjson

CACHE_DIR = "/var/cache/enhrec-wrap/config"
CACHE_FORMAT = "enhrec-config-cache 1"
CACHE_KEEP = 8   # entries kept: the files in use (--config), and the last ones edited


def cache_key(data: bytes) -> str | None:
    """The key of a file with these bytes, or None when the code's files cannot be read (then
    nothing is cached)."""
    import hashlib
    code = _code()
    if code is None:
        return None
    h = hashlib.sha256()
    for part in (CACHE_FORMAT.encode(), sys.version.encode(), data, *code):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def _code() -> list[bytes] | None:
    from importlib.machinery import PathFinder
    here = os.path.dirname(os.path.abspath(__file__))
    yaml_spec = PathFinder.find_spec("yaml")   # where `import yaml` would find it, unimported
    if yaml_spec is None or not yaml_spec.origin:
        return None
    out = []
    for path in (os.path.join(here, "config.py"), os.path.join(here, "config_yaml.py"),
                 yaml_spec.origin):
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except OSError:
            return None
    return out


def read_cache(key: str | None, owner_uid: int):
    """The values stored under key, or None (absent, unreadable, not the owner's alone)."""
    dir_fd = _private_dir_fd(owner_uid, create=False) if key else None
    if dir_fd is None:
        return None
    try:
        fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _owners_alone(fd, owner_uid):
            return None
        with open(fd, "rb", closefd=False) as f:
            entry = orjson.loads(f.read())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        return None
    return entry.get("values")


def write_cache(key: str | None, values: dict, owner_uid: int):
    """Stores values under key (atomically: a reader sees all of the entry or none) and keeps the
    newest CACHE_KEEP entries. Best effort: a session never fails for its cache."""
    dir_fd = _private_dir_fd(owner_uid, create=True) if key else None
    if dir_fd is None:
        return
    tmp = f".{key}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        with open(fd, "wb") as f:
            f.write(orjson.dumps({"format": CACHE_FORMAT, "values": values}))
        os.rename(tmp, f"{key}.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        entries = []
        for name in os.listdir(dir_fd):
            if name.endswith(".json") and not name.startswith("."):
                entries.append((os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns,
                                name))
        for _, name in sorted(entries, reverse=True)[CACHE_KEEP:]:
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
    finally:
        os.close(dir_fd)


def _private_dir_fd(owner_uid: int, create: bool):
    """CACHE_DIR, opened, if it and its parent are the owner's alone (else None)."""
    parent = os.path.dirname(CACHE_DIR)
    if create:
        for path in (parent, CACHE_DIR):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError:
                return None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        parent_fd = os.open(parent, flags)
    except OSError:
        return None
    try:
        if not _owners_alone(parent_fd, owner_uid):
            return None
        fd = os.open(os.path.basename(CACHE_DIR), flags, dir_fd=parent_fd)
    except OSError:
        return None
    finally:
        os.close(parent_fd)
    if not _owners_alone(fd, owner_uid):
        os.close(fd)
        return None
    return fd


def _owners_alone(fd: int, owner_uid: int) -> bool:
    st = os.fstat(fd)
    return st.st_uid == owner_uid and not st.st_mode & 0o077
