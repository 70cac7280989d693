"""The wrapper's own entry point (enhrec_wrap.cli.wrap.main, as /usr/local/bin/enhrec-wrap runs
it), with clocks: when the interpreter runs its first line, when every module a recorded session
uses is imported, and how long each step of the session takes (seconds summed per step, and how
often it ran). CLOCK_MONOTONIC, so the caller can add its own fork and exec time.

The steps are the current code's (kernel/host.py, kernel/rings.py, session/recording.py,
session/lifecycle.py, session/watchdog.py ...). One that no longer exists stops the probe with an
error naming it (exit status 3): a split that silently leaves a step out would be wrong, not
smaller. The set's load is split further: the program version (the cache key), opening the
pins, reading the compiled-program cache, BCC's compile, and creating, loading and attaching
the programs and pinning them.

Run as: venv-python -I startup_probe.py TIMES_FILE -- wrapper arguments...
"""

import time

T = {"script": time.monotonic()}

import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

# What a recorded session imports, eagerly instead of when first used, so that "imported" is
# all of it, in the wrapper's order: the modules that hold the steps below (and so must be
# imported to time them) and what they import. Not what a step imports inside itself
# (python-pam in open_session, BCC in compile_entry): that stays in the step's time. The probe's
# own module for a step the wrapper never reaches (kernel/compiler.py, when cached) is imported
# with the instrumentation, after "imported".
MODULES = [
    "enhrec_wrap.cli.wrap", "enhrec_wrap.host.priority", "enhrec_wrap.session.watchdog",
    "enhrec_wrap.cli.wrap_command", "enhrec_wrap.config", "enhrec_wrap.login.pam",
    "enhrec_wrap.session.lifecycle", "enhrec_wrap.session.recording",
    "enhrec_wrap.session.recovery", "enhrec_wrap.kernel.host", "enhrec_wrap.kernel.rings",
    "enhrec_wrap.kernel.program_cache", "enhrec_wrap.host.cgroup",
]
T["imports"] = {}   # each module's import, in order: a module pays for what it is first to need
for _name in MODULES:
    _begin = time.monotonic()
    importlib.import_module(_name)
    if _name == "enhrec_wrap.cli.wrap":
        # As its main() does first: orjson, imported the recorder's way (with its import).
        sys.modules[_name].import_orjson()
    T["imports"][_name] = time.monotonic() - _begin
T["imported"] = time.monotonic()

