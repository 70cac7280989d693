/* enhrec-wrap's kernel side: the programs that record exec, open, connect and send of the tasks
 * in the sessions' cgroups, and the calls the sessions' seccomp filter refused; nothing of any
 * other task.
 *
 * Loaded once per host and shared by every session (enhrec_wrap/kernel/host.py): a session is
 * known by the cgroup id under which it put its own ring buffers in session_rings. A task
 * outside every session costs each program one hash lookup.
 *
 * Every fact is the kernel's own copy (enhrec.h says where each comes from). Kernel structs are
 * read at offsets from the running kernel's BTF (kread.h), never through the compile-time
 * headers, which may describe another kernel (MACHINE.md: 6.1 headers on 6.18).
 *
 * Set at load time by enhrec_wrap/kernel/host.py: POSSIBLE_CPUS, and the OFF_* offsets
 * (enhrec_wrap/kernel/offsets.py); by enhrec_wrap/kernel/compiler.py: UNIT.
 *
 * The compile is split in two units, each a BCC module of its own compiled in a child process
 * of its own (compiler.py), because LLVM's memory grows faster than the code it compiles: the
 * three programs with a path walk (each about 10,000 instructions) in one module peaked at
 * 153 MB (docs/PERFORMANCE.md). A program marked IN_UNIT(n) is compiled in unit n only; the
 * small unmarked ones are compiled in both, and the compiler keeps one copy.
 */
#ifdef UNIT
#define IN_UNIT(n) (UNIT == (n))
#else
#define IN_UNIT(n) 1          /* compiled whole */
#endif
#include "enhrec.h"
#include "kread.h"
#include "path.h"
#include "exec.h"
#include "refusal.h"

#define AT_FDCWD_VALUE -100
#define AF_INET_VALUE 2
#define AF_INET6_VALUE 10
#define TCP_SYN_SENT_STATE 2
#define CREAT_FLAGS 01101     /* O_CREAT | O_WRONLY | O_TRUNC: what creat() means */
#define EPERM_VALUE 1
#define IORING_OP_OPENAT_VALUE 18
#define IORING_OP_OPENAT2_VALUE 28

/* A program attached to several tracepoints of one category is named
 * tracepoints__<category>__<prefix>__<suffix>[__<suffix>...], for the events <prefix>_<suffix>
 * (enhrec_wrap/kernel/compiler.py reads the list from the name). Every syscalls:sys_exit_* event has this record (struct syscall_trace_exit in
 * the kernel; its format file says __syscall_nr at 8, ret at 16): one program serves the exits
 * of calls recorded alike, so the path walk, unrolled PATH_MAX_DEPTH times, is compiled and
 * verified once instead of once per call (the compile's memory and time, docs/PERFORMANCE.md). */
struct syscall_exit_args {
    u64 common;               /* common_type, common_flags, common_preempt_count, common_pid */
    s32 syscall_nr;           /* the x86-64 number: these tracepoints skip 32-bit calls */
    s32 pad;
    s64 ret;
};

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl) */
#define NR_OPEN 2
#define NR_CREAT 85
#define NR_OPENAT 257
#define NR_OPEN_BY_HANDLE_AT 304
#define NR_OPENAT2 437
#define NR_EXECVEAT 322
#define NR_CONNECT 42
#define NR_PIDFD_GETFD 438
#define NR_PTRACE 101

/* Each session's ring buffers, by its cgroup id and stream. The sessions create the rings
 * themselves (of the sizes their config asks: the kernel does not compare a ring's size with the
 * template's) and remove them at their end; ring_template only gives session_rings its inner
 * type. One map for all streams: the kernel waits for an RCU grace period after each change of
 * a map of maps from user space (~13 ms here), and one map lets a session put all its rings in,
 * or take them out, with one batch and one wait. */
BPF_RINGBUF_OUTPUT(ring_template, 1);
BPF_HASH_OF_MAPS(session_rings, struct ring_key, "ring_template", MAX_SESSIONS * STREAM_COUNT);
BPF_PERCPU_HASH(lost_events, u64, struct lost_counts, MAX_SESSIONS);

/* Records are built in scratch space: they are far larger than the 512-byte stack. One over
 * the 32 KiB limit of a per-CPU map value gets a plain array with a slot per CPU instead. */
