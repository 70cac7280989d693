"""The daily files of the audit log, laid out like Teleport's file backend (layout.py).

    <data_dir>/log/<server_id>/YYYY-MM-DD.00:00:00.log    every event of every session that UTC day
    <data_dir>/log/events.log -> <server_id>/YYYY-MM-DD.00:00:00.log

Several wrappers (one per login session) append to the same day file at once, so each batch of
lines goes out as one append under an exclusive flock. Each line is sealed into the host's chain
(chain.py) under the chain state's lock (chainstate.py), which every writer holds for its whole
batch. Directories are 0700 and files 0600, owned by the writer (root): audit logs reveal what
every user ran (files.py).
"""

import errno
import fcntl
import functools
import os
import time

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import chain, chainstate, layout
from enhrec_wrap.log.files import ensure_private_dirs, error, open_private_file, unique_name, write_all

# Read once: a process lives within one boot.
_BOOT = chainstate.boot_id()
# How often a write looks whether its day file is still the one at its path (a stat by path),
# which notices a file renamed away (logrotate) or replaced by another: that loses nothing, its
# lines are in the renamed file, and the next look makes the file again where readers look. A
# removed file (rm, rm -rf of the log) is noticed at every batch, by its link count in the fstat
# each batch makes anyway; removed() always looks at the path too. Each syscall of the
# recorder's main thread is a chance for the session files' thread to take the GIL: in a burst
# of 100,000 opens the per-batch stat by path took 0.2 to 0.7 ms a call, most of it waiting
# for the GIL back (cProfile of benchmarks/consumer.py, under load).
PATH_CHECK_SECONDS = 0.1
_monotonic = time.monotonic


class AuditLog:
    """Appends JSON lines to the current UTC day's file, sealed into the host's chain, and keeps
    events.log pointing at it.

    One instance per thread: the flocks belong to the open files, which threads would share.
    """

    def __init__(self, log_dir: str, server_id: str, clock=time.time,
                 epoch_seconds: int = chainstate.DEFAULT_EPOCH_SECONDS):
        if server_id in ("", ".", "..") or "/" in server_id:
            raise ValueError(f"server id {server_id!r} cannot name a directory")
        self._log_dir = log_dir
        self._server_id = server_id
        self._clock = clock
        self._epoch_seconds = epoch_seconds
        self._fd = -1
        self._path = ""
        self._lines = 0       # written by us to the file open now
        self._removed = 0     # written by us to files someone removed since
        self._path_check_due = 0.0   # _monotonic() when a write next looks at the path
        self._chain = None
        # Open now, so an unwritable log stops the session before it starts rather than mid-way.
        self._open(self._current_path())
        self._open_chain()

    def write(self, lines: list[bytes], announce=None) -> list[bytes]:
        """Append whole lines (JSON objects, each ending in b"}\\n") as one batch no other writer
        can split, each sealed with its seq, prev, epoch and mac. Returns the lines as written.

        announce(path, st_dev, st_ino, offset, data), when given, is told where the batch goes,
        under the lock and before the write: the ledger of a recorder that may die mid-write."""
        if not lines:
            return []
        state = self._open_chain()
        try:
            state.lock()
        except OSError as err:
            raise self._error(state.path, err) from None
        try:
            return self._write_locked(state, lines, announce)
        finally:
            state.unlock()

    def _write_locked(self, state: chainstate.ChainState, lines: list[bytes], announce) -> list[bytes]:
        # The day is chosen under the chain lock, so the lines of one file are in seq order.
        path = self._current_path()
        on_disk = self._checked_day_file()
        if path != self._path:
            self._open(path)
            on_disk = None
        try:
            key, checkpoint = state.load(self._server_id)
            if on_disk is None:
                on_disk = os.fstat(self._fd)
            name = os.path.basename(self._path)
            fast = checkpoint is not None and checkpoint.describes(name, on_disk, _BOOT)
            if not fast:
                checkpoint = self._find_chain_end(key, checkpoint, on_disk.st_size)
            epoch = chain.epoch_at(self._clock(), key.start, key.epoch_seconds)
            # Reserved before use and fsync-ed: a seq is never handed out twice (chainstate.py).
            if chainstate.advance(key, epoch, checkpoint.seq + len(lines)):
                state.save_key(key)
            sealed, last_hash = chain.seal(lines, checkpoint.seq + 1, checkpoint.prev, key.epoch,
                                           key.key)
        except OSError as err:
            raise self._error(state.path, err) from None
        try:
            end = _locked_append(self._fd, b"".join(sealed),
                                 announce and functools.partial(announce, self._path, *self._dev_ino),
                                 cut_partial_tail=not fast)
        except OSError as err:
            raise self._error(self._path, err) from None
        self._lines += len(lines)
        try:
            state.save_checkpoint(chainstate.Checkpoint(
                checkpoint.seq + len(lines), last_hash, name, on_disk.st_dev, on_disk.st_ino, end,
                _BOOT))
        except OSError:
            pass   # the lines are written; the next batch finds the chain's end in the file
        return sealed

    def removed(self) -> int:
        """How many of the lines written here went with a file someone removed (or replaced by
        another) while we wrote it; a file renamed away (logrotate) still holds them."""
        self._notice_removal()
        return self._removed

    def _checked_day_file(self) -> os.stat_result | None:
        """The open day file's fstat, once it is known to be the file readers find; None when
        none is open (any more): a write's look before it appends (PATH_CHECK_SECONDS)."""
        if self._fd < 0:
            return None
        on_disk = os.fstat(self._fd)
        if on_disk.st_nlink == 0:
            self._removed += self._lines   # every line we wrote to it went with it
            self._close_day_file()
            return None
        now = _monotonic()
        if now >= self._path_check_due:
            self._path_check_due = now + PATH_CHECK_SECONDS
            self._notice_removal()   # a rename, or a removal since the fstat above: counted
            if self._fd < 0:
                return None
        return on_disk

    def _notice_removal(self) -> None:
        if self._fd < 0 or self._still_open_at(self._path):
            return
        if os.fstat(self._fd).st_nlink == 0:
            self._removed += self._lines
        # The next write makes the file again, where readers look. Only the day file: the chain
        # state (whose lock a writer may hold now) goes on, and seq with it.
        self._close_day_file()

    def _find_chain_end(self, key, checkpoint, size: int) -> chainstate.Checkpoint:
        found = chainstate.reconcile(checkpoint, os.path.join(self._log_dir, self._server_id),
                                     self._path, size)
        if checkpoint is not None and checkpoint.boot and checkpoint.boot != _BOOT:
            # The machine restarted: lines written before it, and perhaps shipped, may not have
            # reached the disk (nor the checkpoint), so go on past every seq that was reserved.
            found.seq = max(found.seq, key.reserved)
        return found

    def _open_chain(self) -> chainstate.ChainState:
        if self._chain is not None and self._chain.still_linked():
            return self._chain
        if self._chain is not None:
            self._chain.close()
            self._chain = None
        data_dir = os.path.dirname(self._log_dir)
        try:
            self._chain = chainstate.ChainState.open(
                data_dir, self._server_id, os.path.join(self._log_dir, self._server_id),
                self._epoch_seconds, self._clock)
        except OSError as err:
            raise self._error(layout.chain_state_path(data_dir), err) from None
        return self._chain

    def close(self) -> None:
        """Close the day file and the chain state; a later write() opens them again."""
        self._close_day_file()
        if self._chain is not None:
            self._chain.close()
            self._chain = None

    def _close_day_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._path = ""

    def _current_path(self) -> str:
        return layout.day_file(self._log_dir, self._server_id, self._clock())

    def _still_open_at(self, path: str) -> bool:
        """Whether our fd is still the file at path.

        If someone removed the file or its directory, appending to our fd would lose every
        later event silently; reopening recreates it so recording goes on where readers look.
        """
        if self._fd < 0:
            return False
        try:
            on_disk = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == self._dev_ino   # our fd's, from _open

    def _open(self, path: str) -> None:
        try:
            ensure_private_dirs(self._log_dir, os.path.dirname(path))
            fd = open_private_file(path)
        except OSError as err:
            raise self._error(path, err) from None
        try:
            self._point_symlink(path)
        except BaseException:
            os.close(fd)
            raise
        # Switch only once everything succeeded, so a failed switch is retried by the next write.
        self._close_day_file()
        st = os.fstat(fd)
        self._fd, self._path, self._dev_ino = fd, path, (st.st_dev, st.st_ino)
        self._lines = 0

    def _point_symlink(self, path: str) -> None:
        link = layout.current_link(self._log_dir)
        target = os.path.relpath(path, self._log_dir)
        try:
            if os.readlink(link) == target:
                return
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise self._error(link, err) from None
            # Replacing a regular file here could destroy someone's events: leave it to a human.
            raise EnhrecError(
                f"cannot write the audit log {link}: not a symlink: move it away, "
                f"it must link to the current day's file"
            ) from None
        try:
            _replace_symlink(target, link)
        except OSError as err:
            raise self._error(link, err) from None

    def _error(self, path: str, err: OSError) -> EnhrecError:
        return error(f"cannot write the audit log {path}", err, self._log_dir)


