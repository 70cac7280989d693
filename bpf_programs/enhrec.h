/* The records the BPF programs put in the ring buffers, and every constant the kernel side and
 * the Python side share. Defined here once: the Python side takes the records' layout from the
 * loaded program's table types (enhrec_wrap/kernel/decode.py) and reads the #defines below from
 * this file (enhrec_wrap/kernel/abi.py), so nothing here is declared a second time.
 *
 * Every record starts with struct event_header. Records with a text tail (exec, open) are sent
 * with their used length only, so a 20-byte path costs 20 bytes of ring, not its maximum.
 *
 * One set of programs serves every session on the host (enhrec_wrap/kernel/host.py). A session
 * is the cgroup id under which it put its own ring buffers in session_rings; a task whose
 * cgroup is in none of them costs one hash lookup per traced call.
 *
 * Every fact comes from the kernel's own copy, taken where no user thread can change it any
 * more (issue 9): an exec at sched_process_exec (the new image's argv, the binary's file), an
 * open's file from its struct file, a connect's or send's destination from the cgroup
 * sock_addr hooks. Only a FAILED exec or open has no kernel object to read: its record holds
 * the caller's claim, read from its memory, and says so.
 */
#ifndef ENHREC_H
#define ENHREC_H

/* Limits; they are part of the format. */
#define ARGV_MAX 32768        /* argv bytes kept of a successful exec; a power of two */
#define EXEC_NAME_MAX 4096    /* an exec's filename and interpreter, each */
#define PATH_BUF_SIZE 4096    /* resolved path bytes kept (PATH_MAX); a power of two */
#define PATH_MAX_DEPTH 64     /* path walk steps: one per component or mount crossing */
#define REQUEST_MAX 4096      /* bytes read of the path a caller passed, NUL included */
#define MAX_ARGS 256          /* argv entries read of a FAILED exec, argv[0] included */
#define ARG_READ_MAX 1024     /* bytes read per argument of a failed exec, NUL included: an
                                 argument of ARG_READ_MAX - 1 bytes or more is reported as cut */
#define EXEC_DATA_MAX 32768   /* failed exec: filename + arguments; a power of two */

/* record types */
#define RECORD_EXEC 1         /* sched_process_exec: a successful exec, as the kernel did it */
#define RECORD_EXEC_FAILED 2  /* execve/execveat returned < 0: the caller's claim */
#define RECORD_OPEN 3         /* an open-like call's exit (or an io_uring open's completion) */
#define RECORD_CONNECT 4      /* a connect: the cgroup hook's destination, connect()'s result */
#define RECORD_SEND 5         /* an unconnected UDP send, once per (process, socket, address) */
#define RECORD_REFUSED 6      /* a call the session's seccomp filter refused */
#define RECORD_URING 7        /* an io_uring operation, once per (process, opcode) */

/* Sessions one set of programs can serve at once. */
#define MAX_SESSIONS 4096

/* streams: one ring buffer per session and one lost counter each */
#define STREAM_COMMAND 0      /* exec, failed exec, refusal, io_uring */
#define STREAM_DISK 1
#define STREAM_NETWORK 2
#define STREAM_COUNT 3
#define WAKE_SHIFT 3          /* a ring wakes its reader once 1/8 full (recorder.c send()) */

/* resolved_file.path_flags: how a path walk (bpf_programs/path.h) ended */
#define PATH_COMPLETE 1       /* reached the caller's root: an absolute path in its namespace */
#define PATH_TRUNCATED 2      /* PATH_MAX_DEPTH steps or PATH_BUF_SIZE bytes ran out first */
#define PATH_OUTSIDE_ROOT 4   /* reached a mount with no parent that is not the caller's root
                                 (a detached open_tree() mount, another namespace, a file
                                 outside a chroot): the walk went on to the filesystem's own
                                 root, so the path is relative to that fs */
#define PATH_NO_PARENT 8      /* a dentry with no parent that is no mount's root: a pseudo
                                 file (pipe, socket, anon_inode, memfd: its name is the one
                                 component, fs_magic says which) or a disconnected dentry */
#define PATH_DELETED 16       /* the file's dentry is unlinked (O_TMPFILE, memfd, deleted) */
#define PATH_RACED 32         /* a dentry's d_seq moved while it was read: renamed meanwhile */
#define PATH_NO_FILE 64       /* no file: the call failed, or the fd was closed meanwhile */
#define PATH_FILE_SHARED 128  /* the file has more than the fd table's one reference: another
                                 thread uses it, or it is not the file this open made (a thread
                                 dup2()ed another onto the new fd before the exit tracepoint) */