# (module, class or None, function): labelled "Class.function", "function", or "os.fork" for
# another package's.
STEPS = [
    # the wrapper and its set-up
    ("enhrec_wrap.session.watchdog", "Watchdog", "__init__"),
    ("enhrec_wrap.session.watchdog", "Watchdog", "arm"),
    ("enhrec_wrap.session.watchdog", None, "_spawn"),   # the watchdog's shell, posix_spawned
    ("enhrec_wrap.session.watchdog", "Watchdog", "stop"),
    ("enhrec_wrap.config", None, "load_config"),
    ("enhrec_wrap.login.pam", None, "open_session"),
    ("enhrec_wrap.session.recovery", None, "repair_at_start"),
    ("enhrec_wrap.session.lifecycle", "Session", "__init__"),
    ("enhrec_wrap.session.lifecycle", "Session", "start_recording"),
    ("enhrec_wrap.host.cgroup", "SessionCgroup", "create"),
    # the host's set: opened, or loaded
    ("enhrec_wrap.session.recording", "Recording", "start"),
    ("enhrec_wrap.kernel.host", "HostLock", "__enter__"),
    ("enhrec_wrap.kernel.host", "HostPrograms", "hold_for_session"),
    ("enhrec_wrap.kernel.host", "HostPrograms", "open_or_load"),
    ("enhrec_wrap.kernel.host", None, "program_version"),
    ("enhrec_wrap.kernel.host", "HostPrograms", "open"),
    ("enhrec_wrap.kernel.host", "HostPrograms", "_load"),
    ("enhrec_wrap.kernel.program_cache", None, "read_cache"),
    ("enhrec_wrap.kernel.compiler", None, "compile_entry"),
    ("enhrec_wrap.kernel.pinning", None, "pin_entry"),
    # ... its system calls, as pinning.py calls them (prog_load runs in two threads: summed)
    ("enhrec_wrap.kernel.pinning", None, "map_create"),
    ("enhrec_wrap.kernel.pinning", None, "prog_load"),
    ("enhrec_wrap.kernel.pinning", None, "tracepoint_event"),
    ("enhrec_wrap.kernel.pinning", None, "link_create"),
    ("enhrec_wrap.kernel.pinning", None, "raw_tracepoint_open"),
    ("enhrec_wrap.kernel.pinning", None, "obj_pin"),
    # the session's rings
    ("enhrec_wrap.kernel.rings", "SessionRings", "create"),
    ("enhrec_wrap.kernel.rings", "SessionRings", "register"),
    ("enhrec_wrap.session.recording", "Recording", "wait_registered"),
    # the session's run and end
    ("enhrec_wrap.session.lifecycle", "Session", "write_start"),
    ("enhrec_wrap.session.lifecycle", "Session", "fork_child"),
    ("enhrec_wrap.session.lifecycle", "Session", "start_child"),
    ("os", None, "fork"),   # the session's child
    ("enhrec_wrap.host.cgroup", "SessionCgroup", "add"),
    ("enhrec_wrap.session.child", None, "_read_all"),   # until the child's exec succeeded
    ("enhrec_wrap.session.lifecycle", "Session", "wait_child"),
    ("enhrec_wrap.session.lifecycle", "Session", "finish_lingering"),
    ("enhrec_wrap.session.lifecycle", "Session", "write_end"),
    ("enhrec_wrap.session.lifecycle", "Session", "close"),
    ("enhrec_wrap.log.store", "SessionStore", "close"),
    ("enhrec_wrap.log.auditlog", "AuditLog", "close"),
    ("enhrec_wrap.host.cgroup", "SessionCgroup", "remove"),
    ("enhrec_wrap.session.recording", "Recording", "close"),
]

SPANS = {}        # label -> [seconds, calls]
_LOCK = threading.Lock()   # register() runs in a thread of its own


def _timed(function, label):
    def timed(*args, **kwargs):
        begin = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            spent = time.monotonic() - begin
            with _LOCK:
                span = SPANS.setdefault(label, [0.0, 0])
                span[0] += spent
                span[1] += 1
    timed.__wrapped__ = function
    return timed


def instrument(module_name, owner_name, name):
    """Replaces the step with a timed copy where it is looked up (a class attribute keeps its
    kind: classmethods stay classmethods). Raises SystemExit when the step does not exist."""
    label = (f"{owner_name}.{name}" if owner_name else
             name if module_name.startswith("enhrec_wrap") else f"{module_name}.{name}")
    try:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        raw = vars(owner)[name]
    except (ImportError, AttributeError, KeyError):
        sys.stderr.write(f"startup_probe: step {module_name}.{label} is not in the installed "
                         "code: update benchmarks/startup_probe.py\n")
        sys.exit(3)
    if isinstance(raw, classmethod):
        setattr(owner, name, classmethod(_timed(raw.__func__, label)))
    elif isinstance(raw, staticmethod):
        setattr(owner, name, staticmethod(_timed(raw.__func__, label)))
    else:
        setattr(owner, name, _timed(raw, label))


for _step in STEPS:
    instrument(*_step)
T["imported_all"] = time.monotonic()


def main():
    times_file = sys.argv[1]
    if sys.argv[2:3] != ["--"]:
        sys.exit("usage: startup_probe.py TIMES_FILE -- wrapper arguments...")
    import enhrec_wrap.cli.wrap
    status = 0
    exit_now = os._exit

    def leave(code):   # the wrapper's own os._exit, after its clocks are written
        raise SystemExit(code)

    os._exit = leave
    try:
        enhrec_wrap.cli.wrap.main(sys.argv[3:])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    finally:
        os._exit = exit_now
    T["end"] = time.monotonic()
    T["spans"] = SPANS
    with open(times_file, "w") as f:
        json.dump(T, f)
    sys.stdout.flush()
    os._exit(status)   # as the wrapper leaves: without the interpreter's teardown


main()
