"""The session's seccomp filter: installed in the session's first process before it execs the
user's program, inherited by everything in the session, never removable. By default it refuses
- io_uring (io_uring_setup, io_uring_enter, io_uring_register) with EPERM, as Docker's default
  profile does: io_uring requests reach the kernel without a syscall, so no syscall tracepoint
  sees them, and programs that probe io_uring fall back to plain calls. enter and register are
  refused too: a ring made outside the session can be passed in over a unix socket;
- every syscall of the i386 ABI (int $0x80, sysenter, a -m32 binary): the syscall tracepoints
  skip them. The filter is made for x86_64 only, and a syscall of an arch it does not list gets
  its "bad arch" action: KILL_PROCESS, whose SIGSYS is what the recorder sees
  (bpf_programs/refusal.h; with an errno, only a program run for every syscall of the host
  would). x32 numbers get the same action.
Each refusal is a config switch (refuse_io_uring, refuse_32bit); a session with one off is
marked partially_audited in its session.end.

It is installed while still root (CAP_SYS_ADMIN), before privileges are dropped: without that
the kernel demands no_new_privs, which would stop sudo and every setuid program in the session.
So libseccomp's no_new_privs default is turned off. Debian's python3-seccomp (libseccomp).
"""

import errno

from enhrec_wrap.errors import EnhrecError

IO_URING_CALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


def build(refuse_io_uring: bool, refuse_32bit: bool):
    """The filter, made in the wrapper before the session's child is forked (the child opens
    no file before its exec: it may be in the session's cgroup already, where every open is
    recorded); None when nothing is refused."""
    if not (refuse_io_uring or refuse_32bit):
        return None
    try:
        import seccomp
    except ImportError:
        raise EnhrecError("python3-seccomp is not installed, so the session's io_uring and "
                          "32-bit calls cannot be refused: install it (`make install` does)") from None
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    flt.set_attr(seccomp.Attr.CTL_NNP, 0)
    if refuse_32bit:
        flt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    else:
        flt.add_arch(seccomp.Arch.X86)   # the same rules for both ABIs
    if refuse_io_uring:
        for call in IO_URING_CALLS:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), call)
    return flt


def install(flt) -> None:
    """In the session's child, as root, before the privilege drop and the exec."""
    if flt is None:
        return
    try:
        flt.load()
    except (OSError, RuntimeError) as e:
        raise EnhrecError(f"cannot install the session's seccomp filter: {e}: "
                          "`enhrec doctor` checks the kernel") from None
