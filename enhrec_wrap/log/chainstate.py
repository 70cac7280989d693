"""The host's chain state: <data_dir>/enhrec_chain, root-only, next to host_uuid.

Two fixed 512-byte lines, each a JSON object padded with spaces to 447 bytes, the hex SHA-256 of
those 447 bytes and a newline (so a torn or damaged block is recognised, never half-believed):

    block 0, the key       {"format":1,"server_id":..,"made":unix,"made_by":"keygen"|"recorder",
                            "start":unix,"epoch_seconds":n,"epoch":e,"key":k(e) hex,"reserved":r}
    block 1, the checkpoint {"seq":n,"prev":hex,"file":day file name,"dev":..,"ino":..,"size":..,
                            "boot":boot id}

Block 0 changes rarely and is always fsync-ed, written in place: at an epoch change (so k(e-1)'s
bytes are overwritten on disk, not left in a freed block as a rename would leave them) and when
the sequence numbers reserved so far run out (`reserved` is fsync-ed before any seq up to it is
used, so a seq is never reused, even after a power cut). Block 1 is written after every batch
without fsync: it says where the chain stands (the last seq, the hash of its line, and the size
of the day file after it), so that the next batch needs no read of the file. When it does not
match the day file (a writer killed between its append and its checkpoint, the day's first write,
a removed file, a machine restarted) the chain is taken from the tails of the files instead.

Every writer takes an exclusive flock on this file around its whole batch: state, seal, append,
checkpoint. That lock, not the day file's, orders the host's lines, across days too.
"""

import errno
import fcntl
import hashlib
import json
import os
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import chain, layout
from enhrec_wrap.log.bounded_lock import LockWaitTimeout, flock_within
from enhrec_wrap.log.files import NotRegularFile, fsync_dir, open_regular, unique_name

STATE_FILE = layout.CHAIN_STATE
FORMAT = 1
DEFAULT_EPOCH_SECONDS = 3600
BLOCK = 512
_PAYLOAD = BLOCK - 64 - 1
# Sequence numbers reserved per fsync of block 0: at 200,000 lines/s that is one fsync every
# 0.3 s; after a machine restart the next seq starts past the reservation (a skip of at most
# this many, which verify tells from a gap: the prev chain goes on across it).
RESERVE = 65536
# How far back from a file's end to look for its last chained line.
_TAIL_SCAN = 4 << 20
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
# A batch holds the lock for milliseconds (a fsync of block 0 at most); a holder that keeps it
# this long is stopped or stuck, and waiting on would hang every session start on the host.
LOCK_WAIT_SECONDS = 10.0


class KeyBlock:
    __slots__ = ("server_id", "made", "made_by", "start", "epoch_seconds", "epoch", "key", "reserved")

    def __init__(self, server_id, made, made_by, start, epoch_seconds, epoch, key, reserved):
        self.server_id = server_id
        self.made = made
        self.made_by = made_by
        self.start = start
        self.epoch_seconds = epoch_seconds
        self.epoch = epoch
        self.key = key
        self.reserved = reserved

    @classmethod
    def new(cls, server_id: str, made_by: str, epoch_seconds: int, now: float) -> tuple["KeyBlock", bytes]:
        """A fresh key and its k(0) (the verification key)."""
        # os.urandom is what secrets.token_bytes returns; importing secrets (and random with
        # it) cost every session 0.66 MB of memory, measured here.
        k0 = os.urandom(chain.KEY_BYTES)
        return cls(server_id, int(now), made_by, int(now), epoch_seconds, 0, k0, 0), k0

    def as_json(self) -> dict:
        return {"format": FORMAT, "server_id": self.server_id, "made": self.made,
                "made_by": self.made_by, "start": self.start, "epoch_seconds": self.epoch_seconds,
                "epoch": self.epoch, "key": self.key.hex(), "reserved": self.reserved}

    @classmethod
    def from_json(cls, obj: dict) -> "KeyBlock":
        key = bytes.fromhex(obj["key"])
        if obj.get("format") != FORMAT or len(key) != chain.KEY_BYTES or obj["epoch_seconds"] < 1:
            raise ValueError
        return cls(obj["server_id"], obj["made"], obj["made_by"], obj["start"], obj["epoch_seconds"],
                   obj["epoch"], key, obj["reserved"])


