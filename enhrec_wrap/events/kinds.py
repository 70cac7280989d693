"""The kinds of audit event: Teleport's name (the `event` field) and code (`code`) of each.

Declared once, here: the factory writes them (teleport.py), the session files are named after
them (log/layout.py), and `enhrec` reads them back (inspect/). docs/events.md is the schema.
"""

# Teleport's namespace field: always this one (the session files' directory is named after it).
NAMESPACE = "default"

START = "session.start"
END = "session.end"
COMMAND = "session.command"
DISK = "session.disk"
NETWORK = "session.network"
# Ours: codes starting with X are never Teleport's.
REFUSED = "session.refused"     # a call the session's seccomp filter refused
IO_URING = "session.io_uring"   # an io_uring operation, where a session allows io_uring

# (name, code), as the event factory takes a kind.
SESSION_START = (START, "T2000I")
SESSION_END = (END, "T2004I")
SESSION_COMMAND = (COMMAND, "T4000I")
SESSION_DISK = (DISK, "T4001I")
SESSION_NETWORK = (NETWORK, "T4002I")
SESSION_REFUSED = (REFUSED, "X4100W")
SESSION_IO_URING = (IO_URING, "X4101I")

# session.network's operation (Teleport's NetworkOperation): a connect, or an unconnected send.
OPERATION_CONNECT, OPERATION_SEND = 0, 1


def result_of(event: dict):
    """A kernel event's syscall result (0, an fd, or a negative errno); None when not known.
    Schema 1 wrote a connect's as `return_code` and an exec's unknown result as null; schema 2
    writes `connect_return_code`, and `return_code_unknown` (docs/events.md)."""
    if event.get("event") == NETWORK:
        return event.get("connect_return_code", event.get("return_code"))
    if event.get("return_code_unknown"):
        return None
    return event.get("return_code")
