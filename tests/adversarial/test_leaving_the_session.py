"""Red team: processes that try to leave the session, or to pass for another program."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def public_dir():
    """A scratch directory nobody can reach (pytest's own are root-only)."""
    directory = Path(os.path.realpath(tempfile.mkdtemp(prefix="enhrec-adv-", dir="/tmp")))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_cgroup_namespace_of_a_user_namespace_does_not_leave_the_session(run_in_session,
                                                                         public_dir):
    """As nobody: a user, mount and cgroup namespace of its own, cgroup2 mounted there, and
    writes to its root's cgroup.procs and a mkdir, which would move the shell out of the
    session's cgroup. Both are refused, and the open after them is still recorded."""
    marker = public_dir / "after-the-escape"
    marker.write_text("x\n")
    marker.chmod(0o644)
    script = ("mount -t cgroup2 none /mnt || exit 3; "
              "echo $$ > /mnt/cgroup.procs && echo MOVED; mkdir /mnt/out && echo MADE; "
              f"exec cat {marker}")
    run = run_in_session([*NOBODY, "unshare", "-Urm", "--cgroup", "sh", "-c", script])
    assert "MOVED" not in run.lines and "MADE" not in run.lines, run.lines
    cat = run.one_command("cat after the attempt", path="/usr/bin/cat", argv=[str(marker)])
    opened = run.one_open(cat["pid"], "cat's open after the attempt", path=str(marker))
    assert opened["cgroup_id"] == run.session.start["cgroup_id"], run.brief(opened)


def test_a_process_renamed_like_another_program_keeps_its_exec(run_in_session, scratch):
    """prctl(PR_SET_NAME, "sshd"): `program` is the comm the process set (as in Teleport's
    events), and the pid's session.command names the binary that really runs."""
    target = scratch / "renamed-reads"
    target.write_text("x\n")
    code = ("import ctypes\nctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0)\n"
            f"open({str(target)!r}).read()\n")
    run = run_in_session(["python3", "-c", code])
    pid = run.pid_of("python3")
    opened = run.one_open(pid, "the renamed process's open", path=str(target))
    assert opened["program"] == "sshd", run.brief(opened)
    (command,) = run.of("session.command", pid)
    assert command["executable"] == os.path.realpath("/usr/bin/python3"), run.brief(command)


def test_pidfd_getfd_of_a_file_held_outside_names_the_file(run_in_session, scratch):
    """Root in the session takes a file descriptor of a process outside it (this test's):
    the file enters the session without an open, and is recorded as one (`via:
    "pidfd_getfd"`), by the file the kernel handed over."""
    secret = scratch / "held-outside"
    secret.write_text("HELD\n")
    fd = os.open(secret, os.O_RDONLY)
    try:
        code = ("import ctypes, os, sys\n"
                "pidfd = os.pidfd_open(int(sys.argv[1]))\n"
                "got = ctypes.CDLL(None, use_errno=True).syscall(438, pidfd, int(sys.argv[2]), 0)\n"
                "print('GOT', pidfd, got, os.read(got, 10).decode().strip())\n")
        run = run_in_session(["python3", "-c", code, str(os.getpid()), str(fd)])
    finally:
        os.close(fd)
    pidfd, got, content = run.printed_once("GOT")
    assert content == "HELD"
    taken = run.one_open(run.pid_of("python3"), "the pidfd_getfd", return_code=int(got),
                         via="pidfd_getfd")
    facts = run.brief(taken)
    assert (taken["path"], taken.get("via"), taken.get("path_source")) == (
        str(secret), "pidfd_getfd", "kernel"), facts
    assert taken["inode"] == secret.stat().st_ino and "requested_path" not in taken, facts


def test_ptrace_attach_to_the_users_process_outside_the_session(run_in_session):
    """A process of nobody outside the session (started here), and nobody in the session
    attaching to it with PTRACE_ATTACH and PTRACE_SEIZE. This kernel has no Yama, so both work
    (docs/deployment.md), and what the tracee is then made to do is not recorded: the attach is,
    as a session.disk of the tracee's executable (`via: "ptrace_attach"`, `target_pid`). An
    attach to a child inside the session is not (the child's acts are recorded)."""
    import subprocess
    outside = [subprocess.Popen([*NOBODY, "sleep", "60"]) for _ in range(2)]
    try:
        code = ("import ctypes, os, sys, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "for request, pid in ((16, sys.argv[1]), (0x4206, sys.argv[2])):\n"
                "    print('ATTACH', pid, libc.ptrace(request, int(pid), 0, 0))\n"
                "child = os.fork()\n"
                "if child == 0:\n    time.sleep(5)\n    os._exit(0)\n"
                "print('INSIDE', child, libc.ptrace(16, child, 0, 0))\n"
                "os.kill(child, 9)\n")
        run = run_in_session([*NOBODY, "python3", "-c", code, *(str(p.pid) for p in outside)])
    finally:
        for p in outside:
            p.kill()
            p.wait()
    assert run.printed("ATTACH") == [[str(p.pid), "0"] for p in outside], run.lines
    pid = run.pid_of("python3")
    attached = run.of("session.disk", pid, via="ptrace_attach")
    assert [(e["target_pid"], e["flags"]) for e in attached] == [
        (outside[0].pid, 16), (outside[1].pid, 0x4206)], [run.brief(e) for e in attached]
    for event in attached:
        facts = run.brief(event)
        assert event["path"] == os.path.realpath("/usr/bin/sleep"), facts
        assert (event.get("path_source"), event["return_code"]) == ("kernel", 0), facts
    (child, result) = run.printed_once("INSIDE")
    assert result == "0", run.lines
    assert not run.of("session.disk", via="ptrace_attach", target_pid=int(child))


def test_file_passed_in_over_scm_rights_then_reopened_names_the_file(run_in_session, scratch):
    """A process outside the session (this test) opens a file and passes the fd in: the receipt
    is not an open (docs/deployment.md), but a reopen through /proc/self/fd names the file."""
    import socket
    import threading
    secret = scratch / "passed-in"
    secret.write_text("PASSED\n")
    path = str(scratch / "passer")
    fd = os.open(secret, os.O_RDONLY)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(20)

        def pass_it():
            connection, _ = listener.accept()
            with connection:
                socket.send_fds(connection, [b"f"], [fd])

        passer = threading.Thread(target=pass_it, daemon=True)
        passer.start()
        code = ("import os, socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                "s.connect(sys.argv[1])\n_, (got,), _, _ = socket.recv_fds(s, 1, 1)\n"
                "again = os.open(f'/proc/self/fd/{got}', os.O_RDONLY)\n"
                "print('GOT', got, again, os.read(again, 10).decode().strip())\n")
        run = run_in_session(["python3", "-c", code, path])
        passer.join(10)
    os.close(fd)
    got, again, content = run.printed_once("GOT")
    assert content == "PASSED"
    pid = run.pid_of("python3")
    reopened = run.one_open(pid, "the reopen of the passed fd", return_code=int(again))
    facts = run.brief(reopened)
    assert (reopened["path"], reopened.get("requested_path")) == (
        str(secret), f"/proc/self/fd/{got}"), facts
    assert not run.of("session.disk", pid, return_code=int(got), path=str(secret)), \
        "the receipt of the fd was recorded as an open it was not"
