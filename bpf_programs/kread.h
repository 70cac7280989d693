/* Reading kernel memory at BTF offsets, with no kernel struct definition anywhere.
 *
 * BCC compiles against headers whose layouts need not be the running kernel's (6.1 headers on
 * 6.18 here), so every struct field is read with bpf_probe_read_kernel at an OFF_* offset that
 * enhrec_wrap/kernel/offsets.py took from /sys/kernel/btf/vmlinux and passed as a -D define.
 * A pointer here is a u64: nothing is ever dereferenced directly.
 *
 * The helpers are called through pointers to their ids: BCC rewrites calls spelled
 * bpf_probe_read_* and looks each call site up in /proc/kallsyms (~0.15 s per site at compile
 * time, 1.5 s of a compile for ten sites).
 */
#ifndef ENHREC_KREAD_H
#define ENHREC_KREAD_H

static long (*read_kernel)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_kernel;
static long (*read_kernel_str)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_kernel_str;
static long (*read_user)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_user;
static long (*read_user_str)(void *dst, u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_user_str;
static u64 (*current_task)(void) = (void *)BPF_FUNC_get_current_task;
static void *(*current_task_btf)(void) = (void *)BPF_FUNC_get_current_task_btf;
static void *(*task_pt_regs)(void *task) = (void *)BPF_FUNC_task_pt_regs;

/* A pointer-sized field; 0 when unreadable (every caller treats 0 as "stop"). */
static __always_inline u64 kptr(u64 base, u32 offset)
{
    u64 value = 0;
    read_kernel(&value, sizeof(value), (const void *)(base + offset));
    return value;
}

static __always_inline u32 ku32(u64 base, u32 offset)
{
    u32 value = 0;
    read_kernel(&value, sizeof(value), (const void *)(base + offset));
    return value;
}

static __always_inline u16 ku16(u64 base, u32 offset)
{
    u16 value = 0;
    read_kernel(&value, sizeof(value), (const void *)(base + offset));
    return value;
}

/* The current task's parent process (real_parent->tgid): what ppid is in every event. */
static __always_inline u32 current_ppid(void)
{
    return ku32(kptr(current_task(), OFF_TASK_REAL_PARENT), OFF_TASK_TGID);
}

/* x86-64 pt_regs (ABI: ptrace's user_regs_struct), as the syscall saved them at entry and left
 * them until its exit but for ax (the return value). */
#define PT_REGS_DX 96         /* argument 3 */
#define PT_REGS_SI 104        /* argument 2 */
#define PT_REGS_DI 112        /* argument 1 */
#define PT_REGS_ORIG_AX 120   /* the syscall number */
#define PT_REGS_R10 56        /* argument 4 */
#define PT_REGS_R8 72         /* argument 5 */

static __always_inline u64 syscall_arg(u32 pt_regs_offset)
{
    return kptr((u64)task_pt_regs(current_task_btf()), pt_regs_offset);
}

#define TS_COMPAT_VALUE 2     /* thread_info.status: the task is in a 32-bit syscall */
#define NR_CONNECT_X86_64 42

/* Whether the task is inside a 64-bit connect() call (whose sys_exit tracepoint will fire). */
static __always_inline int in_native_connect(void)
{
    if (ku32(current_task(), OFF_TASK_TI_STATUS) & TS_COMPAT_VALUE)
        return 0;
    return syscall_arg(PT_REGS_ORIG_AX) == NR_CONNECT_X86_64;
}

#endif
