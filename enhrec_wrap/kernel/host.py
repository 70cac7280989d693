"""The host's one set of recorder programs, shared by every session.

The first session on a boot (or after an upgrade) loads the programs - from the compiled-program
cache, or compiled with BCC when it has no entry for them - attaches each one through a bpf link,
and pins the links and the maps in bpffs under PIN_ROOT/<version>. The version is the programs'
cache key (program_cache.cache_key: their sources, defines, the kernel build and BCC), so a
session only ever finds programs built from its own code for this kernel. Later sessions open
the pins: no compile, no verifier, no attach.

Because the links are pinned, no session owns an attachment: a recorder that dies (SIGKILL, OOM)
releases nothing slow in the kernel (each perf-event release waits for an RCU grace period, up to
a second for the 13 of them), and its watchdog sees it gone at once.

A session is known to the programs by its cgroup id: it creates its own ring buffers and puts them
in the command_rings, disk_rings and network_rings maps under that id (rings.py). Each program
then costs a task outside every session one hash lookup, the same with 1 or 100 sessions.

What is pinned, and which sessions are registered, changes only under HostLock (an flock of
PIN_ROOT): two first sessions that start together end up with one set, and a session never
registers with a set that is being unloaded. When the last session ends, the set's idle timer
(idle.py) unloads it once no session has used it for `idle_unload_seconds`: an idle host pays
nothing. pinning.py makes a set from its cache entry.
"""

import ctypes as ct
import fcntl
import os
import struct
import time

import orjson

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel import abi, pinning, program_cache
from enhrec_wrap.kernel.pinning import GENERATION_MAP, META_BYTES, META_MAP
from enhrec_wrap.kernel.syscalls import (TRACEFS, map_delete, map_delete_batch, map_keys,
                                         map_lookup, map_update, obj_get)

BPFFS = "/sys/fs/bpf"
PIN_ROOT = os.path.join(BPFFS, "enhrec-wrap")
# The maps a session uses; the rest are the programs' own.
SESSION_MAPS = ("session_rings", "lost_events")
RING_KEY = struct.Struct("=QII")   # struct ring_key in enhrec.h
# bpffs refuses names with a dot: pins are named map-<name> and link-<category>-<event>, and a
# set being built has this prefix until it is complete.
BUILDING = "building-"
DOCTOR_HINT = "run `enhrec doctor` for a full check"


def possible_cpus() -> int:
    """The number of possible CPUs (not online ones): BPF per-CPU slots are indexed by them."""
    with open("/sys/devices/system/cpu/possible") as f:
        last = f.read().strip().split(",")[-1].split("-")[-1]
    return int(last) + 1


def defines(cpus: int) -> list[str]:
    """What recorder.c is compiled with (its header comment lists them)."""
    return [f"-DPOSSIBLE_CPUS={cpus}"]


def program_version() -> str:
    """The version of the programs this code loads: their cache key. Every source file of
    bpf_programs/ is in it (recorder.c and the headers it includes alike), by name."""
    program_dir = abi.program_dir()
    source = bytearray()
    for name in sorted(os.listdir(program_dir)):
        if name.endswith((".c", ".h")) and name != "enhrec.h":
            with open(os.path.join(program_dir, name), "rb") as f:
                text = f.read()
            source += b"%d %s %d\n" % (len(name), name.encode(), len(text)) + text
    return program_cache.cache_key(bytes(source), abi.read_header(), defines(possible_cpus()))


# -- bpffs and the lock ------------------------------------------------------------------------

def ensure_bpffs():
    """bpffs at /sys/fs/bpf, where the links and maps are pinned (a host without systemd does not
    mount it). Mounted once and never unmounted: others may pin there too."""
    if _is_mount_of(BPFFS, "bpf"):
        return
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ct.get_errno()
        raise EnhrecError(f"cannot mount bpffs on {BPFFS}: {os.strerror(err)}: mount it with "
                          f"`mount -t bpf bpf {BPFFS}` ({DOCTOR_HINT})")