class Checkpoint:
    __slots__ = ("seq", "prev", "file", "dev", "ino", "size", "boot")

    def __init__(self, seq=0, prev=chain.GENESIS, file="", dev=0, ino=0, size=0, boot=""):
        self.seq = seq
        self.prev = prev
        self.file = file
        self.dev = dev
        self.ino = ino
        self.size = size
        self.boot = boot

    def describes(self, name: str, st: os.stat_result, boot: str) -> bool:
        """Whether this checkpoint is the end of the day file `name` as it is now."""
        return (self.file == name and self.size == st.st_size and self.ino == st.st_ino
                and self.dev == st.st_dev and self.boot == boot)

    def as_json(self) -> dict:
        return {"seq": self.seq, "prev": self.prev.decode(), "file": self.file, "dev": self.dev,
                "ino": self.ino, "size": self.size, "boot": self.boot}

    @classmethod
    def from_json(cls, obj: dict) -> "Checkpoint":
        prev = obj["prev"].encode()
        if len(prev) != 64:
            raise ValueError
        return cls(obj["seq"], prev, obj["file"], obj["dev"], obj["ino"], obj["size"], obj["boot"])


def advance(key: KeyBlock, epoch: int, last_seq: int) -> bool:
    """Move the key on to `epoch` (never back: a clock set back keeps the current key) and
    reserve seqs up to at least last_seq. True when block 0 changed and must be saved."""
    changed = False
    if epoch > key.epoch:
        key.key = chain.evolve(key.key, epoch - key.epoch)
        key.epoch = epoch
        changed = True
    if last_seq > key.reserved:
        key.reserved = last_seq + RESERVE
        changed = True
    return changed


def encode_block(obj: dict) -> bytes:
    text = json.dumps(obj, separators=(",", ":")).encode()
    if len(text) > _PAYLOAD:
        raise ValueError("state block too large")
    payload = text.ljust(_PAYLOAD)
    return payload + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def decode_block(data: bytes) -> dict | None:
    """The block's object, or None when its checksum does not match (torn, damaged, empty)."""
    if len(data) != BLOCK or data[-1:] != b"\n":
        return None
    payload, check = data[:_PAYLOAD], data[_PAYLOAD:-1]
    if hashlib.sha256(payload).hexdigest().encode() != check:
        return None
    return json.loads(payload)


def boot_id() -> str:
    try:
        with open(_BOOT_ID, "rb") as f:
            return f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""


