"""Turns raw ring-buffer records into tuples of fields.

The layouts come from the loaded program itself: BCC exposes each scratch table's value type as a
ctypes structure compiled from bpf_programs/enhrec.h. From it we build one precompiled
`struct.Struct` per record type at load time, so nothing here repeats the C header, and decoding
a record is one `unpack_from` on the bytes the ring buffer handed us.
"""

import ctypes as ct
import struct

from enhrec_wrap.kernel import abi

# The scratch table holding each record type while the BPF program builds it.
SCRATCH_TABLES = {
    abi.RECORD_EXEC: "exec_scratch",
    abi.RECORD_EXEC_FAILED: "exec_failed_scratch",
    abi.RECORD_OPEN: "open_scratch",
    abi.RECORD_CONNECT: "connect_scratch",
    abi.RECORD_SEND: "connect_scratch",   # the same struct connect_event
    abi.RECORD_REFUSED: "refused_scratch",
    abi.RECORD_URING: "uring_scratch",
}
# The variable-length tail of a record, when it has one.
TAIL_FIELDS = {abi.RECORD_EXEC: "data", abi.RECORD_EXEC_FAILED: "data", abi.RECORD_OPEN: "data"}

_SCALAR_CODES = {
    ct.c_byte: "b", ct.c_ubyte: "B", ct.c_short: "h", ct.c_ushort: "H",
    ct.c_int: "i", ct.c_uint: "I", ct.c_long: "q", ct.c_ulong: "Q",
    ct.c_longlong: "q", ct.c_ulonglong: "Q",
}


class Layout:
    """The fixed part of one record type: its struct format, field names and tail offset.

    Made from the record's fields as _flatten lists them (name, offset, struct code, size):
    taken from the loaded program's ctypes type, or from the copy kept with the compiled
    programs (bpf.py's cache)."""

    def __init__(self, fields, tail_field=None):
        names, fmt, end = [], "=", 0
        tail_offset = None
        for name, offset, code, size in fields:
            if name == tail_field:
                tail_offset = offset
                break
            fmt += "x" * (offset - end) + code
            names.append(name)
            end = offset + size
        if tail_field is not None and tail_offset is None:
            raise ValueError(f"the record has no field {tail_field}")
        self.struct = struct.Struct(fmt)
        self.names = tuple(names)
        self.index = {name: i for i, name in enumerate(names)}   # name -> position in values
        self.has_tail = tail_field is not None
        self.tail_offset = end if tail_field is None else tail_offset

    def unpack(self, raw, offset=0):
        return dict(zip(self.names, self.struct.unpack_from(raw, offset)))


def _flatten(ctype, base=0, prefix=""):
    """Yields (name, offset, struct code, size) for every scalar or array field, nested ones
    flattened: the header's fields keep their own names (pid, ts_ns ...), those of another
    nested struct are named after it (binary.ino, cwd.ino, file.path_len ...)."""
    for field in ctype._fields_:
        name, ftype = field[0], field[1]
        if name.startswith("__pad"):
            continue
        offset = base + getattr(ctype, name).offset
        if issubclass(ftype, ct.Structure):
            yield from _flatten(ftype, offset, "" if name == "hdr" else f"{prefix}{name}.")
        elif issubclass(ftype, ct.Array):
            yield prefix + name, offset, f"{ct.sizeof(ftype)}s", ct.sizeof(ftype)
        else:
            yield prefix + name, offset, _SCALAR_CODES[ftype], ct.sizeof(ftype)