#define PATH_CHROOT 256       /* the caller's root is not its mount's root: a chroot */
#define PATH_USER_NS 512      /* the caller's mount namespace belongs to a user namespace other
                                 than the host's: an ordinary user can have arranged its mounts
                                 (unshare -Urm: bind mounts, pivot_root, a tmpfs over a
                                 directory), so the path may name another place than the one
                                 where the file is. Set, like PATH_CHROOT, on the walk that had
                                 a second one from the file up to its filesystem's own root */
#define PATH_UNIX_ABSTRACT 1024  /* a unix socket connect's peer has an abstract name, not a
                                 file: path_len bytes of the kernel's copy of it (after its
                                 leading NUL) instead of components; 0 bytes: no name */

/* exec_event.flags */
#define EXEC_ARGV_TRUNCATED 1 /* arg_end - arg_start > ARGV_MAX: the first ARGV_MAX bytes kept */
#define EXEC_ARGV_UNREADABLE 2
#define EXEC_SCRIPT 4         /* bprm->interp differs from bprm->filename: a "#!" script */
#define EXEC_CWD 8            /* filename is relative: the cwd's walk follows the binary's */
#define EXEC_BINARY_FS 16     /* the binary's walk to its filesystem's root follows (binary_fs:
                                 its path had PATH_USER_NS or PATH_CHROOT) */

/* exec_failed_event.truncated bits */
#define ARGV_TOO_MANY 1       /* more than MAX_ARGS arguments */
#define ARGV_DATA_FULL 2      /* filename + arguments over EXEC_DATA_MAX */
#define ARGV_UNREADABLE 4     /* the caller's memory could not be read */

/* connect_event.flags bits */
#define CONNECT_TCP 1         /* the kernel moved a TCP socket to SYN_SENT in this call */
#define CONNECT_NO_SYSCALL 2  /* not a 64-bit connect() call (io_uring, 32-bit socketcall, TCP
                                 Fast Open): no return code */
#define CONNECT_IPV4_HOOK 4   /* seen by connect4/sendmsg4: an IPv4 destination, even on an
                                 IPv6 socket (a v4-mapped address) */

/* refused_event.action */
#define REFUSED_ERRNO 1       /* the call failed with an errno; the program went on */
#define REFUSED_KILLED 2      /* the process was killed (SIGSYS) */

struct event_header {
    u64 ts_ns;                /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 cgroup_id;
    u32 pid;                  /* tgid */
    u32 tid;
    u32 ppid;                 /* the parent's tgid (task->real_parent) */
    u16 type;                 /* RECORD_* */
    u16 tail_len;             /* bytes used in the record's text tail */
    char comm[16];
};

/* A file as the kernel has it: identity, and how the walk of its path went. */
struct resolved_file {
    u64 ino;                  /* inode number */
    u64 fs_magic;             /* super_block.s_magic: PIPEFS_MAGIC, SOCKFS_MAGIC, ... */
    u32 dev;                  /* super_block.s_dev (kernel dev_t: major << 20 | minor) */
    u32 mnt_id;               /* mount.mnt_id of the file's mount (/proc/self/mountinfo) */
    u32 root_mnt_id;          /* mount.mnt_id of the caller's root */
    u16 mode;                 /* inode.i_mode */
    u16 path_flags;           /* PATH_* */
    u16 depth;                /* components written */
    u16 reserved;
    u32 path_len;             /* bytes of components written, leaf first, NUL after each */
    u32 pad;                  /* walk state kept in memory (see walk_path) */
};

/* Tail: argv (argv_len: the new image's strings, NUL-separated, argv[0] first), filename
 * (filename_len, NUL included), interp (interp_len, scripts only), the binary's path
 * components (binary.path_len), then the cwd's (cwd.path_len, with EXEC_CWD), then the
 * binary's from its filesystem's root (binary_fs.path_len, with EXEC_BINARY_FS). */
#define EXEC_OFF_MASK 65535   /* every piece starts below this: 2 * EXEC_NAME_MAX + ARGV_MAX +
                                 3 * PATH_BUF_SIZE = 52 KiB at most */
struct exec_event {
    struct event_header hdr;
    u32 old_pid;              /* the thread that called exec (another one than pid's leader
                                 when a thread did) */
    u32 argc;                 /* bprm->argc */
    struct resolved_file binary;   /* bprm->file: what runs (a script's interpreter) */
    struct resolved_file cwd;      /* current->fs->pwd, when EXEC_CWD */
    struct resolved_file binary_fs;  /* bprm->file from its filesystem's root (EXEC_BINARY_FS):
                                        only path_flags, depth and path_len are set */
    u64 size;                 /* the binary's i_size */
    u32 argv_len;
    u16 filename_len;
    u16 interp_len;
    u16 flags;                /* EXEC_* */
    u16 pad;
    u32 scratch;              /* see forget() in exec.h */
    u32 pad2;
    char data[EXEC_OFF_MASK + 1 + ARGV_MAX];
};

