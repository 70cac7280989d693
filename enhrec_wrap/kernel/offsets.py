"""The kernel struct offsets the BPF programs read at, from the running kernel's BTF.

BCC compiles recorder.c against headers whose layouts need not be the running kernel's (6.1
headers on 6.18 here), so the programs never dereference a kernel struct: every field is read
with bpf_probe_read_kernel at an OFF_* offset passed as a -D define (bpf_programs/kread.h).
They come from /sys/kernel/btf/vmlinux (btf.py) when the programs are compiled; the compiled
programs are cached and pinned under a key that holds the kernel's build and its BTF's size
(program_cache.py), so programs built for another layout are never loaded.
"""

from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.kernel import btf

# define -> (BTF member spec, the size the C reads it with; None: an offset only)
MEMBERS = {
    "OFF_TASK_FS": ("task_struct.fs", 8),
    "OFF_TASK_FILES": ("task_struct.files", 8),
    "OFF_TASK_MM": ("task_struct.mm", 8),
    "OFF_TASK_REAL_PARENT": ("task_struct.real_parent", 8),
    "OFF_TASK_TGID": ("task_struct.tgid", 4),
    "OFF_TASK_TI_STATUS": ("task_struct.thread_info.status", 4),
    "OFF_TASK_NSPROXY": ("task_struct.nsproxy", 8),
    "OFF_TASK_PID": ("task_struct.pid", 4),
    "OFF_TASK_PTRACED": ("task_struct.ptraced", 16),
    "OFF_TASK_PTRACE_ENTRY": ("task_struct.ptrace_entry", 16),
    "OFF_TASK_CGROUPS": ("task_struct.cgroups", 8),
    "OFF_CSS_SET_DFL_CGRP": ("css_set.dfl_cgrp", 8),
    "OFF_CGROUP_KN": ("cgroup.kn", 8),
    "OFF_KERNFS_NODE_ID": ("kernfs_node.id", 8),
    "OFF_MM_EXE_FILE": ("mm_struct.exe_file", 8),
    "OFF_NSPROXY_MNT_NS": ("nsproxy.mnt_ns", 8),
    "OFF_MNT_NS_USER_NS": ("mnt_namespace.user_ns", 8),
    "OFF_USER_NS_LEVEL": ("user_namespace.level", 4),
    "OFF_FS_ROOT": ("fs_struct.root", 16),
    "OFF_FS_PWD": ("fs_struct.pwd", 16),
    "OFF_FILES_FDT": ("files_struct.fdt", 8),
    "OFF_FDT_MAX_FDS": ("fdtable.max_fds", 4),
    "OFF_FDT_FD": ("fdtable.fd", 8),
    "OFF_FILE_F_PATH": ("file.f_path", 16),
    "OFF_FILE_F_INODE": ("file.f_inode", 8),
    "OFF_FILE_PRIVATE_DATA": ("file.private_data", 8),
    "OFF_SOCKET_SK": ("socket.sk", 8),
    "OFF_SK_FAMILY": ("sock.__sk_common.skc_family", 2),
    "OFF_UNIX_SOCK_PEER": ("unix_sock.peer", 8),
    "OFF_UNIX_SOCK_PATH": ("unix_sock.path", 16),
    "OFF_UNIX_SOCK_ADDR": ("unix_sock.addr", 8),
    "OFF_UNIX_ADDRESS_LEN": ("unix_address.len", 4),
    "OFF_UNIX_ADDRESS_NAME": ("unix_address.name", None),
    "OFF_PATH_MNT": ("path.mnt", 8),
    "OFF_PATH_DENTRY": ("path.dentry", 8),
    "OFF_DENTRY_D_SEQ": ("dentry.d_seq.seqcount.sequence", 4),
    "OFF_DENTRY_D_HASH_PPREV": ("dentry.d_hash.pprev", 8),
    "OFF_DENTRY_D_PARENT": ("dentry.d_parent", 8),
    "OFF_DENTRY_D_NAME_NAME": ("dentry.d_name.name", 8),
    "OFF_DENTRY_D_SB": ("dentry.d_sb", 8),
    "OFF_DENTRY_D_INODE": ("dentry.d_inode", 8),
    "OFF_INODE_I_INO": ("inode.i_ino", 8),
    "OFF_INODE_I_SIZE": ("inode.i_size", 8),
    "OFF_INODE_I_MODE": ("inode.i_mode", 2),
    "OFF_SB_S_DEV": ("super_block.s_dev", 4),
    "OFF_SB_S_MAGIC": ("super_block.s_magic", 8),
    "OFF_SB_S_ROOT": ("super_block.s_root", 8),
    "OFF_MOUNT_MNT": ("mount.mnt", None),
    "OFF_MOUNT_MNT_PARENT": ("mount.mnt_parent", 8),
    "OFF_MOUNT_MNT_MOUNTPOINT": ("mount.mnt_mountpoint", 8),
    "OFF_MOUNT_MNT_ID": ("mount.mnt_id", 4),
    "OFF_VFSMOUNT_MNT_ROOT": ("vfsmount.mnt_root", 8),
    "OFF_MM_ARG_START": ("mm_struct.arg_start", 8),
    "OFF_MM_ARG_END": ("mm_struct.arg_end", 8),
    "OFF_BPRM_FILENAME": ("linux_binprm.filename", 8),
    "OFF_BPRM_INTERP": ("linux_binprm.interp", 8),
    "OFF_BPRM_FILE": ("linux_binprm.file", 8),
    "OFF_BPRM_ARGC": ("linux_binprm.argc", 4),
    "OFF_SIGINFO_SIGNO": ("kernel_siginfo.si_signo", 4),
    "OFF_SIGINFO_CODE": ("kernel_siginfo.si_code", 4),
    "OFF_SIGINFO_SYSCALL": ("kernel_siginfo._sifields._sigsys._syscall", 4),
    "OFF_SIGINFO_ARCH": ("kernel_siginfo._sifields._sigsys._arch", 4),
}
BTF_HINT = ("enhrec-wrap reads the kernel's structures at the offsets its BTF gives: use a kernel "
            "built with CONFIG_DEBUG_INFO_BTF (`enhrec doctor` checks it)")


def defines() -> list[str]:
    """The -D defines of every offset, for the compile. Raises EnhrecError (one line) when the
    kernel has no BTF or lacks a member the programs read."""
    try:
        return btf.offset_defines(MEMBERS) + _file_ref_defines()
    except btf.BTFError as e:
        raise EnhrecError(f"{e}: {BTF_HINT}") from None


def _file_ref_defines() -> list[str]:
    """struct file's reference count: f_ref (file_ref_t since 6.13, one reference stored as 0)
    or f_count (atomic_long_t before, stored as 1). path.h flags an open whose file has more
    than one reference (a thread may have dup2()ed another file onto the new fd)."""
    kernel = btf.load()
    try:
        return [f"-DOFF_FILE_REF={kernel.member('file.f_ref').offset}", "-DFILE_ONE_REF=0"]
    except btf.BTFError:
        return [f"-DOFF_FILE_REF={kernel.member('file.f_count').offset}", "-DFILE_ONE_REF=1"]
