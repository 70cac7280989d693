"""Compiling the recorder's programs with BCC: only when the compiled-program cache has no entry
for them (the first session after an install, a kernel or a BCC change).

BCC compiles bpf_programs/recorder.c against kernel headers (the running kernel's, or the
fallback `make install` builds), loads it and attaches its tracepoints. We keep only what it
produced: each program's instructions, the maps' definitions and the record layouts (the cache
entry, see program_cache.py), and let BCC go. The programs the host runs are always loaded from
such an entry (host.py), never kept from BCC, so the first session and every later one run the
same code path.

The compile runs in child processes (`python3 -I -m enhrec_wrap.kernel.compiler`), each of which
hands back what it compiled through a pipe and exits: BCC and LLVM map ~85 MB of libraries and
use ~100 MB of heap while compiling, and a process that has compiled keeps ~125 MB of it
(measured, docs/PERFORMANCE.md); the session that compiled would carry that for its whole life.
And since LLVM's memory grows faster than the code, recorder.c is compiled in COMPILE_UNITS
modules (its IN_UNIT marks), one child after the other, and their programs are put together
here: every unit declares every map, so each program's map references are renumbered to the
first unit's.
"""

import ctypes as ct
import gc
import os
import subprocess
import sys

import orjson

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel.decode import record_fields
from enhrec_wrap.kernel.program_cache import CACHE_FORMAT
from enhrec_wrap.kernel.syscalls import relocate

FALLBACK_HEADERS = "/opt/enhrec-wrap/kernel-headers"
# recorder.c's programs other than BCC's TRACEPOINT_PROBE/RAW_TRACEPOINT_PROBE ones: its cgroup
# sock_addr hooks, and the attach type of each (include/uapi/linux/bpf.h enum bpf_attach_type).
SOCK_ADDR_PROGRAMS = {"connect4": 10, "connect6": 11, "sendmsg4": 14, "sendmsg6": 15}
# How a program is attached (host.py): the kind in a cache entry's programs.
TRACEPOINT, RAW_TRACEPOINT, CGROUP_SOCK_ADDR = "tracepoint", "raw_tracepoint", "cgroup_sock_addr"
# BCC's names: tracepoint__<category>__<event> (TRACEPOINT_PROBE, attached by BCC when it loads
# the module), raw_tracepoint__<event>; and ours for a program of several tracepoints of one
# category, which BCC leaves alone: tracepoints__<category>__<prefix>__<suffix>__<suffix>...
# for the events <prefix>_<suffix> (recorder.c).
SINGLE, MULTI, RAW = "tracepoint__", "tracepoints__", "raw_tracepoint__"
# recorder.c's compile units (-DUNIT=0, 1, ...).
COMPILE_UNITS = 2
# The child's environment: nothing of the caller's (BCC reads BCC_* variables, Python PYTHON*).
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
DOCTOR_HINT = "run `enhrec doctor` for a full check"
# BCC's attachments are handed to this helper for their last close (detach_tracepoints).
HOLD_SECONDS = 2
HOLDER = ["/bin/sleep", str(HOLD_SECONDS)]


def kernel_headers() -> str | None:
    """The directory BCC should compile against, or None when the running kernel has its own."""
    if os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
        return None
    if os.path.isdir(os.path.join(FALLBACK_HEADERS, "include")):
        return FALLBACK_HEADERS
    raise EnhrecError(
        f"no kernel headers for {os.uname().release}: install them, or run `make install` "
        f"to build the fallback in {FALLBACK_HEADERS}")


def compile_entry(program_dir: str, defines: list[str]) -> dict:
    """Compiles recorder.c with BCC (`defines` and the kernel's struct offsets, offsets.py), one
    child process per compile unit; returns the cache entry describing the result."""
    return merge_units([_compile_unit(program_dir, [*defines, f"-DUNIT={unit}"])
                        for unit in range(COMPILE_UNITS)])


def merge_units(entries: list[dict]) -> dict:
    """One cache entry of the units' entries: the first unit's maps, and every program once,
    its map references renumbered to those maps (a program compiled in several units is the
    same code in each: the first is kept)."""
    first = entries[0]
    by_name = {m["name"]: m for m in first["maps"]}
    merged = {**first, "programs": []}
    seen = set()
    for entry in entries:
        if entry["license"] != first["license"] or entry["fields"] != first["fields"]:
            raise EnhrecError(f"the BPF compile units disagree on the records: {DOCTOR_HINT}")
        renumber = {}
        for m in entry["maps"]:
            ours = by_name.get(m["name"])
            if ours is None or {k: v for k, v in m.items() if k != "fd"} != {
                    k: v for k, v in ours.items() if k != "fd"}:
                raise EnhrecError(f"the BPF compile units disagree on map {m['name']}: "
                                  f"{DOCTOR_HINT}")
            renumber[m["fd"]] = ours["fd"]
        for program in entry["programs"]:
            if program["name"] in seen:
                continue
            seen.add(program["name"])
            insns = relocate(bytes.fromhex(program["insns"]), renumber)
            merged["programs"].append({**program, "insns": insns.hex()})
    return merged