/* The caller's claim of an exec that failed: filename\0argv[0]\0argv[1]\0... read from its
 * memory at the syscall's exit (nothing was exec'd, so nothing newer exists). */
struct exec_failed_event {
    struct event_header hdr;
    s64 ret;                  /* -errno */
    s32 dirfd;                /* AT_FDCWD (-100) for execve */
    u32 at_flags;             /* execveat flags */
    u32 argc;                 /* argv entries captured, argv[0] included */
    u32 truncated;            /* ARGV_* bits */
    u32 filename_len;         /* bytes of filename in data, NUL included */
    u32 pad;
    char data[2 * EXEC_DATA_MAX];
};

/* Tail: the opened file's path components (file.path_len, leaf first; none when the call
 * failed), then its components from its filesystem's own root (fs.path_len: only when
 * file.path_flags has PATH_USER_NS or PATH_CHROOT), then the path the caller passed
 * (request_len, NUL included; none for open_by_handle_at, which passes a handle). */
struct open_event {
    struct event_header hdr;
    s64 ret;                  /* fd, or -errno */
    s64 flags;                /* open flags as passed (openat2: how->flags) */
    s32 dirfd;                /* AT_FDCWD for open/creat; open_by_handle_at's mount fd */
    u32 mode;
    struct resolved_file file;     /* PATH_NO_FILE, zeros, when ret < 0 */
    struct resolved_file fs;       /* the file from its filesystem's root (see the tail): only
                                      path_flags, depth and path_len are set; zeros when none */
    u32 request_len;
    u16 via_uring;            /* 1: an IORING_OP_OPENAT completion (io_uring allowed) */
    u16 source;               /* OPEN_FROM_*: the call that put the file in the task's hands */
    u32 scratch;              /* see forget_offset() in path.h */
    u32 pad2;
    char data[3 * PATH_BUF_SIZE + REQUEST_MAX];
};

/* open_event.source: what an open record is of, besides open-like calls (OPEN_FROM_CALL) */
#define OPEN_FROM_CALL 0
#define OPEN_FROM_UNIX_CONNECT 1  /* a connect() of a unix socket: file is its peer's (the socket
                                     file it is bound to, or PATH_UNIX_ABSTRACT), ret connect()'s;
                                     the request is the caller's sun_path */
#define OPEN_FROM_PIDFD_GETFD 2   /* pidfd_getfd(): a file of another process, dirfd the pidfd */
#define OPEN_FROM_PTRACE 3        /* ptrace(PTRACE_ATTACH or PTRACE_SEIZE) of a task OUTSIDE the
                                     session (what it does next is not recorded): file is its
                                     executable (mm->exe_file), dirfd its pid, flags the
                                     request */

/* RECORD_CONNECT and RECORD_SEND. */
struct connect_event {
    struct event_header hdr;
    s64 ret;                  /* connect(): 0, or -errno (-115 EINPROGRESS, non-blocking) */
    u64 cookie;               /* bpf_get_socket_cookie(): the socket, unique for the boot */
    u16 family;               /* AF_INET or AF_INET6 */
    u16 dport;                /* host byte order */
    u16 sport;                /* host byte order; 0 when the kernel had not bound one */
    u16 flags;                /* CONNECT_* bits */
    u16 sock_type;            /* SOCK_STREAM, SOCK_DGRAM */
    u16 protocol;             /* IPPROTO_TCP, IPPROTO_UDP */
    u32 pad;
    u8 daddr[16];             /* 4 bytes used for AF_INET */
    u8 saddr[16];
};

struct refused_event {
    struct event_header hdr;
    s64 ret;                  /* what the call returned (REFUSED_ERRNO) */
    s32 syscall;              /* its number in its arch's table */
    u32 arch;                 /* AUDIT_ARCH_X86_64 0xc000003e, AUDIT_ARCH_I386 0x40000003 */
    u32 action;               /* REFUSED_* */
    u32 pad;
};

struct uring_event {
    struct event_header hdr;
    u32 opcode;               /* IORING_OP_* */
    u32 pad;
};

/* The key of a session's ring of one stream in session_rings. */
struct ring_key {
    u64 cgroup_id;
    u32 stream;               /* STREAM_COMMAND, STREAM_DISK or STREAM_NETWORK */
    u32 pad;
};

/* A session's lost records per stream, in the per-CPU lost_events map under its cgroup id. */
struct lost_counts {
    u64 count[STREAM_COUNT];
};

#endif /* ENHREC_H */
