"""Issue 9, section 1: calls the syscall tracepoints never see. io_uring and every 32-bit
syscall are refused by the session's seccomp filter, and the refusal is an event
(session.refused); sends and opens without the usual syscall are recorded with the kernel's
own destination or file."""

import contextlib
import ctypes
import os
import signal
import socket
import tempfile
import threading

import pytest

I386_OPEN = 5
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER = 425, 426
IO_URING_PARAMS_SIZE = 120   # sizeof(struct io_uring_params)


@pytest.fixture
def udp_port():
    """A UDP port on 127.0.0.1 nobody else uses while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def passing_fd(path, fd):
    """Hands `fd` (made here, outside any session) over SCM_RIGHTS to the first process that
    connects to the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(10)

        def pass_it():
            connection, _ = listener.accept()
            with connection:
                socket.send_fds(connection, [b"s"], [fd])

        passer = threading.Thread(target=pass_it, daemon=True)
        passer.start()
        yield
        passer.join(10)


def _refused_io_uring(run, pid, syscall="io_uring_setup", number=SYS_IO_URING_SETUP):
    """The io_uring call was refused with EPERM, and the program said so and gave up."""
    refused = run.one_refusal(pid, f"{syscall} refused by the session's seccomp filter")
    facts = run.brief(refused)
    assert (refused.get("syscall"), refused.get("syscall_nr"), refused.get("arch"),
            refused.get("refusal")) == (syscall, number, "x86_64", "errno"), facts
    assert refused["code"] == "X4100W" and refused.get("ppid", 0) > 0, facts
    assert refused.get("cgroup_id") == run.session.start["cgroup_id"], refused
    assert f"{syscall}: Operation not permitted" in run.result.stderr.splitlines(), (
        f"the program did not get EPERM from {syscall}: stdout {run.result.stdout!r}, "
        f"stderr {run.result.stderr!r}")
    assert run.result.returncode == 1


def test_io_uring_openat_is_refused(technique, scratch):
    target = scratch / "uring-target"
    target.write_text("secret\n")
    run, pid = technique("uring_openat", target, status=None)
    _refused_io_uring(run, pid)
    assert not run.printed("OPEN"), f"the io_uring open happened: {run.result.stdout!r}"
    assert not run.of("session.disk", path=str(target))


def test_io_uring_connect_is_refused(technique, udp_port):
    run, pid = technique("uring_connect_udp", "127.0.0.1", udp_port, status=None)
    _refused_io_uring(run, pid)
    assert not run.printed("CONNECT"), f"the io_uring connect happened: {run.result.stdout!r}"
    assert not run.of("session.network", dst_port=udp_port)


def test_io_uring_made_outside_the_session_is_refused(technique):
    """A ring set up by this (unrecorded) test process, taken into the session with
    pidfd_getfd: io_uring_enter is refused as well."""
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(IO_URING_PARAMS_SIZE)
    ring = libc.syscall(SYS_IO_URING_SETUP, 4, params)
    assert ring >= 0, f"io_uring_setup outside the session: {os.strerror(ctypes.get_errno())}"
    try:
        run, pid = technique("uring_enter_foreign", os.getpid(), ring, status=None)
    finally:
        os.close(ring)
    _refused_io_uring(run, pid, "io_uring_enter", SYS_IO_URING_ENTER)
    assert not run.printed("ENTERED"), f"the ring was entered: {run.result.stdout!r}"


@pytest.mark.parametrize("mode", ["inline", "async"])
def test_io_uring_allowed_is_recorded_and_marks_the_session(recorder, technique, scratch, mode):
    """With the refusal switched off: the open is recorded from its completion (via io_uring),
    the session says which io_uring operation it used, and session.end admits that it was only
    partially audited. `async` runs the open in an io-wq worker thread of the process."""
    recorder.configure("enhrec:\n  refuse_io_uring: false\n")
    target = scratch / f"uring-allowed-{mode}"
    target.write_text("secret\n")
    run, pid = technique("uring_openat", target, mode)
    fd, printed_path = run.printed_once("OPEN")
    assert printed_path == str(target)
    opened = run.one_open(pid, "the io_uring open", path=str(target))
    facts = run.brief(opened)
    assert opened.get("via") == "io_uring" and opened["return_code"] == int(fd), facts
    assert opened.get("path_source") == "kernel", facts
    uses = run.of("session.io_uring", pid)
    assert [(u.get("opcode"), u.get("opcode_name")) for u in uses] == [(18, "OPENAT")], uses
    assert run.session.end.get("partially_audited") is True, run.session.end


