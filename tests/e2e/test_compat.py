"""Compatibility with real Teleport events (tests/teleport_compat.py), checked on SSH logins
through the real sshd: every event of a command session and of an interactive one, and the SSH
connection on both session.start and session.end."""

import socket

# A TCP connect (refused: nothing listens on port 9) and a UDP one, from inside the session.
CONNECTS = ("/usr/bin/python3 -c 'import socket\n"
            "try: socket.create_connection((\"127.0.0.1\", 9)).close()\n"
            "except OSError: pass\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect((\"127.0.0.1\", 9))'")


def assert_ssh_connection(host, session, recording):
    """`recording`: session_recording as it must be (`node` when the terminal was recorded)."""
    start, end = session.start, session.end
    for e in (start, end):
        assert e["addr.local"] == e["server_addr"] == f"127.0.0.1:{host.port}", e
        assert e["addr.remote"].startswith("127.0.0.1:") and e["proto"] == "ssh", e
        assert e["session_recording"] == recording and e["cluster_name"] == socket.gethostname(), e
    assert end["addr.remote"] == start["addr.remote"]


def test_ssh_command_session_is_compatible(host, teleport_compat):
    mark = host.mark()
    result = host.ssh(f"cat /etc/hostname; /nonexistent/prog; {CONNECTS}")
    assert result.returncode == 0, result.stderr
    session = host.session_since(mark)
    # Teleport's kinds, each of them (ours, session.refused, in tests/integration/test_compat.py).
    assert {e["event"] for e in session.events} == set(teleport_compat.TELEPORT_KINDS), \
        session.summary()
    teleport_compat.assert_compatible(session.events, ssh=True, terminal=False)
    assert_ssh_connection(host, session, "off")
    assert "size" not in session.start
    assert any(e["return_code"] == -2 for e in session.commands_named("prog"))
    networks = session.of("session.network")
    assert {e["protocol"] for e in networks} == {"tcp", "udp"}
    assert all((e["operation"], e["action"]) == (0, 0) and "return_code" not in e
               for e in networks)


def test_ssh_interactive_session_is_compatible(host, teleport_compat, pty_driver, tmp_path):
    steps = tmp_path / "steps"
    steps.write_text("cat /etc/hostname\nexit 0\n")
    mark = host.mark()
    result = host.client([*pty_driver, "--steps", str(steps), "--timeout", "60", "--",
                          *host.ssh_argv(tty=True)])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    session = host.session_since(mark)
    assert session.start["interactive"] is True
    teleport_compat.assert_compatible(session.events, ssh=True, terminal=True)
    assert_ssh_connection(host, session, "node")
    assert session.start["ssh_key_fingerprint"] == host.fingerprint