def ensure_tracefs():
    """Tracepoints are attached through tracefs; a host without systemd may not mount it."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ct.get_errno()
        raise EnhrecError(f"cannot mount tracefs on {TRACEFS}: {os.strerror(err)}: "
                          f"mount it with `mount -t tracefs tracefs {TRACEFS}`")


def _is_mount_of(path: str, fstype: str) -> bool:
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            left, _, right = line.partition(" - ")
            if left.split()[4] == path and right.split()[0] == fstype:
                return True
    return False


class HostLock:
    """A hold of PIN_ROOT while the pinned set or its sessions change: exclusive to load or
    unload a set (or to decide to), shared to register or take out a session with a set that
    stays (HostPrograms.hold_for_session)."""

    def __init__(self, shared: bool = False):
        self.mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX

    def __enter__(self):
        ensure_bpffs()
        try:
            os.makedirs(PIN_ROOT, mode=0o700, exist_ok=True)
            self.fd = os.open(PIN_ROOT, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self.fd, self.mode)
        except OSError as e:
            raise EnhrecError(f"cannot lock {PIN_ROOT}: {e.strerror}: {DOCTOR_HINT}") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


# -- the set -----------------------------------------------------------------------------------

class HostPrograms:
    """One pinned set of programs, opened: the fds of the maps sessions use, of its links, and
    the record layouts. Only ever made under a HostLock.

    The links' fds keep the programs attached for as long as this is open, whatever happens to
    the pins (a careless `rm -rf` of bpffs, or a bug): a session's recording never depends on
    them. Releasing a link's last reference is slow in the kernel (an RCU grace period), but
    with the pins in place a session's are never the last."""

    def __init__(self, version: str, maps: dict[str, int], meta: dict, links=()):
        self.version = version
        self.maps = maps
        self.links = list(links)
        self.fields = meta["fields"]
        self.cpus = meta["cpus"]

    @property
    def pin_dir(self) -> str:
        return os.path.join(PIN_ROOT, self.version)

    @classmethod
    def open_or_load(cls, cgroup_root: str) -> "HostPrograms":
        """The set of this code's version: opened if pinned, else loaded and pinned, its cgroup
        hooks attached to the root of the cgroup2 tree mounted at cgroup_root. Sets of other
        versions that no session uses any more are unloaded on the way. The caller holds the
        HostLock."""
        version = program_version()
        host = cls.open(version)
        if host is None:
            if os.path.isdir(os.path.join(PIN_ROOT, version)):
                unload(version)   # ours and cannot be opened: a load that died half way
            remove_leftovers()
            host = cls._load(version, cgroup_root)
        for other in pinned_versions():
            if other != version:
                unload_if_unused(other)
        # Counted as used now, not only once its rings are registered: the idle clock starts
        # again (idle.py), and a timer of an earlier release, which waits on the generation
        # (idle.py unload_if_idle), finds it moved.
        host.next_generation()
        return host

    @classmethod
    def hold_for_session(cls, cgroup_root: str) -> tuple[HostLock, "HostPrograms"]:
        """The set of this code's version, and a HostLock that keeps it loaded until the
        caller has registered (and lets it go). Shared when the set is pinned and no set of
        another version is to be unloaded: sessions then register side by side, each
        registration's RCU grace period (12 ms here) beside the others' - 100 first sessions
        at once held the exclusive lock 4.0 s in all, in 10.4 s. Exclusive when the set is to
        be loaded, or another version's, unused, unloaded (open_or_load)."""
        version = program_version()
        lock = HostLock(shared=True).__enter__()
        try:
            if not _unused_others(version):
                host = cls.open(version)
                if host is not None:
                    host.next_generation()
                    return lock, host
        except BaseException:
            lock.__exit__()
            raise
        lock.__exit__()
        lock = HostLock().__enter__()
        try:
            return lock, cls.open_or_load(cgroup_root)
        except BaseException:
            lock.__exit__()
            raise

    @classmethod
    def open(cls, version: str) -> "HostPrograms | None":
        """The set of `version` as this code knows sets, or None (none pinned, or one this code
        cannot read: another version's, which only ever goes through PinnedSessions)."""
        directory = os.path.join(PIN_ROOT, version)
        if not os.path.isdir(directory):
            return None
        maps, links = {}, []
        try:
            for name in SESSION_MAPS + (GENERATION_MAP, META_MAP):
                maps[name] = obj_get(os.path.join(directory, f"map-{name}"))
            meta = read_meta(maps.pop(META_MAP))
            for name in os.listdir(directory):
                if name.startswith("link-"):
                    links.append(obj_get(os.path.join(directory, name)))
            if len(links) != meta.get("links"):
                raise ValueError("links missing")
        except (OSError, ValueError):
            for fd in [*maps.values(), *links]:
                os.close(fd)
            return None
        return cls(version, maps, meta, links)

    @classmethod
    def _load(cls, version: str, cgroup_root: str) -> "HostPrograms":
        ensure_tracefs()
        entry = program_cache.read_cache(version)
        if entry is None:
            from enhrec_wrap.kernel.compiler import compile_entry   # BCC: only on a cache miss
            entry = compile_entry(abi.program_dir(), defines(possible_cpus()))
            program_cache.write_cache(version, entry)
        build = os.path.join(PIN_ROOT, f"{BUILDING}{version}-{os.getpid()}")
        try:
            pinning.pin_entry(entry, build, cgroup_root, possible_cpus())
            os.rename(build, os.path.join(PIN_ROOT, version))
        except OSError as e:
            _remove_pins(build)
            raise EnhrecError(f"cannot load the BPF programs: {e.strerror}: {DOCTOR_HINT}") from None
        host = cls.open(version)
        if host is None:
            raise EnhrecError(f"the BPF programs pinned in {PIN_ROOT}/{version} cannot be "
                              f"opened: {DOCTOR_HINT}")
        return host

    def next_generation(self) -> int:
        """Counts a session opening the set or registering, and marks the set used now (the
        idle timer's clock, idle.py); returns the new count. Under a shared HostLock two
        sessions may count as one: what reads it (idle.unload_if_idle) only asks whether it
        moved."""
        fd = self.maps[GENERATION_MAP]
        count = struct.unpack("=Q", map_lookup(fd, b"\0\0\0\0", 8))[0] + 1
        map_update(fd, b"\0\0\0\0", struct.pack("=Q", count))
        self.mark_used()
        return count

    def mark_used(self):
        """The set's pin directory's mtime is when a session last opened, registered with or
        left it: how long the set has been idle is read from there (idle.py)."""
        try:
            os.utime(self.pin_dir)
        except FileNotFoundError:
            pass   # its pins removed under it (rm -rf): its links keep it attached all the same

    def idle_seconds(self) -> float:
        return time.time() - os.stat(self.pin_dir).st_mtime

    def generation(self) -> int:
        return struct.unpack("=Q", map_lookup(self.maps[GENERATION_MAP], b"\0\0\0\0", 8))[0]

    def sessions(self) -> list[int]:
        """The cgroup ids of the sessions registered now."""
        keys = map_keys(self.maps["session_rings"], RING_KEY.size)
        return sorted({RING_KEY.unpack(k)[0] for k in keys})

    def places_taken(self) -> int:
        """How many of the set's MAX_SESSIONS places are taken: a session takes one in each
        map (its lost counters, its rings), and the fuller map refuses the next."""
        lost = len(map_keys(self.maps["lost_events"], 8))
        rings = -(-len(map_keys(self.maps["session_rings"], RING_KEY.size)) // abi.STREAM_COUNT)
        return max(lost, rings)

    def close(self):
        for fd in [*self.maps.values(), *self.links]:
            os.close(fd)
        self.maps, self.links = {}, []


def read_meta(fd: int) -> dict:
    try:
        raw = map_lookup(fd, b"\0\0\0\0", META_BYTES)
    finally:
        os.close(fd)
    meta = orjson.loads(raw.rstrip(b"\0"))
    if not isinstance(meta, dict) or meta.get("format") != program_cache.CACHE_FORMAT:
        raise ValueError("not a set of ours")
    return meta


def _unused_others(version: str) -> bool:
    """A set of another version is pinned that no session uses (open_or_load unloads it)."""
    return any(other != version and sessions_of(other) == [] for other in pinned_versions())


def pinned_versions() -> list[str]:
    try:
        names = os.listdir(PIN_ROOT)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(BUILDING))


