"""The fields schema 4 added (docs/events.md, schema 4), from records as the kernel side
writes them: a second walk to the filesystem's root, unix connects, ptrace attaches, and
IPv4-mapped destinations. The kernel side itself is tested in tests/adversarial."""

import socket

from enhrec_wrap.events.kernel import KernelEvents
from enhrec_wrap.kernel import abi


def _components(path: bytes) -> bytes:
    return b"".join(n + b"\0" for n in reversed([n for n in path.split(b"/") if n]))


def _build(record):
    return KernelEvents().build(record)[1]


def test_an_open_in_a_user_namespace_has_its_path_from_the_filesystems_root(records):
    record = records.open(b"/tmp/innocent", 3, resolved=b"/tmp/innocent",
                          path_flags=abi.PATH_COMPLETE | abi.PATH_USER_NS)
    fs_walk = _components(b"/tmp/x/secret")
    walk = record["tail"][:record["file.path_len"]]
    record["tail"] = walk + fs_walk + record["tail"][record["file.path_len"]:]
    record.update({"fs.path_len": len(fs_walk), "fs.path_flags": 0})
    fields = _build(record)
    assert (fields["path"], fields["fs_path"]) == ("/tmp/innocent", "/tmp/x/secret")
    assert fields["path_flags"] == ["user_namespace"] and "requested_path" not in fields


def test_a_second_walk_that_says_the_same_adds_nothing(records):
    record = records.open(b"/etc/passwd", 3, resolved=b"/etc/passwd",
                          path_flags=abi.PATH_COMPLETE | abi.PATH_USER_NS)
    walk = record["tail"][:record["file.path_len"]]
    record["tail"] = walk + walk + record["tail"][record["file.path_len"]:]
    record.update({"fs.path_len": len(walk), "fs.path_flags": 0})
    assert "fs_path" not in _build(record)


def test_unix_connects_name_the_peer_and_keep_the_callers_sun_path(records):
    socket_file = records.open(b"/run/innocent.sock", 0, resolved=b"/run/docker.sock")
    socket_file["tail"] = socket_file["tail"].rstrip(b"\0")   # sun_path: bytes, not a string
    socket_file.update(source=abi.OPEN_FROM_UNIX_CONNECT, request_len=18)
    fields = _build(socket_file)
    assert (fields["path"], fields["requested_path"], fields["via"]) == (
        "/run/docker.sock", "/run/innocent.sock", "unix_connect")

    abstract = records.open(b"\0bus", 0)
    abstract.update(source=abi.OPEN_FROM_UNIX_CONNECT, request_len=4, ret=0,
                    tail=b"bus\0bus", **{"file.path_len": 3,
                                         "file.path_flags": abi.PATH_UNIX_ABSTRACT})
    fields = _build(abstract)
    assert (fields["path"], fields["path_flags"], fields["via"]) == ("@bus", ["abstract"],
                                                                     "unix_connect")
    assert "inode" not in fields and "requested_path" not in fields


def test_a_ptrace_attach_names_the_tracee_and_its_pid(records):
    record = records.open(None, 0, resolved=b"/usr/sbin/postgres", flags=16)
    record.update(source=abi.OPEN_FROM_PTRACE, dirfd=4321)
    fields = _build(record)
    assert (fields["path"], fields["via"], fields["target_pid"], fields["flags"]) == (
        "/usr/sbin/postgres", "ptrace_attach", 4321, 16)


def test_an_ipv4_mapped_destination_is_the_ipv4_address(records):
    record = records.connect(socket.AF_INET6, "::ffff:10.1.2.3", "::ffff:10.9.9.9", 443, 0,
                             abi.CONNECT_TCP, sport=5555)
    fields = _build(record)
    assert (fields["dst_addr"], fields["src_addr"], fields["version"]) == (
        "10.1.2.3", "10.9.9.9", 4)
    plain = _build(records.connect(socket.AF_INET6, "2001:db8::1", "::", 443, 0, 0))
    assert (plain["dst_addr"], plain["version"]) == ("2001:db8::1", 6)
