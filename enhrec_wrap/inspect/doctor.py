"""`enhrec doctor`: whether this host can record sessions, one check per line.

Each check says what it found and, when it fails, how to fix it. FAIL means recording cannot
work (the wrapper would stop with exit status 125); warn means it works, with a caveat.
The checks look and do not change the host, with two exceptions that the wrapper itself makes
at every start: mounting tracefs to look at the tracepoints, and, with --repair, ending stale
sessions and removing their cgroups (recovery.py).
"""

import glob
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass

from enhrec_wrap.session import recovery
from enhrec_wrap.config import Config, load_config
from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import chain, chainstate, layout, server_id

# BPF ring buffers (BPF_MAP_TYPE_RINGBUF) came with 5.8.
MIN_KERNEL = (5, 8)
BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
LOW_SPACE_BYTES = 100 << 20


@dataclass
class Result:
    status: str    # "ok", "warn" or "FAIL"
    name: str
    detail: str
    fix: str = ""


def ok(name, detail):
    return Result("ok", name, detail)


def warn(name, detail, fix=""):
    return Result("warn", name, detail, fix)


def fail(name, detail, fix):
    return Result("FAIL", name, detail, fix)


def run(config_path: str | None, repair: bool = False, unload: bool = False) -> list[Result]:
    config_result, config = check_config(config_path)
    results = [check_root(), check_kernel(), check_btf(), check_tracepoints(), check_bcc(),
               check_headers(), check_cgroup2(config), config_result, check_data_dir(config),
               check_chain_key(config)]
    results.append(check_stale(config, repair))
    results.append(check_programs(config, unload))
    return results


def check_programs(config: Config, unload: bool) -> Result:
    """What is loaded in the kernel, for which sessions; with `unload`, the sets no session
    uses are unloaded now (`make uninstall` does this)."""
    name = "kernel programs"
    if os.geteuid() != 0:
        return warn(name, "cannot look without root", "run it as root")
    from enhrec_wrap.kernel import host as kernel
    from enhrec_wrap.kernel import idle
    try:
        unloaded = idle.unload_unused()[0] if unload else 0
        with kernel.HostLock():
            loaded = _loaded_sets(kernel)
            taken = _places_taken(kernel)
    except EnhrecError as e:
        return fail(name, str(e), "check that bpffs can be mounted on /sys/fs/bpf")
    ours = kernel.program_version()
    prefix = f"unloaded {unloaded} unused set(s); " if unload else ""
    if not loaded:
        return ok(name, prefix + "none loaded (the next session loads them; an idle host "
                  f"unloads them {config.idle_unload_seconds} s after its last session)")
    parts = [f"{version[:12]}{' (this version)' if version == ours else ' (another version)'} "
             f"for {_sessions_text(sessions, config)}" for version, sessions in loaded]
    detail = prefix + "loaded once for the host: " + "; ".join(parts)
    if unload:
        return fail(name, detail, "end those sessions first, then unload again")
    return _capacity(name, detail, taken)


def _loaded_sets(kernel) -> list[tuple[str, list[int]]]:
    return [(version, kernel.sessions_of(version) or []) for version in kernel.pinned_versions()]


def _places_taken(kernel) -> int | None:
    """How many of this version's set's MAX_SESSIONS places are taken; None when not loaded."""
    host = kernel.HostPrograms.open(kernel.program_version())
    if host is None:
        return None
    try:
        return host.places_taken()
    except OSError:
        return None
    finally:
        host.close()


def _capacity(name: str, detail: str, taken: int | None) -> Result:
    """The set holds at most MAX_SESSIONS sessions at once (bpf_programs/enhrec.h): full, the
    next session is refused; nine tenths full, a warning."""
    from enhrec_wrap.kernel.abi import MAX_SESSIONS
    if taken is None:
        return ok(name, detail)
    detail += f"; {taken} of MAX_SESSIONS {MAX_SESSIONS} places taken"
    if taken >= MAX_SESSIONS:
        return fail(name, detail, "no new session can start until one ends")
    if taken * 10 >= MAX_SESSIONS * 9:
        return warn(name, detail, "the host is close to its limit of sessions at once")
    return ok(name, detail)


def _sessions_text(cgroup_ids: list[int], config: Config) -> str:
    """The sessions of these cgroup ids, by sid where the cgroup is found."""
    if not cgroup_ids:
        return "no session"
    from enhrec_wrap.host.cgroup import parent_dir
    parent = parent_dir(config.cgroup_path)
    by_id = {}
    try:
        for entry in os.scandir(parent):
            by_id[entry.inode()] = entry.name[:8]
    except OSError:
        pass
    names = [by_id.get(cgroup_id, f"cgroup {cgroup_id}") for cgroup_id in cgroup_ids]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"{len(names)} session(s): {shown}"