def _refused_32bit(run, pid, what):
    """The process was killed at its first 32-bit syscall, and that is on record."""
    refused = run.one_refusal(pid, what)
    facts = run.brief(refused)
    assert (refused.get("arch"), refused.get("refusal")) == ("i386", "killed"), facts
    assert refused["code"] == "X4100W", facts
    signalled = 128 + signal.SIGSYS
    assert run.result.returncode == signalled, (
        f"exit status {run.result.returncode}, expected {signalled} (SIGSYS); "
        f"stdout {run.result.stdout!r}")
    assert run.session.end["exit_status"] == signalled
    return refused


def test_int80_open_is_refused(technique, scratch):
    """A 64-bit program opening through `int $0x80`: the i386 open (5) itself is refused."""
    target = scratch / "int80-target"
    target.write_text("secret\n")
    run, pid = technique("int80_open", target, status=None)
    refused = _refused_32bit(run, pid, "the int $0x80 open")
    assert refused.get("syscall_nr") == I386_OPEN, run.brief(refused)
    assert refused.get("syscall") in ("open", "i386:5"), run.brief(refused)
    assert not run.printed("OPEN") and not run.of("session.disk", path=str(target))


def test_m32_binary_exec_is_recorded_and_its_open_refused(technique, programs, scratch):
    target = scratch / "m32-target"
    target.write_text("secret\n")
    run, pid = technique("m32_open", target, status=None)
    command = run.one_command("the exec of the -m32 binary", pid=pid, path=programs["m32_open"])
    facts = run.brief(command)
    assert command["argv"] == [str(target)] and command["return_code"] == 0, facts
    assert command.get("executable") == programs["m32_open"], facts
    _refused_32bit(run, pid, "the -m32 binary's syscalls")
    assert not run.printed("OPEN") and not run.of("session.disk", path=str(target))


def test_m32_execve_is_refused(technique, programs):
    """The exec of a -m32 binary (a 64-bit execve) is a session.command; the 32-bit program's
    own execve of /bin/echo never happens."""
    run, pid = technique("m32_execve", status=None)
    command = run.one_command("the exec of the -m32 binary", pid=pid,
                              path=programs["m32_execve"])
    facts = run.brief(command)
    assert command["argv"] == [] and command["return_code"] == 0, facts
    assert command.get("executable") == programs["m32_execve"], facts
    _refused_32bit(run, pid, "the -m32 binary's syscalls")
    marker = f"M32-EXEC-{pid}"
    assert not run.of("session.command", argv=[marker]), "the 32-bit execve ran"
    assert marker not in run.result.stdout


def test_m32_socketcall_connect_is_refused(technique, udp_port):
    run, pid = technique("m32_socketcall_connect", "127.0.0.1", udp_port, status=None)
    _refused_32bit(run, pid, "the -m32 binary's socketcall")
    assert not run.printed("CONNECT"), f"the 32-bit connect happened: {run.result.stdout!r}"
    assert not run.of("session.network", dst_port=udp_port)


# --- unconnected UDP --------------------------------------------------------------------------

ROUNDS = 20


@pytest.fixture
def receivers(request):
    """Two bound UDP sockets of one family (request.param: 4 or 6), outside the session."""
    family, host = (socket.AF_INET, "127.0.0.1") if request.param == 4 else (socket.AF_INET6, "::1")
    sockets = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
    for s in sockets:
        s.bind((host, 0))
        s.setblocking(False)
    yield request.param, host, sockets
    for s in sockets:
        s.close()


def _received(s):
    count = 0
    while True:
        try:
            s.recv(16)
        except BlockingIOError:
            return count
        count += 1


@pytest.mark.parametrize("call, receivers", [("sendto", 4), ("sendmsg", 4), ("sendmmsg", 4),
                                             ("sendto", 6)], indirect=["receivers"])
def test_unconnected_udp_send_is_recorded_once_per_socket_and_destination(technique, call,
                                                                          receivers):
    version, host, sockets = receivers
    ports = [s.getsockname()[1] for s in sockets]
    args = [a for port in ports for a in (host, port)]
    run, pid = technique("udp_unconnected_send", call, ROUNDS, *args)
    sockets_used = int(run.printed_once("SEND")[1])
    for s, port in zip(sockets, ports):
        assert _received(s) == sockets_used * ROUNDS, "the datagrams were not all delivered"
        sends = run.of("session.network", pid, dst_port=port)
        assert len(sends) == sockets_used, (
            f"{call} to [{host}]:{port}: expected {sockets_used} session.network (one per socket), "
            f"got {len(sends)}; network events (pid, operation, protocol, dst_addr, dst_port, "
            f"connect_return_code): {run.sends_and_connects()}")
        for e in sends:
            assert (e["operation"], e["protocol"], e["dst_addr"], e["version"]) == (
                1, "udp", host, version), run.brief(e)


