/* The resolved path of an open file, from the kernel's own struct file: current->files->fdt->
 * fd[fd] -> f_path {mnt, dentry}, walked up the dentries to the caller's root (current->fs->root:
 * its chroot, in its mount namespace), crossing mounts through struct mount as the kernel's
 * prepend_path() (fs/d_path.c) does: at a mount's root dentry, continue from mnt_mountpoint in
 * mnt_parent. No lock is taken (a BPF program cannot take rename_lock or mount_lock): a dentry
 * renamed while it is read is caught by its d_seq and flagged, not retried.
 *
 * The components are written leaf first, each NUL-terminated ("x\0etc\0" for /etc/x): names
 * may hold any byte but '/' and NUL, and reading the names in walk order needs no length
 * before the copy. User space reverses them. A walk that reaches the caller's root has
 * PATH_COMPLETE; the others say where they stopped (the flags below).
 *
 * struct resolved_file and the PATH_* flags are in enhrec.h. Offsets: kernel/offsets.py
 * (OFF_TASK_FS, OFF_FS_ROOT, OFF_PATH_*, OFF_DENTRY_*, OFF_MOUNT_*, OFF_VFSMOUNT_MNT_ROOT,
 * OFF_TASK_FILES, OFF_FILES_FDT, OFF_FDT_*, OFF_FILE_*, OFF_INODE_*, OFF_SB_*; for
 * PATH_USER_NS OFF_TASK_NSPROXY, OFF_NSPROXY_MNT_NS, OFF_MNT_NS_USER_NS, OFF_USER_NS_LEVEL; for
 * unix sockets OFF_FILE_PRIVATE_DATA, OFF_SOCKET_SK, OFF_SK_FAMILY, OFF_UNIX_SOCK_*,
 * OFF_UNIX_ADDRESS_*, OFF_DENTRY_D_INODE). Why the loop is written the way it is (unrolled,
 * its state through memory): docs/architecture.md, from the verifier counts measured when it
 * was built (16,739 instructions processed, 25 ms, at 64 steps; 506,187 without).
 */
#ifndef ENHREC_PATH_H
#define ENHREC_PATH_H

#include "enhrec.h"
#include "kread.h"

#define NAME_READ_MAX 256     /* NAME_MAX + NUL */

/* d_seq, d_parent and d_name.name are read in one piece, the first bytes of struct dentry
 * (0..47 in 6.18, and near the start since 2.6): one helper call instead of three per
 * component, 0.2 -> 0.13 us (docs/architecture.md). */
#define MIN2(a, b) ((a) < (b) ? (a) : (b))
#define MAX2(a, b) ((a) > (b) ? (a) : (b))
#define DENTRY_HEAD_START (MIN2(OFF_DENTRY_D_SEQ, MIN2(OFF_DENTRY_D_PARENT, OFF_DENTRY_D_NAME_NAME)) & ~7)
#define DENTRY_HEAD_END MAX2(OFF_DENTRY_D_SEQ + 4, MAX2(OFF_DENTRY_D_PARENT, OFF_DENTRY_D_NAME_NAME) + 8)
#define DENTRY_HEAD_WORDS ((DENTRY_HEAD_END - DENTRY_HEAD_START + 7) / 8)
_Static_assert(DENTRY_HEAD_WORDS <= 8, "d_seq, d_parent and d_name are not near each other");
_Static_assert(OFF_DENTRY_D_PARENT % 8 == 0 && OFF_DENTRY_D_NAME_NAME % 8 == 0
               && OFF_DENTRY_D_SEQ % 4 == 0, "unaligned dentry fields");
_Static_assert(OFF_PATH_MNT + OFF_PATH_DENTRY == 8, "struct path is not {mnt, dentry}");
#define HEAD_U64(head, off) ((head)[((off) - DENTRY_HEAD_START) / 8])
#define HEAD_U32(head, off) ((u32)((head)[((off) - DENTRY_HEAD_START) / 8] >> ((off) % 8 * 8)))

/* The struct file of fd in the current task's table, or 0. */
static __always_inline u64 current_file(s64 fd)
{
    u64 files = kptr(current_task(), OFF_TASK_FILES);
    u64 fdt = kptr(files, OFF_FILES_FDT);
    if (!fdt || fd < 0 || fd >= ku32(fdt, OFF_FDT_MAX_FDS))
        return 0;
    u64 fd_array = kptr(fdt, OFF_FDT_FD);
    return fd_array ? kptr(fd_array, fd * sizeof(u64)) : 0;
}

