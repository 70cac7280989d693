"""An interactive `ssh -tt` login through sshd's ForceCommand, its terminal recorded beside its
kernel events and exported as asciicast v2; and a command without a terminal, which gets none."""

import filecmp
import json
import os
import subprocess
import time
import zlib

import pytest
from screen import Terminal

ENHREC = "/usr/local/bin/enhrec"
CONFIG_PATH = "/etc/enhrec-wrap/enhrec.yaml"   # the run's config (conftest.py's data_dir)
SECRET = "e2e-Sekr1t-passw0rd"


def on_a_terminal(argv, rows=24, cols=80):
    """The ssh client (or a viewer) on a terminal whose master this test holds."""
    return Terminal(argv, dict(os.environ, TERM="xterm"), rows, cols, what="the login",
                    patience=90.0)


def screen(body) -> str:
    """All the output of an export's events: a read may split any text between two of them."""
    return "".join(e[2] for e in body if e[1] == "o")


def stored_bytes(data_dir) -> bytes:
    blobs = []
    for root, _, files in os.walk(data_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            if name.endswith(".gz"):
                data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
            blobs.append(data)
    return b"\n".join(blobs)


def test_an_interactive_login_is_recorded_and_exported(host, tmp_path):
    mark = host.mark()
    client = on_a_terminal(host.ssh_argv(tty=True))
    client.expect(b"$ ")
    client.type(b"echo TTY-$((6 * 7))\r")
    client.expect(b"TTY-42")
    client.resize(30, 100)
    client.type(b"stty size\r")
    client.expect(b"30 100")
    client.type(b"stty -echo; read -r s; stty echo; echo length ${#s}\r")
    client.expect(b"stty echo")
    time.sleep(0.5)
    client.type(SECRET.encode() + b"\r")
    client.expect(f"length {len(SECRET)}".encode())
    client.type(b"uname -s\r")
    client.expect(b"Linux")
    client.type(b"exit 5\r")
    assert client.wait() == 5

    session = host.session_since(mark)
    assert session.start["interactive"] is True
    tty = session.end["terminal_recording"]
    assert tty["truncated"] is False and tty["unwritten_bytes"] == 0 and tty["recorded_bytes"] > 0
    exported = subprocess.run([ENHREC, "export", session.sid, "--format", "asciicast"],
                              capture_output=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.decode().split("\n")[:-1]
    header, body = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    assert header["enhrec"]["login"] == host.user.pw_name
    assert header["enhrec"]["remote"].startswith("127.0.0.1:")
    assert "TTY-42" in screen(body)
    assert ["r", "100x30"] in [e[1:] for e in body]
    assert any(e[1] == "m" and e[2].endswith("uname -s") for e in body)
    assert [e[0] for e in body] == sorted(e[0] for e in body)
    assert SECRET.encode() not in stored_bytes(host.data_dir)
    cast = tmp_path / "login.cast"
    cast.write_bytes(exported.stdout)
    viewer = on_a_terminal(["asciinema", "cat", str(cast)])
    assert viewer.wait() == 0 and b"TTY-42" in viewer.seen


def test_a_command_without_a_terminal_gets_no_pty(host):
    mark = host.mark()
    result = host.ssh("tty; echo no-pty")
    assert result.stdout == "not a tty\nno-pty\n"
    session = host.session_since(mark)
    assert "terminal_recording" not in session.end


@pytest.fixture
def record_all(host):
    """`tty_recording: all` in the run's config for one test, then the config as it was."""
    with open(CONFIG_PATH) as f:
        before = f.read()
    with open(CONFIG_PATH, "w") as f:
        f.write(before + "enhrec:\n  tty_recording: all\n")
    try:
        yield
    finally:
        with open(CONFIG_PATH, "w") as f:
            f.write(before)


def test_with_all_scp_sftp_and_rsync_stay_byte_exact_and_are_recorded(host, record_all,
                                                                      tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(300_000))
    mark = host.mark()
    assert host.scp(str(payload), host.remote("all-scp.bin"), legacy=True).returncode == 0
    back = tmp_path / "back.bin"
    assert host.scp(host.remote("all-scp.bin"), str(back)).returncode == 0
    assert filecmp.cmp(payload, back, shallow=False)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "payload.bin").write_bytes(payload.read_bytes())
    assert host.rsync("-a", f"{tree}/", host.remote("all-rsync/")).returncode == 0
    rback = tmp_path / "rback"
    assert host.rsync("-a", host.remote("all-rsync/"), f"{rback}/").returncode == 0
    assert filecmp.cmp(payload, rback / "payload.bin", shallow=False)
    result = host.ssh("printf 'all-%s\\n' out; printf 'all-err\\n' >&2; tty")
    assert result.stdout == "all-out\nnot a tty\n" and result.stderr == "all-err\n"
    sessions = host.sessions_since(mark, 5)
    for session in sessions:
        assert session.end["terminal_recording"]["unwritten_bytes"] == 0, session.summary()
        assert session.end["exit_status"] in (0, 1)
    exported = subprocess.run([ENHREC, "export", sessions[-1].sid], capture_output=True, timeout=60)
    assert exported.returncode == 0 and b"all-out" in exported.stdout and b"all-err" in exported.stdout

