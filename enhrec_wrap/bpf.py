"""Loading the recorder's BPF programs with BCC, and reading what they send.

Everything BCC needs from the machine is set up here: kernel headers (the running kernel's, or the
fallback `make install` builds), tracefs, and the ring-buffer sizes from the config.
"""

import ctypes as ct
import fcntl
import importlib.resources
import mmap
import os
import select
import struct
import subprocess

from enhrec_wrap.decode import Decoder
from enhrec_wrap.errors import EnhrecError

FALLBACK_HEADERS = "/opt/enhrec-wrap/kernel-headers"
TRACEFS = "/sys/kernel/tracing"
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
# Records read from each ring per pass: a batch of events is built, written, freed, and its
# memory reused by the next (about 3 KiB of Python objects per event while it is built).
BATCH_RECORDS = 4096
# glibc mallopt(3) parameters, and how much freed memory the consumer keeps for reuse.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MALLOC_KEEP_BYTES = 32 << 20
MALLOC_MMAP_BYTES = 8 << 20    # blocks at least this big still get their own mapping


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

    def read(self, decode, records: list, limit: int) -> int:
        """Decodes committed records, up to `limit` of them, with decode(data, offset, length)
        into `records`; returns how many could not be decoded (dropped, and to be counted lost).

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
                    records.append(decode(data, offset + RINGBUF_HDR_SIZE, length))
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


class Probes:
    """The loaded programs of one session: filters on its cgroup, and hands decoded records to a
    callback (a list per pass over the rings) from `poll` and `drain`."""

    def __init__(self, config, on_record):
        if os.uname().machine != "x86_64":
            raise EnhrecError(f"unsupported machine {os.uname().machine}: enhrec-wrap reads its "
                              "ring buffers with x86-64 memory ordering; run it on x86-64")
        try:
            from bcc import BPF
        except ImportError:
            raise EnhrecError("BCC is not installed: install Debian's python3-bpfcc "
                              "(`make install` does)") from None
        headers = kernel_headers()
        for name in [n for n in os.environ if n.startswith("BCC_")]:
            del os.environ[name]   # only our own choice of headers, never an inherited one
        if headers:
            os.environ["BCC_KERNEL_SOURCE"] = headers
        ensure_tracefs()
        cpus = possible_cpus()
        program_dir = importlib.resources.files("enhrec_wrap.bpf_programs")
        pages = {
            "command": ring_pages(config.command_buffer_size, cpus, MIN_COMMAND_RING_PAGES),
            "disk": ring_pages(config.disk_buffer_size, cpus),
            "network": ring_pages(config.network_buffer_size, cpus),
        }
        cflags = [
            f"-I{program_dir}",
            f"-DCOMMAND_RING_PAGES={pages['command']}",
            f"-DDISK_RING_PAGES={pages['disk']}",
            f"-DNETWORK_RING_PAGES={pages['network']}",
            f"-DPOSSIBLE_CPUS={cpus}",
        ]
        try:
            self.bpf = BPF(src_file=str(program_dir / "recorder.c").encode(), cflags=cflags)
        except Exception as e:   # BCC raises plain Exception for compile, load and attach
            raise EnhrecError(f"cannot load the BPF programs: {_first_line(e)}: {DOCTOR_HINT}") from None
        release_compiler_memory()
        self.decoder = Decoder(self.bpf)
        self._on_record = on_record
        self.rings = []
        self._epoll = select.epoll()
        self._wake_pid = None
        self._pidfd = -1
        # Records dropped in user space (undecodable), per stream: lost like the kernel's.
        self._user_lost = dict.fromkeys(STREAMS, 0)
        for stream in STREAMS:
            table = self.bpf[f"{stream}_events"]
            self.rings.append((stream, Ring(table.map_fd, pages[stream] * PAGE_SIZE)))
            self._epoll.register(table.map_fd, select.EPOLLIN)

    def watch(self, cgroup_id: int):
        self.bpf["watched_cgroups"][ct.c_uint64(cgroup_id)] = ct.c_uint8(1)

    def set_parent(self, child_pid: int, parent_pid: int):
        """The session's first process was forked outside the cgroup: tell the kernel side its
        parent so that its events carry a ppid like every other."""
        self.bpf["parents"][ct.c_uint32(child_pid)] = ct.c_uint32(parent_pid)

    def poll(self, timeout_ms: int, wake_pid: int | None = None):
        """Waits up to timeout_ms for records (or, given wake_pid, for that process to exit),
        then reads every ring once."""
        if wake_pid != self._wake_pid:
            self._watch_pid(wake_pid)
        try:
            self._epoll.poll(timeout_ms / 1000)
        except InterruptedError:
            pass
        self._read_rings()

    def drain(self):
        """Reads until the rings are empty: at the end, when nothing in the session runs."""
        while self._read_rings():
            pass

    def _read_rings(self) -> int:
        """One pass: up to BATCH_RECORDS records of each ring, handed on as one list. Bounded
        batches keep the consumer's memory small and reused (see tune_malloc)."""
        records = []
        decode = self.decoder.decode_from
        for stream, ring in self.rings:
            failed = ring.read(decode, records, BATCH_RECORDS)
            if failed:
                self._user_lost[stream] += failed
        if records:
            self._on_record(records)
        return len(records)

    def _watch_pid(self, pid):
        if self._pidfd >= 0:
            self._epoll.unregister(self._pidfd)
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

    def lost_counts(self) -> dict:
        """Records that never reached the log, per stream (and exec results): those the kernel
        side could not deliver and those user space could not decode."""
        table = self.bpf["lost_events"]
        counts = {stream: sum(table[ct.c_int(i)]) + self._user_lost[stream]
                  for i, stream in enumerate(STREAMS)}
        counts["command_result"] = sum(table[ct.c_int(COMMAND_RESULT_COUNTER)])
        return counts

    def close(self):
        self._watch_pid(None)
        self._epoll.close()
        for _, ring in self.rings:
            ring.close()
        self.rings = []
        detach_tracepoints(self.bpf)
        self.bpf.cleanup()


