"""btf.py against the running kernel's BTF, cross-checked with bpftool, and against small
hand-built BTF blobs for the cases vmlinux does not pin down (kind_flag, corrupt files)."""

import re
import struct
import subprocess

import pytest

from enhrec_wrap.kernel import btf

VMLINUX = btf.VMLINUX_BTF


@pytest.fixture(scope="module")
def raw_dump():
    """bpftool's raw dump of vmlinux: the independent reading the parser is checked against."""
    out = subprocess.run(["bpftool", "btf", "dump", "file", VMLINUX, "format", "raw"],
                         check=True, capture_output=True, text=True).stdout
    types = {}
    current = None
    for line in out.splitlines():
        head = re.match(r"\[(\d+)\] (\w+) '([^']*)'(.*)", line)
        if head:
            current = {"kind": head.group(2), "name": head.group(3), "rest": head.group(4),
                       "members": []}
            types[int(head.group(1))] = current
            continue
        member = re.match(r"\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?",
                          line)
        if member and current is not None:
            name = "" if member.group(1) == "(anon)" else member.group(1)
            current["members"].append((name, int(member.group(2)),
                                       int(member.group(3)), int(member.group(4) or 0)))
    return types


def test_type_count_matches_bpftool(raw_dump):
    assert len(btf.load().starts) - 1 == max(raw_dump)


@pytest.mark.parametrize("name", ["file", "dentry", "mount", "task_struct", "mm_struct",
                                  "linux_binprm", "fdtable", "qstr"])
def test_struct_members_match_bpftool(raw_dump, name):
    b = btf.load()
    type_id = b.find_struct(name)
    entry = raw_dump[type_id]
    assert (entry["kind"], entry["name"]) == ("STRUCT", name)
    assert f"size={b.size(type_id)} " in entry["rest"] + " "
    assert list(b.members(type_id)) == entry["members"]


def test_anonymous_union_member():
    # 6.18: struct file { ...; union { const struct path f_path; struct path __f_path; }; ... }
    m = btf.member_offsets(["file.f_path"])["file.f_path"]
    assert (m.offset, m.size) == (64, 16)
    assert btf.load().struct_size("file") == 184


def test_nested_anonymous_structs_and_chains(raw_dump):
    # mm_struct's fields sit two anonymous structs deep; dentry.d_name is in an anonymous
    # union and qstr.len in an anonymous struct inside an anonymous union.
    offsets = btf.member_offsets(["mm_struct.arg_start", "mm_struct.arg_end",
                                  "dentry.d_name.len", "dentry.d_name.name", "qstr.len"])
    assert offsets["mm_struct.arg_end"].offset == offsets["mm_struct.arg_start"].offset + 8
    d_name = btf.load().member("dentry.d_name")
    assert offsets["dentry.d_name.name"].offset == d_name.offset + 8
    assert offsets["dentry.d_name.len"].offset == d_name.offset + 4
    assert (offsets["qstr.len"].offset, offsets["qstr.len"].size) == (4, 4)


def test_typedefs_are_followed():
    offsets = btf.member_offsets(["task_struct.pid", "inode.i_size", "inode.i_ino"])
    assert offsets["task_struct.pid"].size == 4    # pid_t -> __kernel_pid_t -> int
    assert offsets["inode.i_size"].size == 8       # loff_t -> __kernel_loff_t -> long long
    assert offsets["inode.i_ino"].size == 8


def test_bitfield_in_vmlinux(raw_dump):
    b = btf.load()
    m = b.member("linux_binprm.have_execfd")
    assert m.bit_size == 1
    dumped = {name: (bits, size) for name, _, bits, size in
              raw_dump[b.find_struct("linux_binprm")]["members"]}
    assert (m.bit_offset, m.bit_size) == dumped["have_execfd"]
    with pytest.raises(btf.BTFError, match="bitfield"):
        btf.offset_defines({"X": ("linux_binprm.have_execfd", 4)})


def test_offset_defines_checks_sizes():
    flags = btf.offset_defines({"OFF_PATH_DENTRY": ("path.dentry", 8),
                                "OFF_FILE_F_PATH": ("file.f_path", None)})
    assert flags == ["-DOFF_FILE_F_PATH=64", "-DOFF_PATH_DENTRY=8"]
    with pytest.raises(btf.BTFError, match="is 8 bytes, the programs read 4"):
        btf.offset_defines({"X": ("inode.i_ino", 4)})


@pytest.mark.parametrize("spec, message", [
    ("file.f_no_such_member", "file has no member f_no_such_member"),
    ("no_such_struct_xyz.a", "no struct or union no_such_struct_xyz"),
    ("file.f_inode.i_ino", "file.f_inode is not a struct or union"),
    ("file", "bad member spec"),
    ("file..f_path", "bad member spec"),
])
def test_errors(spec, message):
    with pytest.raises(btf.BTFError, match=re.escape(message)):
        btf.load().member(spec)


def test_missing_btf(tmp_path):
    with pytest.raises(btf.BTFError, match="this kernel has no BTF"):
        btf.load(str(tmp_path / "vmlinux"))


def test_not_btf(tmp_path):
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    with pytest.raises(btf.BTFError, match="not BTF"):
        btf.load(str(bad))


# -- hand-built blobs -----------------------------------------------------------------------

def blob(types, strings):
    """A BTF file: header, the type words, the string section."""
    type_bytes = b"".join(struct.pack("<I", w) for w in types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(type_bytes), len(type_bytes),
                         len(strings))
    return header + type_bytes + strings


def info(kind, vlen=0, kind_flag=0):
    return kind_flag << 31 | kind << 24 | vlen


STRINGS = b"\0int\0s\0a\0b\0c\0u\0"   # offsets: int 1, s 5, a 7, b 9, c 11, u 13


def test_kind_flag_bitfields_and_anonymous_union():
    types = [
        1, info(btf.KIND_INT), 4, 32,                  # [1] int, 4 bytes, 32 bits
        # [2] struct s (kind_flag): a:3 at bit 0, b:5 at bit 3, then an anonymous union
        5, info(btf.KIND_STRUCT, 3, kind_flag=1), 8,
        7, 1, 3 << 24 | 0,
        9, 1, 5 << 24 | 3,
        0, 3, 32,
        # [3] union { int c; }
        0, info(btf.KIND_UNION, 1), 4,
        11, 1, 0,
    ]
    b = btf.BTF(blob(types, STRINGS))
    assert b.member("s.a") == btf.Member(0, 0, 0, 3)
    assert b.member("s.b") == btf.Member(0, 0, 3, 5)
    assert b.member("s.c") == btf.Member(4, 4, 32, 0)


def test_unknown_kind_is_refused():
    types = [1, info(31), 4]
    with pytest.raises(btf.BTFError, match="unknown BTF kind 31"):
        btf.BTF(blob(types, STRINGS))


def test_truncated_type_section():
    types = [5, info(btf.KIND_STRUCT, 2), 8, 7, 1, 0]   # two members announced, one present
    with pytest.raises(btf.BTFError, match="truncated"):
        btf.BTF(blob(types, STRINGS))


def test_two_different_definitions_are_ambiguous():
    types = [
        1, info(btf.KIND_INT), 4, 32,
        5, info(btf.KIND_STRUCT, 1), 4, 7, 1, 0,       # struct s { int a; }
        5, info(btf.KIND_STRUCT, 1), 4, 9, 1, 0,       # struct s { int b; }
    ]
    b = btf.BTF(blob(types, STRINGS))
    with pytest.raises(btf.BTFError, match="2 different definitions of s"):
        b.member("s.a")