BPF_ARRAY(exec_scratch, struct exec_event, POSSIBLE_CPUS);
BPF_ARRAY(exec_failed_scratch, struct exec_failed_event, POSSIBLE_CPUS);
BPF_PERCPU_ARRAY(open_scratch, struct open_event, 1);
BPF_PERCPU_ARRAY(connect_scratch, struct connect_event, 1);
BPF_PERCPU_ARRAY(refused_scratch, struct refused_event, 1);
BPF_PERCPU_ARRAY(uring_scratch, struct uring_event, 1);

/* A 64-bit connect() between the cgroup hook (the destination) and its sys_exit (the result).
 * LRU: an entry whose task was killed inside connect() is forgotten in time. */
BPF_TABLE("lru_hash", u64, struct connect_event, pending_connects, 16384);
/* A socket in SYN_SENT -> the connect() call (pid_tgid) that sent it there. The kernel picks an
 * unbound socket's source port only after SYN_SENT, so the port is read when the socket leaves
 * that state, which for a blocking connect() happens before the call returns. */
BPF_TABLE("lru_hash", u64, u64, syn_sent_sockets, 16384);

/* An unconnected UDP send is recorded once per (process, socket, destination): a DNS-heavy
 * session would flood the log otherwise. The LRU forgets old destinations first; one that comes
 * back after being forgotten is recorded again. */
struct send_key {
    u64 cookie;
    u32 pid;
    u16 port;
    u16 family;
    u8 addr[16];
};
BPF_TABLE("lru_hash", struct send_key, u8, sent_destinations, 16384);

/* io_uring, where a session allows it: each opcode once per process, and the request of an
 * open until its completion (when the opened file can be resolved like any other). */
struct uring_key {
    u32 pid;
    u32 opcode;
};
BPF_TABLE("lru_hash", struct uring_key, u8, uring_seen, 4096);
BPF_TABLE("lru_hash", u64, u32, uring_opens, 4096);

/* -- sessions and their rings -------------------------------------------------------------- */

/* The calling task's session ring of one stream, or NULL when the task is in no session. */
static __always_inline void *session_ring(u64 *cgroup_id, u32 stream)
{
    struct ring_key key = {};
    key.cgroup_id = *cgroup_id = bpf_get_current_cgroup_id();
    key.stream = stream;
    return session_rings.lookup(&key);
}

static __always_inline void count_lost(u64 cgroup_id, int stream)
{
    struct lost_counts *lost = lost_events.lookup(&cgroup_id);
    if (lost && stream >= 0 && stream < STREAM_COUNT)
        lost->count[stream]++;   /* per-CPU value: no other CPU writes it */
}

/* Sends a record, or counts it as lost in the session's counters. The consumer is not woken
 * for each record (a wake-up cost 2-16 us a record, more than the rest of the program): it
 * reads the rings every 50 ms, and is woken once a ring is 1/2^WAKE_SHIFT full (it then
 * pauses the session if records keep coming: session/backpressure.py). */
static __always_inline void send(void *ring, const void *record, u64 size, u64 cgroup_id,
                                 int stream)
{
    u64 flags = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >
                    (bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) >> WAKE_SHIFT)
                ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    if (bpf_ringbuf_output(ring, (void *)record, size, flags))
        count_lost(cgroup_id, stream);
}

static __always_inline void fill_header(struct event_header *hdr, u16 type, u64 cgroup_id)
{
    u64 id = bpf_get_current_pid_tgid();
    hdr->ts_ns = bpf_ktime_get_ns();
    hdr->cgroup_id = cgroup_id;
    hdr->pid = id >> 32;
    hdr->tid = (u32)id;
    hdr->ppid = current_ppid();
    hdr->type = type;
    hdr->tail_len = 0;
    bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

/* The record about to be filled in a scratch buffer (NULL: none, the record is counted lost);
 * 1 when there is one, its header filled. */
static __always_inline int begin_record(struct event_header *hdr, u16 type, u64 cgroup_id,
                                        int stream)
{
    if (!hdr) {
        count_lost(cgroup_id, stream);
        return 0;
    }
    fill_header(hdr, type, cgroup_id);
    return 1;
}

/* -- execs ---------------------------------------------------------------------------------- */

#if IN_UNIT(1)
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_COMMAND);   /* NULL: not in a session */
    if (!ring)
        return 0;
    int cpu = bpf_get_smp_processor_id();
    struct exec_event *e = exec_scratch.lookup(&cpu);
    if (!begin_record(e ? &e->hdr : NULL, RECORD_EXEC, cgroup_id, STREAM_COMMAND))
        return 0;
    e->old_pid = ctx->args[1];
    u32 used = capture_exec(ctx->args[2], e) & EXEC_OFF_MASK;
    e->hdr.tail_len = used;
    send(ring, e, offsetof(struct exec_event, data) + used, cgroup_id, STREAM_COMMAND);
    return 0;
}
#endif