def _compile_unit(program_dir: str, defines: list[str]) -> dict:
    """One compile unit's entry, from a child process."""
    read_fd, write_fd = os.pipe()
    try:
        # stderr is ours: BCC's diagnostics reach whoever reads it, as when it ran here.
        child = subprocess.Popen(
            [sys.executable, "-I", "-m", "enhrec_wrap.kernel.compiler", str(write_fd),
             program_dir, *defines],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=[write_fd],
            env=CHILD_ENV, cwd="/")
    except OSError as e:
        os.close(read_fd)
        raise EnhrecError(f"cannot start the BPF compiler: {e.strerror}: {DOCTOR_HINT}") from None
    finally:
        os.close(write_fd)
    with open(read_fd, "rb") as pipe:
        raw = pipe.read()   # until the child has written and closed it
    status = child.wait()
    try:
        answer = orjson.loads(raw)
    except ValueError:
        answer = {}
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        raise EnhrecError(answer["error"])
    if status != 0 or not isinstance(answer, dict) or not isinstance(answer.get("entry"), dict):
        raise EnhrecError(f"the BPF compiler failed (exit status {status}): {DOCTOR_HINT}")
    return answer["entry"]


def main(argv: list[str]) -> int:
    """The child: compiles, writes {"entry": ...} or {"error": "one line"} to the pipe fd
    argv[0], and exits."""
    out_fd, program_dir, defines = int(argv[0]), argv[1], argv[2:]
    try:
        answer = {"entry": compile_here(program_dir, defines)}
    except EnhrecError as e:
        answer = {"error": str(e)}
    with open(out_fd, "wb") as pipe:
        pipe.write(orjson.dumps(answer))
    return 0 if "entry" in answer else 1


def compile_here(program_dir: str, defines: list[str]) -> dict:
    """compile_entry's work, in this process."""
    from enhrec_wrap.kernel import btf, offsets
    defines = [*defines, *offsets.defines()]
    btf.forget()   # 13 MB fewer at the compile's peak (docs/PERFORMANCE.md)
    gc.collect()
    _give_back_freed_memory()
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
        return describe(bpf, lib)
    except Exception as e:   # noqa: BLE001 - BCC's module is C; anything odd there is fatal
        raise EnhrecError(f"cannot read the compiled BPF programs ({_first_line(e)}): "
                          f"{DOCTOR_HINT}") from None
    finally:
        detach_tracepoints(list(bpf.tracepoint_fds.values()))
        bpf.tracepoint_fds.clear()   # detached above
        bpf.cleanup()


def _programs(bpf, lib) -> list[dict]:
    """Every program of the module: how it is attached, and its instructions."""
    programs = []
    for i in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, i)
        text = name.decode()
        kind, targets = attachments(text)
        if kind is None:
            continue
        start = lib.bpf_function_start(bpf.module, name)
        size = lib.bpf_function_size(bpf.module, name)
        programs.append({"name": text, "kind": kind, "targets": targets,
                         "insns": ct.string_at(start, size).hex()})
    singles = sum(p["name"].startswith(SINGLE) for p in programs)
    counts = {kind: sum(p["kind"] == kind for p in programs)
              for kind in (TRACEPOINT, RAW_TRACEPOINT, CGROUP_SOCK_ADDR)}
    if (singles != len(bpf.tracepoint_fds)
            or counts[RAW_TRACEPOINT] != len(bpf.raw_tracepoint_fds)
            or counts[CGROUP_SOCK_ADDR] != len(SOCK_ADDR_PROGRAMS)):
        raise ValueError(f"not every program was found: {counts}")
    return programs


def attachments(name: str) -> tuple:
    """(kind, [targets]) of a function of recorder.c by its name; (None, []) for one that is
    no program. A tracepoint target is "<category>:<event>"."""
    if name.startswith(SINGLE):
        return TRACEPOINT, [name[len(SINGLE):].replace("__", ":", 1)]
    if name.startswith(MULTI):
        category, prefix, *suffixes = name[len(MULTI):].split("__")
        return TRACEPOINT, [f"{category}:{prefix}_{suffix}" for suffix in suffixes]
    if name.startswith(RAW):
        return RAW_TRACEPOINT, [name[len(RAW):]]
    if name in SOCK_ADDR_PROGRAMS:
        return CGROUP_SOCK_ADDR, [SOCK_ADDR_PROGRAMS[name]]
    return None, []


def describe(bpf, lib) -> dict:
    """The cache entry of a BCC-loaded module: its maps (with the fds its code refers to), its
    programs' instructions and attachments, its license and the record layouts."""
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
    return {"format": CACHE_FORMAT, "license": lib.bpf_module_license(module).decode(),
            "maps": maps, "programs": _programs(bpf, lib), "fields": record_fields(bpf)}


def _give_back_freed_memory():
    """Returns what the heap has free to the system (glibc keeps it otherwise)."""
    try:
        ct.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def detach_tracepoints(fds):
    """Leaves the release of BCC's tracepoint attachments to a helper process.

    The last close of a tracepoint's perf event unregisters it and waits for RCU grace periods,
    under the kernel's event_mutex, one tracepoint after the other: 17 x ~40 ms, 0.7 s
    (docs/PERFORMANCE.md). So the fds go to a `sleep` that holds them for HOLD_SECONDS, in a
    session of its own; its exit does the final closes while the first session goes on. Until
    then the compile's programs still run (disabling the perf event does not stop a BPF program
    on it: 100 of 100 calls ran one after PERF_EVENT_IOC_DISABLE, measured 2026-12-01), and find
    no session: their maps are the compile's own."""
    if not fds:
        return
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


def _first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
