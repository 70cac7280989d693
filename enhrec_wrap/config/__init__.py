"""Reading and validating the YAML config into an immutable `Config` (the parse: yaml_loader.py,
what a file said before: cache.py).

The file is a Teleport `teleport.yaml`, taken as it is: we read a few keys, tolerate Teleport's
other keys and sections, and reject anything unknown in the sections we own, so that a typo
can never silently change what gets recorded.
"""

import collections
import os
import stat

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.log import layout

DEFAULT_CONFIG_PATH = "/etc/enhrec-wrap/enhrec.yaml"
BUILT_IN_DEFAULTS = "built-in defaults"

MIN_BUFFER_PAGES = 1
MAX_BUFFER_PAGES = 65536
# nodename and cluster_name go into every event line: a host name (RFC 1035: 253 bytes) and no
# more.
MAX_NAME_BYTES = 253
# The files below data_dir and cgroup_path add up to ~150 bytes to them; this leaves them all
# within PATH_MAX (4096).
MAX_PATH_BYTES = 3840
DEFAULT_TTY_RECORDING_MAX_BYTES = 256 << 20
MAX_TTY_RECORDING_BYTES = 1 << 40
# The chain key's epoch (docs/deployment.md, "A fleet"): up to a week.
MIN_KEY_EPOCH = 1
MAX_KEY_EPOCH = 7 * 86400

# Every setting here can weaken recording (enabled: false is one line), so, as tlog does for
# its security settings, only a file that root alone can write is believed.
_OWNER_UID = 0


# The settings of one run, and their built-in defaults. A tuple, not a frozen dataclass: no
# module a session imports makes a dataclass (host/privileges.py).
_DEFAULTS = {
    "source": BUILT_IN_DEFAULTS,
    "nodename": None,                # None: this host's name (gethostname), when made
    "cluster_name": None,            # auth_service.cluster_name; None: see `cluster`
    "data_dir": "/var/lib/teleport",
    "enabled": True,
    "command_buffer_size": 8,
    "disk_buffer_size": 128,         # Teleport's; bursts are paused, not buffered (backpressure)
    "network_buffer_size": 8,
    "cgroup_path": "/cgroup2",
    "background_processes": "kill",
    "on_log_failure": "close",
    "idle_unload_seconds": 300,      # kernel/idle.py
    "refuse_io_uring": True,         # session/seccomp.py
    "refuse_32bit": True,
    "tty_recording": "interactive",
    "record_input": False,
    # Output kept per session; a `cat` of a large log is the usual way past it.
    "tty_recording_max_bytes": DEFAULT_TTY_RECORDING_MAX_BYTES,
    "key_epoch_seconds": 3600,
}


class Config(collections.namedtuple("Config", _DEFAULTS, defaults=_DEFAULTS.values())):
    """The settings of one run, made with keywords; the ones not given are the built-in
    defaults."""

    __slots__ = ()

    def __new__(cls, **values):
        if values.get("nodename") is None:
            values["nodename"] = os.uname().nodename   # gethostname
        return super().__new__(cls, **values)

    @property
    def log_dir(self) -> str:
        return layout.log_dir(self.data_dir)

    @property
    def cluster(self) -> str:
        """The events' cluster_name: Teleport's auth_service.cluster_name when the file names one,
        else the nodename (a host outside any Teleport cluster is a cluster of its own)."""
        return self.cluster_name or self.nodename


def load_config(path: str | None) -> Config:
    """Read the config at `path`, or the default file (built-in defaults if it is absent)."""
    if path is None:
        data = _read_trusted(DEFAULT_CONFIG_PATH, missing_ok=True)
        if data is None:
            return Config()
        path = DEFAULT_CONFIG_PATH
    else:
        data = _read_trusted(path, missing_ok=False)
    return Config(source=path, **_values(path, data))


def _values(path: str, data: bytes) -> dict:
    """The settings the file sets: what these bytes were found to say before (config/cache.py),
    else parsed. Only a file that parsed is kept: a bad one always gets the parser's message."""
    from enhrec_wrap.config import cache as config_cache
    key = config_cache.cache_key(data)
    values = config_cache.read_cache(key, _OWNER_UID)
    if values is not None and _as_parsed(values):
        return values
    values = _parse(path, _decode(path, data))
    config_cache.write_cache(key, values, _OWNER_UID)
    return values


def _as_parsed(values) -> bool:
    """A cached entry holds only what _parse makes: known keys, each value as its reader
    returns it (anything else is not believed, and the file is parsed again)."""
    readers = {**_TELEPORT_KEYS, **_AUTH_SERVICE_KEYS, **_RECORDING_KEYS, **_ENHREC_KEYS}
    if not isinstance(values, dict):
        return False
    for key, value in values.items():
        try:
            if key not in readers or readers[key](value) != value:
                return False
        except _BadValue:
            return False
    return True


# --- reading the file -----------------------------------------------------------------------