/* A failed exec changed nothing: what it asked for is still in the caller's memory, read at
 * the exit (the kernel has faulted in what it got to). The caller's claim, flagged as such. */
static __always_inline int record_failed_exec(long ret, int execveat)
{
    if (ret >= 0)
        return 0;   /* a success is sched_process_exec's */
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_COMMAND);
    if (!ring)
        return 0;
    int cpu = bpf_get_smp_processor_id();
    struct exec_failed_event *e = exec_failed_scratch.lookup(&cpu);
    if (!begin_record(e ? &e->hdr : NULL, RECORD_EXEC_FAILED, cgroup_id, STREAM_COMMAND))
        return 0;
    e->ret = ret;
    e->argc = 0;
    e->truncated = 0;
    /* execve(filename, argv, envp); execveat(dirfd, filename, argv, envp, flags) */
    e->dirfd = execveat ? (s32)syscall_arg(PT_REGS_DI) : AT_FDCWD_VALUE;
    e->at_flags = execveat ? (u32)syscall_arg(PT_REGS_R8) : 0;
    const char *filename = (const char *)syscall_arg(execveat ? PT_REGS_SI : PT_REGS_DI);
    const char *const *argv = (const char *const *)syscall_arg(execveat ? PT_REGS_DX : PT_REGS_SI);

    long n = read_user_str(e->data, REQUEST_MAX, filename);
    if (n <= 0) {
        e->truncated |= ARGV_UNREADABLE;
        e->data[0] = 0;
        n = 1;
    }
    u32 off = n;
    e->filename_len = off;
    int i;
    for (i = 0; i < MAX_ARGS; i++) {
        const char *arg = NULL;
        if (read_user(&arg, sizeof(arg), &argv[i])) {
            e->truncated |= ARGV_UNREADABLE;
            break;
        }
        if (!arg)
            break;
        if (off >= EXEC_DATA_MAX) {
            e->truncated |= ARGV_DATA_FULL;
            break;
        }
        n = read_user_str(&e->data[off & (EXEC_DATA_MAX - 1)], ARG_READ_MAX, arg);
        if (n <= 0) {
            e->truncated |= ARGV_UNREADABLE;
            break;
        }
        /* An argument that filled ARG_READ_MAX is flagged as cut by the reader (decode.py): a
         * branch on n here would double the verifier's states at every iteration. The mask
         * changes nothing (off + n < EXEC_DATA_MAX + ARG_READ_MAX) but gives off the same range
         * at every iteration: 12k instructions verified instead of 33k. */
        off = (off + n) & (2 * EXEC_DATA_MAX - 1);
        e->argc++;
    }
    if (i == MAX_ARGS) {
        const char *more = NULL;
        read_user(&more, sizeof(more), &argv[MAX_ARGS]);
        if (more)
            e->truncated |= ARGV_TOO_MANY;
    }
    off &= 2 * EXEC_DATA_MAX - 1;
    e->hdr.tail_len = off;
    send(ring, e, offsetof(struct exec_failed_event, data) + off, cgroup_id, STREAM_COMMAND);
    return 0;
}

int tracepoints__syscalls__sys_exit__execve__execveat(struct syscall_exit_args *args)
{
    return record_failed_exec(args->ret, args->syscall_nr == NR_EXECVEAT);
}

/* -- opens ---------------------------------------------------------------------------------- */

