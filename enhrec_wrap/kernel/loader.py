"""Loading the recorder's BPF programs, and reading what they send.

Everything BCC needs from the machine is set up here: kernel headers (the running kernel's, or the
fallback `make install` builds), tracefs, and the ring-buffer sizes from the config.

Compiling with BCC (clang) takes most of a session's start and its LLVM most of the recorder's
memory, so the compiled programs are kept in program_cache.CACHE_DIR, keyed by everything they depend on (the
sources, the defines, the kernel build, BCC). A session whose programs are
there loads them itself with the bpf() syscall, without BCC or LLVM (Programs.from_cache); one
whose programs are not compiles them with BCC and stores them (Programs.compile). The rest of
this module is the same either way: raw map fds, and the ring buffers read from their memory.
"""

import collections
import ctypes as ct
import fcntl
import functools
import mmap
import os
import re
import select
import struct
import subprocess
import threading
import time

from enhrec_wrap.kernel.syscalls import (BPF_PROG_TYPE_TRACEPOINT, PERF_EVENT_IOC_DISABLE, TRACEFS,
                                      raise_memlock, attach_tracepoint, map_create,
                                      map_lookup, map_update, prog_load, relocate)
from enhrec_wrap.kernel.decode import Decoder, record_fields
from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel.program_cache import CACHE_FORMAT, cache_key, read_cache, write_cache

FALLBACK_HEADERS = "/opt/enhrec-wrap/kernel-headers"
STREAMS = ("command", "disk", "network")
COMMAND_RESULT_COUNTER = 3   # STREAM_COMMAND_RESULT in enhrec.h
# One exec record can be 34 KiB (argv up to EXEC_DATA_MAX in enhrec.h): the command ring must
# hold a few of them whatever the config says.
MIN_COMMAND_RING_PAGES = 32
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
DOCTOR_HINT = "run `enhrec doctor` for a full check"
# The kernel's ring buffer record header (include/uapi/linux/bpf.h): u32 length with these two
# flag bits, u32 page offset; records are 8-byte aligned.
RINGBUF_BUSY_BIT = 1 << 31
RINGBUF_DISCARD_BIT = 1 << 30
RINGBUF_HDR_SIZE = 8
_RECORD_HEADER = struct.Struct("=I")
# Records copied out of each ring per pass (Probes._read_rings).
BATCH_RECORDS = 4096
# How long records read from the rings may wait to be written (see Probes.poll), how many are
# handed on at once (written in ~12 ms, while the rings fill by ~2,000 records at most), and how
# many may wait in user space (about 210 bytes each: 55 MB) before the rings are left to fill.
FLUSH_SECONDS = 0.02
HAND_RECORDS = 1024
BACKLOG_RECORDS = 262144
# glibc mallopt(3) parameters, and how much freed memory the consumer keeps for reuse.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MALLOC_KEEP_BYTES = 32 << 20
MALLOC_MMAP_BYTES = 8 << 20    # blocks at least this big still get their own mapping

_TRACEPOINT_PROBE = re.compile(rb"TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)")


def ring_pages(setting_pages: int, cpus: int, minimum: int = 1) -> int:
    """Ring size in pages for a `*_buffer_size` setting.

    The reference gives every CPU its own perf buffer of that many pages; one ring buffer shared
    by all CPUs keeps the same total, rounded up to a power of two as the kernel requires.
    """
    pages = max(setting_pages * cpus, minimum)
    return 1 << (pages - 1).bit_length()


def kernel_headers() -> str | None:
    """The directory BCC should compile against, or None when the running kernel has its own."""
    if os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
        return None
    if os.path.isdir(os.path.join(FALLBACK_HEADERS, "include")):
        return FALLBACK_HEADERS
    raise EnhrecError(
        f"no kernel headers for {os.uname().release}: install them, or run `make install` "
        f"to build the fallback in {FALLBACK_HEADERS}")


