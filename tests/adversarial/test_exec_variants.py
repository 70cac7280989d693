"""Red team: execs by the less usual ways. Each is recorded once, from the new image, with the
argv only the technique produces and the binary that really ran."""

import os

ECHO = os.path.realpath("/bin/echo")
LOADER = "/lib64/ld-linux-x86-64.so.2"


def _the_exec(run, mode, path, executable):
    announced = run.printed_once("EXEC")
    assert announced[0] == mode, announced
    pid = int(announced[1])
    command = run.one_command(f"the {mode} exec", pid=pid, argv=[f"{mode}-EXEC"])
    facts = run.brief(command)
    assert (command["path"], command.get("path_source"), command["return_code"]) == (
        path, "kernel", 0), facts
    assert command.get("executable") == executable, facts
    assert f"{mode}-EXEC" in run.lines, run.lines
    return command, announced


def test_exec_from_a_second_thread(technique):
    """The kernel makes the exec'ing thread the leader: the event has the process's pid."""
    run, pid = technique("exec_tricks", "thread")
    command, announced = _the_exec(run, "thread", "/bin/echo", ECHO)
    assert command["pid"] == pid == int(announced[1]), run.brief(command)


def test_vfork_then_exec(technique):
    run, pid = technique("exec_tricks", "vfork")
    command, _ = _the_exec(run, "vfork", "/bin/echo", ECHO)
    assert command["ppid"] == pid, run.brief(command)


def test_execveat_of_an_o_path_fd(technique):
    run, pid = technique("exec_tricks", "opath")
    fd, inode = run.printed_once("EXEC")[2:]
    command, _ = _the_exec(run, "opath", f"/dev/fd/{fd}", ECHO)
    assert command["executable_inode"] == int(inode), run.brief(command)


def test_fexecve_of_a_deleted_file(technique, scratch):
    copy = scratch / "echo-copy"
    copy.write_bytes(open(ECHO, "rb").read())
    copy.chmod(0o755)
    inode = copy.stat().st_ino
    run, _ = technique("exec_tricks", "deleted", copy)
    assert not copy.exists()
    fd = run.printed_once("EXEC")[2]
    command, _ = _the_exec(run, "deleted", f"/dev/fd/{fd}", f"{copy} (deleted)")
    assert command["executable_inode"] == inode, run.brief(command)


def test_memfd_named_like_a_real_binary(technique):
    """memfd_create("/usr/bin/sudo"): the executable still reads as a memfd, never as the path
    its name imitates."""
    run, _ = technique("exec_tricks", "memfd-slash")
    fd, inode = run.printed_once("EXEC")[2:]
    command, _ = _the_exec(run, "memfd-slash", f"/dev/fd/{fd}", "/memfd:/usr/bin/sudo (deleted)")
    assert command["executable_inode"] == int(inode), run.brief(command)


def test_execveat_of_a_name_relative_to_a_directory_fd(technique):
    """execveat(dirfd of /bin, "echo"): the kernel names it /dev/fd/N/echo; the executable is
    the real file."""
    run, _ = technique("exec_tricks", "dirfd")
    (fd,) = run.printed_once("DIRFD")
    _the_exec(run, "dirfd", f"/dev/fd/{fd}/echo", ECHO)


def test_program_run_through_the_dynamic_loader(run_in_session, scratch):
    """`ld.so /bin/cat FILE`: the only exec is the loader's, whose argv names cat and FILE; the
    loader maps cat with an open, which names cat's real file."""
    secret = scratch / "loader-secret"
    secret.write_text("LOADER-SECRET\n")
    run = run_in_session([LOADER, "/bin/cat", secret])
    assert run.lines == ["LOADER-SECRET"]
    command = run.one_command("the loader's exec", path=LOADER)
    facts = run.brief(command)
    assert command["argv"] == ["/bin/cat", str(secret)], facts
    assert command.get("executable") == os.path.realpath(LOADER), facts
    pid = command["pid"]
    run.one_open(pid, "the loader's open of cat", path=os.path.realpath("/bin/cat"),
                 requested_path="/bin/cat")
    run.one_open(pid, "cat's open of the file", path=str(secret))
    assert not run.of("session.command", path="/bin/cat"), "an exec of cat that never happened"


def test_script_whose_interpreter_is_a_script(run_in_session, scratch):
    """outer's #! names inner, whose #! names /bin/sh: the kernel runs /bin/sh inner outer; the
    event names the last interpreter and argv holds the chain."""
    inner, outer = scratch / "inner", scratch / "outer"
    inner.write_text('#!/bin/sh\necho INNER-RAN "$@"\n')
    outer.write_text(f"#!{inner}\nnot shell\n")
    for script in (inner, outer):
        script.chmod(0o755)
    run = run_in_session([outer, "CHAIN-ARG"])
    assert run.lines == [f"INNER-RAN {outer} CHAIN-ARG"], run.lines
    command = run.one_command("the exec of outer", path=str(outer))
    facts = run.brief(command)
    assert command["argv"] == [str(inner), str(outer), "CHAIN-ARG"], facts
    assert command.get("interpreter") == "/bin/sh", facts
    assert command.get("executable") == os.path.realpath("/bin/sh"), facts
    run.one_open(command["pid"], "the shell's open of inner", path=str(inner))


def test_exec_burst_at_the_session_end_is_all_recorded(run_in_session, scratch):
    """A background loop of execs (and a setsid one) still running when the shell exits: both
    are killed, and every exec that wrote its line is on record."""
    lines = scratch / "burst"
    run = run_in_session(["sh", "-c",
                          f"(while :; do /bin/echo A >> {lines}; done) & "
                          f"(setsid sh -c 'while :; do /bin/echo S >> {lines}; done' &); "
                          "sleep 0.3; exit 0"])
    written = lines.read_text().splitlines()
    assert len(written) > 10, f"the loops hardly ran: {len(written)} lines"
    for marker in ("A", "S"):
        done = written.count(marker)
        recorded = len(run.of("session.command", path="/bin/echo", argv=[marker]))
        assert recorded >= done, f"{done} echo {marker} ran to their write, {recorded} recorded"
    assert run.session.end["killed_processes"] >= 2, run.session.end
