"""The wrapper's own entry point (enhrec_wrap.cli.wrap.main, as /usr/local/bin/enhrec-wrap runs it),
with clocks: when the interpreter runs its first line, when the wrapper's modules are imported,
when loading the BPF programs (from the compiled-program cache, or compiling them with BCC)
begins and ends, how long detaching them takes, and the end. CLOCK_MONOTONIC, so the caller can
add its own fork time.

Run as: venv-python -I startup_probe.py TIMES_FILE -- wrapper arguments...
"""

import time

T = {"script": time.monotonic()}

import json  # noqa: E402
import sys  # noqa: E402

# What a recorded session imports, eagerly instead of when first used: "import" is all of it.
# Not BCC: a session whose programs are cached never imports it.
import enhrec_wrap.kernel.loader  # noqa: E402
import enhrec_wrap.cli.wrap  # noqa: E402
import enhrec_wrap.config  # noqa: E402,F401
import enhrec_wrap.session.lifecycle  # noqa: E402,F401

T["imported"] = time.monotonic()


def _wrap(owner, name, begin, end):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        T[begin] = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            T[end] = time.monotonic()
    setattr(owner, name, timed)


_wrap(enhrec_wrap.kernel.loader.Programs, "load", "load_begin", "load_end")
_wrap(enhrec_wrap.kernel.loader.Probes, "__init__", "probes_begin", "probes_end")
_wrap(enhrec_wrap.kernel.loader.Programs, "close", "close_begin", "close_end")

# The rest of a session's life, by step, where the steps exist (seconds, summed per label).
SPANS = {}
STEPS = [
    ("enhrec_wrap.session.recovery", "repair_at_start", None),
    ("enhrec_wrap.login.pam", "open_session", None),
    ("enhrec_wrap.session.watchdog", "Watchdog", "start"),
    ("enhrec_wrap.session.watchdog", "Watchdog", "stop"),
    ("enhrec_wrap.host.cgroup", "SessionCgroup", "create"),
    ("enhrec_wrap.host.cgroup", "SessionCgroup", "remove"),
    ("enhrec_wrap.session.lifecycle", "Session", "__init__"),
    ("enhrec_wrap.session.lifecycle", "Session", "spawn"),
    ("enhrec_wrap.session.lifecycle", "Session", "wait_child"),
    ("enhrec_wrap.session.lifecycle", "Session", "write_end"),
    ("enhrec_wrap.session.lifecycle", "Session", "close"),
]


def _span(owner, name, label):
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        begin = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            SPANS[label] = SPANS.get(label, 0.0) + time.monotonic() - begin
    setattr(owner, name, timed)


for module_name, attr, method in STEPS:
    try:
        module = __import__(module_name, fromlist=["_"])
        owner = module if method is None else getattr(module, attr)
        name = attr if method is None else method
        getattr(owner, name)
    except (ImportError, AttributeError):
        continue   # not in this version
    _span(owner, name, f"{attr}.{method}" if method else attr)
T["imported_all"] = time.monotonic()


def main():
    times_file = sys.argv[1]
    assert sys.argv[2] == "--"
    status = 0
    try:
        enhrec_wrap.cli.wrap.main(sys.argv[3:])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    T["end"] = time.monotonic()
    T["spans"] = SPANS
    with open(times_file, "w") as f:
        json.dump(T, f)
    sys.exit(status)


main()
