"""What the recorder imports (cli/wrap.py import_orjson): orjson without uuid and dataclasses,
writing the same bytes, and a session's modules without the heavy ones (docs/PERFORMANCE.md)."""

import json
import subprocess
import sys
import textwrap

from enhrec_wrap.cli import wrap

# The modules a recorded session imports, in the wrapper's order (benchmarks/startup_probe.py).
SESSION_MODULES = [
    "enhrec_wrap.cli.wrap", "enhrec_wrap.host.priority", "enhrec_wrap.session.watchdog",
    "enhrec_wrap.cli.wrap_command", "enhrec_wrap.config", "enhrec_wrap.login.pam",
    "enhrec_wrap.login.ssh", "enhrec_wrap.session.lifecycle", "enhrec_wrap.session.recording",
    "enhrec_wrap.session.recovery", "enhrec_wrap.kernel.host", "enhrec_wrap.kernel.rings",
    "enhrec_wrap.kernel.program_cache", "enhrec_wrap.host.cgroup",
]
# Each is 1 ms or more and 0.2 MB or more, and a session does not need it (docs/PERFORMANCE.md).
HEAVY = ["dataclasses", "inspect", "uuid", "platform", "typing", "yaml", "ctypes.util"]
EVENT = {"event": "session.command", "ei": 7, "time": "2026-12-01T14:00:00.123Z",
         "argv": ["ls", "-l", "caf\u00e9", "\U0001f600"], "return_code": 0, "ok": True,
         "nothing": None, "ratio": 0.25, "cgroup_id": 2 ** 63, "nested": {"a": [1, {"b": []}]}}


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(code)], check=True,
                          capture_output=True, text=True, cwd="/").stdout


def test_the_installed_orjson_is_a_checked_release():
    """When this fails, orjson was upgraded: check that its first import looks up nothing else of
    uuid and dataclasses (else it crashes with the stand-ins), then add the release."""
    assert wrap._orjson_release().startswith(wrap.ORJSON_CHECKED)


def test_orjson_without_uuid_and_dataclasses_writes_the_same_bytes():
    out = run(f"""
        import json, sys
        from enhrec_wrap.cli.wrap import import_orjson
        orjson = import_orjson()
        print(sorted(m for m in ("uuid", "dataclasses") if m in sys.modules))
        event = json.loads({json.dumps(json.dumps(EVENT))})
        print(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE).decode(), end="")
        print(orjson.loads(orjson.dumps(event)) == event)
        import uuid, dataclasses
        print(hasattr(uuid, "uuid4"), hasattr(dataclasses, "dataclass"))
    """)
    import orjson   # as it is
    lines = out.split("\n")
    assert lines[0] == "[]"
    assert lines[1].encode() + b"\n" == orjson.dumps(EVENT, option=orjson.OPT_APPEND_NEWLINE)
    assert lines[2:4] == ["True", "True True"]


def test_an_unchecked_release_is_imported_as_it_is():
    out = run("""
        import sys
        from enhrec_wrap.cli import wrap
        wrap.ORJSON_CHECKED = ("0.0.",)
        wrap.import_orjson()
        print("uuid" in sys.modules and "dataclasses" in sys.modules)
    """)
    assert out.strip() == "True"


def test_a_sessions_modules_import_none_of_the_heavy_ones():
    out = run(f"""
        import importlib, sys
        from enhrec_wrap.cli.wrap import import_orjson
        import_orjson()
        for name in {SESSION_MODULES!r}:
            importlib.import_module(name)
        from enhrec_wrap.login import pam
        pam._python_pam()
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert out.strip() == "[]"