/* Whether the current task's mount namespace belongs to a user namespace other than the
 * host's (user_namespace.level > 0): one an ordinary user can make (unshare -Urm), in which
 * its mounts are theirs to arrange (PATH_USER_NS). */
static __always_inline int in_user_ns_mounts(void)
{
    u64 mnt_ns = kptr(kptr(current_task(), OFF_TASK_NSPROXY), OFF_NSPROXY_MNT_NS);
    return ku32(kptr(mnt_ns, OFF_MNT_NS_USER_NS), OFF_USER_NS_LEVEL) != 0;
}

/* off through memory, so that the verifier knows only its mask: the walks after it are then
 * verified once instead of once per path before them (see forget() in exec.h). */
static __always_inline u32 forget_offset(u32 *slot, u32 off, u32 mask)
{
    *slot = off;
    return *(volatile u32 *)slot & mask;
}

/* Walks from (dentry, vfsmnt) to the current task's root; with fs_only (1), to the root of
 * the file's own filesystem instead, crossing no mount: the file's place in its filesystem,
 * which no mount arrangement changes (PATH_USER_NS). buf must hold 2 * PATH_BUF_SIZE bytes
 * (the mask of each write offset gives the verifier its bound). */
static __always_inline void walk_path(u64 dentry, u64 vfsmnt, char *buf,
                                      struct resolved_file *out, u32 fs_only)
{
    u64 root[2] = {};   /* struct path: {mnt, dentry} in either order (OFF_PATH_*) */
    read_kernel(root, sizeof(root), (const void *)(kptr(current_task(), OFF_TASK_FS) + OFF_FS_ROOT));
    u64 root_mnt = root[OFF_PATH_MNT / 8], root_dentry = root[OFF_PATH_DENTRY / 8];
    u64 mnt = vfsmnt - OFF_MOUNT_MNT;          /* container_of(vfsmnt, struct mount, mnt) */
    u64 mnt_root = kptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
    u32 off = 0;
    u16 flags = 0, depth = 0;
    out->root_mnt_id = ku32(root_mnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_ID);
    if (root_dentry != kptr(root_mnt, OFF_VFSMOUNT_MNT_ROOT))
        flags |= PATH_CHROOT;
    fs_only &= 1;
    /* fs_only: no root to stop at (a dentry is never 0), without a branch (which would carry
     * two states through every step) */
    root_dentry &= (u64)fs_only - 1;
    root_mnt &= (u64)fs_only - 1;
    u32 beyond_mounts = fs_only;   /* past a parentless mount: the fs's own tree from here on */