def _locked_append(fd: int, data: bytes, announce=None, cut_partial_tail=False) -> int:
    """Appends under the day file's flock; returns the file's size after."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        # Under the lock the end of the file is ours alone, so this is where our batch starts.
        start = os.lseek(fd, 0, os.SEEK_END)
        if cut_partial_tail:
            start = _cut_partial_line(fd, start)
        if announce is not None:
            announce(start, data)
        try:
            write_all(fd, data)
        except OSError:
            # Drop a half-written batch: a partial line would glue onto the next writer's line
            # and make both unparseable.
            _truncate_quietly(fd, start)
            raise
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return start + len(data)


def _cut_partial_line(fd: int, size: int) -> int:
    """A writer killed in the middle of a line left it without its newline (every writer holds
    the chain lock while it writes, and we hold it now): take that piece out, so our first line
    does not glue onto it. Returns the size after."""
    if size == 0:
        return size
    # Our fd only appends: read through another one to the same file.
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.pread(rfd, 1, size - 1) == b"\n":
            return size
        low = size
        while low > 0:
            step = min(low, 1 << 16)
            data = os.pread(rfd, step, low - step)
            cut = data.rfind(b"\n")
            if cut >= 0:
                low = low - step + cut + 1
                break
            low -= step
    finally:
        os.close(rfd)
    os.ftruncate(fd, low)
    return low


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _truncate_quietly(fd: int, size: int) -> None:
    # Best effort while already failing: the caller reports the write error, which is the cause.
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def _replace_symlink(target: str, link: str) -> None:
    # A symlink cannot be overwritten in place; building it aside and renaming over the old one
    # means readers always find events.log, and racing wrappers never fail on an existing name.
    tmp = unique_name(os.path.dirname(link), os.path.basename(link))
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
