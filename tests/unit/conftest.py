"""Records as kernel/decode.py's Decoder.as_dict gives them, built in the layouts of
bpf_programs/enhrec.h, for the unit tests of what is made of them (no BPF needed): the
`records` fixture's builders."""

import socket
import types

import pytest

from enhrec_wrap.kernel import abi

CGROUP_ID = 4294968064


def _header(record_type, pid, ppid, comm, tail=b"", ts=1_000_000):
    return {"type": record_type, "ts_ns": ts, "cgroup_id": CGROUP_ID, "pid": pid, "tid": pid,
            "ppid": ppid, "tail_len": len(tail), "comm": comm, "tail": tail}


def _components(path: bytes) -> bytes:
    """A path as the kernel's walk writes it: its names leaf first, each NUL-terminated."""
    names = [n for n in path.split(b"/") if n]
    return b"".join(n + b"\0" for n in reversed(names))


def _file(prefix, path, ino=1234, flags=abi.PATH_COMPLETE, fs_magic=0xEF53, dev=(254 << 20)):
    walked = _components(path) if path is not None else b""
    return walked, {f"{prefix}ino": ino, f"{prefix}fs_magic": fs_magic, f"{prefix}dev": dev,
                    f"{prefix}mnt_id": 27, f"{prefix}root_mnt_id": 27, f"{prefix}mode": 0o100644,
                    f"{prefix}path_flags": flags if path is not None else 0,
                    f"{prefix}depth": walked.count(b"\0"), f"{prefix}reserved": 0,
                    f"{prefix}path_len": len(walked), f"{prefix}pad": 0}


def exec_record(pid, filename, argv, executable=None, interp=None, cwd=None, ppid=2660,
                comm=b"bash", size=4096, flags=0, ts=1_000_000):
    """A successful exec (RECORD_EXEC); argv with argv[0]."""
    argv_raw = b"".join(a + b"\0" for a in argv)
    binary, binary_fields = _file("binary.", executable or filename)
    cwd_walk, cwd_fields = _file("cwd.", cwd)
    _, binary_fs_fields = _file("binary_fs.", None)   # no second walk (no user namespace)
    if interp is not None:
        flags |= abi.EXEC_SCRIPT
    if cwd is not None:
        flags |= abi.EXEC_CWD
    tail = argv_raw + filename + b"\0" + (interp + b"\0" if interp else b"") + binary + cwd_walk
    record = _header(abi.RECORD_EXEC, pid, ppid, comm, tail, ts)
    record.update(binary_fields, **cwd_fields, **binary_fs_fields, old_pid=pid, argc=len(argv), size=size,
                  argv_len=len(argv_raw), filename_len=len(filename) + 1,
                  interp_len=len(interp) + 1 if interp else 0, flags=flags, pad=0, scratch=0,
                  pad2=0)
    return record


def failed_exec_record(pid, filename, argv, ret, ppid=2660, comm=b"bash", truncated=0,
                       dirfd=-100, ts=1_000_000):
    tail = filename + b"\0" + b"".join(a + b"\0" for a in argv)
    record = _header(abi.RECORD_EXEC_FAILED, pid, ppid, comm, tail, ts)
    record.update(ret=ret, dirfd=dirfd, at_flags=0, argc=len(argv), truncated=truncated,
                  filename_len=len(filename) + 1, pad=0)
    return record


def open_record(request, ret, resolved=None, flags=0, pid=2700, comm=b"cat", path_flags=None,
                ts=1_001_000, via_uring=0):
    """An open: `resolved` is what the kernel's walk found (None for a failed open)."""
    file_flags = abi.PATH_COMPLETE if path_flags is None else path_flags
    walked, file_fields = _file("file.", resolved if ret >= 0 else None, flags=file_flags)
    if ret < 0:
        file_fields["file.path_flags"] = abi.PATH_NO_FILE
    _, fs_fields = _file("fs.", None)   # no second walk (no user namespace)
    tail = walked + (request + b"\0" if request is not None else b"")
    record = _header(abi.RECORD_OPEN, pid, 2660, comm, tail, ts)
    record.update(file_fields, **fs_fields, ret=ret, flags=flags, dirfd=-100, mode=0,
                  request_len=len(request) + 1 if request is not None else 0,
                  via_uring=via_uring, source=abi.OPEN_FROM_CALL, scratch=0, pad2=0)
    return record


def connect_record(family, daddr, saddr, dport, ret, flags, sport=0, pid=2800,
                   protocol=6, record_type=abi.RECORD_CONNECT, ts=1_002_000):
    size = 16 if family == socket.AF_INET6 else 4
    pad = bytes(16 - size)
    if family == socket.AF_INET:
        flags |= abi.CONNECT_IPV4_HOOK
    record = _header(record_type, pid, 2660, b"curl", ts=ts)
    record.update(ret=ret, cookie=77, family=family, dport=dport, sport=sport, flags=flags,
                  sock_type=1 if protocol == 6 else 2, protocol=protocol, pad=0,
                  daddr=socket.inet_pton(family, daddr) + pad,
                  saddr=socket.inet_pton(family, saddr) + pad)
    return record


def refused_record(syscall, arch, action, ret=0, pid=2900, comm=b"probe"):
    record = _header(abi.RECORD_REFUSED, pid, 2660, comm, ts=1_003_000)
    record.update(ret=ret, syscall=syscall, arch=arch, action=action, pad=0)
    return record


@pytest.fixture(scope="session")
def records():
    return types.SimpleNamespace(exec=exec_record, failed_exec=failed_exec_record,
                                 open=open_record, connect=connect_record,
                                 refused=refused_record, CGROUP_ID=CGROUP_ID)
