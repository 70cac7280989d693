"""`enhrec` on generated logs: sessions, show, search, tail, doctor, and bad input (one line,
non-zero exit, never a traceback). No root needed: the config is handed in directly."""

import calendar
import os
import time

import orjson
import pytest

from enhrec_wrap.kernel import abi
from enhrec_wrap.cli import enhrec as cli
from enhrec_wrap.events.timestamps import rfc3339_from_seconds
from enhrec_wrap.inspect import doctor
from enhrec_wrap.inspect.output import Progress
from enhrec_wrap.inspect.times import parse_time
from enhrec_wrap.log import file_lines, layout, reader, store
from enhrec_wrap.log.auditlog import AuditLog
from enhrec_wrap.config import Config

SERVER = "5a1f0e2d-1111-4222-8333-444455556666"
ALICE = "a11ce000-0000-4000-8000-000000000001"
BOB = "b0b00000-0000-4000-8000-000000000002"
CAROL = "ca701000-0000-4000-8000-000000000003"
TWIN = "a11ce000-1111-4000-8000-000000000004"   # shares "a11ce000" with ALICE
DAVE = "da7e0000-0000-4000-8000-000000000005"
NOW = time.time()
O_WRONLY_CREAT_TRUNC = 0o1101


def stamp(epoch):
    return rfc3339_from_seconds(epoch)


class Writer:
    """One session's events, written as the recorder writes them (both sinks)."""

    def __init__(self, config, sid, login, start, remote=None, command=("bash",)):
        self.config, self.sid, self.login, self.t = config, sid, login, start
        self.ei = 0
        self.store = store.SessionStore.create(config.log_dir, SERVER, sid)
        self.start = start
        fields = {"interactive": False, "enhanced_recording": True, "initial_command": list(command)}
        if remote:
            fields["addr.remote"] = remote
        self.emit("session.start", "T2000I", 0.0, **fields)

    def emit(self, kind, code, after, **fields):
        self.t += after
        e = {"ei": self.ei, "event": kind, "code": code, "uid": f"{self.sid}-{self.ei}",
             "time": stamp(self.t), "sid": self.sid, "namespace": "default", "server_id": SERVER,
             "server_hostname": "web-01", "login": self.login, "user": self.login}
        e.update(fields)
        self.ei += 1
        line = orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE)
        audit = AuditLog(self.config.log_dir, SERVER, clock=lambda: self.t)
        audit.write([line])
        audit.close()
        self.store.write([e], [line])
        return e

    def exec(self, pid, ppid, path, argv, rc=0, after=0.01):
        return self.emit("session.command", "T4000I", after, pid=pid, ppid=ppid, cgroup_id=7,
                         program=os.path.basename(path)[:15], path=path, argv=argv, return_code=rc,
                         argv_truncated=False)

    def open(self, pid, ppid, program, path, flags=0, rc=3, after=0.001, **fields):
        return self.emit("session.disk", "T4001I", after, pid=pid, ppid=ppid, cgroup_id=7,
                         program=program, path=path, flags=flags, return_code=rc, **fields)

    def connect(self, pid, ppid, program, addr, port, rc=0, version=4, after=0.001,
                result_field="connect_return_code"):
        return self.emit("session.network", "T4002I", after, pid=pid, ppid=ppid, cgroup_id=7,
                         program=program, src_addr="10.0.0.1" if version == 4 else "::1",
                         dst_addr=addr, dst_port=port, version=version, operation=0, action=0,
                         protocol="tcp", **{result_field: rc})

    def end(self, status=0, after=0.01):
        self.emit("session.end", "T2004I", after, enhanced_recording=True, interactive=False,
                  participants=[self.login], session_start=stamp(self.start),
                  session_stop=stamp(self.t + after), exit_status=status,
                  lost_events={"command": 0, "disk": 0, "network": 0}, lost_return_codes=0)
        self.store.close(ended=True)


@pytest.fixture
def config(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "host_uuid").write_text(SERVER)
    cfg = Config(data_dir=str(data), cgroup_path=str(tmp_path / "cgroup"))
    seen = []

    def fake_load_config(path):
        seen.append(path)
        return cfg

    monkeypatch.setattr(cli, "load_config", fake_load_config)
    cfg_seen = seen
    return cfg, cfg_seen


