/* enhrec-wrap's kernel side: tracepoint programs that record exec, open and connect of the tasks
 * in the sessions' cgroups, and nothing of any other task.
 *
 * Loaded once per host and shared by every session (enhrec_wrap/kernel/host.py): a session is
 * known by the cgroup id under which it put its own ring buffers in session_rings. A task
 * outside every session costs each program one hash lookup.
 *
 * Only tracepoint arguments and helpers are used, never kernel struct fields, so the programs
 * compile against any kernel's headers (MACHINE.md: 6.1 headers on a 6.18 kernel). The one
 * kernel layout read is x86-64's struct pt_regs, which is ABI (ptrace's user_regs_struct).
 *
 * Set at load time by enhrec_wrap/kernel/host.py: POSSIBLE_CPUS.
 */
#include "enhrec.h"

#define AT_FDCWD_VALUE -100
#define AF_INET_VALUE 2
#define AF_INET6_VALUE 10
#define TCP_SYN_SENT_STATE 2
#define CREAT_FLAGS 01101     /* O_CREAT | O_WRONLY | O_TRUNC: what creat() means */

/* bpf_probe_read_user{,_str} under names of our own. BCC rewrites every call spelled
 * bpf_probe_read_user* (to fall back to bpf_probe_read on kernels without it), and to decide it
 * looks the helper up in /proc/kallsyms once per call site: ~0.15 s each, 1.5 s of the session
 * start for our ten call sites (docs/PERFORMANCE.md). Every kernel with ring buffers (5.8) has
 * these helpers, so the same helper ids called directly skip that. */
static long (*read_user)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_user;
static long (*read_user_str)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_user_str;

/* Each session's ring buffers, by its cgroup id and stream. The sessions create the rings
 * themselves (of the sizes their config asks: the kernel does not compare a ring's size with the
 * template's) and remove them at their end; ring_template only gives session_rings its inner
 * type. One map for all streams: the kernel waits for an RCU grace period after each change of
 * a map of maps from user space (~13 ms here), and one map lets a session put all its rings in,
 * or take them out, with one batch and one wait. */
BPF_RINGBUF_OUTPUT(ring_template, 1);
BPF_HASH_OF_MAPS(session_rings, struct ring_key, "ring_template", MAX_SESSIONS * RING_STREAMS);

BPF_PERCPU_HASH(lost_events, u64, struct lost_counts, MAX_SESSIONS);
BPF_HASH(parents, u32, u32, 65536);   /* child tid -> parent tgid, from sched_process_fork */

/* Records are built in per-CPU scratch space: they are far larger than the 512-byte stack.
 * An exec record is over the 32 KiB limit of a per-CPU map value, so it gets a plain array
 * with one slot per CPU instead. */
BPF_ARRAY(exec_scratch, struct exec_event, POSSIBLE_CPUS);
BPF_PERCPU_ARRAY(exec_result_scratch, struct exec_result_event, 1);
BPF_PERCPU_ARRAY(open_scratch, struct open_event, 1);
BPF_PERCPU_ARRAY(connect_scratch, struct connect_event, 1);

/* connect()'s arguments kept from entry to exit: user memory is read at exit, when the kernel
 * has faulted the pages in (reading at entry can fail on a page that is not resident yet). */
struct connect_args {
    const void *addr;
    u16 sport;
    u16 flags;
    u8 saddr[16];
};
BPF_HASH(pending_connects, u64, struct connect_args, 16384);
/* A socket in SYN_SENT -> the connect() call (pid_tgid) that sent it there. The kernel picks an
 * unbound socket's source port only after SYN_SENT, so the port is read when the socket leaves
 * that state, which for a blocking connect() happens before the call returns. */
BPF_HASH(syn_sent_sockets, u64, u64, 16384);

/* The calling task's user registers, saved at syscall entry and untouched until its exit but
 * for ax (the return value): so an exit program can read the syscall's arguments, and an open
 * needs one program instead of two (entry stash + exit). Helpers of kernel 5.15. */