class Decoder:
    """Decodes the records of loaded programs."""

    def __init__(self, bpf=None, fields=None):
        """From a loaded `bcc.BPF` object, or from `fields`: {scratch table: [(name, offset,
        struct code, size), ...]} as record_fields() returns it."""
        if fields is None:
            fields = record_fields(bpf)
        self.fields = fields
        self.layouts = {
            record_type: Layout(fields[table], TAIL_FIELDS.get(record_type))
            for record_type, table in SCRATCH_TABLES.items()
        }
        header = {name: offset for name, offset, _, _ in
                  fields[SCRATCH_TABLES[abi.RECORD_REFUSED]]}
        self.type_offset = header["type"]   # of the record type, in every record
        self._type_struct = struct.Struct(f"={header['type']}xH")
        # What raw_all reads of each type's layout, in one tuple: (unpack_from, fixed size,
        # tail offset or None, where the tail's length and the time stamp are in the values).
        self._decoding = {}
        for record_type, layout in self.layouts.items():
            layout.ts_at = layout.index["ts_ns"]
            layout.tail_len_at = layout.index["tail_len"]
            self._decoding[record_type] = (
                layout.struct.unpack_from, layout.struct.size,
                layout.tail_offset if layout.has_tail else None, layout.tail_len_at, layout.ts_at)

    def decode(self, raw):
        """Returns the record's fields as a dict, with `tail` (bytes) for exec and open."""
        return self.decode_from(raw, 0, len(raw))

    def raw_from(self, buffer, offset, size):
        """One record's raw_all(): (ts_ns, record type, values, tail) of the `size` bytes at
        `offset` in `buffer`. Raises ValueError like decode_from()."""
        raw = bytes(buffer[offset:offset + size])
        records, undecodable = self.raw_all([(None, raw)])
        if undecodable:
            raise ValueError(self._why_undecodable(raw))
        return records[0]

    def raw_all(self, taken) -> tuple[list, list]:
        """The hot path's decode, of a batch: `taken` holds (tag, record bytes) pairs (the
        reader's stream and record). Returns the records decoded, in order, each as (ts_ns,
        record type, values, tail) with the values in the layout's order (Layout.index) and
        `tail` bytes or None: no dict per record, and the comm as the kernel sent it
        (NUL-padded; as_dict() makes decode_from()'s dict of it); and the pairs that are not
        a record of ours or are shorter than their type and tail say, as they came.

        One loop for the batch: measured on 512 real open records (thread CPU time, best of
        30), a call of a one-record decode for each (and its lookups) 0.61-0.66 us a record,
        this loop 0.39-0.41 us."""
        type_size, type_unpack = self._type_struct.size, self._type_struct.unpack_from
        decoding = self._decoding.get
        records, undecodable = [], []
        append = records.append
        for pair in taken:
            raw = pair[1]
            size = len(raw)
            record_type = type_unpack(raw)[0] if size >= type_size else None
            layout = decoding(record_type)
            if layout is None or size < layout[1]:
                undecodable.append(pair)
                continue
            values = layout[0](raw)
            tail_offset = layout[2]
            if tail_offset is None:
                append((values[layout[4]], record_type, values, None))
                continue
            end = tail_offset + values[layout[3]]
            if end > size:
                undecodable.append(pair)
                continue
            append((values[layout[4]], record_type, values, raw[tail_offset:end]))
        return records, undecodable

    def _why_undecodable(self, raw) -> str:
        size = len(raw)
        if size < self._type_struct.size:
            return f"record of {size} bytes"
        record_type = self._type_struct.unpack_from(raw)[0]
        if record_type not in self.layouts:
            return f"unknown record type {record_type}"
        return f"record of type {record_type} cut at {size} bytes"

    def as_dict(self, record_type, values, tail):
        """A raw_from() record as decode_from() returns it."""
        layout = self.layouts[record_type]
        fields = dict(zip(layout.names, values))
        fields["comm"] = fields["comm"].split(b"\0", 1)[0]
        if tail is not None:
            fields["tail"] = tail
        return fields

    def decode_from(self, buffer, offset, size):
        """decode() of the `size` bytes at `offset` in `buffer` (bytes, or a memoryview of a
        ring buffer). Raises ValueError for a record that is not one of
        ours or is shorter than its type and tail say."""
        _, record_type, values, tail = self.raw_from(buffer, offset, size)
        return self.as_dict(record_type, values, tail)


def record_fields(bpf):
    """{scratch table: its record's fields, flattened} of a loaded `bcc.BPF` object."""
    return {table: [list(f) for f in _flatten(_value_type(bpf, table))]
            for table in SCRATCH_TABLES.values()}


def _value_type(bpf, table):
    leaf = bpf[table].Leaf
    return getattr(leaf, "_type_", leaf)   # a per-CPU table's Leaf is an array of the struct


def split_exec_tail(fields):
    """Splits an exec record's tail into (filename bytes, [argv bytes...], truncated flag)."""
    tail = fields["tail"]
    filename = tail[:fields["filename_len"]].rstrip(b"\0")
    args = tail[fields["filename_len"]:].split(b"\0")
    args = args[:fields["argc"]]
    cut = fields["truncated"] != 0 or any(len(a) >= abi.ARG_READ_MAX - 1 for a in args)
    return filename, args, cut


def open_path(fields):
    """The path of an open record (bytes), and whether it could be read at all."""
    tail = fields["tail"]
    return tail.split(b"\0", 1)[0], fields["tail_len"] > 0