def ensure_tracefs():
    """BCC attaches tracepoints through tracefs; a host without systemd may not mount it."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return
    libc = ct.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ct.get_errno()
        raise EnhrecError(f"cannot mount tracefs on {TRACEFS}: {os.strerror(err)}: "
                          f"mount it with `mount -t tracefs tracefs {TRACEFS}`")


def possible_cpus() -> int:
    """The number of possible CPUs (not online ones): BPF per-CPU slots are indexed by them."""
    with open("/sys/devices/system/cpu/possible") as f:
        last = f.read().strip().split(",")[-1].split("-")[-1]
    return int(last) + 1


class Ring:
    """A BPF ring buffer read straight from its memory, as libbpf reads it, without a C callback
    per record: the consumer position page (read-write), then the producer position page and the
    data pages, mapped twice in a row by the kernel so a record that wraps is contiguous."""

    def __init__(self, map_fd: int, size: int):
        self.mask = size - 1
        self._consumer_map = mmap.mmap(map_fd, PAGE_SIZE, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE)
        self._data_map = mmap.mmap(map_fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=PAGE_SIZE)
        self._consumer = memoryview(self._consumer_map).cast("Q")
        self._producer = memoryview(self._data_map)[:8].cast("Q")
        self.data = memoryview(self._data_map)[PAGE_SIZE:]

    def read(self, take, records, limit: int) -> int:
        """Takes committed records, up to `limit` of them, with take(data, offset, length) into
        `records` (a ValueError from take drops the record); returns how many were dropped.

        x86-64 only (bpf.py refuses other machines): the positions are plain 8-byte loads and
        stores, which x86's ordering makes the acquire and release that libbpf uses."""
        consumer = self._consumer
        position = consumer[0]
        producer = self._producer[0]
        data, mask, unpack_header = self.data, self.mask, _RECORD_HEADER.unpack_from
        failed = 0
        limit += len(records)
        while position < producer and len(records) < limit:
            offset = position & mask
            length = unpack_header(data, offset)[0]
            if length & RINGBUF_BUSY_BIT:
                break   # still being written; the next read takes it
            if not length & RINGBUF_DISCARD_BIT:
                try:
                    records.append(take(data, offset + RINGBUF_HDR_SIZE, length))
                except ValueError:
                    failed += 1
            length &= ~RINGBUF_DISCARD_BIT
            position += (length + RINGBUF_HDR_SIZE + 7) & ~7
            consumer[0] = position   # at once: the producer may reuse the space
        return failed

    def close(self):
        for view in (self._consumer, self._producer, self.data):
            view.release()
        self._consumer_map.close()
        self._data_map.close()


def _copy_record(stream, data, offset, length):
    return stream, bytes(data[offset:offset + length])