@pytest.fixture
def logs(config):
    """alice (3h ago, from 10.0.0.5, complete) runs curl; bob (2 days ago, local) was cut off;
    carol is live now."""
    cfg, _ = config
    a = Writer(cfg, ALICE, "alice", NOW - 3 * 3600, remote="10.0.0.5:51234",
               command=("bash", "-c", "curl http://example.com; cat /etc/hostname"))
    a.exec(100, 99, "/usr/bin/bash", ["-c", "curl http://example.com; cat /etc/hostname"])
    a.open(100, 99, "bash", "/etc/ld.so.cache", after=0.002)
    a.exec(101, 100, "/usr/bin/curl", ["http://example.com"], after=0.5)
    a.open(101, 100, "curl", "/lib/x86_64-linux-gnu/libcurl.so.4")
    a.open(101, 100, "curl", "/root/.curlrc", rc=-2)
    a.connect(101, 100, "curl", "93.184.216.34", 80)
    a.connect(101, 100, "curl", "2001:db8::1", 443, rc=-111, version=6)
    a.exec(102, 100, "/usr/bin/cat", ["/etc/hostname"], after=0.2)
    a.open(102, 100, "cat", "/etc/hostname")
    a.open(103, 102, "sh", "/tmp/out", flags=O_WRONLY_CREAT_TRUNC)   # a child with no exec
    a.exec(100, 99, "/usr/bin/nonexistent", [], rc=-2)
    a.end(status=3)

    b = Writer(cfg, BOB, "bob", NOW - 2 * 86400, command=("ls",))
    b.exec(200, 199, "/usr/bin/ls", ["-l", "/home"])
    b.open(200, 199, "ls", "/home", flags=0o200000)
    b.store.flush()
    for s in b.store._streams.values():   # the recorder died
        os.close(s.fd)
    os.close(b.store._index_fd)
    os.close(b.store.lock.fd)

    c = Writer(cfg, CAROL, "carol", NOW - 60, command=("vim",))
    c.exec(300, 299, "/usr/bin/vim", ["notes.txt"])
    yield cfg
    c.store.close(ended=True)


def run(capsys, *args):
    with pytest.raises(SystemExit) as done:
        cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return done.value.code, out, err


def one_error_line(err):
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("enhrec: "), err
    return lines[0]


# --- sessions -------------------------------------------------------------------------------

def test_sessions_newest_first_with_counts_and_state(logs, capsys):
    code, out, err = run(capsys, "sessions")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SID", "LOGIN", "FROM"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == [CAROL[:8], ALICE[:8], BOB[:8]]
    assert rows[1][1:3] == ["alice", "10.0.0.5:51234"]
    assert rows[1][-5:] == ["4", "5", "2", "3", "complete"]   # commands files conns exit state
    assert rows[0][-1] == "live" and rows[2][-1] == "incomplete"
    assert "\x1b[" not in out   # plain when piped


def test_sessions_json_and_filters(logs, capsys):
    code, out, _ = run(capsys, "sessions", "--json", "--login", "alice")
    assert code == 0
    (row,) = [orjson.loads(x) for x in out.splitlines()]
    assert row["sid"] == ALICE and row["remote"] == "10.0.0.5:51234" and row["exit_status"] == 3
    assert (row["commands"], row["files"], row["connections"]) == (4, 5, 2)
    assert row["state"] == "complete" and 0.7 < row["duration_seconds"] < 1.0
    code, out, _ = run(capsys, "sessions", "--json", "--since", "1d")
    assert {orjson.loads(x)["sid"] for x in out.splitlines()} == {ALICE, CAROL}


def test_config_option_is_read_on_group_and_command(config, logs, capsys):
    _, seen = config
    run(capsys, "--config", "/etc/a.yaml", "sessions")
    run(capsys, "sessions", "--config", "/etc/b.yaml")
    assert seen[-2:] == ["/etc/a.yaml", "/etc/b.yaml"]


# --- show -----------------------------------------------------------------------------------

