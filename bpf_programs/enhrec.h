/* The records the BPF programs put in the ring buffers, and every constant the kernel side and
 * the Python side share. Defined here once: the Python side takes the records' layout from the
 * loaded program's table types (enhrec_wrap/kernel/decode.py) and reads the #defines below from
 * this file (enhrec_wrap/kernel/abi.py), so nothing here is declared a second time.
 *
 * Every record starts with struct event_header. Records with a text tail (exec, open) are sent
 * with their used length only, so a 20-byte path costs 20 bytes of ring, not PATH_READ_MAX.
 *
 * One set of programs serves every session on the host (enhrec_wrap/kernel/host.py). A session
 * is the cgroup id under which it put its own ring buffers in session_rings; a task whose
 * cgroup is in none of them costs one hash lookup per traced call.
 */
#ifndef ENHREC_H
#define ENHREC_H

/* Limits; enhrec_wrap/bpf.py passes none of these, they are part of the format. */
#define MAX_ARGS 256          /* argv entries read, argv[0] included */
#define ARG_READ_MAX 1024     /* bytes read per argument, NUL included: an argument of
                                 ARG_READ_MAX - 1 bytes or more is reported as cut */
#define EXEC_DATA_MAX 32768   /* filename + arguments; a power of two (used as a mask) */
#define PATH_READ_MAX 4096    /* bytes read of an open() path, NUL included; a power of two */

/* record types */
#define RECORD_EXEC 1         /* execve/execveat entry: filename and argv */
#define RECORD_EXEC_RESULT 2  /* execve/execveat exit: return code, new comm */
#define RECORD_OPEN 3         /* open/openat/openat2/creat exit */
#define RECORD_CONNECT 4      /* connect() exit, or a TCP SYN_SENT outside connect() */

/* Sessions one set of programs can serve at once (entries of each *_rings map). */
#define MAX_SESSIONS 4096

/* streams: one ring buffer per session and one lost counter each */
#define STREAM_COMMAND 0
#define STREAM_DISK 1
#define STREAM_NETWORK 2
#define STREAM_COMMAND_RESULT 3  /* exec results lost: the command is logged, its return code is not */
#define STREAM_COUNT 4
#define RING_STREAMS 3           /* the streams with a ring: command, disk, network */

/* exec_event.truncated bits */
#define ARGV_TOO_MANY 1       /* more than MAX_ARGS arguments */
#define ARGV_DATA_FULL 2      /* filename + arguments over EXEC_DATA_MAX */
#define ARGV_UNREADABLE 4     /* user memory could not be read (page not resident) */

/* connect_event.flags bits */
#define CONNECT_TCP 1         /* the kernel moved a TCP socket to SYN_SENT in this call */
#define CONNECT_NO_SYSCALL 2  /* SYN_SENT seen outside connect() (e.g. io_uring); no return code */

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

struct event_header {
    u64 ts_ns;                /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 cgroup_id;
    u32 pid;                  /* tgid */
    u32 tid;
    u32 ppid;                 /* parent tgid from sched_process_fork; 0 when unknown */
    u16 type;                 /* RECORD_* */
    u16 tail_len;             /* bytes used in the record's text tail */
    char comm[16];
};

struct exec_event {
    struct event_header hdr;
    s32 dirfd;                /* AT_FDCWD (-100) for execve */
    u32 at_flags;             /* execveat flags */
    u32 argc;                 /* argv entries captured, argv[0] included */
    u32 truncated;            /* ARGV_* bits */
    u32 filename_len;         /* bytes of filename in data, NUL included */
    u32 pad;
    char data[2 * EXEC_DATA_MAX];  /* filename\0argv[0]\0argv[1]\0...; see recorder.c for 2x */
};

struct exec_result_event {
    struct event_header hdr;
    s64 ret;
};

struct open_event {
    struct event_header hdr;
    s64 ret;                  /* fd, or -errno */
    s64 flags;                /* open flags as passed (openat2: how->flags) */
    s32 dirfd;                /* AT_FDCWD for open/creat */
    u32 mode;
    char path[2 * PATH_READ_MAX];  /* at most PATH_READ_MAX used; see recorder.c for 2x */
};

struct connect_event {
    struct event_header hdr;
    s64 ret;                  /* 0, or -errno (-115 EINPROGRESS for a non-blocking connect) */
    u16 family;               /* AF_INET or AF_INET6 */
    u16 dport;                /* host byte order */
    u16 sport;                /* host byte order; 0 when the kernel had not bound one */
    u16 flags;                /* CONNECT_* bits */
    u8 daddr[16];             /* 4 bytes used for AF_INET */
    u8 saddr[16];
};

#endif /* ENHREC_H */