class Probes:
    """The loaded programs of one session: filters on its cgroup, and hands decoded records to a
    callback (a list per pass over the rings) from `poll` and `drain`."""

    def __init__(self, config, on_record):
        if os.uname().machine != "x86_64":
            raise EnhrecError(f"unsupported machine {os.uname().machine}: enhrec-wrap reads its "
                              "ring buffers with x86-64 memory ordering; run it on x86-64")
        ensure_tracefs()
        self.cpus = possible_cpus()
        pages = ring_sizes(config, self.cpus)
        self.programs = Programs.load(defines(pages, self.cpus))
        tune_malloc()
        self.decoder = Decoder(fields=self.programs.fields)
        self._on_record = on_record
        self.rings = []
        self._epoll = select.epoll()    # every ring, and the watched process
        self._urgent = select.epoll()   # all but the disk ring (see poll)
        self._wake_pid = None
        self._pidfd = -1
        # Records copied out of the rings and not handed on yet: (stream index, bytes).
        self._backlog = collections.deque()
        self._flush_due = 0.0     # when the backlog's first record must be handed on
        # Records dropped in user space (undecodable), per stream: lost like the kernel's.
        self._user_lost = dict.fromkeys(STREAMS, 0)
        self._copiers = [functools.partial(_copy_record, index) for index in range(len(STREAMS))]
        try:
            for stream in STREAMS:
                fd = self.programs.maps[f"{stream}_events"]
                self.rings.append((stream, Ring(fd, pages[stream] * PAGE_SIZE)))
                self._epoll.register(fd, select.EPOLLIN)
                if stream != "disk":
                    self._urgent.register(fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    @property
    def cached(self) -> bool:
        """Whether the programs came from the cache (no compile in this session)."""
        return self.programs.bcc is None

    def watch(self, cgroup_id: int):
        self._update("watched_cgroups", struct.pack("=Q", cgroup_id), struct.pack("=B", 1))

    def set_parent(self, child_pid: int, parent_pid: int):
        """The session's first process was forked outside the cgroup: tell the kernel side its
        parent so that its events carry a ppid like every other."""
        self._update("parents", struct.pack("=I", child_pid), struct.pack("=I", parent_pid))

    def _update(self, table, key, value):
        try:
            map_update(self.programs.maps[table], key, value)
        except OSError as e:
            raise EnhrecError(f"cannot update the BPF map {table}: {e.strerror}: "
                              f"{DOCTOR_HINT}") from None

    def poll(self, timeout_ms: int, wake_pid: int | None = None) -> bool:
        """Waits up to timeout_ms for records (or, given wake_pid, for that process to exit),
        copies what the rings hold into the backlog, and hands up to HAND_RECORDS of it on.
        Returns whether it did (the caller writes them now).

        The rings are emptied as fast as they fill (a copy costs 0.3 us a record; building
        and writing an event 6 to 12 us), so a burst waits in user space, not in the kernel's
        ring where it would soon be dropped; and it is handed on in chunks so the rings are
        looked at again every few milliseconds while the backlog is written. Records are
        handed on FLUSH_SECONDS after the first of them came, or sooner when there is a
        chunk's worth or the watched process exited: a busy session sent a few records per
        wake-up, and each written batch costs the log a lock, a stat and a write (4,300
        batches in figure 6's build before)."""
        if wake_pid != self._wake_pid:
            self._watch_pid(wake_pid)
        timeout, epoll = timeout_ms / 1000, self._epoll
        if len(self._backlog) >= HAND_RECORDS:
            timeout = 0.0   # work is waiting: only take what the rings have meanwhile
        elif self._backlog:
            # Inside a batch's window the disk ring (8 MiB by default, 5% of it per window at
            # full speed) is left to fill: woken for each few records, the consumer spent more
            # on waking (12,000 times in figure 6's build) than on them. The small command and
            # network rings, and the child's exit, still wake it at once.
            timeout = max(0.0, min(timeout, self._flush_due - time.monotonic()))
            epoll = self._urgent
        try:
            epoll.poll(timeout)
        except InterruptedError:
            pass
        self._read_rings()
        if not self._backlog:
            return False
        if (len(self._backlog) >= HAND_RECORDS or time.monotonic() >= self._flush_due
                or wake_pid is None or self._pid_exited()):
            self._hand_on(HAND_RECORDS)
            return True
        return False

    def _pid_exited(self) -> bool:
        """The watched process has exited: what it did should be in the log right away."""
        ready = select.select([self._pidfd], [], [], 0)[0] if self._pidfd >= 0 else [True]
        return bool(ready)

    def drain(self):
        """Reads until the rings are empty and hands everything on: at the end, when nothing in
        the session runs."""
        while self._read_rings(everything=True):
            pass
        self._hand_on(None)

    def _read_rings(self, everything=False) -> int:
        """One pass: copies up to BATCH_RECORDS records of each ring into the backlog (while it
        holds less than BACKLOG_RECORDS: beyond, the rings fill and the kernel counts what it
        drops). Returns how many."""
        backlog = self._backlog
        before = len(backlog)
        room = BATCH_RECORDS if everything else min(BATCH_RECORDS, BACKLOG_RECORDS - before)
        if room <= 0:
            return 0
        for copy, (_, ring) in zip(self._copiers, self.rings):
            ring.read(copy, backlog, room)
        if not before and backlog:
            self._flush_due = time.monotonic() + FLUSH_SECONDS
        return len(backlog) - before

    def _hand_on(self, limit):
        """Decodes up to `limit` records of the backlog (all with None) and hands them to the
        callback as one list. An undecodable record is lost, counted in its ring's stream."""
        backlog = self._backlog
        count = len(backlog) if limit is None else min(limit, len(backlog))
        decode, streams = self.decoder.raw_from, STREAMS
        records = []
        popleft = backlog.popleft
        for _ in range(count):
            stream, raw = popleft()
            try:
                records.append(decode(raw, 0, len(raw)))
            except ValueError:
                self._user_lost[streams[stream]] += 1
        if backlog:
            self._flush_due = time.monotonic()   # the rest goes out at the next poll
        if records:
            self._on_record(records)

    def _watch_pid(self, pid):
        if self._pidfd >= 0:
            self._epoll.unregister(self._pidfd)
            self._urgent.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        self._wake_pid = pid
        if pid is None:
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            return   # already reaped: nothing to wait for
        self._epoll.register(self._pidfd, select.EPOLLIN)
        self._urgent.register(self._pidfd, select.EPOLLIN)

    def lost_counts(self) -> dict:
        """Records that never reached the log, per stream (and exec results): those the kernel
        side could not deliver and those user space could not decode."""
        fd = self.programs.maps["lost_events"]

        def counter(index):   # a per-CPU array: one u64 per possible CPU
            raw = map_lookup(fd, struct.pack("=i", index), 8 * self.cpus)
            return sum(struct.unpack(f"={self.cpus}Q", raw))
        counts = {stream: counter(i) + self._user_lost[stream] for i, stream in enumerate(STREAMS)}
        counts["command_result"] = counter(COMMAND_RESULT_COUNTER)
        return counts

    def close(self):
        self._watch_pid(None)
        self._epoll.close()
        self._urgent.close()
        for _, ring in self.rings:
            ring.close()
        self.rings = []
        self.programs.close()


def ring_sizes(config, cpus) -> dict:
    """Pages of each stream's ring buffer."""
    return {
        "command": ring_pages(config.command_buffer_size, cpus, MIN_COMMAND_RING_PAGES),
        "disk": ring_pages(config.disk_buffer_size, cpus),
        "network": ring_pages(config.network_buffer_size, cpus),
    }


def defines(pages, cpus) -> list:
    """What recorder.c is compiled with (its header comment lists them)."""
    return [
        f"-DCOMMAND_RING_PAGES={pages['command']}",
        f"-DDISK_RING_PAGES={pages['disk']}",
        f"-DNETWORK_RING_PAGES={pages['network']}",
        f"-DPOSSIBLE_CPUS={cpus}",
    ]


def program_cache_key(config) -> str:
    """The cache key of the programs a session with this config loads."""
    cpus = possible_cpus()
    source, header, tracepoints = _program_sources()
    return cache_key(source, header, defines(ring_sizes(config, cpus), cpus), tracepoints)


def _program_dir() -> str:
    """The installed bpf_programs package's directory (importlib.resources: 6 ms to import)."""
    import enhrec_wrap.bpf_programs
    return os.path.dirname(os.path.abspath(enhrec_wrap.bpf_programs.__file__))


def _program_sources():
    program_dir = _program_dir()
    with open(os.path.join(program_dir, "recorder.c"), "rb") as f:
        source = f.read()
    with open(os.path.join(program_dir, "enhrec.h"), "rb") as f:
        header = f.read()
    tracepoints = [(c.decode(), n.decode()) for c, n in _TRACEPOINT_PROBE.findall(source)]
    return source, header, tracepoints


class Programs:
    """The recorder's programs, loaded and attached: map fds by table name, the tracepoint
    attachments (perf event fds), and the record layouts for decoding."""

    def __init__(self, maps, perf_fds, fields, owned_fds=(), bcc=None):
        self.maps = maps
        self.perf_fds = perf_fds
        self.fields = fields
        self._owned_fds = list(owned_fds)   # maps and programs we created (cache path)
        self.bcc = bcc                      # the BCC object that owns them (compile path)

    @classmethod
    def load(cls, defines):
        """From the cache when it has these programs, else compiled (and then cached)."""
        source, header, tracepoints = _program_sources()
        key = cache_key(source, header, defines, tracepoints)
        entry = read_cache(key)
        if entry is not None:
            programs = cls.from_cache(entry)
            if programs is not None:
                return programs
        program_dir = _program_dir()
        programs, entry = cls.compile(program_dir, defines)
        write_cache(key, entry)
        return programs

    @classmethod
    def compile(cls, program_dir, defines):
        """BCC: clang compiles recorder.c, BCC loads and attaches it. Returns the programs and
        the cache entry describing them."""
        try:
            from bcc import BPF
            from bcc.libbcc import lib
        except ImportError:
            raise EnhrecError("BCC is not installed: install Debian's python3-bpfcc "
                              "(`make install` does)") from None
        headers = kernel_headers()
        for name in [n for n in os.environ if n.startswith("BCC_")]:
            del os.environ[name]   # only our own choice of headers, never an inherited one
        if headers:
            os.environ["BCC_KERNEL_SOURCE"] = headers
        try:
            bpf = BPF(src_file=os.path.join(program_dir, "recorder.c").encode(),
                      cflags=[f"-I{program_dir}", *defines])
        except Exception as e:   # BCC raises plain Exception for compile, load and attach
            raise EnhrecError(f"cannot load the BPF programs: {_first_line(e)}: "
                              f"{DOCTOR_HINT}") from None
        try:
            entry = _describe(bpf, lib)
        except Exception:   # noqa: BLE001 - without an entry there is just no cache
            entry = None
        fields = entry["fields"] if entry else record_fields(bpf)
        maps = {m["name"]: m["fd"] for m in entry["maps"]} if entry else {
            name.decode() if isinstance(name, bytes) else name: bpf[name].map_fd
            for name in ("command_events", "disk_events", "network_events", "watched_cgroups",
                         "parents", "lost_events")}
        programs = cls(maps, list(bpf.tracepoint_fds.values()), fields, bcc=bpf)
        release_compiler_memory()
        return programs, entry

    @classmethod
    def from_cache(cls, entry):
        """Creates the maps, relocates and loads the programs, attaches them. None when any of
        it fails (the caller compiles instead); nothing is left behind then."""
        programs = cls({}, [], entry["fields"])
        try:
            raise_memlock()
            new_fd = {}
            for m in entry["maps"]:
                fd = map_create(m["type"], m["key_size"], m["value_size"], m["max_entries"],
                                m["flags"], m["name"])
                programs._owned_fds.append(fd)
                programs.maps[m["name"]] = fd
                new_fd[m["fd"]] = fd
            loads = [(p, relocate(bytes.fromhex(p["insns"]), new_fd)) for p in entry["programs"]]
            for p, prog_fd in _load_all(loads, entry["license"], programs._owned_fds):
                category, event = p["tracepoint"].split(":")
                programs.perf_fds.append(attach_tracepoint(prog_fd, category, event))
        except (OSError, KeyError, ValueError):
            programs.close()
            return None
        return programs

    def close(self):
        detach_tracepoints(self.perf_fds)
        self.perf_fds = []
        if self.bcc is not None:
            self.bcc.tracepoint_fds.clear()   # detached above
            self.bcc.cleanup()
            self.bcc = None
        for fd in self._owned_fds:
            os.close(fd)
        self._owned_fds = []


def _load_all(loads, license, owned):
    """Loads the programs, the verifier working on two of them at once: the exec programs'
    argument loop takes it 50 ms each, most of a cached start (the syscall drops the GIL).
    Returns [(program, fd)] in order; every fd made is in `owned`, also when one fails."""
    results = [None] * len(loads)
    errors = []

    def load(indices):
        for i in indices:
            p, insns = loads[i]
            try:
                results[i] = prog_load(BPF_PROG_TYPE_TRACEPOINT, insns, license, p["name"])
            except OSError as e:
                errors.append(e)
                return
    # The longest first, dealt out alternately: the two big ones land on different threads.
    order = sorted(range(len(loads)), key=lambda i: -len(loads[i][1]))
    helper = threading.Thread(target=load, args=(order[1::2],))
    helper.start()
    load(order[0::2])
    helper.join()
    owned.extend(fd for fd in results if fd is not None)
    if errors:
        raise errors[0]
    return [(p, fd) for (p, _), fd in zip(loads, results)]


def _describe(bpf, lib):
    """The cache entry of a BCC-loaded module: its maps (with the fds its code refers to), its
    tracepoint programs' instructions, its license and the record layouts."""
    module = bpf.module
    lib.bpf_num_tables.restype = ct.c_size_t
    lib.bpf_num_tables.argtypes = [ct.c_void_p]
    lib.bpf_table_name.restype = ct.c_char_p
    lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_ulonglong]
    lib.bpf_table_fd_id.restype = ct.c_int
    lib.bpf_table_fd_id.argtypes = [ct.c_void_p, ct.c_ulonglong]
    for name in ("bpf_table_key_size_id", "bpf_table_leaf_size_id"):
        getattr(lib, name).restype = ct.c_size_t
        getattr(lib, name).argtypes = [ct.c_void_p, ct.c_ulonglong]
    maps = []
    for i in range(lib.bpf_num_tables(module)):
        maps.append({
            "name": lib.bpf_table_name(module, i).decode(),
            "fd": lib.bpf_table_fd_id(module, i),
            "type": lib.bpf_table_type_id(module, i),
            "key_size": lib.bpf_table_key_size_id(module, i),
            "value_size": lib.bpf_table_leaf_size_id(module, i),
            "max_entries": lib.bpf_table_max_entries_id(module, i),
            "flags": lib.bpf_table_flags_id(module, i),
        })
    programs = []
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        if not name.startswith(b"tracepoint__"):
            continue
        start = lib.bpf_function_start(module, name)
        size = lib.bpf_function_size(module, name)
        programs.append({
            "name": name.decode(),
            "tracepoint": name[len(b"tracepoint__"):].replace(b"__", b":").decode(),
            "insns": ct.string_at(start, size).hex(),
        })
    if len(programs) != len(bpf.tracepoint_fds):
        raise ValueError("not every attached program was found")
    return {"format": CACHE_FORMAT, "license": lib.bpf_module_license(module).decode(),
            "maps": maps, "programs": programs, "fields": record_fields(bpf)}