def test_show_by_unique_prefix_reads_as_a_tree(logs, capsys):
    code, out, err = run(capsys, "show", CAROL[:4])
    assert code == 0, err
    code, out, err = run(capsys, "show", ALICE[:10])
    assert code == 0, err
    assert f"session {ALICE}  complete" in out
    assert "alice" in out and "10.0.0.5:51234" in out and "exit 3" in out and "lost   none" in out
    lines = out.splitlines()
    bash = next(i for i, x in enumerate(lines) if "/usr/bin/bash -c" in x)
    curl = next(i for i, x in enumerate(lines) if "/usr/bin/curl http://example.com" in x)
    assert lines[bash].startswith("+0.010s ") and lines[curl].startswith("  +0.5")   # one level down
    below_curl = lines[curl + 1:curl + 6]
    assert any("open r     /root/.curlrc  ENOENT" in x for x in below_curl)
    assert any("connect 93.184.216.34:80 tcp" in x for x in below_curl)
    assert any("connect [2001:db8::1]:443 tcp  ECONNREFUSED" in x for x in below_curl)
    assert any("library and locale reads" in x for x in below_curl)   # libcurl hidden
    assert any("exec failed /usr/bin/nonexistent  ENOENT" in x for x in lines)
    assert any("open w+creat+trunc /tmp/out" in x for x in lines)
    assert "\x1b[" not in out


def test_show_all_files_and_json(logs, capsys):
    code, out, _ = run(capsys, "show", "--all-files", ALICE)
    assert "libcurl.so.4" in out
    code, out, _ = run(capsys, "show", "--json", ALICE)
    assert code == 0
    doc = orjson.loads(out)
    assert doc["session"]["login"] == "alice" and doc["session"]["state"] == "complete"
    (bash,) = doc["processes"]
    assert bash["pid"] == 100 and bash["execs"][0]["path"] == "/usr/bin/bash"
    curl = next(c for c in bash["children"] if c["pid"] == 101)
    assert curl["execs"][0]["argv"] == ["http://example.com"] and curl["execs"][0]["offset"] > 0.5
    assert [(c["dst_addr"], c["dst_port"]) for c in curl["connections"]] == [("93.184.216.34", 80),
                                                                             ("2001:db8::1", 443)]
    cat = next(c for c in bash["children"] if c["pid"] == 102)
    assert cat["children"][0]["pid"] == 103 and cat["children"][0]["files"][0]["path"] == "/tmp/out"


def test_show_reads_results_of_both_schemas(config, capsys):
    """Schema 2 marks an unknown exec result (return_code_unknown) and names a connect's result
    connect_return_code; schema 1 wrote null and return_code. Both read the same."""
    cfg, _ = config
    w = Writer(cfg, DAVE, "dave", NOW - 600, command=("sh",))
    w.exec(400, 399, "/bin/sh", [])
    w.emit("session.command", "T4000I", 0.01, pid=401, ppid=400, cgroup_id=7, program="sh",
           path="/usr/bin/lost2", argv=[], return_code=-2**31, return_code_unknown=True,
           argv_truncated=False)
    w.emit("session.command", "T4000I", 0.01, pid=402, ppid=400, cgroup_id=7, program="sh",
           path="/usr/bin/lost1", argv=[], return_code=None, argv_truncated=False)
    w.connect(403, 400, "nc", "10.0.0.9", 9, rc=-111)
    w.connect(404, 400, "nc", "10.0.0.8", 8, rc=-111, result_field="return_code")
    w.end()
    code, out, err = run(capsys, "show", DAVE)
    assert code == 0, err
    assert any("/usr/bin/lost2" in x and "result unknown" in x for x in out.splitlines()), out
    assert any("/usr/bin/lost1" in x and "result unknown" in x for x in out.splitlines()), out
    assert "connect 10.0.0.9:9 tcp  ECONNREFUSED" in out and "connect 10.0.0.8:8 tcp  ECONNREFUSED" in out
    assert "2147483648" not in out


def test_show_a_session_whose_recorder_died(logs, capsys):
    code, out, err = run(capsys, "show", BOB)
    assert code == 0, err
    assert "incomplete" in out and "/usr/bin/ls -l /home" in out and "unknown" in out


def test_show_ambiguous_and_unknown_sids(logs, capsys):
    twin = Writer(logs, TWIN, "dave", NOW - 10)
    twin.end()
    code, _, err = run(capsys, "show", "a11ce")
    assert code == 2 and "ambiguous" in one_error_line(err)
    code, _, err = run(capsys, "show", "fff")
    assert code == 2 and "no session 'fff'" in one_error_line(err)
    code, _, err = run(capsys, "show", "not-a-sid!")
    assert code == 2 and "is not a session id" in one_error_line(err)


# --- search ---------------------------------------------------------------------------------

def search(capsys, *args):
    code, out, err = run(capsys, "search", "--json", *args)
    return code, [orjson.loads(x) for x in out.splitlines()], err