    int i;
    /* Unrolled: with the loop kept, the exact counter made every iteration's states
     * distinct and the verifier's work grew with depth squared (docs/architecture.md). */
#pragma unroll
    for (i = 0; i < PATH_MAX_DEPTH; i++) {
        /* Through memory, which the verifier does not track: every iteration starts with the
         * same unknown off and beyond_mounts, so the paths through one iteration (a component,
         * a mount crossing, a rename seen) merge again at the next one instead of multiplying.
         * See docs/architecture.md for the verifier counts with and without. */
        out->path_len = off;
        out->pad = beyond_mounts;
        off = *(volatile u32 *)&out->path_len & (2 * PATH_BUF_SIZE - 1);
        beyond_mounts = *(volatile u32 *)&out->pad;
        if (!((dentry ^ root_dentry) | (vfsmnt ^ root_mnt))) {
            flags |= PATH_COMPLETE;
            goto done;
        }
        if (dentry == mnt_root && !beyond_mounts) {
            u64 parent = kptr(mnt, OFF_MOUNT_MNT_PARENT);
            if (parent && parent != mnt) {     /* cross to where this mount is mounted */
                dentry = kptr(mnt, OFF_MOUNT_MNT_MOUNTPOINT);
                mnt = parent;
                vfsmnt = mnt + OFF_MOUNT_MNT;
                mnt_root = kptr(vfsmnt, OFF_VFSMOUNT_MNT_ROOT);
                continue;
            }
            flags |= PATH_OUTSIDE_ROOT;
            beyond_mounts = 1;
        }
        u64 head[DENTRY_HEAD_WORDS] = {};
        read_kernel(head, sizeof(head), (const void *)(dentry + DENTRY_HEAD_START));
        u32 seq = HEAD_U32(head, OFF_DENTRY_D_SEQ);
        u64 parent = HEAD_U64(head, OFF_DENTRY_D_PARENT);
        if (!parent || parent == dentry) {     /* IS_ROOT() */
            if (dentry == kptr(kptr(dentry, OFF_DENTRY_D_SB), OFF_SB_S_ROOT))
                goto done;                         /* the fs root ("/" adds no component) */
            flags |= PATH_NO_PARENT;           /* its name still tells what it is */
            parent = 0;
        }
        if (off > PATH_BUF_SIZE - NAME_READ_MAX) {
            flags |= PATH_TRUNCATED;
            goto done;
        }
        u64 name = HEAD_U64(head, OFF_DENTRY_D_NAME_NAME);
        long n = read_kernel_str(&buf[off & (PATH_BUF_SIZE - 1)], NAME_READ_MAX,
                                 (const void *)name);
        if (n <= 0) {
            flags |= PATH_TRUNCATED;
            goto done;
        }
        /* PATH_RACED when seq was odd (a rename in progress) or has moved; without a branch,
         * which would double the states the verifier carries to the next iteration. */
        u64 moved = (seq & 1) | (seq ^ ku32(dentry, OFF_DENTRY_D_SEQ));
        flags |= ((moved + 0xffffffff) >> 32) * PATH_RACED;
        off = (off + n) & (2 * PATH_BUF_SIZE - 1);
        depth++;
        if (!parent)
            goto done;
        dentry = parent;
    }
    /* Only the bound running out gets here; every other end jumps over it. Not tested on i:
     * the exact loop counter would make each iteration's ends separate verifier states. */
    flags |= PATH_TRUNCATED;
done:
    out->path_flags |= flags;
    out->depth = depth;
    out->path_len = off;
}

/* Fills out with what the file at (dentry, vfsmnt) of inode is (all but its path). */
static __always_inline void describe_path(u64 dentry, u64 vfsmnt, u64 inode,
                                          struct resolved_file *out)
{
    u64 sb = kptr(dentry, OFF_DENTRY_D_SB);
    out->ino = kptr(inode, OFF_INODE_I_INO);
    out->mode = ku16(inode, OFF_INODE_I_MODE);
    out->fs_magic = kptr(sb, OFF_SB_S_MAGIC);
    out->dev = ku32(sb, OFF_SB_S_DEV);
    out->mnt_id = ku32(vfsmnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_ID);
    u64 parent = kptr(dentry, OFF_DENTRY_D_PARENT);
    if (!kptr(dentry, OFF_DENTRY_D_HASH_PPREV) && parent != dentry)
        out->path_flags |= PATH_DELETED;       /* d_unlinked(): unhashed and not a root */
}

/* Fills out with what a struct file is (all but its path) and gives the (dentry, vfsmnt) its
 * path is walked from; 0 when there is no file (PATH_NO_FILE). */
static __always_inline int describe_file(u64 file, struct resolved_file *out, u64 *dentry_out,
                                         u64 *vfsmnt_out)
{
    if (!file) {
        out->path_flags = PATH_NO_FILE;
        return 0;
    }
    u64 f_path[2] = {};
    read_kernel(f_path, sizeof(f_path), (const void *)(file + OFF_FILE_F_PATH));
    *vfsmnt_out = f_path[OFF_PATH_MNT / 8];
    *dentry_out = f_path[OFF_PATH_DENTRY / 8];
    describe_path(*dentry_out, *vfsmnt_out, kptr(file, OFF_FILE_F_INODE), out);
    return 1;
}

/* The file at fd of the current task, described (describe_file): at the exit of an open, the
 * file that open installed (but see PATH_FILE_SHARED). */
static __always_inline int locate_fd(s64 fd, struct resolved_file *out, u64 *dentry, u64 *vfsmnt)
{
    u64 file = current_file(fd);
    if (file && kptr(file, OFF_FILE_REF) != FILE_ONE_REF)
        /* FILE_ONE_REF: the count's value for one reference (0 for 6.13's file_ref_t, 1 for
         * the atomic_long_t f_count before it), given with the offset. */
        out->path_flags |= PATH_FILE_SHARED;
    return describe_file(file, out, dentry, vfsmnt);
}

