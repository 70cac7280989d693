"""`enhrec-wrap`: the process. The only place, with cli/enhrec.py, that prints errors and
chooses exit codes; the arguments are cli/wrap_command.py's.

The session's watchdog (session/watchdog.py) is started once the session has a cgroup.
"""

import gc
import os
import sys

from enhrec_wrap.errors import EnhrecError, Failure

PROG = "enhrec-wrap"
# Besides the command's own status (or 128+N when it died of signal N), as env(1) has them.
EXIT_SETUP_FAILED = 125
EXIT_STATUS = {
    Failure.COMMAND_NOT_FOUND: 127,
    Failure.COMMAND_NOT_EXECUTABLE: 126,
}
# orjson releases whose first import was checked to look up, of the stand-ins below, nothing but
# uuid.UUID and dataclasses._FIELD (tests/unit/test_wrap_imports.py). A name it looks up and does
# not find crashes its import (SIGSEGV), so any other release is imported as it is.
ORJSON_CHECKED = ("3.13.",)


def make_standard_fds_safe():
    """A closed fd 0, 1 or 2 would be reused by the log or a BPF map, and the session's output
    would land in it: point any closed one at /dev/null first (tlog does the same)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def exit_status(error: EnhrecError) -> int:
    """125 when recording could not be set up (nothing was run), 126/127 when the command could
    not be run: the status its session's end records too."""
    return EXIT_STATUS.get(error.failure, EXIT_SETUP_FAILED)


def fail(message: str, code: int) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def import_orjson():
    """orjson, as the recorder imports it. Its first import imports uuid and dataclasses to learn
    two of the types it serializes, and they bring platform, inspect, ast, dis and tokenize: its
    import took 16.0 ms of CPU and 2.07 MB, 3.5 ms and 0.44 MB without them (docs/PERFORMANCE.md),
    for types the recorder never gives it (its events, briefs and caches are dicts, lists,
    strings and numbers; no module a session imports makes a dataclass). So that import sees
    stand-ins holding only the two names it looks up, gone again right after, as login/pam.py
    does for python-pam: a later import of either gets the real module. In the recorder orjson
    then refuses a uuid.UUID (TypeError), and its handling of dataclasses is not to be relied
    on; `enhrec`, the watchdog's Python and the tests import it as it is."""
    if "orjson" not in sys.modules and not {"uuid", "dataclasses"} & sys.modules.keys() and \
            (_orjson_release() or "").startswith(ORJSON_CHECKED):
        import types
        uuid, dataclasses = types.ModuleType("uuid"), types.ModuleType("dataclasses")
        uuid.UUID = type("UUID", (), {})
        dataclasses._FIELD = object()
        sys.modules.update(uuid=uuid, dataclasses=dataclasses)
        try:
            import orjson
        finally:
            del sys.modules["uuid"], sys.modules["dataclasses"]
    import orjson
    return orjson


def _orjson_release() -> str | None:
    """The release of the orjson that `import orjson` would load, from its dist-info directory,
    without importing it; None when that is not one clear answer."""
    from importlib.machinery import PathFinder
    spec = PathFinder.find_spec("orjson")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = os.path.dirname(spec.submodule_search_locations[0])
    try:
        found = [name for name in os.listdir(site)
                 if name.startswith("orjson-") and name.endswith(".dist-info")]
    except OSError:
        return None
    return found[0][len("orjson-"):-len(".dist-info")] if len(found) == 1 else None


def main(argv=None):
    make_standard_fds_safe()
    # A session's start makes ~10,000 objects that live as long as it does: traversed by 17 young
    # collections at the default threshold of 700 (2.5 to 4 ms of a start), by 2 at 5,000 (1.5 to
    # 2 ms), and its imports leave 0.2 MB less behind (docs/PERFORMANCE.md).
    gc.set_threshold(5000, 10, 10)
    import_orjson()   # before anything imports it
    from enhrec_wrap.host import priority
    from enhrec_wrap.session.watchdog import Watchdog
    priority.boost()   # the watchdog too
    watchdog = Watchdog()
    try:
        status = _run(argv, watchdog)
    finally:
        watchdog.stop()   # no session, or one that ended: it goes without killing anything
    # Everything is written and closed (the session's files, its log, its terminal): the
    # interpreter's teardown of its modules would only add 23 ms to every session's end.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _unexpected(e: Exception) -> str:
    """The line for a failure no part turned into an EnhrecError."""
    import errno
    if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (f"cannot start the session: {e.strerror} (the open-file limit is {soft}): raise "
                "the limit (ulimit -n, limits.conf) to at least 1024")
    return f"internal error: {type(e).__name__}: {e}: please report this"


def _run(argv, watchdog) -> int:
    from enhrec_wrap.cli import wrap_command
    try:
        status = wrap_command.main(sys.argv[1:] if argv is None else argv, watchdog)
    except EnhrecError as e:
        fail(str(e), exit_status(e))
    except KeyboardInterrupt:
        fail("interrupted before the session started", EXIT_SETUP_FAILED)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        fail(_unexpected(e), EXIT_SETUP_FAILED)
    return status if isinstance(status, int) else 0