# -- memory ------------------------------------------------------------------------------------

def release_compiler_memory():
    """Gives back to the system the heap LLVM freed after compiling (about 25 MB of RSS)."""
    try:
        ct.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def tune_malloc():
    """Keeps what the consumer frees for its next batch.

    By default glibc returns freed memory at the top of the heap once it exceeds 128 KiB, and
    every batch of events then faults its memory in again: on this VM a page fault costs 5 us
    (docs/PERFORMANCE.md). Setting the thresholds also stops glibc from adapting them."""
    try:
        libc = ct.CDLL("libc.so.6")
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES)
    except (OSError, AttributeError):
        pass


# -- the end -----------------------------------------------------------------------------------

def detach_tracepoints(fds):
    """Stops every program now, and leaves the kernel's slow part to a helper process.

    The last close of a tracepoint's perf event unregisters it and waits for RCU grace periods,
    under the kernel's event_mutex, one tracepoint after the other: 17 x ~40 ms, 0.7 s at the
    end of every session (docs/PERFORMANCE.md). So: disable each event (immediate: no program
    runs after this) and hand the fds to a `sleep` that holds them for HOLD_SECONDS, in a
    session of its own; its exit does the final closes while we have long gone on. A session
    that starts meanwhile finds the tracepoints still registered and attaches without
    registering them again, and its own end then unregisters nothing: back-to-back sessions
    never wait on each other's grace periods."""
    fds = list(fds)
    if not fds:
        return
    for fd in fds:
        fcntl.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)
    try:
        # Only these fds: close_fds, so it holds nothing else of ours.
        subprocess.Popen(HOLDER, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, pass_fds=fds, close_fds=True,
                         start_new_session=True)
    except OSError:
        pass   # no helper: we pay for the closes ourselves
    finally:
        for fd in fds:
            os.close(fd)   # not the last reference while the helper holds them


# The helper process. Not waited for: subprocess reaps it later, or init once we have exited.
HOLD_SECONDS = 2
HOLDER = ["/bin/sleep", str(HOLD_SECONDS)]


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
