"""The chain's byte rules (chain.py), the host's chain state (chainstate.py) and the audit log
writer that seals each batch under the chain lock."""

import calendar
import hashlib
import hmac
import multiprocessing
import os
import re

import orjson
import pytest

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.inspect import verify
from enhrec_wrap.log import chain, chainstate
from enhrec_wrap.log.auditlog import AuditLog

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))
DAY_NAME = "2024-03-05.00:00:00.log"
FORK = multiprocessing.get_context("fork")
KEY = bytes(range(32))

def unsealed(line):
    """The event as it was before sealing: the chain fields start at the line's last ',"seq":'
    (a quote inside a JSON string is escaped, so the event cannot hold that text)."""
    return line[:line.rindex(b',"seq":')] + b"}\n"



def event(**fields):
    return orjson.dumps({"event": "session.disk", **fields}, option=orjson.OPT_APPEND_NEWLINE)


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


def day_lines(data_dir, name=DAY_NAME):
    with open(os.path.join(data_dir, "log", SID, name), "rb") as f:
        return f.readlines()


def host_report(data_dir, keys=None, local=True):
    return verify.verify_host(os.path.join(data_dir, "log", SID), keys,
                              data_dir if local else None)


# ---------------------------------------------------------------- byte rules


def test_sealed_line_is_the_event_with_four_fields_appended():
    original = event(ei=1, path="/etc/passwd")
    [sealed], last = chain.seal([original], 7, chain.GENESIS, 3, KEY)

    assert sealed.startswith(original[:-2] + b',"seq":7,"prev":"' + b"0" * 64 + b'","epoch":3,"mac":"')
    assert sealed.endswith(b'"}\n')
    assert orjson.loads(sealed) == {**orjson.loads(original), "seq": 7, "prev": "0" * 64,
                                    "epoch": 3, "mac": orjson.loads(sealed)["mac"]}
    assert last == hashlib.sha256(sealed).hexdigest().encode()
    t = chain.trailer(sealed)
    assert unsealed(sealed) == original


def test_mac_and_prev_follow_the_documented_rule():
    """Recomputed here from the rule in chain.py's docstring, with hmac.new, not chain's code."""
    lines, _ = chain.seal([event(ei=0), event(ei=1, argv=["a\\b", "ü", "\u0007"])], 1,
                          chain.GENESIS, 0, KEY)
    for i, line in enumerate(lines):
        mac_at = line.rindex(b',"mac":"')
        signed, mac = line[:mac_at], line[mac_at + 8:-3]
        assert mac == hmac.new(KEY, signed, hashlib.sha256).hexdigest().encode()
        if i:
            assert f',"prev":"{hashlib.sha256(lines[i - 1]).hexdigest()}"'.encode() in line


@pytest.mark.parametrize("key", [KEY, b"", b"k" * 64, b"k" * 65, bytes(range(200))])
def test_mac_is_hmac_sha256_for_every_key_length(key):
    """seal() computes HMAC from the two prepared SHA-256 states (RFC 2104): the same as
    hmac.new for a key shorter than, as long as and longer than the hash's block."""
    [line], _ = chain.seal([event(ei=0, path="/x")], 1, chain.GENESIS, 0, key)
    mac_at = line.rindex(b',"mac":"')
    assert line[mac_at + 8:-3] == hmac.new(key, line[:mac_at], hashlib.sha256).hexdigest().encode()


def test_seq_and_prev_run_on_across_batches():
    first, h1 = chain.seal([event(ei=0), event(ei=1)], 1, chain.GENESIS, 0, KEY)
    second, _ = chain.seal([event(ei=2)], 3, h1, 0, KEY)
    assert [chain.trailer(x).seq for x in first + second] == [1, 2, 3]
    assert chain.trailer(second[0]).prev == chain.line_hash(first[1])


def test_a_value_that_looks_like_a_trailer_cannot_fake_one():
    fake = ',"seq":99,"prev":"' + "1" * 64 + '","epoch":0,"mac":"' + "2" * 64 + '"}'
    [sealed], _ = chain.seal([event(path=fake)], 5, chain.GENESIS, 0, KEY)
    assert chain.trailer(sealed).seq == 5
    assert chain.trailer(event(path=fake)) is None


@pytest.mark.parametrize("bad", [
    b'{"a":1}\n',                                                          # no trailer
    b'{"a":1,"seq":01,"prev":"' + b"0" * 64 + b'","epoch":0,"mac":"' + b"0" * 64 + b'"}\n',
    b'{"a":1,"seq":1,"prev":"' + b"0" * 63 + b'","epoch":0,"mac":"' + b"0" * 64 + b'"}\n',
    b'{"a":1,"seq":1,"prev":"' + b"0" * 64 + b'","epoch":0,"mac":"' + b"A" * 64 + b'"}\n',
    b'{"a":1,"seq":1,"prev":"' + b"0" * 64 + b'","epoch":0,"mac":"' + b"0" * 64 + b'"}',
])
def test_malformed_trailers_are_not_read(bad):
    assert chain.trailer(bad) is None


@pytest.mark.parametrize("bad", [b'{}\n', b'{"a":1}', b'[1]\n'])
def test_only_json_object_lines_with_fields_are_sealed(bad):
    with pytest.raises(ValueError):
        chain.seal([bad], 1, chain.GENESIS, 0, KEY)
    good = event(ei=0)
    with pytest.raises(ValueError, match=re.escape(f"a field: {bad!r}")):
        chain.seal([good, good, bad, good], 1, chain.GENESIS, 0, KEY)   # found within a batch


def documented_seal(lines, seq, prev, epoch, key):
    """chain.py's docstring's rule, written out line by line with hmac.new and hashlib."""
    out = []
    for line in lines:
        head = line[:-2] + b',"seq":' + str(seq).encode() + b',"prev":"' + prev + b'","epoch":' \
            + str(epoch).encode()
        sealed = head + b',"mac":"' + hmac.new(key, head, hashlib.sha256).hexdigest().encode() + b'"}\n'
        out.append(sealed)
        prev = hashlib.sha256(sealed).hexdigest().encode()
        seq += 1
    return out, prev


def test_a_batch_of_varied_lines_is_sealed_byte_for_byte_by_the_rule():
    """Lines short and long (past SHA-256's blocks), with percent signs, escapes, non-ASCII and
    the trailer's own text inside, seq and epoch of every width."""
    values = ["", "%s%d%%", "\\", '"', "\u00e9\U0001f600", ',"seq":1,"mac":"', "x" * 2000, "\n"]
    lines = [event(ei=i, path=values[i % len(values)] * (1 + i % 3), n=i * 7919)
             for i in range(200)]
    for seq, epoch in ((1, 0), (9, 10), (10 ** 18, 10 ** 18 + 1)):
        prev = hashlib.sha256(b"%d" % seq).hexdigest().encode()
        assert chain.seal(lines, seq, prev, epoch, KEY) == documented_seal(lines, seq, prev,
                                                                           epoch, KEY)


def test_epoch_keys_evolve_by_sha256():
    k = chain.VerificationKey(SID, KEY, 1000, 60)
    assert k.key(0) == KEY
    assert k.key(2) == hashlib.sha256(hashlib.sha256(KEY).digest()).digest()
    assert k.key(1) == hashlib.sha256(KEY).digest()   # back again: derived from k(0)
    assert chain.epoch_at(1000 + 59.9, 1000, 60) == 0
    assert chain.epoch_at(1000 + 60, 1000, 60) == 1
    assert chain.epoch_at(10, 1000, 60) == 0


def test_verification_key_lines_round_trip_and_bad_ones_are_named():
    k = chain.VerificationKey(SID, KEY, 1000, 3600)
    text = f"# host vm\n\n{k.line()}\n"
    [back] = chain.parse_verification_keys(text, "keys")
    assert (back.server_id, back.k0, back.start, back.epoch_seconds) == (SID, KEY, 1000, 3600)
    with pytest.raises(ValueError, match="keys: line 2: not a verification key"):
        chain.parse_verification_keys(k.line() + "\n{\"k0\": 1}\n", "keys")


# ---------------------------------------------------------------- the state file


def test_state_blocks_detect_damage():
    block = chainstate.encode_block({"seq": 5})
    assert len(block) == chainstate.BLOCK and chainstate.decode_block(block) == {"seq": 5}
    damaged = block[:3] + b"7" + block[4:]
    assert chainstate.decode_block(damaged) is None
    assert chainstate.decode_block(b" " * chainstate.BLOCK) is None


def test_first_write_makes_a_private_state_file(data_dir):
    log = AuditLog(os.path.join(data_dir, "log"), SID, clock=lambda: NOON)
    log.write([event(ei=0)])
    log.close()
    path = os.path.join(data_dir, chainstate.STATE_FILE)
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = chainstate.decode_block(open(path, "rb").read()[:chainstate.BLOCK])
    assert (key["server_id"], key["made_by"], key["epoch_seconds"]) == (SID, "recorder", 3600)
    assert key["reserved"] >= 1


def test_seq_runs_on_across_writers_days_and_restarts(data_dir):
    now = [NOON]
    log_dir = os.path.join(data_dir, "log")
    a = AuditLog(log_dir, SID, clock=lambda: now[0])
    b = AuditLog(log_dir, SID, clock=lambda: now[0])
    a.write([event(ei=0), event(ei=1)])
    b.write([event(ei=0)])
    now[0] += 86400
    a.write([event(ei=2)])
    a.close()
    b.close()
    c = AuditLog(log_dir, SID, clock=lambda: now[0])   # a new process, the next day
    c.write([event(ei=1)])
    c.close()

    seqs = [chain.trailer(x).seq for x in day_lines(data_dir)]
    seqs += [chain.trailer(x).seq for x in day_lines(data_dir, "2024-03-06.00:00:00.log")]
    assert seqs == [1, 2, 3, 4, 5]
    report = host_report(data_dir)
    assert report.intact and (report.first_seq, report.last_seq) == (1, 5)


def _write_batches(log_dir, worker, batches):
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    for b in range(batches):
        log.write([event(w=worker, b=b, i=i) for i in range(5)])
    log.close()


def test_concurrent_writers_share_one_chain(data_dir):
    log_dir = os.path.join(data_dir, "log")
    AuditLog(log_dir, SID, clock=lambda: NOON).close()
    procs = [FORK.Process(target=_write_batches, args=(log_dir, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0

    seqs = [chain.trailer(x).seq for x in day_lines(data_dir)]
    assert seqs == list(range(1, 4 * 40 * 5 + 1))
    assert host_report(data_dir).intact


def test_a_writer_killed_before_its_checkpoint_is_picked_up_from_the_file(data_dir, monkeypatch):
    log_dir = os.path.join(data_dir, "log")
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    log.write([event(ei=0)])
    # As if killed between its append and its checkpoint: the batch is in the file only.
    monkeypatch.setattr(chainstate.ChainState, "save_checkpoint", lambda self, cp: None)
    log.write([event(ei=1), event(ei=2)])
    monkeypatch.undo()
    log.close()
    other = AuditLog(log_dir, SID, clock=lambda: NOON)
    other.write([event(ei=3)])
    other.close()

    assert [chain.trailer(x).seq for x in day_lines(data_dir)] == [1, 2, 3, 4]
    assert host_report(data_dir).intact


def test_the_same_at_midnight_reads_the_previous_days_file(data_dir, monkeypatch):
    now = [NOON]
    log_dir = os.path.join(data_dir, "log")
    log = AuditLog(log_dir, SID, clock=lambda: now[0])
    log.write([event(ei=0)])
    monkeypatch.setattr(chainstate.ChainState, "save_checkpoint", lambda self, cp: None)
    log.write([event(ei=1)])
    monkeypatch.undo()
    now[0] += 86400
    log.write([event(ei=2)])
    log.close()

    assert [chain.trailer(x).seq for x in day_lines(data_dir, "2024-03-06.00:00:00.log")] == [3]
    assert host_report(data_dir).intact


def test_a_removed_state_file_is_rebuilt_from_the_files_without_reusing_seq(data_dir):
    log_dir = os.path.join(data_dir, "log")
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    log.write([event(ei=0), event(ei=1)])
    os.unlink(os.path.join(data_dir, chainstate.STATE_FILE))
    log.write([event(ei=2)])   # this writer notices, and makes a new one from the file's tail
    log.close()

    assert [chain.trailer(x).seq for x in day_lines(data_dir)] == [1, 2, 3]
    assert host_report(data_dir).intact


def test_a_removed_day_file_leaves_a_gap_not_a_reused_seq(data_dir):
    now = [NOON]
    log_dir = os.path.join(data_dir, "log")
    log = AuditLog(log_dir, SID, clock=lambda: now[0])
    log.write([event(ei=0)])
    now[0] += 86400
    log.write([event(ei=1), event(ei=2)])
    os.unlink(os.path.join(log_dir, SID, "2024-03-06.00:00:00.log"))
    log.write([event(ei=3)])
    log.close()

    assert [chain.trailer(x).seq for x in day_lines(data_dir, "2024-03-06.00:00:00.log")] == [4]
    problem = host_report(data_dir).first_problem()
    assert (problem.seq, problem.kind) == (2, "missing")


def test_after_a_machine_restart_seq_skips_past_the_reservation(data_dir, monkeypatch):
    log_dir = os.path.join(data_dir, "log")
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    log.write([event(ei=0)])
    log.close()
    monkeypatch.setattr("enhrec_wrap.log.auditlog._BOOT", "another-boot")
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    log.write([event(ei=1)])
    log.close()

    first, second = [chain.trailer(x) for x in day_lines(data_dir)]
    assert second.seq == 1 + chainstate.RESERVE + 1
    assert second.prev == chain.line_hash(day_lines(data_dir)[0])
    report = host_report(data_dir)
    assert report.intact and report.skips == [(2, chainstate.RESERVE + 1)]


def test_damaged_key_block_is_one_clear_error(data_dir):
    log_dir = os.path.join(data_dir, "log")
    AuditLog(log_dir, SID, clock=lambda: NOON).close()
    path = os.path.join(data_dir, chainstate.STATE_FILE)
    with open(path, "r+b") as f:
        f.write(b"X")
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    with pytest.raises(EnhrecError, match="the chain key is damaged: run `enhrec keygen --force`"):
        log.write([event(ei=0)])
    log.close()


def test_state_of_another_server_id_is_refused(data_dir):
    log_dir = os.path.join(data_dir, "log")
    AuditLog(log_dir, SID, clock=lambda: NOON).close()
    other = "11111111-2222-3333-4444-555555555555"
    log = AuditLog(log_dir, other, clock=lambda: NOON)
    with pytest.raises(EnhrecError, match=f"belongs to server id {SID}, not {other}"):
        log.write([event(ei=0)])
    log.close()


def test_keys_move_forward_and_the_old_key_leaves_the_file(data_dir):
    now = [NOON]
    log_dir = os.path.join(data_dir, "log")
    block, k0, _ = chainstate.replace_key(data_dir, SID, os.path.join(log_dir, SID), 60, "keygen",
                                          clock=lambda: now[0])
    log = AuditLog(log_dir, SID, clock=lambda: now[0])
    log.write([event(ei=0)])
    now[0] += 150                 # two epochs later
    log.write([event(ei=1)])
    log.close()

    epochs = [chain.trailer(x).epoch for x in day_lines(data_dir)]
    assert epochs == [0, 2]
    state = open(os.path.join(data_dir, chainstate.STATE_FILE), "rb").read()
    assert k0.hex().encode() not in state
    assert hashlib.sha256(k0).hexdigest().encode() not in state
    assert chain.evolve(k0, 2).hex().encode() in state
    report = host_report(data_dir, [chain.VerificationKey(SID, k0, block.start, 60)])
    assert report.intact and report.macs == "checked" and report.epochs == (0, 2)


def test_a_clock_set_back_keeps_the_current_key(data_dir):
    now = [NOON]
    log_dir = os.path.join(data_dir, "log")
    block, k0, _ = chainstate.replace_key(data_dir, SID, os.path.join(log_dir, SID), 60, "keygen",
                                          clock=lambda: now[0])
    log = AuditLog(log_dir, SID, clock=lambda: now[0])
    now[0] += 130
    log.write([event(ei=0)])
    now[0] -= 120
    log.write([event(ei=1)])
    log.close()
    assert [chain.trailer(x).epoch for x in day_lines(data_dir)] == [2, 2]


def test_keygen_over_a_used_chain_keeps_seq_and_prev(data_dir):
    log_dir = os.path.join(data_dir, "log")
    first, k_first, _ = chainstate.replace_key(data_dir, SID, os.path.join(log_dir, SID), 3600,
                                               "keygen", clock=lambda: NOON)
    log = AuditLog(log_dir, SID, clock=lambda: NOON)
    log.write([event(ei=0), event(ei=1)])
    second, k_second, old = chainstate.replace_key(data_dir, SID, os.path.join(log_dir, SID), 3600,
                                                   "keygen", clock=lambda: NOON + 10)
    log.write([event(ei=2)])
    log.close()

    assert old.made_by == "keygen" and old.reserved == second.reserved
    keys = [chain.VerificationKey(SID, k_first, first.start, 3600),
            chain.VerificationKey(SID, k_second, second.start, 3600)]
    report = host_report(data_dir, keys)
    assert report.intact and [seq for seq, _ in report.key_changes] == [3]
    only_old = host_report(data_dir, keys[:1])
    assert (only_old.first_problem().seq, only_old.first_problem().kind) == (3, "changed")