/* The open-like syscalls, by how their arguments are laid out. */
#define OPEN_OPEN 0           /* open(filename, flags, mode) */
#define OPEN_OPENAT 1         /* openat(dfd, filename, flags, mode) */
#define OPEN_OPENAT2 2        /* openat2(dfd, filename, how, size) */
#define OPEN_CREAT 3          /* creat(pathname, mode) */
#define OPEN_BY_HANDLE 4      /* open_by_handle_at(mount_fd, handle, flags) */
#define OPEN_UNIX_CONNECT 5   /* connect(fd, sockaddr_un, addrlen) of a unix socket */
#define OPEN_GETFD 6          /* pidfd_getfd(pidfd, targetfd, flags): another process's file */
#define OPEN_PTRACE 7         /* ptrace(request, pid, ...): an attach to another task */
#define PTRACE_ATTACH_VALUE 16
#define PTRACE_SEIZE_VALUE 0x4206

/* The open-like call an exit is of; -1 for none (never: the program's name lists the calls). */
static __always_inline int open_kind(s32 syscall_nr)
{
    switch (syscall_nr) {
    case NR_OPEN: return OPEN_OPEN;
    case NR_OPENAT: return OPEN_OPENAT;
    case NR_OPENAT2: return OPEN_OPENAT2;
    case NR_CREAT: return OPEN_CREAT;
    case NR_OPEN_BY_HANDLE_AT: return OPEN_BY_HANDLE;
    case NR_CONNECT: return OPEN_UNIX_CONNECT;
    case NR_PIDFD_GETFD: return OPEN_GETFD;
    case NR_PTRACE: return OPEN_PTRACE;
    }
    return -1;
}

/* Fills e's file and its path components (both walks') from the file at fd; returns their
 * length. */
static __always_inline u32 resolve_opened(s64 fd, struct open_event *e)
{
    __builtin_memset(&e->file, 0, sizeof(e->file));
    __builtin_memset(&e->fs, 0, sizeof(e->fs));
    u64 dentry = 0, vfsmnt = 0;
    if (fd < 0) {
        e->file.path_flags = PATH_NO_FILE;
        return 0;
    }
    if (!locate_fd(fd, &e->file, &dentry, &vfsmnt))
        return 0;
    return walk_paths(dentry, vfsmnt, e->data, &e->file, &e->fs, &e->scratch);
}

static __always_inline void send_open(void *ring, struct open_event *e, u32 len, u64 cgroup_id)
{
    u32 size = (len + (e->request_len & (REQUEST_MAX - 1))) & (4 * PATH_BUF_SIZE - 1);
    if (size > sizeof(e->data))
        return;
    e->hdr.tail_len = size;
    send(ring, e, offsetof(struct open_event, data) + size, cgroup_id, STREAM_DISK);
}

/* The task that ptrace(ATTACH or SEIZE, tid) just attached, when it is outside the calling
 * task's session (cgroup_id); 0 when it is inside, or is not the one at the head of our
 * ptraced list (ptrace_link() adds there). */
static __always_inline u64 tracee_outside(u64 cgroup_id, u32 tid)
{
    u64 tracee = kptr(current_task(), OFF_TASK_PTRACED) - OFF_TASK_PTRACE_ENTRY;
    if (ku32(tracee, OFF_TASK_PID) != tid)
        return 0;
    u64 cgroup = kptr(kptr(tracee, OFF_TASK_CGROUPS), OFF_CSS_SET_DFL_CGRP);
    return kptr(kptr(cgroup, OFF_CGROUP_KN), OFF_KERNFS_NODE_ID) == cgroup_id ? 0 : tracee;
}

/* Where the file of an open-like call is: (dentry, vfsmnt) to walk (1), or none (0: a failed
 * call, PATH_NO_FILE; a unix peer with an abstract name, PATH_UNIX_ABSTRACT, its name in data). */
static __always_inline int locate_opened(int kind, long ret, u64 target, struct open_event *e,
                                         u64 *dentry, u64 *vfsmnt)
{
    if (ret < 0 || (kind == OPEN_UNIX_CONNECT && !target)) {   /* (a tracee is never 0) */
        e->file.path_flags = PATH_NO_FILE;
        return 0;
    }
    if (kind == OPEN_UNIX_CONNECT) {
        /* another reference to the socket: a thread may have dup2()ed another socket onto
         * the fd since connect() returned (as for an open's file, PATH_FILE_SHARED) */
        if (kptr(current_file(e->dirfd), OFF_FILE_REF) != FILE_ONE_REF)
            e->file.path_flags |= PATH_FILE_SHARED;
        return locate_unix_peer(target, e->data, &e->file, dentry, vfsmnt);
    }
    if (kind == OPEN_PTRACE)   /* the tracee's executable */
        return describe_file(kptr(kptr(target, OFF_TASK_MM), OFF_MM_EXE_FILE), &e->file, dentry,
                             vfsmnt);
    return locate_fd(ret, &e->file, dentry, vfsmnt);
}

