"""The constants shared with the C header (abi.py), and the splitting of exec and open record
tails (decode.py)."""

import pytest

from enhrec_wrap.kernel import abi, decode


@pytest.fixture(scope="module")
def header_defines():
    defines = abi.parse_defines(abi.read_header())
    assert defines, "no #define found in the installed enhrec.h"
    return defines


def test_parse_defines_reads_decimal_hex_and_negative_values_only():
    header = (b"#define A 12\n#define B 0x1f /* bits */\n#define C -100\n"
              b"#define D (1 << 3)\n#define lower 1\n  #define E 2\n")
    assert abi.parse_defines(header) == {"A": 12, "B": 31, "C": -100}


def test_abi_has_every_define_of_the_header(header_defines):
    for name, value in header_defines.items():
        assert getattr(abi, name) == value, name
    assert set(abi.REQUIRED) <= header_defines.keys()


def test_every_record_type_has_a_scratch_table_and_a_ring(header_defines):
    record_types = {v for k, v in header_defines.items() if k.startswith("RECORD_")}
    assert set(decode.SCRATCH_TABLES) == record_types
    assert set(decode.TAIL_FIELDS) == {abi.RECORD_EXEC, abi.RECORD_EXEC_FAILED, abi.RECORD_OPEN}
    streams = {v for k, v in header_defines.items() if k.startswith("STREAM_") and k != "STREAM_COUNT"}
    assert set(abi.RING_STREAM_NAMES) == streams
    assert abi.STREAM_COUNT == len(streams)


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
    unreadable = _exec_fields(b"", [], truncated=abi.ARGV_UNREADABLE)
    assert decode.split_exec_tail(unreadable) == (b"", [], True)


@pytest.mark.parametrize("bit", ["ARGV_TOO_MANY", "ARGV_DATA_FULL", "ARGV_UNREADABLE"])
def test_split_exec_tail_reports_kernel_truncation(bit):
    fields = _exec_fields(b"/bin/true", [b"true", b"a"], truncated=getattr(abi, bit))
    assert decode.split_exec_tail(fields)[2] is True


def test_split_exec_tail_reports_an_argument_that_filled_its_buffer():
    longest_whole = b"a" * (abi.ARG_READ_MAX - 2)
    filled = b"a" * (abi.ARG_READ_MAX - 1)
    assert decode.split_exec_tail(_exec_fields(b"/bin/x", [b"x", longest_whole]))[2] is False
    assert decode.split_exec_tail(_exec_fields(b"/bin/x", [b"x", filled]))[2] is True


def test_open_path():
    assert decode.open_path({"tail": b"/etc/passwd\0", "tail_len": 12}) == (b"/etc/passwd", True)
    assert decode.open_path({"tail": b"", "tail_len": 0}) == (b"", False)
