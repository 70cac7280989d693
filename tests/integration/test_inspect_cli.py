"""Each `enhrec` command on real recorded sessions, as a new user would use it, also with --json.

The CLI is /usr/local/bin/enhrec (ENHREC overrides it, split like a shell would); sessions are
recorded by the installed wrapper with the test's own config (conftest.py). These fail, never
skip, without root."""

import http.server
import json
import os
import shlex
import subprocess
import threading
import time

import pytest

ENHREC = shlex.split(os.environ.get("ENHREC", "/usr/local/bin/enhrec"))
SSH_FROM = "10.1.2.3 5555 127.0.0.1 22"


@pytest.fixture(scope="module", autouse=True)
def require_enhrec():
    if not os.access(ENHREC[0], os.X_OK):
        pytest.fail(f"{ENHREC[0]} is missing or not executable: run `make install` (or set ENHREC)",
                    pytrace=False)


@pytest.fixture
def web():
    """A local web server for curl to fetch from."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def enhrec(recorder, *args, check=True, timeout=60):
    result = subprocess.run([*ENHREC, *args[:1], "--config", recorder.config_path, *args[1:]],
                            capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"enhrec {' '.join(args)}: {result.stderr}"
    return result


@pytest.fixture
def recorded(recorder, web):
    """Two sessions: one over "ssh" from 10.1.2.3 that runs curl among other things, one local."""
    command = (f"curl -s http://127.0.0.1:{web}/ >/dev/null; cat /etc/hostname >/dev/null; "
               "echo data > /tmp/enhrec-it-note; rm -f /tmp/enhrec-it-note; exit 4")
    ssh = recorder.run([], options=("--ssh",),
                       env={"SSH_CONNECTION": SSH_FROM, "SSH_ORIGINAL_COMMAND": command})
    assert ssh.returncode == 4, ssh.stderr
    local = recorder.run(["ls", "/"])
    assert local.returncode == 0, local.stderr
    sessions = recorder.sessions()
    (ssh_sid,) = [s for s, v in sessions.items() if v.start.get("addr.remote")]
    (local_sid,) = [s for s in sessions if s != ssh_sid]
    return recorder, ssh_sid, local_sid, web


def test_sessions(recorded):
    recorder, ssh_sid, local_sid, _ = recorded
    out = enhrec(recorder, "sessions").stdout.splitlines()
    assert out[0].split()[:2] == ["SID", "LOGIN"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert list(rows) == [local_sid[:8], ssh_sid[:8]]   # newest first
    assert rows[ssh_sid[:8]][2] == "10.1.2.3:5555" and rows[ssh_sid[:8]][-2:] == ["4", "complete"]
    assert rows[local_sid[:8]][2] == "local"
    assert "\x1b[" not in "\n".join(out)   # piped: no colour
    listed = [json.loads(x) for x in enhrec(recorder, "sessions", "--json").stdout.splitlines()]
    ssh = next(s for s in listed if s["sid"] == ssh_sid)
    assert ssh["remote"] == "10.1.2.3:5555" and ssh["exit_status"] == 4 and ssh["state"] == "complete"
    assert ssh["commands"] >= 4 and ssh["connections"] >= 1 and ssh["files"] > 0


def test_who_ran_curl_from_where_and_what_else(recorded):
    """The issue's question, answered with search then show."""
    recorder, ssh_sid, _, port = recorded
    found = enhrec(recorder, "search", "--program", "curl", "--event", "exec", "--since", "1h").stdout
    (line,) = found.splitlines()
    assert ssh_sid[:8] in line and "root@10.1.2.3" in line and f"http://127.0.0.1:{port}/" in line
    shown = enhrec(recorder, "show", ssh_sid[:8]).stdout
    assert f"session {ssh_sid}  complete" in shown
    assert "from   10.1.2.3:5555" in shown and "exit 4" in shown and "lost   none" in shown
    lines = shown.splitlines()
    curl = next(i for i, x in enumerate(lines) if "/usr/bin/curl -s" in x)
    assert lines[curl].lstrip().startswith("+") and "pid" in lines[curl]
    # under curl's exec, before the next exec (how many files curl reads first varies by host)
    block_end = next((i for i in range(curl + 1, len(lines)) if lines[i].lstrip().startswith("+")),
                     len(lines))
    assert any(f"connect 127.0.0.1:{port} tcp" in x for x in lines[curl:block_end])
    for what in ("/usr/bin/cat /etc/hostname", "open r     /etc/hostname",
                 "w+creat+trunc /tmp/enhrec-it-note", "/usr/bin/rm -f /tmp/enhrec-it-note"):
        assert any(what in x for x in lines), what