def test_udp_send_on_a_socket_made_outside_the_session(technique, scratch):
    """The socket comes from a process outside the session's cgroup, over SCM_RIGHTS: the send
    still belongs to the session's process that made it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        path = str(scratch / "socket-passer")
        with passing_fd(path, outside.fileno()):
            run, pid = technique("udp_send_received_fd", path, "127.0.0.1", port)
        receiver.recv(16)
    assert run.printed_once("SEND") == ["received-fd", "127.0.0.1", str(port)]
    sends = run.of("session.network", pid, dst_port=port)
    assert [(e["operation"], e["protocol"], e["dst_addr"]) for e in sends] == [
        (1, "udp", "127.0.0.1")], (
        f"network events (pid, operation, protocol, dst_addr, dst_port, connect_return_code): "
        f"{run.sends_and_connects()}")


def test_tcp_fast_open_connects_without_connect(technique):
    """sendto(MSG_FASTOPEN) opens a TCP connection with no connect() call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        run, pid = technique("tcp_fastopen", "127.0.0.1", port)
    assert run.printed_once("CONNECT") == ["tcp", "127.0.0.1", str(port)]
    connects = run.of("session.network", pid, dst_port=port)
    assert [(e["operation"], e["protocol"], e["dst_addr"], e.get("connect_return_code", "absent"))
            for e in connects] == [(0, "tcp", "127.0.0.1", None)], (
        f"network events (pid, operation, protocol, dst_addr, dst_port, connect_return_code): "
        f"{run.sends_and_connects()}")


# --- opens without a path -----------------------------------------------------------------------

def test_open_by_handle_at_names_the_real_file(technique, scratch):
    target = scratch / "by-handle"
    target.write_text("secret\n")
    run, pid = technique("open_by_handle", target)
    fd, printed_path = run.printed_once("OPEN")
    assert printed_path == str(target)
    opened = run.one_open(pid, "the open_by_handle_at", return_code=int(fd), path=str(target))
    assert opened.get("path_source") == "kernel", run.brief(opened)
    assert "requested_path" not in opened, run.brief(opened)


def _path_in_its_filesystem(path):
    """`path` as its filesystem's root names it: the root (field 4) of the mount it is under
    (the longest mount point, field 5, of /proc/self/mountinfo), then the rest."""
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            root, point = line.split()[3:5]
            if path == point or path.startswith(point.rstrip("/") + "/"):
                if best is None or len(point) >= len(best[1]):
                    best = root, point
    assert best, f"no mount of /proc/self/mountinfo holds {path}"
    root, point = best
    return (root.rstrip("/") + "/" + os.path.relpath(path, point)).replace("/./", "/")


def test_open_tree_clone_names_the_file_outside_the_root(technique):
    """The detached mount is outside the caller's root: the path is marked so, and names the
    file from the root of its filesystem. The tree is on /dev/shm, a tmpfs mount of its own
    here and in make fresh-check's chroot, so that root is known."""
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="enhrec-adv-") as base:
        tree = os.path.join(base, "tree")
        os.mkdir(tree)
        with open(os.path.join(tree, "inside"), "w") as f:
            f.write("secret\n")
        run, pid = technique("open_tree_clone", tree, "inside")
        in_filesystem = _path_in_its_filesystem(os.path.join(tree, "inside"))
    fd, requested, kernel_name = run.printed_once("OPEN")
    assert requested == os.path.join(tree, "inside") and kernel_name == "/inside"
    opened = run.one_open(pid, "the openat in the detached mount", return_code=int(fd),
                          flags=os.O_RDONLY)
    facts = run.brief(opened)
    assert opened["path"] == "<fs>" + in_filesystem, facts
    assert "outside_root" in opened.get("path_flags", []), facts
    assert opened.get("requested_path") == "inside", facts


def test_proc_self_fd_reopen_names_the_real_file(technique, scratch):
    target = scratch / "reopened"
    target.write_text("secret\n")
    run, pid = technique("proc_fd_reopen", target)
    fd, printed_path = run.printed_once("OPEN")
    assert printed_path == str(target)
    opened = run.one_open(pid, "the reopen through /proc/self/fd", return_code=int(fd))
    facts = run.brief(opened)
    assert opened["path"] == str(target) and opened.get("path_source") == "kernel", facts
    assert opened.get("requested_path") == "/proc/self/fd/3", facts
