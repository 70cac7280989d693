"""`enhrec keygen`, `verify` and `seal` on generated logs, and `sessions`, `search`, `tail` on a
collector's log of several hosts (the copies rsyslog writes, with a line delivered twice). No
root needed: the config is handed in directly."""

import calendar
import os
import shutil

import orjson
import pytest

from enhrec_wrap.cli import enhrec as cli
from enhrec_wrap.events.timestamps import rfc3339_from_seconds
from enhrec_wrap.config import Config
from enhrec_wrap.log import chain, chainstate
from enhrec_wrap.log.auditlog import AuditLog

WEB = "5a1f0e2d-1111-4222-8333-444455556666"
DB = "6b2f0e2d-2222-4333-8444-555566667777"
NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))
DAY = "2024-03-05.00:00:00.log"


def event(server, hostname, sid, ei, kind="session.command", **fields):
    e = {"ei": ei, "event": kind, "code": "T4000I", "time": rfc3339_from_seconds(NOON + ei), "sid": sid,
         "namespace": "default", "server_id": server, "server_hostname": hostname,
         "login": "alice", "user": "alice", "pid": 10, "ppid": 1, "program": "curl",
         "path": "/usr/bin/curl", "argv": [hostname], "return_code": 0, **fields}
    return orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE)


def record(data_dir, server, hostname, sid, n=4):
    """A host's own log: host_uuid, a chain key from keygen, n events of one session."""
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "host_uuid"), "w") as f:
        f.write(server)
    log_dir = os.path.join(data_dir, "log")
    block, k0, _ = chainstate.replace_key(data_dir, server, os.path.join(log_dir, server), 3600,
                                          "keygen", clock=lambda: NOON)
    log = AuditLog(log_dir, server, clock=lambda: NOON)
    log.write([event(server, hostname, sid, 0, "session.start", interactive=False)])
    log.write([event(server, hostname, sid, ei) for ei in range(1, n)])
    log.close()
    return chain.VerificationKey(server, k0, block.start, 3600)


def use(monkeypatch, data_dir):
    cfg = Config(data_dir=str(data_dir), nodename="web-01")
    monkeypatch.setattr(cli, "load_config", lambda path: cfg)
    return cfg


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


@pytest.fixture
def host(tmp_path, monkeypatch):
    data = tmp_path / "web"
    key = record(str(data), WEB, "web-01", "a11ce000-0000-4000-8000-000000000001")
    use(monkeypatch, data)
    keys = tmp_path / "keys"
    keys.write_text(f"# web-01\n{key.line()}\n")
    return data, keys


@pytest.fixture
def collector(tmp_path, monkeypatch):
    """Two hosts' day files copied into a collector's data_dir, web's last line delivered twice."""
    keys = []
    for server, name, sid in ((WEB, "web-01", "a11ce000-0000-4000-8000-000000000001"),
                              (DB, "db-01", "b0b00000-0000-4000-8000-000000000002")):
        keys.append(record(str(tmp_path / name), server, name, sid))
        os.makedirs(tmp_path / "collector" / "log" / server)
        shutil.copy(tmp_path / name / "log" / server / DAY, tmp_path / "collector" / "log" / server / DAY)
    copy = tmp_path / "collector" / "log" / WEB / DAY
    copy.write_bytes(copy.read_bytes() + copy.read_bytes().splitlines(keepends=True)[-1])
    (tmp_path / "keys").write_text("".join(k.line() + "\n" for k in keys))
    use(monkeypatch, tmp_path / "collector")
    return tmp_path / "collector", tmp_path / "keys"


# --- keygen ---------------------------------------------------------------------------------