@pytest.mark.parametrize("args, expected", [
    (["--program", "curl", "--event", "exec"], [(ALICE, 3)]),
    (["--program", "cu*", "--event", "connect"], [(ALICE, 6), (ALICE, 7)]),
    (["--path", "/etc/*"], [(ALICE, 2), (ALICE, 9)]),
    (["--path", "*curlrc"], [(ALICE, 5)]),
    (["--dst", "93.184.216.34:80"], [(ALICE, 6)]),
    (["--dst", ":443"], [(ALICE, 7)]),
    (["--dst", "[2001:db8::1]:443"], [(ALICE, 7)]),
    (["--dst", "93.184.0.0/16"], [(ALICE, 6)]),
    (["--login", "bob"], [(BOB, 0), (BOB, 1), (BOB, 2)]),
    (["--event", "start", "--event", "end"], [(BOB, 0), (ALICE, 0), (ALICE, 12), (CAROL, 0)]),
    (["--event", "exec", "--until", "1d"], [(BOB, 1)]),
    (["--event", "exec", "--since", "2h"], [(CAROL, 1)]),
    (["--sid", BOB[:6], "--event", "open"], [(BOB, 2)]),
])
def test_search_filters(logs, capsys, args, expected):
    code, found, err = search(capsys, *args)
    assert code == 0, err
    assert [(e["sid"], e["ei"]) for e in found] == expected


def test_search_json_lines_are_the_logged_lines(logs, capsys):
    code, out, _ = run(capsys, "search", "--json", "--sid", ALICE)
    day_lines = b"".join(open(p, "rb").read() for _, p in
                         reader.LogDir(logs.log_dir).day_files())
    assert code == 0 and all(x.encode() + b"\n" in day_lines for x in out.splitlines())


def test_search_human_lines(logs, capsys):
    code, out, _ = run(capsys, "search", "--program", "curl", "--event", "exec")
    assert code == 0
    (line,) = out.splitlines()
    assert ALICE[:8] in line and "alice@10.0.0.5 " in line and "exec" in line
    assert "[101<100] /usr/bin/curl http://example.com" in line


def test_search_without_matches_exits_1(logs, capsys):
    code, out, err = run(capsys, "search", "--program", "wget")
    assert code == 1 and out == "" and one_error_line(err) == "enhrec: no matching events"


def test_corrupt_lines_are_skipped_and_counted(logs, capsys):
    (_, path), *_ = reader.LogDir(logs.log_dir).day_files()
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    code, found, err = search(capsys, "--login", "bob")
    assert code == 0 and len(found) == 3


@pytest.mark.parametrize("args, words", [
    (["search", "--since", "soon"], "--since 'soon': not a time"),
    (["search", "--since", "1h", "--until", "2h"], "is after --until"),
    (["search", "--dst", "example.com:80"], "not an IP address"),
    (["search", "--dst", "10.0.0.1:99999"], "port must be"),
    (["search", "--event", "bogus"], "unknown event type"),
    (["search", "--sid", "xyz!"], "not a session id"),
    (["search", "--nope"], "No such option"),
    (["tail", "-n", "-3"], "-n"),
    (["show"], "Missing argument"),
    (["frobnicate"], "No such command"),
])
def test_bad_input_is_one_line_and_non_zero(logs, capsys, args, words):
    code, _, err = run(capsys, *args)
    assert code == 2 and words in one_error_line(err)


def test_missing_log_dir_says_so(config, capsys):
    code, _, err = run(capsys, "sessions")
    assert code == 2 and "no audit log at" in one_error_line(err)


# --- tail -----------------------------------------------------------------------------------

def test_tail_prints_the_newest_matching_events(logs, capsys):
    code, out, _ = run(capsys, "tail", "-n", "2", "--json")
    assert code == 0
    # events.log points at the newest day: carol's (live) events are its last lines.
    assert [orjson.loads(x)["ei"] for x in out.splitlines()][-1] == 1
    code, out, _ = run(capsys, "tail", "--event", "exec", "-n", "1")
    assert "/usr/bin/vim notes.txt" in out


# --- times ----------------------------------------------------------------------------------

NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))