def _read_trusted(path: str, missing_ok: bool) -> bytes | None:
    try:
        # O_NONBLOCK: a FIFO must not hang the login before we get to refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise EnhrecError(f"{path}: config file not found: give an existing file, or leave out "
                          f"--config to use {DEFAULT_CONFIG_PATH}") from None
    except OSError as e:
        raise EnhrecError(f"{path}: cannot open the config file ({e.strerror}): "
                          "run as root and check the path") from None
    try:
        # Judged on the open descriptor, so the file checked is the file read (no TOCTOU).
        _check_trusted(path, os.fstat(fd))
        with open(fd, "rb", closefd=False) as f:
            data = f.read()
    except OSError as e:
        raise EnhrecError(f"{path}: cannot read the config file ({e.strerror}): "
                          "check the file and the disk") from None
    finally:
        os.close(fd)
    return data


def _check_trusted(path: str, st: os.stat_result) -> None:
    import shlex   # for a refusal only
    fix = f"run chown root:root {shlex.quote(path)} && chmod 644 {shlex.quote(path)}"
    if not stat.S_ISREG(st.st_mode):
        raise EnhrecError(f"{path}: not a regular file: the config must be a regular file "
                          "(a symlink to one is fine)")
    if st.st_uid != _OWNER_UID:
        raise EnhrecError(f"{path}: config file is owned by uid {st.st_uid}, not root, "
                          f"so its owner could switch recording off: {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EnhrecError(f"{path}: config file is writable by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}), so they could switch recording "
                          f"off: {fix}")


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise EnhrecError(f"{path}: line {line}: not UTF-8 text: save the file as UTF-8") from None


# --- the schema -----------------------------------------------------------------------------

class _BadValue(Exception):
    """What is wrong with a value, said as what is allowed; the caller adds file and key."""


# Teleport reads `enabled` with its ParseBool, so a working teleport.yaml may quote these.
_TELEPORT_TRUE = frozenset({"yes", "yeah", "y", "true", "1", "on"})
_TELEPORT_FALSE = frozenset({"no", "nope", "n", "false", "0", "off"})


