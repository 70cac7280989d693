"""The rsyslog configs of a fleet (conf/rsyslog, scripts/install-rsyslog.sh): rendered as the make
targets render them, accepted by `rsyslogd -N1`; hostile values refused before anything is written;
and a running collector writes only names of the layout, never its own server id's, whatever a
sender sends. Root (rsyslogd), loopback only."""

import os
import pathlib
import re
import socket
import subprocess
import time
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-rsyslog.sh"
RSYSLOGD = "/usr/sbin/rsyslogd"
SERVER = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
OWN = "11111111-2222-4333-8444-555555555555"
TIMEOUT = 30


def run(argv, env=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})


def render(tmp_path, side, *args, env=None):
    out = tmp_path / f"{side}.conf"
    done = run(["bash", str(SCRIPT), "render", side, str(out), *map(str, args)], env)
    return done, out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def work(tmp_path):
    path = tmp_path / "work"
    path.mkdir(mode=0o700)
    return path


@pytest.mark.parametrize("tls", [False, True])
def test_both_sides_render_and_pass_rsyslogd_check(tmp_path, work, tls):
    env = {}
    if tls:
        for name in ("ca.pem", "me.pem", "me.key"):
            (tmp_path / name).write_text("x")
        env = {"TLS_CA": str(tmp_path / "ca.pem"), "TLS_CERT": str(tmp_path / "me.pem"),
               "TLS_KEY": str(tmp_path / "me.key"), "TLS_PEER": "*.example.com"}
    done, forwarder = render(tmp_path, "forwarder", "logs.example.com", 20514, tmp_path / "log",
                             SERVER, work, env=env)
    assert done.returncode == 0, done.stderr
    done, collector = render(tmp_path, "collector", 20514, "", tmp_path / "clog", OWN, work, env=env)
    assert done.returncode == 0, done.stderr
    for conf in (forwarder, collector):
        text = conf.read_text()
        assert not re.search(r"@[A-Z_]+@", text), text   # every field filled in
        assert ('tls="on"' in text) == tls
        if not tls:   # rsyslogd -N1 opens the certificate files only when TLS is on
            check = run([RSYSLOGD, "-N1", "-f", str(conf)])
            assert check.returncode == 0, check.stderr
    assert f"{tmp_path / 'log'}/{SERVER}/*.log" in forwarder.read_text()
    assert f'startswith "{OWN}/"' in collector.read_text()


@pytest.mark.parametrize("args, message", [
    (["forwarder", 'x";action(type="omfile"', 1, "/l", SERVER, "/w"], "collector host"),
    (["forwarder", "host", "port", "/l", SERVER, "/w"], "port port is not valid"),
    (["forwarder", "host", 70000, "/l", SERVER, "/w"], "port 70000 is not from 1 to 65535"),
    (["forwarder", "host", 1, "relative/log", SERVER, "/w"], "log directory"),
    (["forwarder", "host", 1, "/l", "../../etc", "/w"], "server id"),
    (["collector", 1, "0.0.0.0\n", "/l", OWN, "/w"], "address"),
    (["collector", 1, "", "/l/with space", OWN, "/w"], "log directory"),
])
def test_hostile_values_are_refused_in_one_line(tmp_path, args, message):
    out = tmp_path / "out.conf"
    done = run(["bash", str(SCRIPT), "render", args[0], str(out), *map(str, args[1:])])
    assert done.returncode == 1 and message in done.stderr and len(done.stderr.splitlines()) == 1
    assert not out.exists() or out.stat().st_size == 0


def test_tls_needs_all_its_files_and_a_peer(tmp_path, work):
    (tmp_path / "ca.pem").write_text("x")
    done, _ = render(tmp_path, "forwarder", "h", 1, tmp_path / "log", SERVER, work,
                     env={"TLS_CA": str(tmp_path / "ca.pem")})
    assert done.returncode == 1 and "TLS_CERT is not set" in done.stderr


def test_install_without_a_collector_changes_nothing():
    before = os.path.exists("/etc/enhrec-wrap/rsyslog-forwarder.conf")
    done = run(["bash", str(SCRIPT), "forwarder", ""])
    assert done.returncode == 1 and "COLLECTOR=host:port" in done.stderr
    assert os.path.exists("/etc/enhrec-wrap/rsyslog-forwarder.conf") == before


def test_the_collector_writes_only_the_layout_and_never_its_own_server_id(tmp_path, work):
    """A sender (an rsyslogd sending raw lines of a file, as any RELP client could) tries names
    outside the layout and the collector's own server id; only the proper line is written."""
    port = free_port()
    log = tmp_path / "clog"
    done, collector_conf = render(tmp_path, "collector", port, "127.0.0.1", log, OWN, work)
    assert done.returncode == 0, done.stderr
    messages = tmp_path / "in" / "messages.log"
    messages.parent.mkdir()
    messages.write_text("")
    sender_work = tmp_path / "sender"
    sender_work.mkdir()
    sender_conf = tmp_path / "sender.conf"
    sender_conf.write_text(f'''
global(workDirectory="{sender_work}")
module(load="imfile" mode="inotify")
module(load="omrelp")
input(type="imfile" file="{messages}" tag="t" ruleset="send")
template(name="raw" type="string" string="%rawmsg%")
ruleset(name="send") {{ action(type="omrelp" target="127.0.0.1" port="{port}" template="raw") }}
''')
    assert run([RSYSLOGD, "-N1", "-f", str(sender_conf)]).returncode == 0
    daemons = []
    try:
        for conf, pid in ((collector_conf, tmp_path / "c.pid"), (sender_conf, tmp_path / "s.pid")):
            daemons.append(subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i", str(pid)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 10
            while not pid.exists():
                assert time.monotonic() < deadline, f"rsyslogd did not start with {conf}"
                time.sleep(0.05)
        day = "2026-12-01.00:00:00.log"
        hostile = [
            f"{SERVER}/../../../../tmp/escaped.00:00:00.log x",
            f"../{SERVER}/{day} {{\"a\":1}}",
            f"{SERVER}/{day}x {{\"a\":2}}",
            f"{OWN}/{day} {{\"forged\":true}}",
            f"{SERVER.upper()}/{day} {{\"a\":3}}",
        ]
        good = f'{SERVER}/{day} {{"good":true}}'
        with open(messages, "a") as f:
            f.write("\n".join(hostile + [good]) + "\n")
        target = log / SERVER / day
        deadline = time.monotonic() + TIMEOUT
        while not (target.exists() and target.read_text()):
            assert time.monotonic() < deadline, "the proper line did not arrive"
            time.sleep(0.1)
        time.sleep(0.5)   # the hostile ones were sent before it
        written = sorted(str(p.relative_to(log)) for p in log.rglob("*") if p.is_file())
        assert written == [f"{SERVER}/{day}"]
        assert target.read_text() == '{"good":true}\n'
        assert not pathlib.Path("/tmp/escaped.00:00:00.log").exists()
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait()
