"""The compiled-program cache: what BCC compiled (compiler.py), kept so that the programs can be
loaded again without BCC or LLVM (host.py). Root's alone, like the programs it feeds to the
kernel: an entry anyone else could have written is never read."""

import os
import stat

import orjson

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


def _private_dir_fd(create: bool):
    """CACHE_DIR, opened, if it is root's alone (else None: a cache anyone else could write
    would let them choose the programs root loads)."""
    if create:
        try:
            os.mkdir(CACHE_DIR, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        fd = os.open(CACHE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        return None
    return fd


def read_cache(key: str):
    """The entry stored under key, or None (absent, unreadable, not root's, not ours)."""
    dir_fd = _private_dir_fd(create=False)
    if dir_fd is None:
        return None
    try:
        fd = os.open(f"{key}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
            return None
        with open(fd, "rb", closefd=False) as f:
            entry = orjson.loads(f.read())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return entry if isinstance(entry, dict) and entry.get("format") == CACHE_FORMAT else None


def write_cache(key: str, entry):
    """Stores entry (atomically: a reader sees all of it or nothing) and keeps the newest
    CACHE_KEEP entries. Best effort: a session never fails for its cache."""
    if entry is None:
        return
    dir_fd = _private_dir_fd(create=True)
    if dir_fd is None:
        return
    tmp = f".{key}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        with open(fd, "wb") as f:
            f.write(orjson.dumps(entry))
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