def test_show_json(recorded):
    recorder, ssh_sid, _, port = recorded
    doc = json.loads(enhrec(recorder, "show", "--json", ssh_sid).stdout)
    assert doc["session"]["sid"] == ssh_sid and doc["session"]["remote"] == "10.1.2.3:5555"

    def walk(p):
        yield p
        for c in p["children"]:
            yield from walk(c)

    procs = [p for root in doc["processes"] for p in walk(root)]
    curl = next(p for p in procs if any(x["path"] == "/usr/bin/curl" for x in p["execs"]))
    assert any(c["dst_port"] == port for c in curl["connections"])
    assert all(x["offset"] >= 0 for p in procs for x in p["execs"])


def test_search_filters_and_json(recorded):
    recorder, ssh_sid, local_sid, port = recorded
    net = [json.loads(x) for x in enhrec(recorder, "search", "--dst", f"127.0.0.1:{port}",
                                         "--json").stdout.splitlines()]
    assert net and all(e["sid"] == ssh_sid and e["dst_port"] == port for e in net)
    files = [json.loads(x) for x in enhrec(recorder, "search", "--path", "/tmp/enhrec-it-*",
                                           "--event", "open", "--json").stdout.splitlines()]
    assert files and all(e["event"] == "session.disk" for e in files)
    mine = [json.loads(x) for x in enhrec(recorder, "search", "--sid", local_sid[:8],
                                          "--json").stdout.splitlines()]
    assert {e["sid"] for e in mine} == {local_sid}
    assert [e["ei"] for e in mine] == list(range(len(mine)))
    none = enhrec(recorder, "search", "--program", "no-such-program", check=False)
    assert none.returncode == 1 and none.stderr == "enhrec: no matching events\n"
    bad = enhrec(recorder, "search", "--since", "yesterdayish", check=False)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("enhrec: --since")


def test_tail_and_follow(recorded):
    recorder, _, local_sid, _ = recorded
    last = [json.loads(x) for x in enhrec(recorder, "tail", "-n", "3", "--json").stdout.splitlines()]
    assert [e["sid"] for e in last] == [local_sid] * 3 and last[-1]["event"] == "session.end"
    follow = subprocess.Popen([*ENHREC, "tail", "--config", recorder.config_path, "-f", "-n", "0",
                               "--event", "exec"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    seen = []
    reading = threading.Thread(target=lambda: seen.extend(follow.stdout), daemon=True)
    reading.start()
    try:
        time.sleep(1)
        assert recorder.run(["/bin/echo", "followed"]).returncode == 0
        deadline = time.monotonic() + 30
        while not any("/bin/echo followed" in x for x in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("/bin/echo followed" in x for x in seen), seen
    finally:
        # SIGTERM, not SIGINT: a test run started in the background inherits SIGINT ignored.
        follow.terminate()
        follow.wait(timeout=10)
        err = follow.stderr.read()
    assert "Traceback" not in err


def test_doctor(recorded):
    recorder, *_ = recorded
    result = enhrec(recorder, "doctor")
    lines = result.stdout.splitlines()
    names = [x.split(":")[0].split(None, 1)[1] for x in lines[:-1]]
    assert names == ["root", "kernel", "BTF", "tracepoints", "bcc", "kernel headers", "cgroup2",
                     "config", "data_dir", "chain key", "stale sessions", "kernel programs"]
    assert all(x.startswith(("ok ", "warn ")) for x in lines[:-1]), result.stdout
    assert lines[-1] == "recording works on this host"
    assert enhrec(recorder, "doctor", "--repair").returncode == 0


def test_doctor_finds_and_repairs_a_stale_session(recorder, tmp_path):
    proc = recorder.popen(["bash", "-c", "echo $ENHREC_SESSION_ID; sleep 1000"])
    sid = proc.stdout.readline().strip()
    recorder.kill_recorder_and_watchdog(proc.pid)   # with its watchdog, or it ends the session
    proc.wait(timeout=30)   # its sleep holds the pipes until the repair kills it
    found = enhrec(recorder, "doctor")
    stale = next(x for x in found.stdout.splitlines() if "stale sessions" in x)
    assert stale.startswith("warn") and sid[:8] in stale and "enhrec doctor --repair" in stale
    listed = {json.loads(x)["sid"]: json.loads(x) for x in enhrec(recorder, "sessions", "--json").stdout.splitlines()}
    assert listed[sid]["state"] == "incomplete"
    repaired = enhrec(recorder, "doctor", "--repair")
    assert "repaired: 1 session(s)" in repaired.stdout
    assert recorder.sessions()[sid].end["incomplete"] is True
    again = enhrec(recorder, "doctor")
    assert next(x for x in again.stdout.splitlines() if "stale sessions" in x).startswith("ok")


def test_bad_config_is_one_line(recorder, tmp_path):
    result = subprocess.run([*ENHREC, "sessions", "--config", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("enhrec: ") and len(result.stderr.splitlines()) == 1