/* At the syscall's exit: the file is installed, and the request's page faulted in. A unix
 * socket's connect() is recorded here too, like an open of the peer's socket file (its
 * sun_path the request): one call site of walk_paths for all of them (the walk is 10,000
 * instructions). */
static __always_inline int record_open(long ret, s32 syscall_nr)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_DISK);
    if (!ring)
        return 0;
    int kind = open_kind(syscall_nr);
    if (kind < 0)
        return 0;
    u64 target = 0;
    if (kind == OPEN_UNIX_CONNECT) {
        /* a unix socket's connect only (an inet one is recorded by the socket hooks): by the
         * socket when it connected, by the caller's sockaddr when it did not */
        target = unix_sock_at(syscall_arg(PT_REGS_DI));
        u16 family = 0;
        if (ret < 0 && !target)
            read_user(&family, sizeof(family), (const void *)syscall_arg(PT_REGS_SI));
        if (!target && family != AF_UNIX_VALUE)
            return 0;
    } else if (kind == OPEN_PTRACE) {
        /* an attach that worked, to a task outside the session (one inside is recorded
         * itself): the tracee, which ptrace_link() put first on our ptraced list */
        u64 request = syscall_arg(PT_REGS_DI);
        if (ret < 0 || (request != PTRACE_ATTACH_VALUE && request != PTRACE_SEIZE_VALUE))
            return 0;
        target = tracee_outside(cgroup_id, (u32)syscall_arg(PT_REGS_SI));
        if (!target)
            return 0;
    }
    int zero = 0;
    struct open_event *e = open_scratch.lookup(&zero);
    if (!begin_record(e ? &e->hdr : NULL, RECORD_OPEN, cgroup_id, STREAM_DISK))
        return 0;
    e->ret = ret;
    e->via_uring = 0;
    e->source = kind == OPEN_UNIX_CONNECT ? OPEN_FROM_UNIX_CONNECT
                : kind == OPEN_GETFD ? OPEN_FROM_PIDFD_GETFD
                : kind == OPEN_PTRACE ? OPEN_FROM_PTRACE : OPEN_FROM_CALL;
    u64 di = syscall_arg(PT_REGS_DI), si = syscall_arg(PT_REGS_SI), dx = syscall_arg(PT_REGS_DX);
    const char *request = NULL;
    if (kind == OPEN_OPEN) {
        request = (const char *)di;
        e->dirfd = AT_FDCWD_VALUE;
        e->flags = (s32)si;
        e->mode = (u16)dx;   /* umode_t */
    } else if (kind == OPEN_CREAT) {
        request = (const char *)di;
        e->dirfd = AT_FDCWD_VALUE;
        e->flags = CREAT_FLAGS;
        e->mode = (u16)si;
    } else if (kind == OPEN_BY_HANDLE || kind == OPEN_GETFD || kind == OPEN_UNIX_CONNECT) {
        e->dirfd = (s32)di;   /* the mount fd, the pidfd, the socket: no path */
        e->flags = kind == OPEN_BY_HANDLE ? (s32)dx : 0;
        e->mode = 0;
    } else if (kind == OPEN_PTRACE) {
        e->dirfd = (s32)si;   /* the tracee */
        e->flags = (s32)di;   /* the request */
        e->mode = 0;
    } else {
        request = (const char *)si;
        e->dirfd = (s32)di;
        e->flags = (s32)dx;
        e->mode = (u16)syscall_arg(PT_REGS_R10);
        if (kind == OPEN_OPENAT2) {
            u64 how_flags = 0;   /* struct open_how starts with u64 flags */
            read_user(&how_flags, sizeof(how_flags), (const void *)dx);
            e->flags = how_flags;
            e->mode = 0;
        }
    }
    __builtin_memset(&e->file, 0, sizeof(e->file));
    __builtin_memset(&e->fs, 0, sizeof(e->fs));
    u64 dentry = 0, vfsmnt = 0;
    u32 len = 0;
    if (locate_opened(kind, ret, target, e, &dentry, &vfsmnt))
        len = walk_paths(dentry, vfsmnt, e->data, &e->file, &e->fs, &e->scratch);
    else
        len = e->file.path_len & 127;   /* an abstract name, or nothing */
    len &= 2 * PATH_BUF_SIZE - 1;
    e->request_len = 0;
    if (request) {
        long n = read_user_str(&e->data[len], REQUEST_MAX, request);
        e->request_len = n > 0 ? n : 0;
    } else if (kind == OPEN_UNIX_CONNECT) {
        /* sun_path as the caller passed it: bytes, not a string (an abstract name starts
         * with NUL) */
        s64 n = (s64)dx - UNIX_NAME_OFFSET;
        n = n < 0 ? 0 : n > UNIX_PATH_MAX_VALUE ? UNIX_PATH_MAX_VALUE : n;
        if (n && !read_user(&e->data[len], n & 127, (const void *)(si + UNIX_NAME_OFFSET)))
            e->request_len = n;
    }
    send_open(ring, e, len, cgroup_id);
    return 0;
}