#define S_IFMT_VALUE 0170000
#define S_IFSOCK_VALUE 0140000
#define AF_UNIX_VALUE 1
#define UNIX_NAME_OFFSET 2     /* sockaddr_un.sun_path */
#define UNIX_PATH_MAX_VALUE 108

/* The unix socket at fd of the current task, when it is one; 0 otherwise (an inet socket, or
 * no socket). */
static __always_inline u64 unix_sock_at(s64 fd)
{
    u64 file = current_file(fd);
    if ((ku16(kptr(file, OFF_FILE_F_INODE), OFF_INODE_I_MODE) & S_IFMT_VALUE) != S_IFSOCK_VALUE)
        return 0;
    u64 sk = kptr(kptr(file, OFF_FILE_PRIVATE_DATA), OFF_SOCKET_SK);
    return ku16(sk, OFF_SK_FAMILY) == AF_UNIX_VALUE ? sk : 0;
}

/* The peer of the connected unix socket sk, as the kernel has it: the socket file it is bound
 * to (described, its (dentry, vfsmnt) given: 1), or its abstract name copied to buf (the
 * name's bytes after sun_path's leading NUL: PATH_UNIX_ABSTRACT, its length in path_len: 0).
 * A connect() of a socket that was already connected leaves the peer it had. */
static __always_inline int locate_unix_peer(u64 sk, char *buf, struct resolved_file *out,
                                            u64 *dentry, u64 *vfsmnt)
{
    u64 peer = kptr(sk, OFF_UNIX_SOCK_PEER);
    u64 path[2] = {};
    read_kernel(path, sizeof(path), (const void *)(peer + OFF_UNIX_SOCK_PATH));
    *vfsmnt = path[OFF_PATH_MNT / 8];
    *dentry = path[OFF_PATH_DENTRY / 8];
    if (*dentry) {
        describe_path(*dentry, *vfsmnt, kptr(*dentry, OFF_DENTRY_D_INODE), out);
        return 1;
    }
    u64 addr = kptr(peer, OFF_UNIX_SOCK_ADDR);
    s32 len = (s32)ku32(addr, OFF_UNIX_ADDRESS_LEN) - UNIX_NAME_OFFSET - 1;
    out->path_flags |= PATH_UNIX_ABSTRACT;
    if (!addr || len <= 0 || len > UNIX_PATH_MAX_VALUE - 1)
        return 0;   /* no name: an unbound peer (socketpair-like) */
    read_kernel(buf, len & 127,
                (const void *)(addr + OFF_UNIX_ADDRESS_NAME + UNIX_NAME_OFFSET + 1));
    out->path_len = len;
    return 0;
}

/* Whether a walk's path may not be where its file is: the caller's mounts were the user's
 * to arrange, or it was chrooted. Then the file is walked a second time, fs_only. */
static __always_inline int needs_fs_walk(struct resolved_file *walked, int user_ns_mounts)
{
    if (user_ns_mounts)
        walked->path_flags |= PATH_USER_NS;
    return walked->path_flags & (PATH_USER_NS | PATH_CHROOT);
}

/* The path of (dentry, vfsmnt) into buf (3 * PATH_BUF_SIZE bytes) and out, then (needs_fs_walk)
 * its path from its filesystem's root into fs. Returns the components' length. One copy of
 * walk_path in a loop of two turns, as in exec.h. */
static __always_inline u32 walk_paths(u64 dentry, u64 vfsmnt, char *buf, struct resolved_file *out,
                                      struct resolved_file *fs, u32 *scratch)
{
    int user_ns_mounts = in_user_ns_mounts();
    struct resolved_file *walked = out;
    u32 off = 0;
    int turn;
#pragma clang loop unroll(disable)
    for (turn = 0; turn < 2; turn++) {
        off = forget_offset(scratch, off, 2 * PATH_BUF_SIZE - 1);
        if (turn == 1) {
            if (!needs_fs_walk(out, user_ns_mounts))
                break;
            walked = fs;
        }
        walk_path(dentry, vfsmnt, &buf[off & (2 * PATH_BUF_SIZE - 1)], walked, turn);
        off = (off + walked->path_len) & (2 * PATH_BUF_SIZE - 1);
    }
    return forget_offset(scratch, off, 2 * PATH_BUF_SIZE - 1);
}

#endif
