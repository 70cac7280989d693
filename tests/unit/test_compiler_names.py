"""How compiler.py tells from a function's name of recorder.c where it is attached."""

import re
from pathlib import Path

from enhrec_wrap.kernel import compiler

RECORDER = Path(__file__).resolve().parents[2] / "bpf_programs" / "recorder.c"


def test_bcc_tracepoint_probe():
    assert compiler.attachments("tracepoint__io_uring__io_uring_complete") == (
        compiler.TRACEPOINT, ["io_uring:io_uring_complete"])


def test_a_program_of_several_tracepoints():
    assert compiler.attachments("tracepoints__syscalls__sys_exit_execve__sys_exit_execveat") == (
        compiler.TRACEPOINT, ["syscalls:sys_exit_execve", "syscalls:sys_exit_execveat"])


def test_raw_tracepoint_and_cgroup_hooks():
    assert compiler.attachments("raw_tracepoint__sched_process_exec") == (
        compiler.RAW_TRACEPOINT, ["sched_process_exec"])
    assert compiler.attachments("connect6") == (compiler.CGROUP_SOCK_ADDR, [11])


def test_other_functions_are_no_programs():
    assert compiler.attachments("record_open") == (None, [])


def test_every_open_like_exit_is_attached_once():
    """The one open program's name lists each open-like call whose number open_kind() knows."""
    source = RECORDER.read_text()
    name = re.search(r"^int (tracepoints__syscalls__sys_exit_open\w*)\(", source, re.M).group(1)
    events = [t.split(":")[1] for t in compiler.attachments(name)[1]]
    assert sorted(events) == sorted(["sys_exit_open", "sys_exit_openat", "sys_exit_openat2",
                                     "sys_exit_creat", "sys_exit_open_by_handle_at"])
    kinds = re.search(r"open_kind\(s32 syscall_nr\)\n\{(.*?)\n\}", source, re.S).group(1)
    assert len(re.findall(r"case NR_\w+: return OPEN_\w+;", kinds)) == len(events)