class ChainState:
    """The open state file of one host; every method but open() runs under lock()."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd
        # An open file's device and inode never change: still_linked() compares with these
        # rather than fstat the fd again at every batch.
        ours = os.fstat(fd)
        self._dev_ino = (ours.st_dev, ours.st_ino)

    @classmethod
    def open(cls, data_dir: str, server_id: str, log_server_dir: str, epoch_seconds: int,
             clock=time.time) -> "ChainState":
        """The state, created on first use (a key the recorder makes, which nobody can verify
        until `enhrec keygen` replaces it) with the chain taken from the host's day files, so
        that a removed state file never restarts seq."""
        path = layout.chain_state_path(data_dir)
        fd = _open_existing(path)
        if fd < 0:
            block, _ = KeyBlock.new(server_id, "recorder", epoch_seconds, clock())
            fd = _publish(data_dir, path, block, newest_chained(log_server_dir))
        return cls(path, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lock(self, timeout: float = LOCK_WAIT_SECONDS) -> None:
        """The batch's exclusive lock. A writer that holds it for `timeout` is stopped (SIGSTOP)
        or stuck, and every start on the host would wait for it with it, the login hanging
        without a word: that is a failure to write the log, with one line that names it."""
        try:
            flock_within(self.fd, timeout)
        except LockWaitTimeout as held:
            who = f"pid {held.holder}" if held.holder else "another writer"
            raise EnhrecError(f"cannot write the audit log: {who} has held the lock of "
                              f"{self.path} for {timeout:g} s, so it is stopped or stuck: resume "
                              "it (kill -CONT) or end it") from None

    def unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def still_linked(self) -> bool:
        """Whether our fd is still the file at path: a writer locking a removed state file
        would number lines alongside one that made a new file."""
        try:
            on_disk = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == self._dev_ino

    def load(self, server_id: str) -> tuple[KeyBlock, Checkpoint | None]:
        data = os.pread(self.fd, 2 * BLOCK, 0)
        key = self._key_block(data[:BLOCK], server_id)
        if key is None:
            raise EnhrecError(f"{self.path}: the chain key is damaged: run `enhrec keygen --force` "
                              "(the lines from then on verify with the new key)")
        cp_obj = decode_block(data[BLOCK:])
        try:
            checkpoint = Checkpoint.from_json(cp_obj) if cp_obj is not None else None
        except (ValueError, KeyError, TypeError, AttributeError):
            checkpoint = None   # rebuilt from the files' tails
        return key, checkpoint

    def _key_block(self, data: bytes, server_id: str) -> KeyBlock | None:
        """Block 0, None when damaged; another host's is refused."""
        try:
            key = KeyBlock.from_json(decode_block(data))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if key.server_id != server_id:
            raise EnhrecError(f"{self.path}: the chain state belongs to server id {key.server_id}, "
                              f"not {server_id} (host_uuid changed?): move it away and run "
                              "`enhrec keygen`")
        return key

    def save_key(self, key: KeyBlock) -> None:
        _pwrite_all(self.fd, encode_block(key.as_json()), 0)
        os.fsync(self.fd)

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        _pwrite_all(self.fd, encode_block(checkpoint.as_json()), BLOCK)


def _open_existing(path: str) -> int:
    try:
        fd = open_regular(path, os.O_RDWR)
    except FileNotFoundError:
        return -1
    except NotRegularFile as err:
        raise EnhrecError(f"{path}: {err.strerror}: it holds the chain key: check who made it, "
                          "move it away and run `enhrec keygen`") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise EnhrecError(f"{path}: not a regular file of ours with mode 0600: it holds the chain "
                         "key, so nobody else may read or replace it: check who made it, move it "
                         "away and run `enhrec keygen`")
    return fd