class PinnedSessions:
    """The sessions registered with a pinned set of any version, through the one map every
    version pins alike (map-session_rings, keyed by RING_KEY): what code of one version may
    know of another's set. Nothing else of another version's set is ever read."""

    def __init__(self, version: str):
        self.fd = obj_get(os.path.join(PIN_ROOT, version, "map-session_rings"))

    def cgroup_ids(self) -> list[int]:
        return sorted({RING_KEY.unpack(k)[0] for k in map_keys(self.fd, RING_KEY.size)})

    def close(self):
        os.close(self.fd)


def drop_sessions(version: str, cgroup_ids: list[int]):
    """Takes dead sessions out of a pinned set of any version (their rings and lost counters),
    in one batch per map: each delete from session_rings waits for an RCU grace period (8 ms
    here), so that one key at a time, 4,096 dead sessions held a start, and the HostLock, for
    120 s. The caller holds the HostLock."""
    if not cgroup_ids:
        return
    directory = os.path.join(PIN_ROOT, version)
    for name, key_size, keys in (
            ("session_rings", RING_KEY.size, [RING_KEY.pack(cgroup_id, s, 0)
                                              for cgroup_id in cgroup_ids
                                              for s in abi.RING_STREAM_NAMES]),
            ("lost_events", 8, [struct.pack("=Q", cgroup_id) for cgroup_id in cgroup_ids])):
        try:
            fd = obj_get(os.path.join(directory, f"map-{name}"))
        except OSError:
            continue
        try:
            # A batch stops at the first key that is not there (a session that registered
            # some of its rings only): only those that are.
            present = set(map_keys(fd, key_size))
            _delete_all(fd, [key for key in keys if key in present])
        except OSError:
            pass   # left for the next start's recovery
        finally:
            os.close(fd)