def release_compiler_memory():
    """Gives back to the system the heap LLVM freed after compiling (about 25 MB of RSS), then
    keeps what the consumer frees for its next batch.

    By default glibc returns freed memory at the top of the heap once it exceeds 128 KiB, and
    every batch of events then faults its memory in again: on this VM a page fault costs 5 us,
    and JSON-encoding an event went from 0.9 us to 8 us (docs/PERFORMANCE.md). Setting the
    thresholds also stops glibc from adapting them."""
    try:
        libc = ct.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES)
    except (OSError, AttributeError):
        pass


def detach_tracepoints(bpf):
    """Stops every program now, and leaves the kernel's slow part to a helper process.

    The last close of a tracepoint's perf event unregisters it and waits for RCU grace periods,
    under a kernel mutex, one tracepoint after the other: 17 x ~40 ms, 0.7 s at the end of every
    session (docs/PERFORMANCE.md). So: disable each event (immediate: no program runs after
    this), hand the fds to a short-lived `cat` (in a session of its own) that holds them until we
    have closed ours, and let its exit do the final closes while ours goes on."""
    fds = list(bpf.tracepoint_fds.values())
    if not fds:
        return
    for fd in fds:
        fcntl.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)
    keep_r, keep_w = os.pipe()
    try:
        # Only these fds and the pipe: close_fds, so it holds nothing else of ours.
        subprocess.Popen(HOLDER, stdin=keep_r, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, pass_fds=fds, close_fds=True,
                         start_new_session=True)
    except OSError:
        pass   # no helper: we pay for the closes ourselves
    finally:
        os.close(keep_r)
        for fd in fds:
            os.close(fd)   # not the last reference while the helper holds them
        bpf.tracepoint_fds.clear()
        os.close(keep_w)   # the helper reads end-of-file, exits, and the kernel detaches


# The helper process: reads its stdin (our pipe) to the end, then exits. Not waited for:
# subprocess reaps it later, or init once we have exited.
HOLDER = ["/bin/cat"]
PERF_EVENT_IOC_DISABLE = 0x2401   # _IO('$', 1)


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