static void *(*current_task_btf)(void) = (void *)BPF_FUNC_get_current_task_btf;
static void *(*task_pt_regs)(void *task) = (void *)BPF_FUNC_task_pt_regs;

/* x86-64 pt_regs from r10 to di (offsets 56..119): the registers of syscall arguments 1-4. */
#define PT_REGS_R10_OFFSET 56
struct syscall_regs {
    u64 r10;                  /* argument 4 */
    u64 r9, r8, ax, cx;
    u64 dx;                   /* argument 3 */
    u64 si;                   /* argument 2 */
    u64 di;                   /* argument 1 */
};

static __always_inline int syscall_args(struct syscall_regs *regs)
{
    void *task_regs = task_pt_regs(current_task_btf());
    return bpf_probe_read_kernel(regs, sizeof(*regs), (u8 *)task_regs + PT_REGS_R10_OFFSET);
}

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

/* Sends a record, or counts it as lost in the session's counters. */
static __always_inline void send(void *ring, const void *record, u64 size, u64 cgroup_id, int stream)
{
    if (bpf_ringbuf_output(ring, (void *)record, size, 0))
        count_lost(cgroup_id, stream);
}

static __always_inline void fill_header(struct event_header *hdr, u16 type, u64 cgroup_id)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 pid = id >> 32;
    u32 *ppid = parents.lookup(&pid);

    hdr->ts_ns = bpf_ktime_get_ns();
    hdr->cgroup_id = cgroup_id;
    hdr->pid = pid;
    hdr->tid = (u32)id;
    hdr->ppid = ppid ? *ppid : 0;
    hdr->type = type;
    hdr->tail_len = 0;
    bpf_get_current_comm(hdr->comm, sizeof(hdr->comm));
}

/* argv must be read at entry: after a successful exec the caller's memory is gone. */
static __always_inline int record_exec(s32 dirfd, const char *filename,
                                       const char *const *argv, u32 at_flags)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_COMMAND);   /* NULL: not in a session */
    if (!ring)
        return 0;

    int cpu = bpf_get_smp_processor_id();
    struct exec_event *e = exec_scratch.lookup(&cpu);
    if (!e) {
        count_lost(cgroup_id, STREAM_COMMAND);
        return 0;
    }
    fill_header(&e->hdr, RECORD_EXEC, cgroup_id);
    e->dirfd = dirfd;
    e->at_flags = at_flags;
    e->argc = 0;
    e->truncated = 0;

    long n = read_user_str(e->data, PATH_READ_MAX, filename);
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
         * branch on n here would double the verifier's states at every iteration.
         * The mask changes nothing (off + n < EXEC_DATA_MAX + ARG_READ_MAX) but gives off the
         * same range at every iteration: the verifier then processes 12k instructions instead
         * of 33k, 20 ms instead of 50 ms of every session's start (docs/PERFORMANCE.md). */
        off = (off + n) & (2 * EXEC_DATA_MAX - 1);
        e->argc++;
    }
    if (i == MAX_ARGS) {
        const char *more = NULL;
        read_user(&more, sizeof(more), &argv[MAX_ARGS]);
        if (more)
            e->truncated |= ARGV_TOO_MANY;
    }

    /* The mask changes nothing (off < EXEC_DATA_MAX + ARG_READ_MAX) but gives the verifier a
     * bound it can carry to the size argument: data[] is 2 * EXEC_DATA_MAX long for this. */
    off &= 2 * EXEC_DATA_MAX - 1;
    e->hdr.tail_len = off;
    send(ring, e, offsetof(struct exec_event, data) + off, cgroup_id, STREAM_COMMAND);
    return 0;
}

