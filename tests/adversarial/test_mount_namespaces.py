"""Red team: an ordinary user (nobody) makes a user and mount namespace of its own (unshare
-Urm, no privilege needed) and arranges its mounts so that a path names another file than the
one read or run: a bind mount, pivot_root, chroot, a tmpfs over a directory. `path` is the
path in the caller's namespace (what /proc/self/fd shows); the event also says that the
caller's mounts were its own (`path_flags: user_namespace`) and gives `fs_path`, the file from
its filesystem's root, which no mount arrangement changes (docs/events.md)."""

import os
import re
import shutil
import tempfile

import pytest


@pytest.fixture
def public_dir():
    """A scratch directory that nobody can reach (pytest's own are root-only)."""
    directory = os.path.realpath(tempfile.mkdtemp(prefix="enhrec-adv-", dir="/tmp"))
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def as_nobody(programs, public_dir, run_in_session):
    """as_nobody(*args) -> (Run, pid): programs/userns_mounts.c run in a recorded session as
    nobody (setpriv: uid and gid 65534, no groups, no capabilities), from a copy nobody can
    execute."""
    program = os.path.join(public_dir, "userns_mounts")
    shutil.copy(programs["userns_mounts"], program)
    os.chmod(program, 0o755)

    def run(*args):
        done = run_in_session(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               program, *args])
        return done, done.pid_of(program)

    return run


def on_its_filesystem(path: str) -> str:
    """`path` (absolute, resolved) as fs_path gives it: from the root of its filesystem, through
    the mount it is under (/proc/self/mountinfo: the mount's root in its filesystem, and where it
    is mounted). On a host booted from that filesystem it is `path` itself; in a root that is a
    bind mount of a directory (make fresh-check's), the directory comes first."""
    best_point, best_root = "/", "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            root, point = (_unescape(x) for x in fields[3:5])
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best_point):
                best_point, best_root = point, root
    rest = path[len(best_point.rstrip("/")):]
    return os.path.normpath(best_root.rstrip("/") + rest) if rest else best_root


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 for a space ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _the_open(run, pid, what, path, **fields):
    opened = run.one_open(pid, what, path=path, **fields)
    facts = run.brief(opened)
    assert opened.get("path_source") == "kernel", facts
    assert "user_namespace" in opened.get("path_flags", []), facts
    return opened, facts


def test_bind_mount_in_a_user_namespace_names_the_file_read(as_nobody, public_dir):
    secret, innocent = f"{public_dir}/secret", f"{public_dir}/innocent"
    _write(secret, "SECRET\n")
    _write(innocent, "nothing\n")
    run, pid = as_nobody("bind", secret, innocent)
    fd, seen, inode = run.printed_once("OPEN")
    assert seen == innocent and int(inode) == os.stat(secret).st_ino
    opened, facts = _the_open(run, pid, "the open of the bind-mounted name", innocent,
                              return_code=int(fd))
    assert opened.get("fs_path") == on_its_filesystem(secret) and opened["inode"] == int(inode), facts
    st = os.stat(secret)
    assert opened["device"] == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", facts


def test_pivot_root_in_a_user_namespace_names_the_file_read(as_nobody, public_dir):
    root = f"{public_dir}/newroot"
    os.makedirs(f"{root}/etc")
    os.mkdir(f"{root}/old")
    _write(f"{root}/etc/shadow", "FAKE\n")
    run, pid = as_nobody("pivot", root, "/etc/shadow")
    fd, *_ = run.printed_once("OPEN")
    opened, facts = _the_open(run, pid, "the open after pivot_root", "/etc/shadow",
                              return_code=int(fd))
    assert opened.get("fs_path") == on_its_filesystem(f"{root}/etc/shadow"), facts
    assert opened["inode"] == os.stat(f"{root}/etc/shadow").st_ino, facts


def test_chroot_in_a_user_namespace_names_the_file_read(as_nobody, public_dir):
    root = f"{public_dir}/chrooted"
    os.makedirs(f"{root}/etc")
    _write(f"{root}/etc/passwd", "FAKE\n")
    run, pid = as_nobody("chroot", root, "/etc/passwd")
    fd, *_ = run.printed_once("OPEN")
    opened, facts = _the_open(run, pid, "the open in the chroot", "/etc/passwd",
                              return_code=int(fd), flags=os.O_RDONLY)
    assert "chroot" in opened["path_flags"], facts
    assert opened.get("fs_path") == on_its_filesystem(f"{root}/etc/passwd"), facts


def test_tmpfs_over_etc_in_a_user_namespace_is_not_etc(as_nobody):
    """A write of /etc/passwd that is a file of a tmpfs of the user's: fs_path and device say
    so."""
    run, pid = as_nobody("tmpfs", "/etc", "passwd")
    fd, seen, _ = run.printed_once("OPEN")
    assert seen == "/etc/passwd"
    opened, facts = _the_open(run, pid, "the write on the tmpfs", "/etc/passwd",
                              return_code=int(fd), flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert opened.get("fs_path") == "/passwd", facts
    st = os.stat("/etc")
    assert opened["device"] != f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", facts


def test_exec_of_a_bind_mounted_binary_names_what_ran(as_nobody, public_dir):
    """/usr/bin/ls is, in the user's namespace, a copy of echo: the executable's fs path is
    the copy's."""
    evil = f"{public_dir}/evil"
    shutil.copy(os.path.realpath("/bin/echo"), evil)
    os.chmod(evil, 0o755)
    run, pid = as_nobody("exec", evil, "/usr/bin/ls", "BIND-EXEC")
    assert run.lines == ["BIND-EXEC"], run.lines
    command = run.one_command("the exec of /usr/bin/ls", pid=pid, path="/usr/bin/ls")
    facts = run.brief(command)
    assert command["argv"] == ["BIND-EXEC"], facts
    assert command.get("executable_fs_path") == on_its_filesystem(evil), facts
    assert command["executable_inode"] == os.stat(evil).st_ino, facts
    st = os.stat(evil)
    assert command.get("executable_device") == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", facts


def test_opens_outside_a_user_namespace_carry_no_fs_path(run_in_session):
    """The host's own namespace: no flag, no second path."""
    run = run_in_session(["cat", "/etc/hostname"])
    opened = run.one_open(run.pid_of("cat"), "cat's open", path="/etc/hostname")
    assert "fs_path" not in opened and "path_flags" not in opened, run.brief(opened)


def test_chroot_by_root_names_the_file_from_its_filesystem(run_in_session, public_dir):
    """Root's own chroot (no user namespace): marked chroot, and fs_path says where it is."""
    os.makedirs(f"{public_dir}/jail/etc")
    _write(f"{public_dir}/jail/etc/shadow", "JAILED\n")
    code = ("import os\n"
            f"os.chroot({public_dir + '/jail'!r}); os.chdir('/')\n"
            "fd = os.open('/etc/shadow', os.O_RDONLY)\nprint('OPEN', fd)\n")
    run = run_in_session(["python3", "-c", code])
    (fd,) = run.printed_once("OPEN")
    opened = run.one_open(run.pid_of("python3"), "the open in the chroot", path="/etc/shadow",
                          return_code=int(fd))
    facts = run.brief(opened)
    assert opened.get("path_flags") == ["chroot"], facts
    assert opened.get("fs_path") == on_its_filesystem(f"{public_dir}/jail/etc/shadow"), facts