/* -- connects and sends --------------------------------------------------------------------- */

/* A connect or send record from a cgroup sock_addr hook: the kernel's copy of the destination
 * (the caller's sockaddr was copied in before the hook ran), whatever made the call: a 64-bit
 * or 32-bit syscall, socketcall, io_uring, a TCP Fast Open sendto. The hooks run for the cgroup
 * of the SOCKET (where its creator was), not of the caller, so they are attached to the root of
 * the cgroup tree (host.py) and filter on the caller's cgroup like every other program: a
 * session task's socket made outside the session is recorded too. */
static __always_inline void fill_destination(struct connect_event *e, struct bpf_sock_addr *ctx,
                                             int v4)
{
    e->ret = 0;
    e->cookie = bpf_get_socket_cookie(ctx);
    e->family = ctx->user_family;
    e->dport = bpf_ntohs(ctx->user_port);   /* the u32 holds the port in network order */
    e->sport = 0;
    e->flags = v4 ? CONNECT_IPV4_HOOK : 0;
    e->sock_type = ctx->type;
    e->protocol = ctx->protocol;
    __builtin_memset(e->daddr, 0, 16);
    __builtin_memset(e->saddr, 0, 16);
    if (v4) {
        u32 ip4 = ctx->user_ip4;
        __builtin_memcpy(e->daddr, &ip4, 4);
    } else {
        /* user_ip6 is read 4 bytes at a time: the verifier allows no other width */
        u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2],
            w3 = ctx->user_ip6[3];
        __builtin_memcpy(e->daddr, &w0, 4);
        __builtin_memcpy(e->daddr + 4, &w1, 4);
        __builtin_memcpy(e->daddr + 8, &w2, 4);
        __builtin_memcpy(e->daddr + 12, &w3, 4);
    }
}

/* Each must return 1 (allow): 0 would make the caller's call fail with EPERM. */
/* The record of a connect or a send from a session's task, its destination filled in; NULL for
 * a task of no session (or no scratch: counted lost). */
static __always_inline struct connect_event *network_record(struct bpf_sock_addr *ctx, int v4,
                                                            u32 type, u64 *cgroup_id, void **ring)
{
    *ring = session_ring(cgroup_id, STREAM_NETWORK);
    if (!*ring)
        return NULL;
    int zero = 0;
    struct connect_event *e = connect_scratch.lookup(&zero);
    if (!begin_record(e ? &e->hdr : NULL, type, *cgroup_id, STREAM_NETWORK))
        return NULL;
    fill_destination(e, ctx, v4);
    return e;
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx, int v4)
{
    u64 cgroup_id;
    void *ring;
    struct connect_event *e = network_record(ctx, v4, RECORD_CONNECT, &cgroup_id, &ring);
    if (!e)
        return 1;
    if (in_native_connect()) {
        /* connect()'s sys_exit sends it with the result (and the source, for TCP) */
        u64 id = bpf_get_current_pid_tgid();
        if (pending_connects.update(&id, e))
            count_lost(cgroup_id, STREAM_NETWORK);
        return 1;
    }
    e->flags |= CONNECT_NO_SYSCALL;
    send(ring, e, sizeof(*e), cgroup_id, STREAM_NETWORK);
    return 1;
}

