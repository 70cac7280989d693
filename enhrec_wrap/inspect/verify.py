"""`enhrec verify`: check each host's chain of daily files (chain.py for the byte rules).

Per host (a <log_dir>/<server_id>/ directory), in two streaming passes over its day files:

1. Each file is read once, with only the chain fields of each line parsed (from its end), and cut
   into runs: stretches of lines whose seq rises. A host's file is one run; a collector's file
   gets a new run wherever RELP resent lines after a restart (at-least-once delivery).
2. The runs are merged by seq (a heap, with only the runs that overlap open at once), so each
   line is compared with the line of the seq before it, and a resent line with its first copy:
   - the same seq twice: the same bytes are a duplicate (dropped, counted), different bytes a
     problem ("duplicate");
   - the next seq: its prev must be the SHA-256 of the line before ("changed" otherwise), and in
     the same file it must come after it ("out of order");
   - a jump in seq: when the prev chain goes on across it, the writer skipped seqs it had
     reserved before a machine restart (chainstate.py), which is reported but no problem;
     otherwise the seqs in between are "missing";
   - with the key, the MAC of every line, and epochs that never go back ("changed").

A line without chain fields after the chain began is a problem too (damaged, or added by someone
else). Memory does not grow with the files: a few lines per open run, and the problems found.
"""

import heapq
import os
from dataclasses import dataclass, field

import orjson

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import chain, chainstate, layout, reader
from enhrec_wrap.log.file_lines import MAX_LINE_BYTES
from enhrec_wrap.log.files import open_regular

# Problems kept per host (the first one decides the message; the rest are counted).
MAX_PROBLEMS = 20
# Key changes tried at one line whose MAC fails: a rewritten chain fails at every line.
_MAX_KEY_TRIES = 3


@dataclass
class Problem:
    seq: int
    kind: str      # changed, missing, out of order, duplicate
    detail: str

    def text(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.detail}"


@dataclass
class Host:
    """What verify found for one host."""
    server_id: str
    hostname: str = ""
    files: list = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    lines: int = 0
    duplicates: int = 0
    unchained_before: int = 0       # lines before the chain began (written before it existed)
    skips: list = field(default_factory=list)        # (first, last) seqs the writer skipped
    problems: list = field(default_factory=list)
    problem_count: int = 0
    incomplete: list = field(default_factory=list)   # files whose last line has no newline yet
    macs: str = "not checked"
    key_changes: list = field(default_factory=list)  # (seq, key) where a newer key took over
    key: object = None              # the key of the last line
    epochs: tuple | None = None     # (first, last) epoch under that key
    unsealed: int = 0               # lines of the last epoch, whose key the host may still hold
    unsealed_epoch: int | None = None
    own: bool = False               # this host's own log (its chain state is here): order checked
    reordered: int = 0              # in a copy: lines stored after a line of a higher seq

    @property
    def intact(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def as_json(self) -> dict:
        return {
            "server_id": self.server_id, "server_hostname": self.hostname, "intact": self.intact,
            "first_seq": self.first_seq, "last_seq": self.last_seq, "lines": self.lines,
            "files": self.files, "duplicates": self.duplicates,
            "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail}
                         for p in sorted(self.problems, key=lambda p: p.seq)],
            "problem_count": self.problem_count, "macs": self.macs,
            "epochs": list(self.epochs) if self.epochs else None,
            "unsealed_lines": self.unsealed, "skipped": [list(s) for s in self.skips],
            "reordered": self.reordered, "own_log": self.own,
            "lines_before_chain": self.unchained_before,
        }

    def first_problem(self) -> Problem | None:
        """The problem at the lowest seq (of two there, the one found first)."""
        return min(self.problems, key=lambda p: p.seq) if self.problems else None


@dataclass
class _Run:
    path: str
    name: str
    file_index: int
    offset: int
    line_no: int
    first_seq: int
    end: int = 0


