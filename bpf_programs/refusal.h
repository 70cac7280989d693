/* Refused calls as events (the session's seccomp filter, enhrec_wrap/session/seccomp.py):
 * - a refused io_uring_setup/enter/register (SECCOMP_RET_ERRNO): seccomp runs before the
 *   sys_enter tracepoint, which therefore never fires, but the syscall's sys_exit tracepoint
 *   does, with the errno as its return value;
 * - an i386 syscall (SECCOMP_RET_KILL_PROCESS): the kernel sends SIGSYS with si_code
 *   SYS_SECCOMP and the syscall's number and arch in the siginfo: raw tracepoint
 *   signal_generate (sig, struct kernel_siginfo *, struct task_struct *, group, result). With
 *   an errno instead, only raw_syscalls:sys_exit would see it, and that would run a program
 *   for every syscall on the host: so the filter kills.
 * Offsets: OFF_SIGINFO_SIGNO/CODE/SYSCALL/ARCH.
 */
#ifndef ENHREC_REFUSAL_H
#define ENHREC_REFUSAL_H

#include "kread.h"

#define SIGSYS_VALUE 31
#define SYS_SECCOMP_CODE 1    /* si_code of a seccomp SIGSYS */
#define AUDIT_ARCH_X86_64_VALUE 0xc000003e

/* 1 when the signal is a seccomp SIGSYS; fills the refused call's number and arch. */
static __always_inline int seccomp_sigsys(u64 info, s32 *syscall, u32 *arch)
{
    if (ku32(info, OFF_SIGINFO_SIGNO) != SIGSYS_VALUE
        || ku32(info, OFF_SIGINFO_CODE) != SYS_SECCOMP_CODE)
        return 0;
    *syscall = ku32(info, OFF_SIGINFO_SYSCALL);
    *arch = ku32(info, OFF_SIGINFO_ARCH);
    return 1;
}

#endif