static __always_inline int record_exec_result(long ret)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_COMMAND);   /* NULL: not in a session */
    if (!ring)
        return 0;

    int zero = 0;
    struct exec_result_event *e = exec_result_scratch.lookup(&zero);
    if (!e) {
        count_lost(cgroup_id, STREAM_COMMAND_RESULT);
        return 0;
    }
    fill_header(&e->hdr, RECORD_EXEC_RESULT, cgroup_id);
    e->ret = ret;
    send(ring, e, sizeof(*e), cgroup_id, STREAM_COMMAND_RESULT);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    return record_exec(AT_FDCWD_VALUE, args->filename, args->argv, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve)
{
    return record_exec_result(args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    return record_exec(args->fd, args->filename, args->argv, args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_execveat)
{
    return record_exec_result(args->ret);
}

/* The open-like syscalls, by how their arguments are laid out. */
#define OPEN_OPEN 0           /* open(filename, flags, mode) */
#define OPEN_OPENAT 1         /* openat(dfd, filename, flags, mode) */
#define OPEN_OPENAT2 2        /* openat2(dfd, filename, how, size) */
#define OPEN_CREAT 3          /* creat(pathname, mode) */

/* At the syscall's exit only: the path is read when the kernel has faulted its page in. */
static __always_inline int record_open(long ret, int kind)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_DISK);   /* NULL: not in a session */
    if (!ring)
        return 0;

    int zero = 0;
    struct open_event *e = open_scratch.lookup(&zero);
    struct syscall_regs regs;
    if (!e || syscall_args(&regs)) {
        count_lost(cgroup_id, STREAM_DISK);
        return 0;
    }
    const char *filename;
    fill_header(&e->hdr, RECORD_OPEN, cgroup_id);
    e->ret = ret;
    if (kind == OPEN_OPEN) {
        filename = (const char *)regs.di;
        e->dirfd = AT_FDCWD_VALUE;
        e->flags = (s32)regs.si;
        e->mode = (u16)regs.dx;   /* umode_t */
    } else if (kind == OPEN_CREAT) {
        filename = (const char *)regs.di;
        e->dirfd = AT_FDCWD_VALUE;
        e->flags = CREAT_FLAGS;
        e->mode = (u16)regs.si;
    } else {
        filename = (const char *)regs.si;
        e->dirfd = (s32)regs.di;
        e->flags = (s32)regs.dx;
        e->mode = (u16)regs.r10;
        if (kind == OPEN_OPENAT2) {
            u64 how_flags = 0;   /* struct open_how starts with u64 flags */
            read_user(&how_flags, sizeof(how_flags), (const void *)regs.dx);
            e->flags = how_flags;
            e->mode = 0;
        }
    }
    long n = read_user_str(e->path, PATH_READ_MAX, filename);
    if (n < 0)
        n = 0;   /* tail_len 0: the path could not be read */
    /* The mask gives the verifier its bound; n is at most PATH_READ_MAX already. */
    n &= 2 * PATH_READ_MAX - 1;
    e->hdr.tail_len = n;
    send(ring, e, offsetof(struct open_event, path) + n, cgroup_id, STREAM_DISK);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return record_open(args->ret, OPEN_OPEN);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return record_open(args->ret, OPEN_OPENAT);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2)
{
    return record_open(args->ret, OPEN_OPENAT2);
}

TRACEPOINT_PROBE(syscalls, sys_exit_creat)
{
    return record_open(args->ret, OPEN_CREAT);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect)
{
    u64 cgroup_id;
    if (!session_ring(&cgroup_id, STREAM_NETWORK))
        return 0;

    u64 id = bpf_get_current_pid_tgid();
    struct connect_args a = {};
    a.addr = args->uservaddr;
    if (pending_connects.update(&id, &a))
        count_lost(cgroup_id, STREAM_NETWORK);
    return 0;
}

static __always_inline void copy_addrs(u8 *daddr, u8 *saddr, u16 family,
                                       const u8 *d4, const u8 *s4, const u8 *d6, const u8 *s6)
{
    if (family == AF_INET6_VALUE) {
        __builtin_memcpy(daddr, d6, 16);
        __builtin_memcpy(saddr, s6, 16);
    } else {
        __builtin_memcpy(daddr, d4, 4);
        __builtin_memcpy(saddr, s4, 4);
    }
}

/* A connect record in the per-CPU scratch, header filled and addresses zeroed; NULL (counted as
 * lost) when there is no scratch. */
