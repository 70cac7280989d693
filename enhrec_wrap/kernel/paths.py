"""The user-space half of bpf_programs/path.h: a resolved path from the components the kernel
side wrote (leaf first, each NUL-terminated) and how its walk ended (abi.PATH_* flags).

The result reads as /proc/PID/fd/N would show the file (the kernel's d_path), for every case
d_path names: absolute in the caller's root, `pipe:[ino]`, `socket:[ino]`, `anon_inode:name`,
`/memfd:name (deleted)`, ` (deleted)`. A walk that did not reach the caller's root is marked in
front: `<truncated>/...` (the bound was hit: the top of the path is missing) or `<fs>/...`
(relative to the root of the file's filesystem: outside the caller's root or namespace).
"""

from enhrec_wrap.kernel import abi

# super_block.s_magic of the pseudo filesystems whose files the kernel names itself (their
# dentry_operations.d_dname), include/uapi/linux/magic.h.
PIPEFS_MAGIC = 0x50495045
SOCKFS_MAGIC = 0x534F434B
ANON_INODE_FS_MAGIC = 0x09041934
NSFS_MAGIC = 0x6E736673

# abi.PATH_* flags as session.disk's path_flags names them (docs/events.md).
FLAG_NAMES = (
    (abi.PATH_TRUNCATED, "truncated"), (abi.PATH_OUTSIDE_ROOT, "outside_root"),
    (abi.PATH_NO_PARENT, "pseudo"), (abi.PATH_DELETED, "deleted"), (abi.PATH_RACED, "raced"),
    (abi.PATH_NO_FILE, "no_file"), (abi.PATH_FILE_SHARED, "uncertain"),
    (abi.PATH_CHROOT, "chroot"), (abi.PATH_USER_NS, "user_namespace"),
    (abi.PATH_UNIX_ABSTRACT, "abstract"),
)


def components(raw: bytes) -> list[bytes]:
    """The names, root first."""
    names = raw.split(b"\0")[:-1]
    names.reverse()
    return names


def resolved_path(raw: bytes, flags: int, fs_magic: int, ino: int) -> bytes:
    """The path of a file from its walk (raw: its path_len bytes of components)."""
    names = components(raw)
    if flags & abi.PATH_NO_PARENT and len(names) == 1 and not flags & abi.PATH_OUTSIDE_ROOT:
        name = names[0]
        if fs_magic == PIPEFS_MAGIC:
            return b"pipe:[%d]" % ino
        if fs_magic == SOCKFS_MAGIC:
            return b"socket:[%d]" % ino
        if fs_magic == ANON_INODE_FS_MAGIC:
            return b"anon_inode:" + name
        if fs_magic == NSFS_MAGIC:
            return name
        if name == b"/":   # d_obtain_alias()'s name for a dentry not connected to the tree
            return b"<disconnected>"
        # alloc_file_pseudo() on a filesystem with no d_op of its own (memfd on the internal
        # tmpfs, secretmem ...): the kernel's simple_dname() says "/name (deleted)".
        return b"/" + name + b" (deleted)"
    path = b"/" + b"/".join(names)
    if flags & abi.PATH_NO_PARENT:
        path = b"<disconnected>" + path
    if flags & abi.PATH_TRUNCATED:
        path = b"<truncated>" + path
    elif flags & abi.PATH_OUTSIDE_ROOT:
        path = b"<fs>" + path
    if flags & abi.PATH_DELETED and not path.endswith(b" (deleted)"):
        path += b" (deleted)"
    return path


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES if flags & bit]


def device(dev: int) -> str:
    """A kernel dev_t (major << 20 | minor) as "MAJ:MIN", as /proc/self/mountinfo shows it."""
    return f"{dev >> 20}:{dev & 0xFFFFF}"
