"""The compiled-program cache: what BCC compiled (compiler.py), kept so that the programs can be
loaded again without BCC or LLVM (host.py). Root's alone, like the programs it feeds to the
kernel: an entry anyone else could have written is never read (host/private_cache.py)."""

import os

from enhrec_wrap.host.private_cache import PrivateCache

CACHE_DIR = "/var/cache/enhrec-wrap"
CACHE_FORMAT = "enhrec-bpf-cache 4"
BTF_PATH = "/sys/kernel/btf/vmlinux"
CACHE_KEEP = 8   # entries kept (one per ring-size configuration, kernel, version ...)


def cache_key(source: bytes, header: bytes, defines) -> str:
    """Everything the compiled programs depend on: the code, the defines, the kernel build (BCC
    compiles the tracepoints' argument layouts in, and the kernel's struct offsets come from its
    BTF: the build fixes both) and BCC itself. The key is also the version of a pinned set
    (host.py): a session never uses programs built from other code or for another kernel.

    Not the tracepoints' format files themselves: reading them takes the kernel's event_mutex,
    which a kernel busy unregistering tracepoints holds for a while."""
    # Python's own SHA-256: hashlib's maps in OpenSSL's libcrypto (0.4 MB of every recorder).
    from _sha256 import sha256
    h = sha256()
    uname = os.uname()
    for part in (CACHE_FORMAT.encode(), uname.release.encode(), uname.version.encode(),
                 uname.machine.encode(), _btf_identity(), source, header,
                 "\0".join(defines).encode(), _bcc_version()):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def _btf_identity() -> bytes:
    """The running kernel's BTF, by size (reading its 6 MB would cost every start; its time is
    the boot's, which would change the key at every boot): with the build in the key too."""
    try:
        return str(os.stat(BTF_PATH).st_size).encode()
    except OSError:
        return b"no btf"


def _bcc_version() -> bytes:
    import importlib.util
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return b"no bcc"
    try:
        with open(os.path.join(spec.submodule_search_locations[0], "version.py"), "rb") as f:
            return f.read()
    except OSError:
        return b"unknown bcc"


def _cache() -> PrivateCache:
    # Made at each use: tests point CACHE_DIR elsewhere.
    return PrivateCache(CACHE_DIR, CACHE_KEEP)


def read_cache(key: str):
    """The entry stored under key, or None (absent, unreadable, not root's, not ours)."""
    entry = _cache().read(key)
    return entry if isinstance(entry, dict) and entry.get("format") == CACHE_FORMAT else None


def write_cache(key: str, entry):
    """Stores entry (best effort: a session never fails for its cache)."""
    if entry is not None:
        _cache().write(key, entry)
