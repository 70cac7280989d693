"""Kernel struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The BPF programs are compiled by BCC against headers whose layouts may not be the running
kernel's (6.1 headers on 6.18 here), so they never dereference a kernel struct: every field is
read with bpf_probe_read_kernel at an offset given as a -D define, taken from BTF here at load
time. Pure Python, no bpftool: the BTF format is documented in the kernel's
Documentation/bpf/btf.rst (struct btf_header, struct btf_type and its kind-specific tails).

    offsets = member_offsets(["file.f_path", "path.dentry", "dentry.d_name.name"])
    offsets["file.f_path"].offset   # 64 on 6.18

A spec is "<struct or union name>.<member>[.<member>...]": each step after the first names a
member of the previous one's type (typedefs and const/volatile followed; anonymous struct and
union members searched, as C does). Costs: 17-25 ms to index vmlinux's 126,611 types on this VM,
once per process (measured in FINDINGS.md); each spec then costs microseconds.
"""

import functools
import os
import struct
from dataclasses import dataclass

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD = 1, 2, 3, 4, 5, 6, 7
KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19
# The kinds that only qualify another type: a member's type is followed through them.
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}
POINTER_SIZE = 8   # x86-64; BTF's PTR has no size of its own

# A record is struct btf_type (3 u32 words) + a tail of fixed words + vlen entries of a few
# words each. Indexed by the top byte of `info` (kind in bits 24-28, kind_flag in bit 31), so
# the index loop does one table lookup per type. Unknown kinds count as 0 and are refused.
_FIXED_WORDS = {KIND_INT: 1, KIND_ARRAY: 3, KIND_VAR: 1, KIND_DECL_TAG: 1}
_ENTRY_WORDS = {KIND_STRUCT: 3, KIND_UNION: 3, KIND_ENUM: 2, KIND_FUNC_PROTO: 2,
                KIND_DATASEC: 3, KIND_ENUM64: 3}
_KNOWN = set(range(KIND_INT, KIND_ENUM64 + 1))
_BASE = [3 + _FIXED_WORDS.get(b & 0x1F, 0) if b & 0x1F in _KNOWN else 0 for b in range(256)]
_PER_ENTRY = [_ENTRY_WORDS.get(b & 0x1F, 0) for b in range(256)]
_STRUCT_OR_UNION = [b & 0x1F in (KIND_STRUCT, KIND_UNION) for b in range(256)]


class BTFError(Exception):
    """BTF missing, unreadable, or without a member the programs need. The caller turns it
    into its one-line refusal (exit 125)."""


@dataclass(frozen=True)
class Member:
    offset: int          # bytes from the start of the outermost struct of the spec
    size: int            # bytes of the member's type (0 for a flexible array)
    bit_offset: int      # the same offset in bits (differs from 8*offset only for bitfields)
    bit_size: int = 0    # bitfield width; 0 when not a bitfield


