/* A successful exec as the kernel did it, at sched_process_exec (raw tracepoint: (task,
 * old_pid, struct linux_binprm *bprm)). It fires in the new image, after the point of no
 * return and before the new program runs an instruction, for 64-bit and 32-bit execs alike:
 * - filename: bprm->filename, the kernel's copy of the name asked for (relative names are
 *   relative to the cwd, walked here too; execveat(fd, name) gives "/dev/fd/<fd>/<name>");
 * - interp: bprm->interp, the interpreter of a "#!" script (the same string as filename
 *   when there is none);
 * - the binary that runs: bprm->file (a script's interpreter, or a memfd), its resolved path
 *   (path.h), inode, device and size;
 * - argv: the new image's own stack, current->mm->arg_start..arg_end, one read: the strings
 *   the program receives, NUL-separated (for a script the kernel has put interp in front).
 * Nothing of it is in memory the old image could still change: argv read at sys_enter (as
 * the first versions did) could be rewritten by another thread, and failed for pages not yet
 * touched. Where the binary's path may not say where it is (the caller's mounts in a user
 * namespace, or a chroot: path.h's needs_fs_walk), its path from its filesystem's root too.
 *
 * struct exec_event is in enhrec.h. Offsets: those of path.h, and OFF_TASK_MM,
 * OFF_MM_ARG_START/END, OFF_BPRM_FILENAME/INTERP/FILE/ARGC, OFF_INODE_I_SIZE, OFF_FS_PWD.
 */
#ifndef ENHREC_EXEC_H
#define ENHREC_EXEC_H

#include "path.h"

static __always_inline u32 read_argv(struct exec_event *e)
{
    u64 mm = kptr(current_task(), OFF_TASK_MM);
    u64 start = kptr(mm, OFF_MM_ARG_START), end = kptr(mm, OFF_MM_ARG_END);
    u64 len = end - start;
    if (end < start || !start)
        len = 0;
    if (len > ARGV_MAX) {
        len = ARGV_MAX;
        e->flags |= EXEC_ARGV_TRUNCATED;
    }
    if (len && read_user(e->data, len, (const void *)start)) {
        e->flags |= EXEC_ARGV_UNREADABLE;
        len = 0;
    }
    e->argv_len = len;
    return len;
}

/* The offset, through memory: the verifier then knows only its mask, the same on every path
 * here, so the walks after it are verified once instead of once per path before them
 * (290,000 -> 33,000 instructions processed, measured when this was built). */
static __always_inline u32 forget(struct exec_event *e, u32 off)
{
    e->scratch = off;
    return *(volatile u32 *)&e->scratch & EXEC_OFF_MASK;
}

/* Fills e's exec fields and tail; returns the tail's length. */
static __always_inline u32 capture_exec(u64 bprm, struct exec_event *e)
{
    char *data = e->data;
    __builtin_memset(&e->binary, 0, sizeof(e->binary));
    __builtin_memset(&e->cwd, 0, sizeof(e->cwd));
    e->flags = 0;
    e->interp_len = 0;
    e->argc = ku32(bprm, OFF_BPRM_ARGC);
    u32 off = read_argv(e);

    u64 filename = kptr(bprm, OFF_BPRM_FILENAME), interp = kptr(bprm, OFF_BPRM_INTERP);
    long n = read_kernel_str(&data[off & EXEC_OFF_MASK], EXEC_NAME_MAX, (const void *)filename);
    n = n > 0 ? n : 0;
    e->filename_len = n;
    char first = data[off & EXEC_OFF_MASK];
    off = (off + n) & EXEC_OFF_MASK;
    if (interp != filename) {
        e->flags |= EXEC_SCRIPT;
        n = read_kernel_str(&data[off & EXEC_OFF_MASK], EXEC_NAME_MAX, (const void *)interp);
        n = n > 0 ? n : 0;
        e->interp_len = n;
        off = (off + n) & EXEC_OFF_MASK;
    }

    u64 file = kptr(bprm, OFF_BPRM_FILE);
    e->size = kptr(kptr(file, OFF_FILE_F_INODE), OFF_INODE_I_SIZE);
    __builtin_memset(&e->binary_fs, 0, sizeof(e->binary_fs));
    u64 binary_dentry = 0, binary_vfsmnt = 0;
    describe_file(file, &e->binary, &binary_dentry, &binary_vfsmnt);
    int user_ns_mounts = in_user_ns_mounts();

    /* The binary's path, the cwd's for a relative filename, then the binary's from its
     * filesystem's root where its path may not say where it is (needs_fs_walk): one copy of
     * walk_path (a loop of three turns that is not unrolled) instead of inlined ones, which
     * made this program 19,800 instructions for two and its compile 29 MB of LLVM memory
     * (docs/PERFORMANCE.md). */
    struct resolved_file *out = &e->binary;
    int turn;
#pragma clang loop unroll(disable)
    for (turn = 0; turn < 3; turn++) {
        off = forget(e, off);
        u64 dentry = binary_dentry, vfsmnt = binary_vfsmnt;
        if (!binary_dentry && turn != 1)
            continue;   /* no file: PATH_NO_FILE, no components */
        if (turn == 1) {
            if (first == '/')
                continue;
            e->flags |= EXEC_CWD;
            u64 pwd[2] = {};
            read_kernel(pwd, sizeof(pwd),
                        (const void *)(kptr(current_task(), OFF_TASK_FS) + OFF_FS_PWD));
            dentry = pwd[OFF_PATH_DENTRY / 8];
            vfsmnt = pwd[OFF_PATH_MNT / 8];
            out = &e->cwd;
        } else if (turn == 2) {
            if (!needs_fs_walk(&e->binary, user_ns_mounts))
                continue;
            e->flags |= EXEC_BINARY_FS;
            out = &e->binary_fs;
        }
        walk_path(dentry, vfsmnt, &data[off & EXEC_OFF_MASK], out, turn == 2);
        off = (off + out->path_len) & EXEC_OFF_MASK;
    }
    return forget(e, off);
}

#endif
