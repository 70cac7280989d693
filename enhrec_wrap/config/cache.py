"""What a config file's bytes were found to say (config/__init__.py), kept so that a session's start does
not import PyYAML to learn it again: its import is 9 to 12 ms of CPU and 0.9 MB of every
session (yaml_loader.py), for a file that rarely changes.

An entry is keyed by the SHA-256 of the file's bytes and of everything that turns them into
settings: __init__.py and yaml_loader.py (the schema and the loader), PyYAML's __init__.py (it
holds its version) and Python's version. The same bytes read by the same code say the same
thing, so an edit, an upgrade or another file is a new key, parsed once. Only files that parsed
are kept, and only root's: like the config itself, an entry anyone else could have written is
never read (config.py also checks each value as its reader would have made it). Beside the
compiled-program cache, which keeps its own entries: this directory is not one of them.
"""

import os
import sys

from enhrec_wrap.host.private_cache import PrivateCache

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
    for path in (os.path.join(here, "__init__.py"), os.path.join(here, "yaml_loader.py"),
                 yaml_spec.origin):
        try:
            with open(path, "rb") as f:
                out.append(f.read())
        except OSError:
            return None
    return out


def _cache(owner_uid: int) -> PrivateCache:
    # Made at each use: tests point CACHE_DIR elsewhere.
    return PrivateCache(CACHE_DIR, CACHE_KEEP, owner_uid, within=os.path.dirname(CACHE_DIR))


def read_cache(key: str | None, owner_uid: int):
    """The values stored under key, or None (absent, unreadable, not the owner's alone)."""
    entry = _cache(owner_uid).read(key) if key else None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        return None
    return entry.get("values")


def write_cache(key: str | None, values: dict, owner_uid: int):
    """Stores values under key (best effort: a session never fails for its cache)."""
    if key:
        _cache(owner_uid).write(key, {"format": CACHE_FORMAT, "values": values})
