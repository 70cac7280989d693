"""Red team: a session asks a daemon outside it to act (docker.sock, systemd's sockets): a
connect() to a unix socket. It is a session.disk event (`via: "unix_connect"`) whose `path` is
the kernel's: the socket file the peer is bound to, resolved like an opened file (a symlink's
target, a bind mount's fs_path), or `@name` for an abstract socket; `requested_path` is the
sun_path the caller passed (docs/events.md)."""

import os
import socket

import pytest


@pytest.fixture
def daemon(scratch):
    """A listening unix socket made here, outside the session, like a system daemon's."""
    path = str(scratch / "daemon.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(8)
        yield path


def _python(run_in_session, code):
    run = run_in_session(["python3", "-c", code])
    return run, run.pid_of("python3")


def _unix_connects(run, pid):
    return [e for e in run.of("session.disk", pid) if e.get("via") == "unix_connect"]


def test_connect_through_a_symlink_names_the_daemons_socket(run_in_session, daemon, scratch):
    innocent = scratch / "innocent.sock"
    innocent.symlink_to(daemon)
    run, pid = _python(run_in_session,
                       "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                       f"s.connect({str(innocent)!r})\nprint('CONNECT', s.fileno())\n")
    run.printed_once("CONNECT")
    connects = _unix_connects(run, pid)
    assert len(connects) == 1, connects
    (event,) = connects
    facts = run.brief(event)
    assert (event["path"], event.get("requested_path"), event.get("path_source")) == (
        daemon, str(innocent), "kernel"), facts
    assert event["return_code"] == 0 and event["inode"] == os.stat(daemon).st_ino, facts


def test_connect_to_an_abstract_socket_names_it(run_in_session):
    name = f"enhrec-adv-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen(8)
        run, pid = _python(run_in_session,
                           "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                           f"s.connect('\\0{name}')\nprint('CONNECT')\n")
    (event,) = _unix_connects(run, pid)
    facts = run.brief(event)
    assert (event["path"], event.get("path_source"), event["return_code"]) == (
        f"@{name}", "kernel", 0), facts
    assert "abstract" in event.get("path_flags", []) and "inode" not in event, facts


def test_datagram_connect_names_the_bound_socket(run_in_session, scratch):
    path = str(scratch / "dgram.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as bound:
        bound.bind(path)
        run, pid = _python(run_in_session,
                           "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                           f"s.connect({path!r})\ns.send(b'x')\nprint('SENT')\n")
        assert bound.recv(4) == b"x"
    (event,) = _unix_connects(run, pid)
    assert (event["path"], event.get("path_source")) == (path, "kernel"), run.brief(event)


def test_failed_unix_connect_is_the_callers_claim(run_in_session, scratch):
    missing = str(scratch / "no-daemon.sock")
    run, pid = _python(run_in_session,
                       "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                       f"try:\n    s.connect({missing!r})\nexcept OSError as e:\n"
                       "    print('FAILED', e.errno)\n")
    assert run.printed_once("FAILED") == ["2"]
    (event,) = _unix_connects(run, pid)
    assert (event["path"], event.get("path_source"), event["return_code"]) == (
        missing, "caller", -2), run.brief(event)


def test_inet_connects_are_not_unix_connects(run_in_session):
    """A TCP connect stays a session.network event, and makes no session.disk."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        run, pid = _python(run_in_session,
                           f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n")
    assert [e["dst_port"] for e in run.of("session.network", pid)] == [port]
    assert not _unix_connects(run, pid)
