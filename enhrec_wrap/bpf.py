"""Loading the recorder's BPF programs with BCC, and reading what they send.

Everything BCC needs from the machine is set up here: kernel headers (the running kernel's, or the
fallback `make install` builds), tracefs, and the ring-buffer sizes from the config.
"""

import ctypes as ct
import importlib.resources
import os

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


class Probes:
    """The loaded programs of one session: filters on its cgroup, and hands raw records to a
    callback from `poll`."""

    def __init__(self, config, on_record):
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
        cflags = [
            f"-I{program_dir}",
            f"-DCOMMAND_RING_PAGES={ring_pages(config.command_buffer_size, cpus, MIN_COMMAND_RING_PAGES)}",
            f"-DDISK_RING_PAGES={ring_pages(config.disk_buffer_size, cpus)}",
            f"-DNETWORK_RING_PAGES={ring_pages(config.network_buffer_size, cpus)}",
            f"-DPOSSIBLE_CPUS={cpus}",
        ]
        try:
            self.bpf = BPF(src_file=str(program_dir / "recorder.c").encode(), cflags=cflags)
        except Exception as e:   # BCC raises plain Exception for compile, load and attach
            raise EnhrecError(f"cannot load the BPF programs: {_first_line(e)}: {DOCTOR_HINT}") from None
        self.decoder = Decoder(self.bpf)
        self._on_record = on_record
        for stream in STREAMS:
            self.bpf[f"{stream}_events"].open_ring_buffer(self._callback)

    def _callback(self, _ctx, data, size):
        self._on_record(ct.string_at(data, size))

    def watch(self, cgroup_id: int):
        self.bpf["watched_cgroups"][ct.c_uint64(cgroup_id)] = ct.c_uint8(1)

    def set_parent(self, child_pid: int, parent_pid: int):
        """The session's first process was forked outside the cgroup: tell the kernel side its
        parent so that its events carry a ppid like every other."""
        self.bpf["parents"][ct.c_uint32(child_pid)] = ct.c_uint32(parent_pid)

    def poll(self, timeout_ms: int):
        self.bpf.ring_buffer_poll(timeout_ms)

    def drain(self):
        self.bpf.ring_buffer_consume()

    def lost_counts(self) -> dict:
        """Records the kernel side could not deliver, per stream (and exec results)."""
        table = self.bpf["lost_events"]
        counts = {stream: sum(table[ct.c_int(i)]) for i, stream in enumerate(STREAMS)}
        counts["command_result"] = sum(table[ct.c_int(COMMAND_RESULT_COUNTER)])
        return counts

    def close(self):
        self.bpf.cleanup()


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
