"""compiler.py: where a function of recorder.c is attached, by its name; the compile units
put together."""

import re
import struct
from pathlib import Path

import pytest

from enhrec_wrap.kernel import compiler

RECORDER = Path(__file__).resolve().parents[2] / "bpf_programs" / "recorder.c"


def test_bcc_tracepoint_probe():
    assert compiler.attachments("tracepoint__io_uring__io_uring_complete") == (
        compiler.TRACEPOINT, ["io_uring:io_uring_complete"])


def test_a_program_of_several_tracepoints():
    assert compiler.attachments("tracepoints__syscalls__sys_exit__execve__execveat") == (
        compiler.TRACEPOINT, ["syscalls:sys_exit_execve", "syscalls:sys_exit_execveat"])


def test_raw_tracepoint_and_cgroup_hooks():
    assert compiler.attachments("raw_tracepoint__sched_process_exec") == (
        compiler.RAW_TRACEPOINT, ["sched_process_exec"])
    assert compiler.attachments("connect6") == (compiler.CGROUP_SOCK_ADDR, [11])


def test_other_functions_are_no_programs():
    assert compiler.attachments("record_open") == (None, [])


def test_every_open_like_exit_is_attached_once():
    """The one open program's name lists each open-like call whose number open_kind() knows
    (connect: a unix socket's is recorded like an open of its peer's socket file)."""
    source = RECORDER.read_text()
    name = re.search(r"^int (tracepoints__syscalls__sys_exit__open\w*)\(", source, re.M).group(1)
    events = [t.split(":")[1] for t in compiler.attachments(name)[1]]
    assert sorted(events) == sorted(["sys_exit_open", "sys_exit_openat", "sys_exit_openat2",
                                     "sys_exit_creat", "sys_exit_open_by_handle_at",
                                     "sys_exit_pidfd_getfd", "sys_exit_ptrace",
                                     "sys_exit_connect"])
    kinds = re.search(r"open_kind\(s32 syscall_nr\)\n\{(.*?)\n\}", source, re.S).group(1)
    assert len(re.findall(r"case NR_\w+: return OPEN_\w+;", kinds)) == len(events)


def _load_map(fd: int) -> str:
    """A ld_imm64 of map fd (src_reg BPF_PSEUDO_MAP_FD) and an exit, as BCC emits them, hex."""
    return (struct.pack("<BBhi", 0x18, 0x11, 0, fd) + bytes(8)
            + struct.pack("<BBhi", 0x95, 0, 0, 0)).hex()


def _unit(fds: dict, programs: dict) -> dict:
    maps = [{"name": name, "fd": fd, "type": 1, "key_size": 8, "value_size": 8,
             "max_entries": 16, "flags": 0} for name, fd in fds.items()]
    return {"format": "f", "license": "GPL", "fields": {"open_scratch": []}, "maps": maps,
            "programs": [{"name": n, "kind": compiler.TRACEPOINT, "targets": ["a:b"],
                          "insns": _load_map(fds[m])} for n, m in programs.items()]}


def test_units_merge_into_one_entry_with_the_first_units_maps():
    first = _unit({"rings": 3, "lost": 4}, {"small": "lost", "opens": "rings"})
    second = _unit({"rings": 7, "lost": 8}, {"small": "lost", "exec": "rings"})
    merged = compiler.merge_units([first, second])
    assert merged["maps"] == first["maps"]
    by_name = {p["name"]: p["insns"] for p in merged["programs"]}
    assert sorted(by_name) == ["exec", "opens", "small"]   # the small one once
    assert by_name["exec"] == _load_map(3)                 # renumbered to the first unit's rings
    assert by_name["small"] == _load_map(4)


def test_units_that_disagree_on_a_map_are_refused():
    first = _unit({"rings": 3}, {"opens": "rings"})
    second = _unit({"rings": 7}, {"exec": "rings"})
    second["maps"][0]["max_entries"] = 32
    with pytest.raises(compiler.EnhrecError, match="rings"):
        compiler.merge_units([first, second])
