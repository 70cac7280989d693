"""The host's server id: the UUID in <data_dir>/host_uuid, which names the log's server dir.

The file is Teleport's, so a host that also runs Teleport keeps one server id for both.
"""

import os

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import files, layout

# More than any UUID; a bigger host_uuid is corrupt anyway and need not be read whole.
_MAX_ID_BYTES = 4096


def load_or_create_server_id(data_dir: str) -> str:
    """Return the host's UUID from <data_dir>/host_uuid, creating it on first use."""
    path = layout.host_uuid_path(data_dir)
    try:
        # An existing data_dir may be Teleport's: its mode is Teleport's business.
        files.ensure_private_dir(data_dir, tighten_existing=False)
        text = _read_id(path)
        if text is None:
            _publish_new_id(data_dir, path)
            # Read back rather than trust our own id: a concurrent first session may have won.
            text = _read_id(path) or ""
    except OSError as err:
        raise files.error(f"cannot read or create the server id {path}", err, data_dir) from None
    if not layout.is_uuid(text):
        raise EnhrecError(
            f"corrupt server id in {path} (expected a UUID, found {text[:40]!r}): restore the file "
            f"from a backup, or delete it to create a new id (the log directory is named after it)"
        )
    return text


def read_server_id(data_dir: str) -> str | None:
    """The host's server id as it is on disk, without creating it (None on a host that never
    recorded)."""
    try:
        return _read_id(layout.host_uuid_path(data_dir))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_id(path: str) -> str | None:
    try:
        fd = files.open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, _MAX_ID_BYTES)
    finally:
        os.close(fd)
    # Teleport writes the bare UUID; tolerate a trailing newline added by hand.
    return data.decode("utf-8", "replace").strip()


def _publish_new_id(data_dir: str, path: str) -> None:
    """Make host_uuid appear complete or not at all, and only once among racing sessions."""
    tmp = files.unique_name(data_dir, layout.HOST_UUID)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 files.FILE_MODE)
    try:
        try:
            files.make_private(fd, files.FILE_MODE)
            import uuid   # once per host
            files.write_all(fd, str(uuid.uuid4()).encode())
            # The id names the log directory: a crash must not leave an empty host_uuid behind.
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # Unlike rename, link refuses to replace: the first session to get here wins.
            os.link(tmp, path)
        except FileExistsError:
            return
        files.fsync_dir(data_dir)
    finally:
        os.unlink(tmp)