@pytest.mark.parametrize("text, expected", [
    ("90s", "2024-03-05T11:58:30.000Z"),
    ("30m", "2024-03-05T11:30:00.000Z"),
    ("1h", "2024-03-05T11:00:00.000Z"),
    ("2d", "2024-03-03T12:00:00.000Z"),
    ("1w", "2024-02-27T12:00:00.000Z"),
    ("today", "2024-03-05T00:00:00.000Z"),
    ("yesterday", "2024-03-04T00:00:00.000Z"),
    ("now", "2024-03-05T12:00:00.000Z"),
    ("2024-03-01", "2024-03-01T00:00:00.000Z"),
    ("2024-03-01T08:30", "2024-03-01T08:30:00.000Z"),
    ("2024-03-01 08:30:15Z", "2024-03-01T08:30:15.000Z"),
    ("2024-03-01T08:30:15+02:00", "2024-03-01T06:30:15.000Z"),
])
def test_parse_time(text, expected):
    assert parse_time(text, "--since", now=NOON) == expected


def test_progress_only_on_a_terminal_and_after_a_while(monkeypatch, capsys):
    progress = Progress()
    progress.enabled, progress.DELAY = True, 0.0
    progress.start(200)
    progress.update(100, "2024-03-05.00:00:00.log")
    progress.finish()
    err = capsys.readouterr().err
    assert "reading 2024-03-05.00:00:00.log 50%" in err and err.endswith("\r\x1b[K")


# --- doctor ---------------------------------------------------------------------------------

def test_doctor_checks(tmp_path):
    assert doctor.check_kernel("5.4.0-150-generic").status == "FAIL"
    assert doctor.check_kernel("6.1.0-18-amd64").status == "ok"
    missing = doctor.check_btf(str(tmp_path / "none"))   # the offsets come from BTF
    assert missing.status == "FAIL" and "this kernel has no BTF" in missing.detail, missing
    if os.path.exists(doctor.BTF_PATH):
        assert doctor.check_btf().status == "ok"
    cfg = Config(data_dir=str(tmp_path))
    assert doctor.check_data_dir(cfg).status == "ok"
    (tmp_path / "file").write_text("x")
    blocked = Config(data_dir=str(tmp_path / "file" / "data"))
    assert doctor.check_data_dir(blocked).status == "FAIL"
    result, _ = doctor.check_config(str(tmp_path / "missing.yaml"))
    assert result.status == "FAIL" and "config file not found" in result.detail
    assert ("syscalls", "sys_exit_execve") in abi.tracepoints()


def test_doctor_fails_on_a_special_file_where_the_log_writes(tmp_path):
    """A FIFO or device planted as the day file, host_uuid or chain state: the recorder refuses
    to start (files.open_regular), so doctor must not say the data_dir is fine."""
    cfg = Config(data_dir=str(tmp_path))
    sid = "0d8e2a35-54a8-4f7b-9a52-5bb2e1d3c1a1"
    (tmp_path / "host_uuid").write_text(sid)
    day = layout.day_file(cfg.log_dir, sid, time.time())
    os.makedirs(os.path.dirname(day))
    assert doctor.check_data_dir(cfg).status == "ok"
    os.mkfifo(day)
    result = doctor.check_data_dir(cfg)
    assert result.status == "FAIL" and f"{day} is a FIFO, not a regular file" in result.detail
    os.unlink(day)
    os.unlink(tmp_path / "host_uuid")
    os.mkfifo(tmp_path / "host_uuid")
    result = doctor.check_data_dir(cfg)
    assert result.status == "FAIL" and "host_uuid is a FIFO" in result.detail


def test_doctor_exit_status_follows_failures(monkeypatch, capsys):
    good = [doctor.ok("root", "running as root"), doctor.warn("stale sessions", "1", "run it")]
    monkeypatch.setattr(doctor, "run", lambda path, repair, unload: good)
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "warn  stale sessions: 1: run it" in out
    bad = good + [doctor.fail("BTF", "missing", "install it")]
    monkeypatch.setattr(doctor, "run", lambda path, repair, unload: bad)
    code, out, err = run(capsys, "doctor")
    assert code == 1 and "FAIL  BTF: missing: install it" in out
    assert "recording cannot work" in one_error_line(err)


# --- schema 2 capture: resolved paths, refusals, escapes -------------------------------------