static __always_inline int on_send(struct bpf_sock_addr *ctx, int v4)
{
    u64 cgroup_id;
    void *ring;
    struct connect_event *e = network_record(ctx, v4, RECORD_SEND, &cgroup_id, &ring);
    if (!e)
        return 1;
    struct send_key key = {};
    key.cookie = e->cookie;
    key.pid = e->hdr.pid;
    key.port = e->dport;
    key.family = e->family;
    __builtin_memcpy(key.addr, e->daddr, 16);
    u8 one = 1;
    /* Looked up first: an LRU update takes a free node (and may evict another entry) before it
     * finds that the key exists, 550 ns a repeated send that way, 300 ns with the lookup. The
     * insert (BPF_NOEXIST) lets one of two racing senders through. */
    if (sent_destinations.lookup(&key) || sent_destinations.insert(&key, &one))
        return 1;
    send(ring, e, sizeof(*e), cgroup_id, STREAM_NETWORK);
    return 1;
}

int connect4(struct bpf_sock_addr *ctx)
{
    return on_connect(ctx, 1);
}

int connect6(struct bpf_sock_addr *ctx)
{
    return on_connect(ctx, 0);
}

int sendmsg4(struct bpf_sock_addr *ctx)
{
    return on_send(ctx, 1);
}

int sendmsg6(struct bpf_sock_addr *ctx)
{
    return on_send(ctx, 0);
}

/* connect()'s exit (in the open exits' program): 1 when it was an inet socket's whose
 * destination the hook kept (sent now with the result), or a task in no session. */
static __always_inline int inet_connect_exit(long ret)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_NETWORK);
    if (!ring)
        return 1;
    u64 id = bpf_get_current_pid_tgid();
    struct connect_event *pending = pending_connects.lookup(&id);
    if (!pending)
        return 0;   /* not an inet socket's connect: the hook did not run */
    int zero = 0;
    struct connect_event *e = connect_scratch.lookup(&zero);
    if (!e) {
        pending_connects.delete(&id);
        count_lost(cgroup_id, STREAM_NETWORK);
        return 1;
    }
    __builtin_memcpy(e, pending, sizeof(*e));
    pending_connects.delete(&id);
    e->ret = ret;
    send(ring, e, sizeof(*e), cgroup_id, STREAM_NETWORK);
    return 1;
}

#if IN_UNIT(0)
/* connect() too: an inet socket's is the network record the socket hooks began, a unix
 * socket's is recorded like an open of its peer's socket file. */
int tracepoints__syscalls__sys_exit__open__openat__openat2__creat__open_by_handle_at__pidfd_getfd__ptrace__connect(
    struct syscall_exit_args *args)
{
    if (args->syscall_nr == NR_CONNECT && inet_connect_exit(args->ret))
        return 0;
    return record_open(args->ret, args->syscall_nr);
}
#endif

/* The socket left SYN_SENT (established or failed): its source port is known now. May run in
 * softirq context, in any task, so it goes by the socket and not by the cgroup: only sockets a
 * session's connect() put in syn_sent_sockets are looked at further. */
static __always_inline void learn_source_port(const void *skaddr, u16 sport)
{
    u64 sk = (u64)skaddr;
    u64 *id = syn_sent_sockets.lookup(&sk);
    if (!id)
        return;
    u64 connecting = *id;
    syn_sent_sockets.delete(&sk);
    struct connect_event *pending = pending_connects.lookup(&connecting);
    if (pending)
        pending->sport = sport;   /* still in connect(): a blocking call */
}

/* TCP only: fires in the connecting task when the SYN is about to be sent, with the source
 * address connect() itself never reports. */
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    /* Checked before the cgroup: field loads are cheaper than the helper call, and almost no
     * state change on a host is from or to SYN_SENT. */
    if (args->oldstate == TCP_SYN_SENT_STATE) {
        learn_source_port(args->skaddr, args->sport);
        return 0;
    }
    if (args->newstate != TCP_SYN_SENT_STATE)
        return 0;
    u64 cgroup_id;
    if (!session_ring(&cgroup_id, STREAM_NETWORK))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct connect_event *pending = pending_connects.lookup(&id);
    if (!pending)
        return 0;   /* not in connect(): the hook recorded it already (io_uring, Fast Open) */
    u64 sk = (u64)args->skaddr;
    pending->flags |= CONNECT_TCP;
    pending->sport = args->sport;   /* 0 unless the socket was bound: see syn_sent_sockets */
    if (args->family == AF_INET6_VALUE)
        __builtin_memcpy(pending->saddr, args->saddr_v6, 16);
    else
        __builtin_memcpy(pending->saddr, args->saddr, 4);
    syn_sent_sockets.update(&sk, &id);
    return 0;
}