def check_root() -> Result:
    if os.geteuid() == 0:
        return ok("root", "running as root")
    return fail("root", f"running as uid {os.geteuid()}",
                "run it as root (sudo enhrec doctor): recording needs root, and so do most checks")


def kernel_version(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_kernel(release: str | None = None) -> Result:
    release = release or os.uname().release
    version = kernel_version(release)
    if version is None:
        return warn("kernel", f"cannot read the version {release!r}")
    if version < MIN_KERNEL:
        return fail("kernel", f"{release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]} "
                    "(BPF ring buffers)", "upgrade the kernel")
    return ok("kernel", f"{release} ({MIN_KERNEL[0]}.{MIN_KERNEL[1]} or later needed)")


def check_btf(path: str = BTF_PATH) -> Result:
    """The programs read kernel structures at the offsets the running kernel's BTF gives
    (kernel/offsets.py): without it, or without one of the members, no session can start."""
    from enhrec_wrap.kernel import btf, offsets
    try:
        kernel = btf.load(path)
        for spec, _ in offsets.MEMBERS.values():
            kernel.member(spec)
    except btf.BTFError as e:
        return fail("BTF", str(e), "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    return ok("BTF", f"{path}: the {len(offsets.MEMBERS)} struct members the programs read are there")


def check_tracepoints() -> Result:
    name = "tracepoints"
    from enhrec_wrap.kernel import abi
    try:
        wanted, raw = abi.tracepoints(), abi.raw_tracepoints()
    except OSError as e:
        return fail(name, f"cannot read the recorder's BPF source: {e.strerror}",
                    "reinstall (make install)")
    events_dir = next((os.path.join(d, "events") for d in TRACEFS_DIRS
                       if os.path.isdir(os.path.join(d, "events"))), None)
    if events_dir is None and os.geteuid() == 0:
        from enhrec_wrap.kernel.host import ensure_tracefs   # as the wrapper does
        try:
            ensure_tracefs()
            events_dir = os.path.join(TRACEFS_DIRS[0], "events")
        except EnhrecError as e:
            return fail(name, "tracefs is not mounted and cannot be", str(e))
    if events_dir is None:
        return fail(name, "cannot look at tracefs without root", "run it as root")
    missing = [f"{c}:{t}" for c, t in wanted if not os.path.isdir(os.path.join(events_dir, c, t))]
    missing += [t for t in raw if not glob.glob(os.path.join(glob.escape(events_dir), "*", t))]
    if missing:
        return fail(name, f"missing {', '.join(missing)}",
                    "the kernel needs CONFIG_FTRACE_SYSCALLS and the sched, signal and sock "
                    "tracepoints")
    return ok(name, f"all {len(wanted) + len(raw)} present in {events_dir}")


def check_bcc() -> Result:
    try:
        import bcc
    except ImportError as e:
        return fail("bcc", f"cannot import it ({e})",
                    "install Debian's python3-bpfcc (make install does); never `pip install bcc`")
    return ok("bcc", f"version {getattr(bcc, '__version__', '?')} importable")


def check_headers() -> Result:
    from enhrec_wrap.kernel.compiler import kernel_headers
    try:
        found = kernel_headers()
    except EnhrecError as e:
        return fail("kernel headers", f"none for {os.uname().release}", str(e))
    if found is None:
        return ok("kernel headers", f"the running kernel's (/lib/modules/{os.uname().release}/build)")
    return ok("kernel headers", f"fallback {found} (no /lib/modules/{os.uname().release}/build; "
              "fine for these tracepoint programs)")


def check_cgroup2(config: Config) -> Result:
    from enhrec_wrap.host.cgroup import is_cgroup2_mount
    path = config.cgroup_path
    name = "cgroup2"
    try:
        if is_cgroup2_mount(path):
            return ok(name, f"mounted at {path}")
        with open("/proc/filesystems") as f:
            supported = any(line.split()[-1] == "cgroup2" for line in f if line.strip())
    except OSError as e:
        return fail(name, f"cannot read the mount table: {e.strerror}", "check /proc")
    if not supported:
        return fail(name, "the kernel has no cgroup2 filesystem", "use a kernel with cgroup v2")
    if os.path.isdir(path) and os.listdir(path):
        return fail(name, f"{path} is not a cgroup2 mount and not empty",
                    "set ssh_service.enhanced_recording.cgroup_path to an empty directory or a "
                    "cgroup2 mount")
    if os.path.exists(path) and not os.path.isdir(path):
        return fail(name, f"{path} is not a directory",
                    "set ssh_service.enhanced_recording.cgroup_path to a directory")
    return ok(name, f"not mounted at {path} yet; mountable (the wrapper mounts it)")


def check_config(path: str | None) -> tuple[Result, Config]:
    try:
        config = load_config(path)
    except EnhrecError as e:
        return fail("config", str(e), "fix the file (docs/configuration.md); the other checks use "
                    "the built-in defaults"), Config()
    detail = config.source if config.source != "built-in defaults" else "no config file: built-in defaults"
    if not config.enabled:
        return warn("config", f"{detail}: recording is disabled (enhanced_recording.enabled: false)",
                    "set it to true to record"), config
    return ok("config", detail), config


def check_data_dir(config: Config) -> Result:
    """Writable for real: a file is made and removed in the deepest directory that exists."""
    name = "data_dir"
    target = config.data_dir
    for candidate in (config.log_dir, config.data_dir):
        if os.path.isdir(candidate):
            target = candidate
            break
    else:
        parent = os.path.dirname(config.data_dir.rstrip("/")) or "/"
        if not os.path.isdir(parent):
            return fail(name, f"{config.data_dir} does not exist, nor its parent {parent}",
                        "create it, or set teleport.data_dir")
        target = parent
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".enhrec-doctor."):
            pass
        st = os.statvfs(target)
    except OSError as e:
        from enhrec_wrap.log.files import reason_and_fix
        reason, _, fix = reason_and_fix(e, target).partition(": ")
        return fail(name, f"cannot write in {target}: {reason}", fix)
    planted = _not_regular_log_file(config)
    if planted:
        return fail(name, planted, "move it away; the recorder makes the file again")
    free = st.f_bavail * st.f_frsize
    if free < 1 << 20:
        return fail(name, f"{target} is full", f"free disk space in {target}")
    if free < LOW_SPACE_BYTES:
        return warn(name, f"{target} writable, only {free >> 20} MiB free",
                    f"free disk space in {target}")
    return ok(name, f"{target} writable, {_size(free)} free")


def _not_regular_log_file(config: Config) -> str:
    """What is wrong with a file the next session's first write opens, when one exists and is
    no regular file (a FIFO, a device: the recorder refuses it, files.open_regular); "" when
    none is."""
    from enhrec_wrap.log.files import kind_of
    paths = [layout.host_uuid_path(config.data_dir), layout.chain_state_path(config.data_dir)]
    try:
        sid = server_id.read_server_id(config.data_dir)
    except OSError:
        sid = None   # host_uuid itself is the planted file: it is in the list
    if sid:
        paths.append(layout.day_file(config.log_dir, sid, time.time()))
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            return f"{path} is {kind_of(mode)}, not a regular file"
    return ""


def check_chain_key(config: Config) -> Result:
    """The audit log's chain key (log/chainstate.py): made by keygen, whose verification key
    someone holds, or by the recorder's first write, whose nobody does."""
    name = "chain key"
    try:
        sid = server_id.read_server_id(config.data_dir)
        key = chainstate.read_key(config.data_dir, sid) if sid else None
    except PermissionError:
        return warn(name, "cannot look without root", "run it as root")
    except (EnhrecError, OSError) as e:
        return fail(name, str(e), "run `enhrec keygen --force` (keep the key it prints off the host)")
    if key is None:
        return warn(name, "none yet: the first session makes one that nobody can verify",
                    "run `enhrec keygen` (make install does) and keep the key it prints off the host")
    start, _ = chain.epoch_window(key.epoch, key.start, key.epoch_seconds)
    detail = (f"epoch {key.epoch} of {key.epoch_seconds} s, since "
              f"{_utc(start)}; made {_utc(key.made)} by {key.made_by}")
    if key.made_by != "keygen":
        return warn(name, detail + ", so no one holds its verification key",
                    "run `enhrec keygen` and keep the key it prints off the host")
    return ok(name, detail)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_stale(config: Config, repair: bool) -> Result:
    name = "stale sessions"
    try:
        report = recovery.repair(config) if repair else recovery.check(config)
    except PermissionError as e:
        return warn(name, f"cannot look: {e.strerror}", "run as root")
    except (EnhrecError, OSError) as e:
        return fail(name, f"cannot look: {e}", "check the data_dir")
    if report.errors:
        return fail(name, "; ".join(report.errors), "fix what is named, then run `enhrec doctor --repair`")
    if repair:
        if not report.stale and not report.stale_cgroups:
            return ok(name, "none")
        copied = (f", {len(report.copied)} session(s) given their own session.end where it "
                  "was missing" if report.copied else "")
        return ok(name, f"repaired: {len(report.repaired)} session(s) given an incomplete "
                  f"session.end{copied}, {len(report.cgroups_removed)} cgroup(s) removed")
    if report.stale or report.stale_cgroups:
        parts = []
        if report.stale:
            parts.append(f"{len(report.stale)} session(s) without session.end "
                         f"({', '.join(s[:8] for s in report.stale[:5])})")
        if report.stale_cgroups:
            parts.append(f"{len(report.stale_cgroups)} cgroup(s) no recorder holds")
        return warn(name, "; ".join(parts), "run `enhrec doctor --repair` (the next session start "
                    "repairs them too)")
    return ok(name, "none")
