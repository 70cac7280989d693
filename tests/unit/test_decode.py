"""decode.py against the C header it mirrors, and the splitting of exec and open record tails."""

import importlib.resources
import re

import pytest

from enhrec_wrap.kernel import loader as bpf
from enhrec_wrap.kernel import decode

# The installed header is the one the wrapper compiles, next to the decode.py imported here.
HEADER = importlib.resources.files("enhrec_wrap.bpf_programs") / "enhrec.h"
DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+(\d+)\b", re.MULTILINE)
MIRRORED_PREFIXES = ("RECORD_", "ARGV_", "CONNECT_")


@pytest.fixture(scope="module")
def header_defines():
    defines = {name: int(value) for name, value in DEFINE.findall(HEADER.read_text())}
    assert defines, f"no #define found in {HEADER}"
    return defines


def test_every_mirrored_constant_matches_the_header(header_defines):
    mirrored = {name: value for name, value in header_defines.items()
                if name.startswith(MIRRORED_PREFIXES) or name == "ARG_READ_MAX"}
    # The ones decode.py must have, by name: a new record type or flag bit in the header must
    # show up here too.
    assert {"RECORD_EXEC", "RECORD_EXEC_RESULT", "RECORD_OPEN", "RECORD_CONNECT", "ARGV_TOO_MANY",
            "ARGV_DATA_FULL", "ARGV_UNREADABLE", "CONNECT_TCP", "CONNECT_NO_SYSCALL",
            "ARG_READ_MAX"} <= mirrored.keys()
    for name, value in mirrored.items():
        assert hasattr(decode, name), f"decode.py lacks {name} (enhrec.h: {value})"
        assert getattr(decode, name) == value, f"{name}: decode.py {getattr(decode, name)}, enhrec.h {value}"


def test_stream_numbers_match_the_header(header_defines):
    assert [header_defines[f"STREAM_{s.upper()}"] for s in bpf.STREAMS] == [0, 1, 2]
    assert bpf.COMMAND_RESULT_COUNTER == header_defines["STREAM_COMMAND_RESULT"]
    assert header_defines["STREAM_COUNT"] == len(bpf.STREAMS) + 1


def test_every_record_type_has_a_scratch_table_and_tails_match(header_defines):
    record_types = {v for k, v in header_defines.items() if k.startswith("RECORD_")}
    assert set(decode.SCRATCH_TABLES) == record_types
    assert set(decode.TAIL_FIELDS) == {decode.RECORD_EXEC, decode.RECORD_OPEN}


def _exec_fields(filename, args, truncated=0, argc=None):
    """An exec record's fields as the BPF side fills them: filename\\0arg0\\0arg1\\0..."""
    tail = filename + b"\0" + b"".join(a + b"\0" for a in args)
    return {"tail": tail, "filename_len": len(filename) + 1,
            "argc": len(args) if argc is None else argc, "truncated": truncated}


def test_split_exec_tail():
    fields = _exec_fields(b"/bin/echo", [b"echo", b"a b", b"", b"\xff\n"])
    assert decode.split_exec_tail(fields) == (b"/bin/echo", [b"echo", b"a b", b"", b"\xff\n"], False)


def test_split_exec_tail_keeps_only_argc_arguments():
    fields = _exec_fields(b"/bin/true", [b"true", b"x"], argc=1)
    assert decode.split_exec_tail(fields) == (b"/bin/true", [b"true"], False)


def test_split_exec_tail_without_arguments_or_filename():
    assert decode.split_exec_tail(_exec_fields(b"/bin/true", [])) == (b"/bin/true", [], False)
    unreadable = _exec_fields(b"", [], truncated=decode.ARGV_UNREADABLE)
    assert decode.split_exec_tail(unreadable) == (b"", [], True)


@pytest.mark.parametrize("bit", ["ARGV_TOO_MANY", "ARGV_DATA_FULL", "ARGV_UNREADABLE"])
def test_split_exec_tail_reports_kernel_truncation(bit):
    fields = _exec_fields(b"/bin/true", [b"true", b"a"], truncated=getattr(decode, bit))
    assert decode.split_exec_tail(fields)[2] is True


def test_split_exec_tail_reports_an_argument_that_filled_its_buffer():
    longest_whole = b"a" * (decode.ARG_READ_MAX - 2)
    filled = b"a" * (decode.ARG_READ_MAX - 1)
    assert decode.split_exec_tail(_exec_fields(b"/bin/x", [b"x", longest_whole]))[2] is False
    assert decode.split_exec_tail(_exec_fields(b"/bin/x", [b"x", filled]))[2] is True


def test_open_path():
    assert decode.open_path({"tail": b"/etc/passwd\0", "tail_len": 12}) == (b"/etc/passwd", True)
    assert decode.open_path({"tail": b"", "tail_len": 0}) == (b"", False)