/* -- refused calls -------------------------------------------------------------------------- */

static __always_inline void record_refused(s64 ret, s32 syscall, u32 arch, u32 action)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_COMMAND);
    if (!ring)
        return;
    int zero = 0;
    struct refused_event *e = refused_scratch.lookup(&zero);
    if (!e) {
        count_lost(cgroup_id, STREAM_COMMAND);
        return;
    }
    fill_header(&e->hdr, RECORD_REFUSED, cgroup_id);
    e->ret = ret;
    e->syscall = syscall;
    e->arch = arch;
    e->action = action;
    send(ring, e, sizeof(*e), cgroup_id, STREAM_COMMAND);
}

/* io_uring refused with EPERM: seccomp runs before sys_enter, so only the exit fires. */
static __always_inline int io_uring_exit(long ret)
{
    if (ret == -EPERM_VALUE)
        record_refused(ret, syscall_arg(PT_REGS_ORIG_AX), AUDIT_ARCH_X86_64_VALUE, REFUSED_ERRNO);
    return 0;
}

int tracepoints__syscalls__sys_exit__io_uring_setup__io_uring_enter__io_uring_register(
    struct syscall_exit_args *args)
{
    return io_uring_exit(args->ret);
}

/* Every signal on the host passes here: the signal number is checked before anything else. */
RAW_TRACEPOINT_PROBE(signal_generate)
{
    if (ctx->args[0] != SIGSYS_VALUE)
        return 0;
    s32 syscall;
    u32 arch;
    if (seccomp_sigsys(ctx->args[1], &syscall, &arch))
        record_refused(0, syscall, arch, REFUSED_KILLED);
    return 0;
}

/* -- io_uring, where a session allows it ----------------------------------------------------- */

TRACEPOINT_PROBE(io_uring, io_uring_submit_req)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_COMMAND);
    if (!ring)
        return 0;
    u32 opcode = args->opcode;
    if (opcode == IORING_OP_OPENAT_VALUE || opcode == IORING_OP_OPENAT2_VALUE) {
        u64 req = (u64)args->req;
        uring_opens.update(&req, &opcode);
    }
    struct uring_key key = {};
    key.pid = bpf_get_current_pid_tgid() >> 32;
    key.opcode = opcode;
    u8 one = 1;
    if (uring_seen.lookup(&key) || uring_seen.insert(&key, &one))
        return 0;
    int zero = 0;
    struct uring_event *e = uring_scratch.lookup(&zero);
    if (!begin_record(e ? &e->hdr : NULL, RECORD_URING, cgroup_id, STREAM_COMMAND))
        return 0;
    e->opcode = opcode;
    send(ring, e, sizeof(*e), cgroup_id, STREAM_COMMAND);
    return 0;
}

#if IN_UNIT(1)
/* An open's completion, in the submitter or its io-wq worker: both share its file table, so the
 * new fd resolves like a syscall's. */
TRACEPOINT_PROBE(io_uring, io_uring_complete)
{
    u64 req = (u64)args->req;
    u32 *opcode = uring_opens.lookup(&req);
    if (!opcode)
        return 0;
    uring_opens.delete(&req);
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_DISK);
    if (!ring)
        return 0;
    int zero = 0;
    struct open_event *e = open_scratch.lookup(&zero);
    if (!begin_record(e ? &e->hdr : NULL, RECORD_OPEN, cgroup_id, STREAM_DISK))
        return 0;
    e->ret = args->res;
    e->flags = 0;
    e->dirfd = AT_FDCWD_VALUE;
    e->mode = 0;
    e->via_uring = 1;
    e->source = OPEN_FROM_CALL;
    e->request_len = 0;
    u32 len = resolve_opened(args->res, e);
    send_open(ring, e, len, cgroup_id);
    return 0;
}
#endif
