"""Issue 9, section 3: paths that were wrong or missing. A successful open's `path` is the
absolute, resolved path of the file the kernel opened (what the program itself reads back from
/proc/self/fd/N while the fd is open, and prints); `requested_path` is what it asked for."""

import os

O_WRONLY_CREAT = os.O_WRONLY | os.O_CREAT


def _resolved_open(run, pid, what, requested, flags):
    """The program's open of `requested` (the one with the fd it printed and these `flags`),
    checked against the path the kernel gave the program."""
    fd, really = run.printed_once("OPEN")
    opened = run.one_open(pid, what, return_code=int(fd), flags=flags)
    assert opened["path"] == really, (f"{what}: logged {opened['path']!r}, the kernel opened "
                                      f"{really!r}: {run.brief(opened)}")
    assert opened.get("path_source") == "kernel", run.brief(opened)
    assert opened.get("requested_path") == requested, run.brief(opened)
    return opened, really


def test_cd_then_relative_open_by_a_process_that_exits_at_once(run_in_session):
    """`cd /etc && cat hostname`: cat is gone before anyone could look at its /proc."""
    run = run_in_session(["sh", "-c", "cd /etc && cat hostname"])
    pid = run.pid_of("cat")
    opened = run.one_open(pid, "cat's open of hostname", path="/etc/hostname")
    assert opened.get("requested_path") == "hostname", run.brief(opened)
    assert opened.get("path_source") == "kernel", run.brief(opened)
    assert opened["return_code"] >= 0 and opened["flags"] == os.O_RDONLY, run.brief(opened)
    with open("/etc/hostname") as f:
        assert run.result.stdout == f.read()


def test_openat_dirfd_names_the_directory_of_the_fd(technique, scratch):
    (scratch / "dir").mkdir()
    (scratch / "dir" / "name").write_text("secret\n")
    run, pid = technique("openat_dirfd", scratch / "dir", "name")
    _, really = _resolved_open(run, pid, "openat(dirfd, name)", "name", os.O_RDONLY)
    assert really == str(scratch / "dir" / "name")


def test_relative_open_then_chdir_names_the_directory_it_was_opened_in(technique, scratch):
    run, pid = technique("open_then_chdir", scratch)
    opened, really = _resolved_open(run, pid, "the relative open", "file", O_WRONLY_CREAT)
    assert os.path.basename(os.path.dirname(really)).startswith("chdir-a-"), really
    assert "abs_path" not in opened, f"a /proc guess (abs_path) is still written: {run.brief(opened)}"


def test_dotdot_through_a_symlink_is_resolved_by_the_kernel(technique, scratch):
    """`lnk/../x` with lnk -> a/b opens a/x; a textual normpath says ./x, which exists too."""
    run, pid = technique("symlink_dotdot", scratch)
    _, really = _resolved_open(run, pid, "the open of lnk/../x", "lnk/../x", os.O_RDONLY)
    assert really.startswith(str(scratch)) and really.endswith("/a/x"), really


def test_symlink_to_a_file_names_the_target(technique, scratch):
    run, pid = technique("symlink_file", scratch)
    _, really = _resolved_open(run, pid, "the open through the symlink", "innocent-name",
                               os.O_RDONLY)
    assert really.startswith(str(scratch)) and really.endswith("/target"), really


def test_failed_open_is_the_callers_claim(run_in_session, scratch):
    """No file was opened: the path is what the caller asked for, and says so."""
    missing = scratch / "no-such-file"
    run = run_in_session(["cat", missing], status=1)
    pid = run.pid_of("cat")
    opened = run.one_open(pid, "cat's failed open", path=str(missing))
    assert opened["return_code"] == -2, run.brief(opened)
    assert opened.get("path_source") == "caller", run.brief(opened)


def test_files_without_a_name_read_as_the_kernel_names_them(technique, scratch):
    """A pipe and a memfd reopened through /proc/self/fd/N, and an O_TMPFILE file."""
    run, pid = technique("open_pseudo", scratch)
    printed = run.printed("OPEN", fields=2)
    assert len(printed) == 3, run.lines
    (pipe_fd, pipe), (memfd_fd, memfd), (tmp_fd, tmpfile) = printed
    assert pipe.startswith("pipe:[") and memfd == "/memfd:pseudo-name (deleted)", printed
    assert tmpfile.startswith(f"{scratch}/#") and tmpfile.endswith(" (deleted)"), printed
    for fd, really, flag in ((pipe_fd, pipe, "pseudo"), (memfd_fd, memfd, "pseudo"),
                             (tmp_fd, tmpfile, "deleted")):
        opened = run.one_open(pid, f"the reopen of {really}", path=really)
        assert opened["return_code"] == int(fd), run.brief(opened)
        assert flag in opened.get("path_flags", []), run.brief(opened)


def test_a_path_deeper_than_the_walk_keeps_its_leaf_side(technique, scratch):
    run, pid = technique("deep_path", scratch, 100)
    fd, _, depth, _, _, _, top = run.printed_once("OPEN")
    opened = run.one_open(pid, "the open of the leaf", return_code=int(fd),
                          flags=os.O_WRONLY | os.O_CREAT)
    facts = run.brief(opened)
    assert opened["path"].startswith("<truncated>/") and opened["path"].endswith("/d/d/leaf"), facts
    assert top not in opened["path"] and "truncated" in opened.get("path_flags", []), facts
    assert set(opened["path"][len("<truncated>/"):].split("/")[:-1]) == {"d"}, facts