def _delete_all(fd: int, keys: list[bytes]):
    if not keys:
        return
    try:
        map_delete_batch(fd, keys)
    except OSError:
        for key in keys:
            try:
                map_delete(fd, key)
            except OSError:
                pass


def sessions_of(version: str) -> list[int] | None:
    """The cgroup ids registered with a pinned set, or None when it cannot be told."""
    try:
        pinned = PinnedSessions(version)
    except OSError:
        return None
    try:
        return pinned.cgroup_ids()
    except OSError:
        return None
    finally:
        pinned.close()


def unload_if_unused(version: str) -> bool:
    """Unloads a pinned set that no session uses, of any version; one whose sessions cannot be
    told is left alone. The caller holds the HostLock."""
    if not os.path.isdir(os.path.join(PIN_ROOT, version)):
        return True
    if sessions_of(version) != []:
        return False
    unload(version)
    return True


def unload(version: str):
    """Removes a set's pins: its links go, and with them the attachments (the kernel releases
    them in the background)."""
    _remove_pins(os.path.join(PIN_ROOT, version))


def remove_leftovers():
    """Half-built sets of loads that died; the caller holds the HostLock."""
    try:
        names = os.listdir(PIN_ROOT)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(BUILDING):
            _remove_pins(os.path.join(PIN_ROOT, name))


def _remove_pins(directory: str):
    """Best effort: what cannot be removed is found again by the next load or unload."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass
