"""`enhrec verify`'s checks (verify.py), one tampering case at a time, on logs written by the real
writer (AuditLog) and then edited as an attacker would."""

import calendar
import os
import secrets

import orjson
import pytest

from enhrec_wrap.inspect import verify
from enhrec_wrap.log import chain, chainstate
from enhrec_wrap.log.auditlog import AuditLog

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
NOON = calendar.timegm((2024, 3, 5, 12, 0, 0))
DAY1 = "2024-03-05.00:00:00.log"
DAY2 = "2024-03-06.00:00:00.log"

def unsealed(line):
    """The event as it was before sealing: the chain fields start at the line's last ',"seq":'
    (a quote inside a JSON string is escaped, so the event cannot hold that text)."""
    return line[:line.rindex(b',"seq":')] + b"}\n"



def event(**fields):
    return orjson.dumps({"event": "session.command", "server_hostname": "vm", **fields},
                        option=orjson.OPT_APPEND_NEWLINE)


@pytest.fixture
def host(tmp_path):
    """A host's log of 20 lines over two days (seq 1..12 in DAY1, 13..20 in DAY2), and its key."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log_dir = str(data_dir / "log")
    now = [NOON]
    block, k0, _ = chainstate.replace_key(str(data_dir), SID, os.path.join(log_dir, SID), 3600,
                                          "keygen", clock=lambda: now[0])
    log = AuditLog(log_dir, SID, clock=lambda: now[0])
    for batch in range(3):
        log.write([event(ei=batch * 4 + i, argv=["x" * i]) for i in range(4)])
        now[0] += 1800
    now[0] += 86400
    for batch in range(2):
        log.write([event(ei=12 + batch * 4 + i) for i in range(4)])
    log.close()
    return Host(str(data_dir), chain.VerificationKey(SID, k0, block.start, 3600))


class Host:
    def __init__(self, data_dir, key):
        self.data_dir = data_dir
        self.key = key
        self.dir = os.path.join(data_dir, "log", SID)

    def lines(self, name=DAY1):
        with open(os.path.join(self.dir, name), "rb") as f:
            return f.readlines()

    def put(self, lines, name=DAY1):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(b"".join(lines))

    def check(self, with_key=False, local=False):
        return verify.verify_host(self.dir, [self.key] if with_key else None,
                                  self.data_dir if local else None)


def first(report):
    problem = report.first_problem()
    return (problem.seq, problem.kind) if problem else None


def index_of(lines, seq):
    return next(i for i, x in enumerate(lines) if chain.trailer(x).seq == seq)


@pytest.mark.parametrize("with_key", [False, True])
def test_an_untouched_log_is_intact(host, with_key):
    report = host.check(with_key, local=True)
    assert report.intact, report.problems
    assert (report.first_seq, report.last_seq, report.lines, report.duplicates) == (1, 20, 20, 0)
    assert report.files == [DAY1, DAY2] and report.hostname == "vm"
    assert report.macs == ("checked" if with_key else "not checked")
    if with_key:
        # The last 8 lines are of epoch 25, whose key the host still holds.
        assert report.epochs == (0, 25) and report.unsealed == 8

@pytest.mark.parametrize("with_key", [False, True])
def test_a_changed_byte_is_found(host, with_key):
    lines = host.lines()
    lines[4] = lines[4].replace(b'"ei":4', b'"ei":5')
    host.put(lines)
    assert first(host.check(with_key)) == (5, "changed")


@pytest.mark.parametrize("with_key", [False, True])
def test_a_removed_line_is_missing(host, with_key):
    lines = host.lines()
    del lines[6]
    host.put(lines)
    report = host.check(with_key)
    assert first(report) == (7, "missing")
    assert "seq 7 missing" in report.first_problem().detail


@pytest.mark.parametrize("with_key", [False, True])
def test_two_swapped_lines_are_out_of_order(host, with_key):
    lines = host.lines()
    lines[5], lines[6] = lines[6], lines[5]
    host.put(lines)
    assert first(host.check(with_key, local=True)) == (7, "out of order")


def test_in_a_collectors_copy_the_order_of_the_lines_is_the_transports(host):
    """A disk-assisted queue delivers a burst out of order: no problem there, only counted."""
    lines = host.lines()
    host.put(lines[:3] + lines[5:9] + lines[3:5] + lines[9:])
    report = host.check(with_key=True, local=False)
    assert report.intact and not report.own and report.reordered == 1


def test_a_line_forged_with_its_successors_prev_recomputed_is_found(host):
    """The attacker replaces seq 5 and fixes seq 6's prev to match: then seq 6 no longer hashes
    to seq 7's prev. With the key, the forged line's own MAC fails first."""
    lines = host.lines()
    forged_event = unsealed(lines[4]).replace(b'"ei":4', b'"ei":40')
    [lines[4]], h = chain.seal([forged_event], 5, chain.trailer(lines[4]).prev, 0, secrets.token_bytes(32))
    lines[5] = lines[5].replace(chain.trailer(lines[5]).prev, h)
    host.put(lines)
    assert first(host.check()) == (6, "changed")
    assert first(host.check(with_key=True)) == (5, "changed")


def _rewrite_from(host, seq, key):
    """Re-seal every line from `seq` to the end with `key`, prev chain recomputed: all the
    attacker can do without the host's key of that epoch."""
    days = [host.lines(DAY1), host.lines(DAY2)]
    everything = days[0] + days[1]
    at = index_of(everything, seq)
    prev = chain.line_hash(everything[at - 1])
    out = everything[:at]
    for line in everything[at:]:
        t = chain.trailer(line)
        [sealed], prev = chain.seal([unsealed(line)], t.seq, prev, t.epoch, key)
        out.append(sealed)
    host.put(out[:len(days[0])], DAY1)
    host.put(out[len(days[0]):], DAY2)


def test_a_chain_rewritten_to_the_end_is_found_only_with_the_key(host):
    _rewrite_from(host, 9, secrets.token_bytes(32))
    assert host.check().intact       # seq and prev alone cannot tell
    assert first(host.check(with_key=True)) == (9, "changed")


def test_exact_duplicates_are_dropped_and_counted(host):
    """As RELP delivers after a collector restart: some lines again, later in the file."""
    lines = host.lines()
    host.put(lines[:10] + lines[6:10] + lines[10:])
    report = host.check(with_key=True)
    assert report.intact and report.duplicates == 4 and report.lines == 20


def test_duplicates_across_files_and_the_day_switch(host):
    host.put(host.lines(DAY2)[:2] + host.lines(DAY1)[-2:] + host.lines(DAY2), DAY2)
    report = host.check(with_key=True)
    assert report.intact and report.duplicates == 4


def test_the_same_seq_with_different_content_is_a_duplicate_problem(host):
    lines = host.lines()
    other = lines[3].replace(b'"ei":3', b'"ei":33')
    host.put(lines + [other])
    assert first(host.check()) == (4, "duplicate")


def test_lines_removed_from_the_end_show_on_the_host(host):
    host.put(host.lines(DAY2)[:-3], DAY2)
    assert host.check().intact               # elsewhere (a collector) nothing says where it ends
    report = host.check(local=True)
    assert first(report) == (18, "missing")
    assert "says it wrote up to seq 20" in report.first_problem().detail


def test_an_added_unchained_line_is_a_problem(host):
    lines = host.lines()
    host.put(lines[:3] + [event(ei=99)] + lines[3:])
    assert first(host.check()) == (4, "changed")


def test_damaged_chain_fields_are_a_problem(host):
    lines = host.lines()
    lines[8] = lines[8].replace(b'"seq":9,', b'"seq":9x,')
    host.put(lines)
    report = host.check()
    assert first(report) == (9, "changed")
    assert "is not a chained line" in report.first_problem().detail


def test_lines_older_than_the_chain_are_counted_not_failed(host):
    host.put([event(ei=0), event(ei=1)] + host.lines())
    report = host.check()
    assert report.intact and report.unchained_before == 2


def test_a_host_whose_oldest_files_were_removed_verifies_from_where_it_starts(host):
    os.unlink(os.path.join(host.dir, DAY1))
    report = host.check(with_key=True)
    assert report.intact and report.first_seq == 13


def test_a_missing_key_for_the_host_is_a_problem(host):
    report = verify.verify_host(host.dir, [], None)
    assert first(report)[1] == "no key" and "not checked" in report.macs


def test_a_wrong_first_prev_is_found(host):
    lines = host.lines()
    _rewrite_first(host, lines)
    assert first(host.check()) == (1, "changed")


def _rewrite_first(host, lines):
    t = chain.trailer(lines[0])
    [lines[0]], _ = chain.seal([unsealed(lines[0])], 1, b"1" * 64, 0, host.key.key(0))
    host.put(lines)


def test_problems_are_kept_in_number_but_all_counted(host):
    lines = host.lines()
    host.put(lines[::2])   # every other line removed
    report = host.check()
    assert report.problem_count == 6 and first(report) == (2, "missing")


def test_runs_that_overlap_are_merged_with_few_files_open(tmp_path):
    """A collector's file where a resend starts a new run every few lines."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = AuditLog(str(data_dir / "log"), SID, clock=lambda: NOON)
    for b in range(50):
        log.write([event(ei=b * 3 + i) for i in range(3)])
    log.close()
    path = data_dir / "log" / SID / DAY1
    lines = path.read_bytes().splitlines(keepends=True)
    resent = []
    for start in range(0, len(lines), 10):
        resent += lines[start:start + 10] + lines[max(0, start + 7):start + 10]
    path.write_bytes(b"".join(resent))
    report = verify.verify_host(str(data_dir / "log" / SID), None, None)
    assert report.intact and report.lines == 150 and report.duplicates == 3 * 15