static __always_inline struct connect_event *new_connect_event(u64 cgroup_id, s64 ret, u16 family,
                                                              u16 sport, u16 flags)
{
    int zero = 0;
    struct connect_event *e = connect_scratch.lookup(&zero);
    if (!e) {
        count_lost(cgroup_id, STREAM_NETWORK);
        return NULL;
    }
    fill_header(&e->hdr, RECORD_CONNECT, cgroup_id);
    e->ret = ret;
    e->family = family;
    e->sport = sport;
    e->flags = flags;
    e->dport = 0;
    __builtin_memset(e->daddr, 0, 16);
    __builtin_memset(e->saddr, 0, 16);
    return e;
}


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
    struct connect_args *a = pending_connects.lookup(&connecting);
    if (a)
        a->sport = sport;   /* still in connect(): a blocking call */
}

/* TCP only: fires in the connecting task when the SYN is about to be sent, so it knows the
 * source address that connect() itself never reports. */
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
    void *ring = session_ring(&cgroup_id, STREAM_NETWORK);   /* NULL: not in a session */
    if (!ring)
        return 0;

    u64 id = bpf_get_current_pid_tgid();
    struct connect_args *a = pending_connects.lookup(&id);
    if (a) {
        u8 unused[16];
        u64 sk = (u64)args->skaddr;
        a->flags |= CONNECT_TCP;
        a->sport = args->sport;   /* 0 unless the socket was bound: see syn_sent_sockets */
        copy_addrs(unused, a->saddr, args->family, args->daddr, args->saddr,
                   args->daddr_v6, args->saddr_v6);
        syn_sent_sockets.update(&sk, &id);
        return 0;
    }

    struct connect_event *e = new_connect_event(cgroup_id, 0, args->family, args->sport,
                                                CONNECT_TCP | CONNECT_NO_SYSCALL);
    if (!e)
        return 0;
    e->dport = args->dport;
    copy_addrs(e->daddr, e->saddr, args->family, args->daddr, args->saddr,
               args->daddr_v6, args->saddr_v6);
    send(ring, e, sizeof(*e), cgroup_id, STREAM_NETWORK);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect)
{
    u64 cgroup_id;
    void *ring = session_ring(&cgroup_id, STREAM_NETWORK);   /* NULL: not in a session */
    if (!ring)
        return 0;

    u64 id = bpf_get_current_pid_tgid();
    struct connect_args *pending = pending_connects.lookup(&id);
    if (!pending)
        return 0;
    struct connect_args a = *pending;
    pending_connects.delete(&id);

    u16 family = 0;
    read_user(&family, sizeof(family), a.addr);
    if (family != AF_INET_VALUE && family != AF_INET6_VALUE)
        return 0;   /* unix sockets and AF_UNSPEC disconnects are not network events */

    struct connect_event *e = new_connect_event(cgroup_id, args->ret, family, a.sport, a.flags);
    if (!e)
        return 0;
    __builtin_memcpy(e->saddr, a.saddr, 16);

    u16 port_be = 0;
    read_user(&port_be, sizeof(port_be), (const u8 *)a.addr + 2);
    e->dport = bpf_ntohs(port_be);
    if (family == AF_INET6_VALUE)
        read_user(e->daddr, 16, (const u8 *)a.addr + 8);   /* sin6_addr */
    else
        read_user(e->daddr, 4, (const u8 *)a.addr + 4);    /* sin_addr */
    send(ring, e, sizeof(*e), cgroup_id, STREAM_NETWORK);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 cgroup_id;
    if (!session_ring(&cgroup_id, STREAM_COMMAND))
        return 0;

    u32 child = args->child_pid;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    parents.update(&child, &parent);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 cgroup_id;
    if (!session_ring(&cgroup_id, STREAM_COMMAND))
        return 0;

    /* A task killed inside a syscall never reaches its exit tracepoint: drop what it left. */
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    parents.delete(&tid);
    pending_connects.delete(&id);
    return 0;
}
