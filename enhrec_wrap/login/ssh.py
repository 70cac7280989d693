"""`--ssh` mode: what sshd tells a ForceCommand about the connection, turned into Request fields.

sshd runs `ForceCommand` as the user, which runs `sudo -n enhrec-wrap --ssh`; sudo passes on only
the SSH_* variables its sudoers rule keeps. Those are set by sshd after anything the client may
send, so the addresses and the original command are sshd's. The session itself is started as
sshd would have started it: `$SHELL -c "$SSH_ORIGINAL_COMMAND"` in the home directory, or the
login shell when there is no command.
"""

import base64
import binascii
import hashlib
import os
import re
import shlex
import stat
import collections

from enhrec_wrap.host.privileges import Account

# Passed on to the session as sshd sets them for a normal login.
SESSION_VARIABLES = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_ORIGINAL_COMMAND")
INTERNAL_SFTP = "internal-sftp"
# Where distributions put OpenSSH's sftp-server; `internal-sftp` starts the first one found.
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server")
# sshd writes a few lines per authentication method; anything larger is not its file.
MAX_AUTH_INFO_BYTES = 64 * 1024
# What sshd writes in SSH_CONNECTION: IPv4 or IPv6 addresses (an IPv6 one may carry a zone) and
# ports. Anything else did not come from sshd, and is not recorded as where a login came from.
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}(%[\w.-]{1,32})?")
_PORT = re.compile(r"[0-9]{1,5}")


# What the session is: its command (None: the login shell), whether it is interactive, the
# fields of session.start only, those of session.start and session.end, and the variables passed
# on. A tuple: a dataclass would import dataclasses into every start (host/privileges.py).
SshLogin = collections.namedtuple("SshLogin",
                                  "command interactive start_fields connection_fields environment")


def ssh_login(account: Account, environ, sftp_servers=SFTP_SERVERS) -> SshLogin:
    """The session sshd asked for, from the variables sudo kept."""
    original = environ.get("SSH_ORIGINAL_COMMAND")
    # As the reference records it: the command line as one string, not split.
    fields = {"initial_command": [] if original is None else [original]}
    auth_info = environ.get("SSH_USER_AUTH")
    if auth_info:
        fingerprint = key_fingerprint(read_auth_info(auth_info, account.uid))
        if fingerprint:
            fields["ssh_key_fingerprint"] = fingerprint
    command = None if original is None else command_for(original, account.shell, sftp_servers)
    environment = {name: environ[name] for name in SESSION_VARIABLES if name in environ}
    return SshLogin(command=command, interactive=bool(environ.get("SSH_TTY")),
                    start_fields=fields,
                    connection_fields=connection_fields(environ.get("SSH_CONNECTION", "")),
                    environment=environment)


def command_for(original: str, shell: str, sftp_servers=SFTP_SERVERS) -> list[str]:
    """argv for the original command, as sshd runs it. `internal-sftp` lives inside sshd, which
    cannot run it behind a ForceCommand, so the system's sftp-server stands in for it."""
    words = original.split(maxsplit=1)
    if words and words[0] == INTERNAL_SFTP:
        server = next((path for path in sftp_servers if os.access(path, os.X_OK)), None)
        if server is not None:
            return [server] + shlex.split(words[1] if len(words) > 1 else "")
    return [shell, "-c", original]


def connection_fields(ssh_connection: str) -> dict:
    """Teleport's connection fields of an SSH session: its addresses, `server_addr` (the
    address sshd was reached at, as Teleport gives its node's) and `proto`."""
    fields = addresses(ssh_connection)
    if fields:
        fields["server_addr"] = fields["addr.local"]
    fields["proto"] = "ssh"
    return fields


def addresses(connection: str) -> dict:
    """`addr.remote` and `addr.local` ("ip:port", IPv6 in brackets, as Go prints them) from
    SSH_CONNECTION="client_ip client_port server_ip server_port"; {} when it is not that."""
    parts = connection.split()
    if (len(parts) != 4 or not all(_ADDRESS.fullmatch(p) for p in parts[::2])
            or not all(_PORT.fullmatch(p) for p in parts[1::2])):
        return {}
    return {"addr.remote": host_port(parts[0], parts[1]),
            "addr.local": host_port(parts[2], parts[3])}


def host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_auth_info(path: str, uid: int) -> str:
    """The ExposeAuthInfo file, read as root: only a regular file of the session's user (sshd
    creates it as the user), never through a symlink, and small; else "" (no fingerprint)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size > MAX_AUTH_INFO_BYTES:
            return ""
        return os.read(fd, MAX_AUTH_INFO_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def key_fingerprint(auth_info: str) -> str | None:
    """SHA256 fingerprint (as `ssh-keygen -l` prints it) of the key of the last successful
    `publickey` method, from lines like `publickey ssh-ed25519 AAAA...`; None when no key."""
    fingerprint = None
    for line in auth_info.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "publickey":
            continue
        try:
            blob = base64.b64decode(words[2], validate=True)
        except (binascii.Error, ValueError):
            continue
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        fingerprint = f"SHA256:{digest}"
    return fingerprint


def enclosing_session(proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """The id of the recorded session this process runs in (its cgroup2 path is
    /enhrec/<sid>), or None."""
    from enhrec_wrap.host.cgroup import PARENT

    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            parts = line[3:].strip("/").split("/")
            if len(parts) >= 2 and parts[0] == PARENT:
                return parts[1]
    return None