def test_keygen_prints_the_verification_key_once_and_keeps_only_the_epoch_key(tmp_path, monkeypatch, capsys):
    use(monkeypatch, tmp_path / "data")
    (tmp_path / "data").mkdir()
    code, out, err = run(capsys, "keygen")
    assert code == 0
    [key] = chain.parse_verification_keys(out, "stdout")
    assert key.epoch_seconds == 3600 and "keep the verification key above off this host" in err
    state = (tmp_path / "data" / chainstate.STATE_FILE).read_bytes()
    assert oct(os.stat(tmp_path / "data" / chainstate.STATE_FILE).st_mode & 0o777) == "0o600"
    assert b'"made_by":"keygen"' in state

    code, out, err = run(capsys, "keygen")
    assert code == 2 and out == ""
    assert "already has a chain key" in one_error_line(err) and "--force" in err
    code, out, err = run(capsys, "keygen", "--if-missing")
    assert code == 0 and out == "" and "kept the chain key" in err
    code, out, _ = run(capsys, "keygen", "--force")
    assert code == 0 and chain.parse_verification_keys(out, "stdout")[0].k0 != key.k0


def test_keygen_over_the_recorders_own_key_says_what_cannot_be_checked(tmp_path, monkeypatch, capsys):
    cfg = use(monkeypatch, tmp_path / "data")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "host_uuid").write_text(WEB)
    log = AuditLog(cfg.log_dir, WEB, clock=lambda: NOON)
    log.write([event(WEB, "web-01", "a11ce000-0000-4000-8000-000000000001", 0)])
    log.close()
    code, out, err = run(capsys, "keygen")
    assert code == 0 and "replaces the key the recorder made" in err


# --- verify ---------------------------------------------------------------------------------


def test_verify_an_intact_host_with_and_without_the_key(host, capsys):
    _, keys = host
    code, out, _ = run(capsys, "verify")
    assert code == 0
    assert out.startswith(f"host {WEB} (web-01): intact: seq 1..4, 4 line(s) in 1 file(s)")
    assert "MACs not checked (no --key)" in out
    code, out, _ = run(capsys, "verify", "--key", str(keys))
    assert code == 0 and "MACs checked with the key made 2024-03-05 12:00:00 UTC" in out
    assert "this host's own log" in out


def test_verify_names_the_host_and_the_first_bad_seq(host, capsys):
    data, keys = host
    path = data / "log" / WEB / DAY
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"/usr/bin/curl", b"/usr/bin/true")
    path.write_bytes(b"".join(lines))
    code, out, err = run(capsys, "verify", "--key", str(keys))
    assert code == 1
    assert out.startswith(f"host {WEB} (web-01): NOT INTACT: first bad seq 2: changed:")
    assert one_error_line(err) == (f"enhrec: 1 of 1 host(s) not intact; first: host {WEB}, "
                                   "seq 2: changed")


def test_verify_json_is_one_object_per_host(collector, capsys):
    _, keys = collector
    code, out, _ = run(capsys, "verify", "--json", "--key", str(keys))
    reports = [orjson.loads(x) for x in out.splitlines()]
    assert code == 0 and [r["server_id"] for r in reports] == [WEB, DB]
    assert [r["duplicates"] for r in reports] == [1, 0] and all(r["intact"] for r in reports)
    assert not any(r["own_log"] for r in reports)


def test_verify_one_host_by_prefix_and_an_unknown_one(collector, capsys):
    code, out, _ = run(capsys, "verify", "--host", DB[:6])
    assert code == 0 and out.startswith(f"host {DB} (db-01): intact")
    code, _, err = run(capsys, "verify", "--host", "ffff")
    assert code == 2 and "no host 'ffff'" in one_error_line(err)


def test_verify_with_a_key_file_lacking_a_host(collector, tmp_path, capsys):
    _, keys = collector
    keys.write_text(keys.read_text().splitlines()[0] + "\n")
    code, out, _ = run(capsys, "verify", "--key", str(keys))
    assert code == 1 and "no key: the key file has no verification key for this host" in out


@pytest.mark.parametrize("content, message", [
    ("not a key\n", "line 1: not a verification key as `enhrec keygen` prints it"),
    ("# only a comment\n", "holds no verification key"),
])
def test_bad_key_files_are_one_line(host, tmp_path, capsys, content, message):
    bad = tmp_path / "bad-keys"
    bad.write_text(content)
    code, _, err = run(capsys, "verify", "--key", str(bad))
    assert code == 2 and message in one_error_line(err)
    code, _, err = run(capsys, "verify", "--key", str(tmp_path / "absent"))
    assert code == 2 and "cannot read the key file" in one_error_line(err)


