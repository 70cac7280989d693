"""Issue 9, section 4: execs whose argv user memory could not give, scripts, and fileless
binaries. A successful exec is recorded from the new image (its filename, its own argv, the
binary that really runs); a failed one is the caller's claim."""

import os

import pytest

ECHO = os.path.realpath("/bin/echo")


def _exec_of_echo(run, pid, argument):
    command = run.one_command("the exec of /bin/echo", pid=pid, path="/bin/echo")
    facts = run.brief(command)
    assert command["argv"] == [argument], facts
    assert not command.get("argv_unreadable") and not command.get("argv_truncated"), facts
    assert (command["return_code"], command.get("path_source")) == (0, "kernel"), facts
    assert command.get("executable") == ECHO, facts
    assert run.lines[-1] == argument, run.lines


def test_argv_in_a_never_touched_rodata_page(technique):
    run, pid = technique("exec_rodata_argv")
    _exec_of_echo(run, pid, "RODATA-ARGUMENT")


def test_argv_in_an_untouched_file_mapping(technique, scratch):
    run, pid = technique("exec_filemap_argv", scratch)
    _exec_of_echo(run, pid, "FILEMAP-ARGUMENT")


def test_script_records_its_interpreter(technique, scratch):
    run, pid = technique("exec_shebang", scratch)
    script, _, interpreter = run.printed_once("EXEC")
    command = run.one_command("the exec of the script", pid=pid, path=script)
    facts = run.brief(command)
    assert interpreter == "/bin/sh" and command.get("interpreter") == interpreter, facts
    assert command.get("executable") == os.path.realpath("/bin/sh"), facts
    # The kernel runs `/bin/sh SCRIPT`: argv[0] is the interpreter, then the script as given.
    assert command["argv"] == [script] and command["return_code"] == 0, facts
    assert run.lines[-1] == "SCRIPT-RAN"


def test_symlink_run_by_a_relative_name_names_the_binary(run_in_session, scratch):
    """`./innocent` is a symlink to /bin/echo: the path is made absolute, the name as run is
    kept, and the executable is what really ran."""
    (scratch / "innocent").symlink_to("/bin/echo")
    run = run_in_session(["sh", "-c", f"cd {scratch} && ./innocent HIDDEN-ARGUMENT"])
    command = run.one_command("the exec of ./innocent", path=f"{scratch}/innocent")
    facts = run.brief(command)
    assert command.get("requested_path") == "./innocent", facts
    assert command.get("executable") == ECHO and command["argv"] == ["HIDDEN-ARGUMENT"], facts
    assert run.lines == ["HIDDEN-ARGUMENT"]


@pytest.mark.parametrize("how", ["fexecve", "execveat", "proc"])
def test_fileless_memfd_exec_identifies_the_binary(technique, how):
    run, pid = technique("exec_memfd", how)
    name, fd, inode, size = run.printed_once("EXEC")
    assert name == "memfd:innocent"
    fd, inode, size = (int(x.split("=")[1]) for x in (fd, inode, size))
    path = f"/proc/self/fd/{fd}" if how == "proc" else f"/dev/fd/{fd}"
    command = run.one_command(f"the {how} of the memfd", pid=pid, path=path)
    facts = run.brief(command)
    assert command.get("executable") == "/memfd:innocent (deleted)", facts
    assert (command.get("executable_inode"), command.get("executable_size")) == (inode, size), facts
    assert command["argv"] == ["MEMFD-EXEC"] and command["return_code"] == 0, facts
    assert run.lines[-1] == "MEMFD-EXEC"


def test_failed_exec_is_the_callers_claim(technique, scratch):
    run, pid = technique("exec_fail", scratch)
    failures = run.printed("FAIL")
    assert [int(errno) for errno, _ in failures] == [2, 8], failures   # ENOENT, ENOEXEC
    for errno, path in failures:
        command = run.one_command(f"the failed exec of {path}", pid=pid, path=path)
        facts = run.brief(command)
        assert command["return_code"] == -int(errno), facts
        assert command["argv"] == ["FAILED-ARG-1", "FAILED-ARG-2"], facts
        assert command.get("path_source") == "caller", facts