def _publish(data_dir: str, path: str, key: KeyBlock, checkpoint: Checkpoint | None) -> int:
    """Make the state file appear complete or not at all, and once among racing writers (as
    host_uuid is made); returns an fd of whichever file won."""
    tmp = unique_name(data_dir, STATE_FILE)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            body = encode_block(key.as_json())
            body += encode_block(checkpoint.as_json()) if checkpoint else b" " * BLOCK
            _pwrite_all(fd, body, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        else:
            fsync_dir(data_dir)
    finally:
        os.unlink(tmp)
    fd = _open_existing(path)
    if fd < 0:
        raise FileNotFoundError(errno.ENOENT, "removed while being created", path)
    return fd


def replace_key(data_dir: str, server_id: str, log_server_dir: str, epoch_seconds: int,
                made_by: str, clock=time.time) -> tuple[KeyBlock, bytes, KeyBlock | None]:
    """A new k(0) for the host (keygen): written over the old key in place, fsync-ed; seq and the
    chain go on. Returns the new block, k(0), and the block it replaced (None if there was none)."""
    path = layout.chain_state_path(data_dir)
    fd = _open_existing(path)
    new, k0 = KeyBlock.new(server_id, made_by, epoch_seconds, clock())
    if fd < 0:
        fd = _publish(data_dir, path, new, newest_chained(log_server_dir))
        os.close(fd)
        return new, k0, None
    state = ChainState(path, fd)
    try:
        state.lock()
        old = state._key_block(os.pread(fd, BLOCK, 0), server_id)
        # A damaged block lost its reservation; the checkpoint (or the files) still say where the
        # chain ends, and seq goes on from there.
        new.reserved = old.reserved if old is not None else 0
        state.save_key(new)
    finally:
        state.close()
    return new, k0, old


def move_on(data_dir: str, server_id: str, now: float | None = None) -> KeyBlock | None:
    """Move the host's key to the current epoch without writing a line (`enhrec seal`): on a
    host where nothing is written for a while, the last epoch's key would otherwise stay on disk
    until the next write. None when the host has no chain state yet."""
    path = layout.chain_state_path(data_dir)
    fd = _open_existing(path)
    if fd < 0:
        return None
    state = ChainState(path, fd)
    try:
        state.lock()
        key, _ = state.load(server_id)
        now = time.time() if now is None else now
        if advance(key, chain.epoch_at(now, key.start, key.epoch_seconds), 0):
            state.save_key(key)
        return key
    finally:
        state.close()


def read_key(data_dir: str, server_id: str) -> KeyBlock | None:
    """The host's key block as it is, None when there is no state file."""
    path = layout.chain_state_path(data_dir)
    fd = _open_existing(path)
    if fd < 0:
        return None
    state = ChainState(path, fd)
    try:
        return state.load(server_id)[0]
    finally:
        state.close()


def key_or_none(data_dir: str, server_id: str) -> KeyBlock | None:
    """read_key(), with a damaged or foreign state taken as none (keygen writes over it)."""
    try:
        return read_key(data_dir, server_id)
    except EnhrecError:
        return None


# --- the chain from the files ----------------------------------------------------------------

def last_chained(path: str, after: int = 0) -> tuple[int, bytes] | None:
    """(seq, hash) of the last whole chained line of the file after byte `after` (a line
    start), or None. Reads back from the end in growing windows: usually one 64 KiB read."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        window = 1 << 16
        while True:
            start = max(after, size - window)
            data = os.pread(fd, size - start, start)
            # After the last newline: a line still being written (or nothing).
            data = data[:data.rfind(b"\n") + 1]
            if start > after:
                data = data[data.find(b"\n") + 1:]   # the first piece may begin earlier
            for line in reversed(data.splitlines(keepends=True)):
                t = chain.trailer(line)
                if t is not None:
                    return t.seq, chain.line_hash(line)
            if start == after or window >= _TAIL_SCAN:
                return None
            window *= 4
    finally:
        os.close(fd)


def newest_chained(log_server_dir: str) -> Checkpoint | None:
    """Where the chain ends in the host's day files (the newest file that has a chained line),
    for a new state file; None when no file has one."""
    try:
        names = sorted((n for n in os.listdir(log_server_dir) if layout.day_of_file(n)), reverse=True)
    except FileNotFoundError:
        return None
    for name in names:
        found = last_chained(os.path.join(log_server_dir, name))
        if found:
            return Checkpoint(found[0], found[1], name)
    return None


def reconcile(checkpoint: Checkpoint | None, log_server_dir: str, current: str,
              current_size: int) -> Checkpoint:
    """Where the chain really ends when the checkpoint does not describe the current file: the
    highest seq among the checkpoint, lines its writer appended but did not checkpoint, and the
    current file's tail. Lines removed from the end leave the checkpoint ahead: seq goes on from
    it, and verify reports the lines as missing."""
    best = checkpoint or newest_chained(log_server_dir) or Checkpoint()
    candidates = []
    if checkpoint is not None and checkpoint.file:
        own = os.path.join(log_server_dir, checkpoint.file)
        try:
            st = os.stat(own, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == (checkpoint.dev, checkpoint.ino) and st.st_size > checkpoint.size:
                candidates.append(last_chained(own, checkpoint.size))
        except FileNotFoundError:
            pass
    if current_size > 0:
        candidates.append(last_chained(current))
    for found in candidates:
        if found and found[0] > best.seq:
            best = Checkpoint(found[0], found[1])
    return Checkpoint(best.seq, best.prev)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