def _boolean(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TELEPORT_TRUE:
        return True
    if isinstance(value, str) and value.lower() in _TELEPORT_FALSE:
        return False
    raise _BadValue(f"must be true or false, got {show_value(value)}")


def _pages(value) -> int:
    # `type is int`, not isinstance: bool is an int in Python, and `true` pages is a mistake.
    if type(value) is not int or not MIN_BUFFER_PAGES <= value <= MAX_BUFFER_PAGES:
        raise _BadValue(f"must be an integer from {MIN_BUFFER_PAGES} to {MAX_BUFFER_PAGES}, "
                        f"got {show_value(value)}")
    return value


MAX_IDLE_SECONDS = 7 * 86400


def _seconds(value) -> int:
    if type(value) is not int or not 0 <= value <= MAX_IDLE_SECONDS:
        raise _BadValue(f"must be a whole number of seconds from 0 to {MAX_IDLE_SECONDS}, "
                        f"got {show_value(value)}")
    return value


def _byte_count(value) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TTY_RECORDING_BYTES:
        raise _BadValue(f"must be an integer from 0 to {MAX_TTY_RECORDING_BYTES} (bytes), "
                        f"got {show_value(value)}")
    return value


def _tty_recording(value) -> str:
    # Unquoted, YAML reads `off` as false: it means what it says.
    return "off" if value is False else _one_of("interactive", "all", "off")(value)


def _epoch_seconds(value) -> int:
    if type(value) is not int or not MIN_KEY_EPOCH <= value <= MAX_KEY_EPOCH:
        raise _BadValue(f"must be a number of seconds from {MIN_KEY_EPOCH} to {MAX_KEY_EPOCH}, "
                        f"got {show_value(value)}")
    return value


def _absolute_path(value) -> str:
    # Relative paths would depend on the directory the login shell happens to start in.
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise _BadValue(f"must be an absolute path, got {show_value(value)}")
    if len(value.encode()) > MAX_PATH_BYTES:
        raise _BadValue(f"must be an absolute path of at most {MAX_PATH_BYTES} bytes, got "
                        f"{len(value.encode())} bytes ({show_value(value)})")
    return value


def _name(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadValue(f"must be a non-empty string, got {show_value(value)}")
    size = len(value.encode())
    if size > MAX_NAME_BYTES:
        raise _BadValue(f"must be at most {MAX_NAME_BYTES} bytes (a host name), got {size} "
                        f"bytes ({show_value(value)})")
    if not value.isprintable():
        raise _BadValue(f"must be printable (no control characters), got {show_value(value)}")
    return value


def _one_of(*choices: str):
    def read(value) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _BadValue(f"must be one of {', '.join(choices)}, got {show_value(value)}")
        return value
    return read


# Each reader's key is also the name of the Config field it sets.
_TELEPORT_KEYS = {"nodename": _name, "data_dir": _absolute_path}
# Teleport's auth_service section is Teleport's alone: this key is read, any other tolerated.
_AUTH_SERVICE_KEYS = {"cluster_name": _name}
_RECORDING_KEYS = {
    "enabled": _boolean,
    "command_buffer_size": _pages,
    "disk_buffer_size": _pages,
    "network_buffer_size": _pages,
    "cgroup_path": _absolute_path,
}
_ENHREC_KEYS = {
    "background_processes": _one_of("kill", "record"),
    "on_log_failure": _one_of("close", "continue"),
    "idle_unload_seconds": _seconds,
    "refuse_io_uring": _boolean,
    "refuse_32bit": _boolean,
    "tty_recording": _tty_recording,
    "record_input": _boolean,
    "tty_recording_max_bytes": _byte_count,
    "key_epoch_seconds": _epoch_seconds,
}

# Teleport's own keys in the sections we own: accepted so that a real teleport.yaml loads,
# and ignored (they configure Teleport, not us). Anything else there is a typo.
_TELEPORT_TOLERATED = frozenset({
    "pid_file", "auth_token", "join_params", "auth_servers", "auth_server", "proxy_server",
    "ca_pin", "connection_limits", "log", "storage", "advertise_ip", "cache", "seed_config",
    "ciphersuites", "ciphers", "kex_algos", "mac_algos", "ca_signature_algo", "diag_addr",
})
_RECORDING_TOLERATED = frozenset({"root_path"})

# Teleport's sections are ignored (all but auth_service.cluster_name), while an unknown top-level
# key is refused: a misspelt `ssh_servce:` would otherwise drop its enhanced_recording settings
# without a word.
_TOP_LEVEL = frozenset({
    "version", "teleport", "auth_service", "proxy_service", "ssh_service", "app_service",
    "db_service", "kubernetes_service", "windows_desktop_service", "discovery_service",
    "jamf_service", "okta_service", "tracing_service", "metrics_service", "debug_service",
    "plugin_service", "access_graph", "enhrec",
})


def _parse(path: str, text: str) -> dict:
    """The settings the file's text sets (Config's field names), checked."""
    from enhrec_wrap.config.yaml_loader import load_yaml
    document = load_yaml(path, text)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise EnhrecError(f"{path}: the top level must be a mapping of sections "
                          f"(teleport:, ssh_service:, enhrec:, ...), got {show_value(document)}")
    _check_keys(path, "", document, _TOP_LEVEL)
    ssh_service = _mapping(path, "ssh_service", document.get("ssh_service"))
    auth_service = _mapping(path, "auth_service", document.get("auth_service"))
    values = {
        **_read_section(path, "teleport", document.get("teleport"),
                        _TELEPORT_KEYS, _TELEPORT_TOLERATED),
        **_read_values(path, "auth_service", auth_service, _AUTH_SERVICE_KEYS),
        **_read_section(path, "ssh_service.enhanced_recording",
                        ssh_service.get("enhanced_recording"),
                        _RECORDING_KEYS, _RECORDING_TOLERATED),
        **_read_section(path, "enhrec", document.get("enhrec"), _ENHREC_KEYS, frozenset()),
    }
    return values


def _read_section(path: str, where: str, value, readers: dict, tolerated: frozenset) -> dict:
    section = _mapping(path, where, value)
    _check_keys(path, where, section, readers.keys() | tolerated)
    return _read_values(path, where, section, readers)


def _read_values(path: str, where: str, section: dict, readers: dict) -> dict:
    values = {}
    for key, read in readers.items():
        # A key with no value means its default, as an empty value does in Teleport.
        if section.get(key) is None:
            continue
        try:
            values[key] = read(section[key])
        except _BadValue as e:
            raise EnhrecError(f"{path}: {where}.{key}: {e}") from None
    return values


def _mapping(path: str, where: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EnhrecError(f"{path}: {where}: must be a mapping of keys, got {show_value(value)}")
    return value


def _check_keys(path: str, where: str, section: dict, allowed) -> None:
    for key in section:
        if key not in allowed:
            dotted = f"{where}.{_key_text(key)}" if where else _key_text(key)
            raise EnhrecError(f"{path}: {dotted}: unknown key {_hint(key, allowed)}")


def _hint(key, allowed) -> str:
    if isinstance(key, str):
        import difflib   # for a mistake only
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        if close:
            return f"(did you mean {close[0]}?)"
    return f"(allowed: {', '.join(sorted(allowed))})"


# --- one-line rendering for messages --------------------------------------------------------

def show_value(value) -> str:
    if isinstance(value, str):
        return _quoted(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, bool) or value is None:
        return _quoted(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    # YAML can also produce dates, timestamps and bytes (!!binary).
    return f"a {type(value).__name__}"


def _key_text(key) -> str:
    return key if isinstance(key, str) and key.isprintable() and key else show_value(key)


def _quoted(value) -> str:
    """A value as JSON writes it (a message quotes the user's value so)."""
    import json   # for a mistake only
    return json.dumps(value)
