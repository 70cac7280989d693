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
    directory = Path(os.path.realpath(tempfile.mkdtemp(prefix="enhrec-redteam-", dir="/tmp")))
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