class _Entry:
    """One chained line on its way through the merge."""

    __slots__ = ("seq", "file_index", "offset", "line_no", "name", "line", "trailer")

    def __init__(self, seq, file_index, offset, line_no, name, line, trailer):
        self.seq = seq
        self.file_index = file_index
        self.offset = offset
        self.line_no = line_no
        self.name = name
        self.line = line
        self.trailer = trailer

    def __lt__(self, other):
        return (self.seq, self.file_index, self.offset) < (other.seq, other.file_index, other.offset)

    def where(self) -> str:
        return f"{self.name} line {self.line_no}"


def load_keys(path: str) -> list:
    """The verification keys in a key file (keygen's lines), or an EnhrecError saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as err:
        raise EnhrecError(f"cannot read the key file {path}: "
                          f"{getattr(err, 'strerror', None) or err}: give the file `enhrec keygen` "
                          "printed") from None
    try:
        keys = chain.parse_verification_keys(text, path)
    except ValueError as err:
        raise EnhrecError(f"{err}: give the lines `enhrec keygen` printed") from None
    if not keys:
        raise EnhrecError(f"the key file {path} holds no verification key: give the lines "
                          "`enhrec keygen` printed")
    return keys


def server_dirs(log: reader.LogDir, host: str | None) -> list[str]:
    """The host directories to check: all, or those whose server id starts with `host`."""
    ids = log.server_ids()
    if host is not None:
        ids = [i for i in ids if i.lower().startswith(host.lower())]
    return [layout.server_dir(log.path, i) for i in ids]


def verify_host(directory: str, keys: list | None, data_dir: str | None = None) -> Host:
    """Check one host's day files. keys: its verification keys (None: MACs are not checked).
    data_dir: where this machine's own chain state is; when it is this host's, the log is the
    host's own, and the order of its lines in the files is checked too. A collector's copy is
    stored in the order RELP delivered it, which a disk-assisted queue does not keep after a
    restart or under a burst, so there only seq and prev give the order."""
    host = Host(os.path.basename(directory).lower())
    state = _own_state(data_dir, host.server_id) if data_dir else None
    host.own = state is not None
    names = sorted(n for n in os.listdir(directory) if layout.day_of_file(n))
    host.files = names
    runs, unchained = _index(directory, names, host)
    # First, so that a damaged line is named as such rather than as the seq it leaves missing.
    for name, line_no, after in unchained:
        if after is None:
            host.unchained_before += 1
            continue
        host.add(Problem(after + 1, "changed",
                         f"{name} line {line_no} is not a chained line (its chain fields are "
                         "damaged, or someone else added it)"))
    checker = _MacChecker(keys, host) if keys is not None else None
    _merge(runs, host, checker)
    if checker is not None:
        checker.finish()
    if state is not None:
        _compare_with_state(host, *state)
    return host


def _index(directory: str, names: list[str], host: Host):
    """Pass 1: the runs of each file, and where the unchained lines are."""
    runs, unchained = [], []
    seen_chain = False
    last_seq_of_all = None
    for index, name in enumerate(names):
        path = os.path.join(directory, name)
        run = None
        last_seq = None
        offset = 0
        try:
            f = _open_day_file(path)
        except FileNotFoundError:
            continue
        except OSError as err:
            # Its lines cannot be read: after the last seq seen is as near as it can be named.
            host.add(Problem((last_seq_of_all or 0) + 1, "unreadable",
                             f"{name}: {err}: its lines cannot be checked"))
            continue
        with f:
            for line_no, (line, length) in enumerate(_lines(f), 1):
                if length is None:
                    host.incomplete.append(name)
                    break
                t = chain.trailer(line) if line is not None else None
                if t is None:
                    unchained.append((name, line_no, last_seq if seen_chain else None))
                else:
                    seen_chain = True
                    if run is None or t.seq <= last_seq:
                        if run is not None:
                            run.end = offset
                        run = _Run(path, name, index, offset, line_no, t.seq)
                        runs.append(run)
                    last_seq = last_seq_of_all = t.seq
                offset += length
        if run is not None:
            run.end = offset
    # Lines before the first chained line of all are older than the chain, not damage: they
    # were noted with after=None and are only counted.
    return runs, unchained


def _run_entries(run: _Run):
    with _open_day_file(run.path) as f:
        f.seek(run.offset)
        offset, line_no = run.offset, run.line_no
        for line, length in _lines(f):
            if offset >= run.end or length is None:
                return
            t = chain.trailer(line) if line is not None else None
            if t is not None:
                yield _Entry(t.seq, run.file_index, offset, line_no, run.name, line, t)
            offset += length
            line_no += 1


def _open_day_file(path: str):
    """A day file to read, which must be a regular file: a FIFO planted in its place would
    make verify wait for a writer, forever."""
    return open(open_regular(path, os.O_RDONLY), "rb")


def _lines(f):
    """(line, its length) for each whole line of f from where it is; a line longer than
    MAX_LINE_BYTES (no line the recorder writes is) is read past in pieces and given as
    (None, length), so memory stays bounded; a last line without its newline ends it as
    (piece, None)."""
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line, len(line)
            continue
        if len(line) <= MAX_LINE_BYTES:
            yield line, None
            return
        length = len(line)
        while True:
            piece = f.readline(MAX_LINE_BYTES)
            length += len(piece)
            if not piece:
                yield line[:0], None   # the long line is the last, unfinished one
                return
            if piece.endswith(b"\n"):
                yield None, length
                break


def _merge(runs: list[_Run], host: Host, checker) -> None:
    """Pass 2: every chained line in seq order, each compared with the one before."""
    runs.sort(key=lambda r: (r.first_seq, r.file_index, r.offset))
    heap = []
    next_run = 0
    last = None
    last_hash = None
    while heap or next_run < len(runs):
        # Open a run only once the merge reaches its first seq: at most the overlapping ones.
        while next_run < len(runs) and (not heap or runs[next_run].first_seq <= heap[0][0].seq):
            source = _run_entries(runs[next_run])
            first = next(source, None)
            if first is not None:
                heapq.heappush(heap, (first, source))
            next_run += 1
        if not heap:
            break
        entry, source = heap[0]
        following = next(source, None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following, source))
        line_hash = chain.line_hash(entry.line)
        if last is not None and entry.seq == last.seq:
            if line_hash == last_hash:
                host.duplicates += 1
            else:
                host.add(Problem(entry.seq, "duplicate",
                                 f"two different lines carry it: {last.where()} and {entry.where()}"))
            continue
        if last is None:
            _first_line(entry, host)
        else:
            _follows(last, last_hash, entry, host)
        if checker is not None:
            checker.check(entry)
        if not host.hostname:
            host.hostname = _hostname(entry.line)
        host.lines += 1
        host.last_seq = entry.seq
        last, last_hash = entry, line_hash
    host.first_seq = runs[0].first_seq if runs else None


def _first_line(entry: _Entry, host: Host) -> None:
    if entry.seq == 1 and entry.trailer.prev != chain.GENESIS:
        host.add(Problem(1, "changed", f"the host's first line ({entry.where()}) has a prev"))


def _follows(last: _Entry, last_hash: bytes, entry: _Entry, host: Host) -> None:
    chained = entry.trailer.prev == last_hash
    if entry.seq == last.seq + 1:
        if not chained:
            host.add(Problem(last.seq, "changed",
                             f"it ({last.where()}) does not hash to the prev of seq {entry.seq} "
                             f"({entry.where()}): one of the two lines was changed"))
        elif entry.file_index == last.file_index and entry.offset < last.offset:
            if host.own:
                host.add(Problem(entry.seq, "out of order",
                                 f"it ({entry.where()}) comes before seq {last.seq} ({last.where()})"))
            else:
                host.reordered += 1
        return
    gap = (last.seq + 1, entry.seq - 1)
    if chained:
        host.skips.append(gap)
        return
    span = f"seq {gap[0]}" if gap[0] == gap[1] else f"seq {gap[0]}..{gap[1]}"
    host.add(Problem(gap[0], "missing",
                     f"{span} missing between {last.where()} and {entry.where()}"))


def _hostname(line: bytes) -> str:
    try:
        name = orjson.loads(line).get("server_hostname")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return name if isinstance(name, str) else ""


class _MacChecker:
    """Every line's MAC, with the host's keys in the order they were made (keygen --force
    starts a new one; the chain then goes on under it, never back to an older one)."""

    def __init__(self, keys: list, host: Host):
        self.keys = sorted(keys, key=lambda k: k.start)
        self.host = host
        self.current = 0
        self.epoch = None        # the last line's epoch under the current key
        self.macs = {}           # (key index, epoch) -> mac_states(k(epoch))
        self.first_epoch = None
        self.last_epoch_lines = 0

    def _mac(self, index: int, epoch: int):
        mac = self.macs.get((index, epoch))
        if mac is None:
            if len(self.macs) > 64:
                self.macs.clear()
            mac = chain.mac_states(self.keys[index].key(epoch))
            self.macs[(index, epoch)] = mac
        return mac

    def check(self, entry: _Entry) -> None:
        if not self.keys:
            return
        t = entry.trailer
        if chain.mac_ok(entry.line, t, self._mac(self.current, t.epoch)):
            if self.epoch is not None and t.epoch < self.epoch:
                self.host.add(Problem(entry.seq, "changed",
                                      f"its epoch {t.epoch} is before the epoch {self.epoch} of the "
                                      f"line before it ({entry.where()})"))
            self._count(t.epoch)
            return
        for index in range(self.current + 1, min(len(self.keys), self.current + 1 + _MAX_KEY_TRIES)):
            if chain.mac_ok(entry.line, t, self._mac(index, t.epoch)):
                self.current = index
                self.host.key_changes.append((entry.seq, self.keys[index]))
                self.epoch = None
                self._count(t.epoch)
                return
        self.host.add(Problem(entry.seq, "changed",
                              f"its MAC ({entry.where()}) does not verify with the key: the line "
                              "was changed, or written by someone without the host's key"))

    def _count(self, epoch: int) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
        if epoch == self.epoch:
            self.last_epoch_lines += 1
        else:
            self.last_epoch_lines = 1
        self.epoch = epoch

    def finish(self) -> None:
        host = self.host
        if not self.keys:
            host.macs = "not checked: the key file has no key for this host"
            host.add(Problem(host.first_seq or 0, "no key",
                             "the key file has no verification key for this host"))
            return
        host.macs = "checked"
        if self.epoch is None:
            return
        key = self.keys[self.current]
        host.epochs = (self.first_epoch, self.epoch)
        host.key = key
        # The host still holds the key of its last epoch until it writes in a later one, or
        # `enhrec seal` moves it on: these lines can still be rewritten there.
        host.unsealed = self.last_epoch_lines
        host.unsealed_epoch = self.epoch


def _own_state(data_dir: str, server_id: str):
    """(path, key block, checkpoint) of this machine's chain state when it is server_id's."""
    path = layout.chain_state_path(data_dir)
    try:
        with open(open_regular(path, os.O_RDONLY), "rb") as f:
            data = f.read(2 * chainstate.BLOCK)
    except OSError:
        return None
    key_obj = chainstate.decode_block(data[:chainstate.BLOCK])
    if not key_obj or key_obj.get("server_id") != server_id:
        return None
    return path, key_obj, chainstate.decode_block(data[chainstate.BLOCK:])


def _compare_with_state(host: Host, path: str, key_obj: dict, cp_obj: dict | None) -> None:
    """On the host itself: its chain state knows the last seq it wrote, so lines removed from the
    end of the log show (unless whoever removed them also rewrote the state)."""
    if (host.unsealed_epoch is not None and host.key is not None
            and key_obj.get("start") == host.key.start
            and isinstance(key_obj.get("epoch"), int) and key_obj["epoch"] > host.unsealed_epoch):
        host.unsealed = 0   # the host's key has moved past the last line's epoch
    written = cp_obj.get("seq") if cp_obj else None
    if isinstance(written, int) and written > (host.last_seq or 0):
        first = (host.last_seq or 0) + 1
        host.add(Problem(first, "missing",
                         f"the log ends at seq {host.last_seq or 0}, but this host's chain state "
                         f"({path}) says it wrote up to seq {written}: lines removed from the end"))