# --- seal -----------------------------------------------------------------------------------


def test_seal_moves_the_key_on_without_writing(host, capsys, monkeypatch):
    data, keys = host
    monkeypatch.setattr(chainstate.time, "time", lambda: NOON + 3 * 3600 + 5)
    code, out, _ = run(capsys, "seal")
    assert code == 0 and out.startswith("chain key at epoch 3 (since 2024-03-05 15:00:00 UTC)")
    code, out, _ = run(capsys, "verify", "--key", str(keys))
    assert code == 0 and "can still be rewritten" not in out


def test_before_seal_the_last_epochs_lines_are_said_to_be_open(host, capsys):
    _, keys = host
    code, out, _ = run(capsys, "verify", "--key", str(keys))
    assert "the last 4 line(s) (epoch 0, from 2024-03-05 12:00:00 UTC) can still be rewritten" in out


# --- a collector's log ----------------------------------------------------------------------


def test_sessions_on_a_collector_have_the_host_in_each_row(collector, capsys):
    code, out, _ = run(capsys, "sessions")
    rows = out.splitlines()
    assert code == 0 and rows[0].split()[:2] == ["HOST", "SID"]
    assert sorted(r.split()[0] for r in rows[1:]) == ["db-01", "web-01"]
    # Only the host knows whether a session without session.end still runs.
    assert all(r.split()[-1] == "open" for r in rows[1:])
    code, out, _ = run(capsys, "sessions", "--json")
    assert sorted(orjson.loads(x)["server_id"] for x in out.splitlines()) == [WEB, DB]


def test_search_on_a_collector_drops_the_duplicate_and_names_the_host(collector, capsys):
    code, out, _ = run(capsys, "search", "--event", "exec", "--json")
    assert code == 0
    found = [(orjson.loads(x)["server_hostname"], orjson.loads(x)["seq"]) for x in out.splitlines()]
    assert sorted(found) == sorted([("web-01", s) for s in (2, 3, 4)] + [("db-01", s) for s in (2, 3, 4)])
    code, out, _ = run(capsys, "search", "--program", "curl")
    assert all((" web-01 " in r) or (" db-01 " in r) for r in out.splitlines())


def test_tail_on_a_collector_shows_every_host(collector, capsys):
    code, out, _ = run(capsys, "tail", "-n", "3", "--json")
    seen = [(orjson.loads(x)["server_hostname"], orjson.loads(x)["ei"]) for x in out.splitlines()]
    assert code == 0 and len(seen) == 3 and len(set(seen)) == 3
    assert {h for h, _ in seen} == {"web-01", "db-01"}


# --- doctor ---------------------------------------------------------------------------------


def test_doctor_says_who_made_the_chain_key(tmp_path, monkeypatch):
    from enhrec_wrap.inspect import doctor

    cfg = Config(data_dir=str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    assert doctor.check_chain_key(cfg).status == "warn"        # none yet
    (tmp_path / "data" / "host_uuid").write_text(WEB)
    log = AuditLog(cfg.log_dir, WEB, clock=lambda: NOON)
    log.write([event(WEB, "web-01", "a11ce000-0000-4000-8000-000000000001", 0)])
    log.close()
    made_by_recorder = doctor.check_chain_key(cfg)
    assert made_by_recorder.status == "warn" and "no one holds its verification key" in made_by_recorder.detail
    chainstate.replace_key(cfg.data_dir, WEB, os.path.join(cfg.log_dir, WEB), 3600, "keygen",
                           clock=lambda: NOON)
    assert doctor.check_chain_key(cfg).status == "ok"
    with open(tmp_path / "data" / chainstate.STATE_FILE, "r+b") as f:
        f.write(b"X")
    assert doctor.check_chain_key(cfg).status == "FAIL"