def test_safe_escapes_every_invisible_character_and_the_backslash_reversibly():
    from enhrec_wrap.inspect.text import safe
    assert safe("plain /usr/bin/ls") == "plain /usr/bin/ls"
    assert safe("a\x1b[31mb") == "a\\x1b[31mb"
    assert safe("a\\x1b[31mb") == "a\\\\x1b[31mb"          # the text, not an ESC
    assert safe("invoice\u202egpj.sh") == "invoice\\u202egpj.sh"   # right-to-left override
    assert safe("zero\u200bwidth\u2066x\u2028") == "zero\\u200bwidth\\u2066x\\u2028"
    assert safe("nb\u00a0sp \U000e0001") == "nb\\u00a0sp \\U000e0001"
    assert safe("\u0085") == "\\u0085"                      # C1 NEL: not the log's \x85 byte
    assert safe("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"   # letters stay
    # A field the log escaped (bytes that are not UTF-8): its escapes are shown as they are.
    assert safe("\\xff\\\\n\u202e", escaped=True) == "\\xff\\\\n\\u202e"


def test_show_decides_routine_reads_on_the_file_the_kernel_opened(config, capsys):
    cfg, _ = config
    w = Writer(cfg, DAVE, "dave", NOW - 600, command=("sh",))
    w.exec(400, 399, "/bin/sh", [])
    w.open(400, 399, "sh", "/usr/lib/x86_64-linux-gnu/libc.so.6", path_source="kernel")
    w.open(400, 399, "sh", "/tmp/stolen", path_source="kernel",
           requested_path="/usr/lib/x86_64-linux-gnu/../../../tmp/stolen")
    w.open(400, 399, "sh", "/usr/lib/x86_64-linux-gnu/../../../etc/nothing.so", rc=-2,
           path_source="caller")
    w.open(400, 399, "sh", "/usr/lib/x86_64-linux-gnu/libgone.so (deleted)", path_source="kernel",
           path_flags=["deleted"])
    w.end()
    code, out, err = run(capsys, "show", DAVE)
    assert code == 0, err
    assert "libc.so.6" not in out and "(1 library and locale reads" in out
    assert "open r     /tmp/stolen (asked for /usr/lib/x86_64-linux-gnu/../../../tmp/stolen)" in out
    assert "/usr/lib/x86_64-linux-gnu/../../../etc/nothing.so  ENOENT" in out
    assert "libgone.so (deleted)" in out


def test_show_and_search_say_what_a_disk_event_that_is_no_open_did(config, capsys):
    """A unix connect, a ptrace attach and a pidfd_getfd are session.disk events (docs/events.md,
    `via`): shown by what they did, not as an open for reading, and never hidden as routine."""
    cfg, _ = config
    w = Writer(cfg, DAVE, "dave", NOW - 600, command=("sh",))
    w.exec(400, 399, "/bin/sh", [])
    w.open(400, 399, "sh", "/run/docker.sock", via="unix_connect", path_source="kernel",
           requested_path="/var/run/docker.sock")
    w.open(400, 399, "sh", "/var/run/nscd/socket", via="unix_connect", rc=-2,
           path_source="caller")
    w.open(400, 399, "sh", "/usr/lib/x86_64-linux-gnu/libc.so.6", via="ptrace_attach", flags=16,
           target_pid=4242, path_source="kernel")
    w.open(400, 399, "sh", "/etc/shadow", via="pidfd_getfd", path_source="kernel")
    w.end()
    code, out, err = run(capsys, "show", DAVE)
    assert code == 0, err
    assert "connect unix /run/docker.sock (asked for /var/run/docker.sock)" in out
    assert "connect unix /var/run/nscd/socket  ENOENT" in out
    assert "ptrace /usr/lib/x86_64-linux-gnu/libc.so.6 (pid 4242)" in out
    assert "take fd r     /etc/shadow" in out
    assert "open r" not in out and "library and locale" not in out
    code, out, err = run(capsys, "search", "--path", "/run/docker.sock")
    assert code == 0, err
    assert "sh connect unix /run/docker.sock" in out


def test_search_path_matches_the_resolved_and_the_requested_path(config, capsys):
    cfg, _ = config
    w = Writer(cfg, DAVE, "dave", NOW - 600, command=("sh",))
    w.exec(400, 399, "/bin/sh", [])
    w.open(400, 399, "sh", "/etc/shadow", path_source="kernel", requested_path="../etc/shadow")
    w.emit("session.command", "T4000I", 0.01, pid=401, ppid=400, cgroup_id=7, program="x",
           path="/tmp/x", argv=[], return_code=0, argv_truncated=False, path_source="kernel",
           executable="/memfd:payload (deleted)")
    w.end()
    for pattern, expected in (("/etc/shadow", "/etc/shadow"), ("../etc/*", "/etc/shadow"),
                              ("/memfd:*", "/tmp/x")):
        code, out, err = run(capsys, "search", "--path", pattern)
        assert code == 0, err
        assert expected in out, (pattern, out)


def test_show_and_search_list_refused_calls_and_io_uring(config, capsys):
    cfg, _ = config
    w = Writer(cfg, DAVE, "dave", NOW - 600, command=("sh",))
    w.exec(400, 399, "/bin/sh", [])
    w.emit("session.refused", "X4100W", 0.01, pid=400, ppid=399, cgroup_id=7, program="sh",
           syscall="io_uring_setup", syscall_nr=425, arch="x86_64", refusal="errno")
    w.emit("session.refused", "X4100W", 0.01, pid=400, ppid=399, cgroup_id=7, program="sh",
           syscall="i386:5", syscall_nr=5, arch="i386", refusal="killed")
    w.emit("session.io_uring", "X4101I", 0.01, pid=400, ppid=399, cgroup_id=7, program="sh",
           opcode=18, opcode_name="OPENAT")
    w.emit("session.network", "T4002I", 0.01, pid=400, ppid=399, cgroup_id=7, program="sh",
           src_addr="0.0.0.0", dst_addr="10.0.0.7", dst_port=53, version=4, operation=1,
           action=0, protocol="udp")
    w.end()
    code, out, err = run(capsys, "show", DAVE)
    assert code == 0, err
    assert "connect 10.0.0.7:53 udp send" in out   # an unconnected send, not a connect
    assert "refused io_uring_setup (x86_64): failed with EPERM" in out
    assert "refused i386:5 (i386): process killed" in out
    assert "io_uring OPENAT" in out
    code, out, err = run(capsys, "search", "--event", "refused")
    assert code == 0, err
    assert len([x for x in out.splitlines() if "refused" in x]) == 2 and "OPENAT" not in out


# --- every reader says what it skipped (issue 11) -------------------------------------------

def append_to_current_day_file(cfg, data):
    with open(reader.LogDir(cfg.log_dir).current_file(), "ab") as f:
        f.write(data)


@pytest.mark.parametrize("args", [
    ["sessions"], ["search"], ["search", "--login", "bob"], ["search", "--program", "vim"],
    ["show", BOB[:8]], ["tail"], ["tail", "--login", "carol", "-n", "1"],
])
def test_every_reader_says_how_many_lines_it_skipped(logs, capsys, args):
    garbage = f'garbage {BOB} {CAROL}\n{{"ei": 1, "sid": "{BOB}"\n'.encode()
    append_to_current_day_file(logs, garbage + b"x" * (file_lines.MAX_LINE_BYTES + 1) + b"\n")
    c = Writer(logs, "c0ffee00-0000-4000-8000-000000000005", "dave", NOW)   # after the damage
    c.end()
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert "enhrec: skipped 2 line(s) that are not JSON events" in err.splitlines(), err
    if args[0] != "show":   # show reads the lines that name its session
        assert "enhrec: skipped 1 line(s) longer than 1 MiB (no event is that long)" in err.splitlines(), err


def test_show_names_a_fifo_in_place_of_a_session_file_and_goes_on(logs, capsys):
    import signal

    def hung(*_):
        raise AssertionError("enhrec show hung on a FIFO")
    directory = os.path.join(logs.log_dir, SERVER, "sessions", "default")
    part = os.path.join(directory, f"{ALICE}-0.events.gz")
    os.unlink(part)
    os.mkfifo(part)
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        code, out, err = run(capsys, "show", ALICE[:8])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert code == 0
    assert f"enhrec: {part}: a FIFO, not a regular file: skipped" in err.splitlines(), err
    assert "/usr/bin/curl http://example.com" in out   # from the daily files


def test_show_names_a_session_file_that_is_not_gzip(logs, capsys):
    part = os.path.join(logs.log_dir, SERVER, "sessions", "default", f"{ALICE}-0.events.gz")
    with open(part, "wb") as f:
        f.write(os.urandom(4096))
    code, out, err = run(capsys, "show", ALICE[:8])
    assert code == 0
    assert f"enhrec: {part}: not a gzip file: skipped" in err.splitlines(), err
    assert "/usr/bin/curl http://example.com" in out


# --- holes, and daily files removed or renamed (issue 11) -------------------------------------

def lose(writer, count):
    """`count` events the session made that reached neither sink."""
    writer.ei += count


def test_show_reports_events_missing_from_both_sinks(config, capsys):
    cfg, _ = config
    w = Writer(cfg, ALICE, "alice", NOW - 60)
    w.exec(100, 99, "/usr/bin/true", [])
    lose(w, 3)
    w.exec(101, 99, "/usr/bin/false", [], rc=0)
    w.end()
    code, out, err = run(capsys, "show", ALICE[:8])
    assert code == 0, err
    assert "lost   3 event(s) missing from the log (ei 2-4)" in out
    assert "lost   none" not in out
    code, out, _ = run(capsys, "show", "--json", ALICE)
    assert orjson.loads(out)["session"]["missing_events"] == 3
    code, out, _ = run(capsys, "sessions")
    assert "complete, 3 missing" in out
    code, out, err = run(capsys, "search", "--program", "true")
    assert code == 0
    assert "enhrec: 3 event(s) of 1 session(s) missing from the log (a11ce000 ei 2-4)" in err


def test_show_of_a_session_whose_start_is_gone(config, capsys):
    cfg, _ = config
    w = Writer(cfg, ALICE, "alice", NOW - 60)
    w.exec(100, 99, "/usr/bin/true", [])
    w.end()
    directory = os.path.join(cfg.log_dir, SERVER, "sessions", "default")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    (_, day), = reader.LogDir(cfg.log_dir).day_files()
    with open(day, "rb") as f:
        kept = [x for x in f if b'"ei":0,' not in x]
    with open(day, "wb") as f:
        f.writelines(kept)
    code, out, err = run(capsys, "show", ALICE[:8])
    assert code == 0, err
    assert "ran    unknown (session.start is missing)" in out
    assert "1 event(s) missing from the log (ei 0)" in out


def test_a_renamed_daily_file_loses_no_session_and_shrinks_none(logs, capsys):
    code, before, _ = run(capsys, "sessions", "--json")
    for _, path in reader.LogDir(logs.log_dir).day_files():
        os.rename(path, path + ".1")   # logrotate, every file
    code, after, err = run(capsys, "sessions", "--json")
    assert code == 0, err
    rows = lambda out: sorted((r["sid"], r["commands"], r["files"], r["duration_seconds"],
                               r["state"], r["missing_events"])
                              for r in map(orjson.loads, out.splitlines()))
    # Carol's is live: her session files may be a batch behind (the store's thread), as a
    # live session's are, until it ends.
    assert [r for r in rows(after) if r[0] != CAROL] == [r for r in rows(before) if r[0] != CAROL]
    assert CAROL in after
    code, out, err = run(capsys, "search", "--program", "curl", "--json")
    assert code == 0, err
    assert {orjson.loads(x)["sid"] for x in out.splitlines()} == {ALICE}
    code, out, _ = run(capsys, "sessions", "--json", "--since", "1d")
    assert {orjson.loads(x)["sid"] for x in out.splitlines()} == {ALICE, CAROL}


def test_a_session_half_in_a_renamed_daily_file_is_whole(config, capsys):
    cfg, _ = config
    w = Writer(cfg, ALICE, "alice", NOW - 60)
    w.exec(100, 99, "/usr/bin/true", [])
    (_, day), = reader.LogDir(cfg.log_dir).day_files()
    os.rename(day, day + ".1")
    w.exec(101, 99, "/usr/bin/false", [])
    w.end()
    code, out, _ = run(capsys, "sessions", "--json")
    (row,) = map(orjson.loads, out.splitlines())
    assert (row["commands"], row["missing_events"], row["state"]) == (2, 0, "complete")
    assert row["duration_seconds"] > 0.015


def test_tail_says_which_events_of_a_session_it_did_not_find(config, capsys):
    cfg, _ = config
    w = Writer(cfg, ALICE, "alice", NOW - 60)
    w.exec(100, 99, "/usr/bin/true", [])
    lose(w, 2)
    w.exec(101, 99, "/usr/bin/false", [])
    code, out, err = run(capsys, "tail", "-n", "5")
    assert code == 0
    assert "enhrec: 2 event(s) of 1 session(s) missing from the log (a11ce000 ei 2-3)" in err