class BTF:
    """One BTF blob (vmlinux), indexed: type id -> word offset of its record."""

    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BTFError("BTF is truncated")
        magic, version, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data)
        if magic != BTF_MAGIC:
            raise BTFError(f"not BTF (magic {magic:#x}; a big-endian BTF is not supported)")
        if version != 1:
            raise BTFError(f"unsupported BTF version {version}")
        types_at, strings_at = hdr_len + type_off, hdr_len + str_off
        if (type_len % 4 or types_at + type_len > len(data)
                or strings_at + str_len > len(data)):
            raise BTFError("BTF sections exceed the file")
        self.words = memoryview(data)[types_at:types_at + type_len].cast("I")
        self.strings = data[strings_at:strings_at + str_len]
        self.starts = self._index()

    def _index(self):
        """Word offset of every type's record (type id N is starts[N]; id 0 is void), and
        name_off -> [type ids] of the structs and unions, in one pass."""
        words = self.words
        infos = words[1:]   # infos[i] is the info word of a record starting at word i
        starts = [-1]
        by_name = {}
        append, base, per_entry, named = starts.append, _BASE, _PER_ENTRY, _STRUCT_OR_UNION
        i, end = 0, len(words)
        while i < end:
            append(i)
            info = infos[i]
            top = info >> 24
            step = base[top]
            if not step:
                raise BTFError(f"unknown BTF kind {top & 0x1F} (type id {len(starts) - 1})")
            if named[top]:
                by_name.setdefault(words[i], []).append(len(starts) - 1)
            i += step + (info & 0xFFFF) * per_entry[top]
        if i != end:
            raise BTFError("BTF type section is truncated")
        self._by_name = by_name
        return starts

    # -- records ---------------------------------------------------------------------------

    def name(self, name_off: int) -> str:
        end = self.strings.index(b"\0", name_off)
        return self.strings[name_off:end].decode()

    def kind(self, type_id: int) -> int:
        return (self.words[self.starts[type_id] + 1] >> 24) & 0x1F

    def _record(self, type_id: int):
        """(name_off, kind, kind_flag, vlen, size_or_type, word offset of the tail)."""
        if not 0 < type_id < len(self.starts):
            raise BTFError(f"BTF type id {type_id} out of range")
        at = self.starts[type_id]
        name_off, info, size_or_type = self.words[at], self.words[at + 1], self.words[at + 2]
        return name_off, (info >> 24) & 0x1F, info >> 31, info & 0xFFFF, size_or_type, at + 3

    def unqualified(self, type_id: int) -> int:
        """The type under typedefs and const/volatile/restrict/type_tag."""
        for _ in range(64):   # a qualifier chain that long is a corrupt file
            if type_id == 0:
                return 0
            _, kind, _, _, target, _ = self._record(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = target
        raise BTFError("BTF qualifier chain does not end")

    def size(self, type_id: int) -> int:
        type_id = self.unqualified(type_id)
        if type_id == 0:
            return 0
        _, kind, _, _, size_or_type, tail = self._record(type_id)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT,
                    KIND_DATASEC):
            return size_or_type
        if kind == KIND_PTR:
            return POINTER_SIZE
        if kind == KIND_ARRAY:
            element, _, count = self.words[tail:tail + 3]
            return count * self.size(element)
        raise BTFError(f"BTF type id {type_id} (kind {kind}) has no size")

    def members(self, type_id: int):
        """(name, member type id, bit offset, bitfield size) of a struct or union."""
        _, kind, kind_flag, vlen, _, tail = self._record(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError(f"BTF type id {type_id} is not a struct or union")
        words = self.words
        for i in range(tail, tail + 3 * vlen, 3):
            name_off, member_type, offset = words[i], words[i + 1], words[i + 2]
            if kind_flag:   # bitfield size in the top 8 bits, bit offset in the low 24
                yield self.name(name_off), member_type, offset & 0xFFFFFF, offset >> 24
            else:
                yield self.name(name_off), member_type, offset, 0

    # -- lookup by name --------------------------------------------------------------------

    @functools.lru_cache(maxsize=None)
    def find_struct(self, name: str) -> int:
        """The type id of the struct (or, failing that, union) of that name."""
        found = {KIND_STRUCT: [], KIND_UNION: []}
        for type_id in self._struct_names().get(name, ()):
            found[self.kind(type_id)].append(type_id)
        for kind in (KIND_STRUCT, KIND_UNION):
            candidates = found[kind]
            if len({self._layout(t) for t in candidates}) > 1:
                raise BTFError(f"BTF has {len(candidates)} different definitions of {name}")
            if candidates:
                return candidates[0]
        raise BTFError(f"BTF has no struct or union {name}")

    @functools.lru_cache(maxsize=None)
    def _struct_names(self) -> dict:
        """name -> [type ids] of the structs and unions (5,501 names here: 3 ms)."""
        names = {}
        for name_off, type_ids in self._by_name.items():
            names.setdefault(self.name(name_off), []).extend(type_ids)
        return names

    def _layout(self, type_id: int):
        return self.size(type_id), tuple(self.members(type_id))

    def find_member(self, type_id: int, name: str):
        """(bit offset, member type id, bitfield size) of `name` in the struct/union type_id,
        looking into anonymous struct/union members as C does; None when absent."""
        for member_name, member_type, bit_offset, bit_size in self.members(type_id):
            if member_name == name:
                return bit_offset, member_type, bit_size
            if not member_name:
                inner = self.unqualified(member_type)
                if inner and self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self.find_member(inner, name)
                    if found:
                        return bit_offset + found[0], found[1], found[2]
        return None

    def member(self, spec: str) -> Member:
        """The Member of a spec like "file.f_path" or "dentry.d_name.name"."""
        parts = spec.split(".")
        if len(parts) < 2 or not all(parts):
            raise BTFError(f"bad member spec {spec!r}: want struct.member[.member...]")
        type_id = self.find_struct(parts[0])
        bit_offset, bit_size = 0, 0
        for depth, name in enumerate(parts[1:], start=1):
            if bit_size:
                raise BTFError(f"{'.'.join(parts[:depth])} is a bitfield, it has no members")
            container = self.unqualified(type_id)
            if not container or self.kind(container) not in (KIND_STRUCT, KIND_UNION):
                raise BTFError(f"{'.'.join(parts[:depth])} is not a struct or union "
                               "(pointers are not followed)")
            found = self.find_member(container, name)
            if found is None:
                raise BTFError(f"kernel BTF: {'.'.join(parts[:depth])} has no member {name}")
            bit_offset += found[0]
            type_id, bit_size = found[1], found[2]
        if bit_size:
            return Member(bit_offset // 8, 0, bit_offset, bit_size)
        if bit_offset % 8:
            raise BTFError(f"{spec} is not byte aligned")
        return Member(bit_offset // 8, self.size(type_id), bit_offset)

    def struct_size(self, name: str) -> int:
        return self.size(self.find_struct(name))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, identity) -> BTF:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BTFError(f"cannot read kernel BTF {path}: {e.strerror}") from None
    return BTF(data)


def load(path: str = VMLINUX_BTF) -> BTF:
    """The parsed BTF, once per process (per file identity)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BTFError(f"this kernel has no BTF ({path} is missing; CONFIG_DEBUG_INFO_BTF "
                       "is needed)") from None
    except OSError as e:
        raise BTFError(f"cannot read kernel BTF {path}: {e.strerror}") from None
    return _load_cached(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def forget():
    """Drops every BTF parsed in this process (the index of vmlinux's types is ~13 MB of Python
    objects): the compiler's child does, before BCC needs the memory."""
    _load_cached.cache_clear()
    BTF.find_struct.cache_clear()
    BTF._struct_names.cache_clear()


def member_offsets(specs, path: str = VMLINUX_BTF) -> dict:
    """{spec: Member} for every spec."""
    btf = load(path)
    return {spec: btf.member(spec) for spec in specs}


def offset_defines(table: dict, path: str = VMLINUX_BTF) -> list:
    """cflags for BCC from {DEFINE_NAME: (spec, size the C reads it with)}: the byte offset of
    each member, after checking that its size is what the C code assumes (a size of None
    skips the check, for embedded structs whose size the C does not use)."""
    btf = load(path)
    flags = []
    for define, (spec, expected_size) in sorted(table.items()):
        m = btf.member(spec)
        if m.bit_size:
            raise BTFError(f"kernel BTF: {spec} is a bitfield; the programs read whole fields")
        if expected_size is not None and m.size != expected_size:
            raise BTFError(f"kernel BTF: {spec} is {m.size} bytes, the programs read "
                           f"{expected_size}")
        flags.append(f"-D{define}={m.offset}")
    return flags
