"""The recorder's scheduling priority, and its open-file limit.

The recorder and its watchdog run at nice RECORDER_NICE (auditd boosts itself the same way,
`priority_boost` in auditd.conf): a session that keeps the CPUs busy must not keep its own
recorder from reading the rings and pausing it in time (session/backpressure.py), nor its
watchdog from killing it the moment the recorder dies. The recorder's CPU time is its
session's events' (and its session is paused while it works them off), so the boost cannot
take more than the session gives it to do. Measured here with four static open loops on two
CPUs: at -5 one run in four lost records (1,063 and 1,933 of 200,000), at -10 none of 10.
The session itself runs at the caller's own priority: its first process is given it back
before it drops privileges.

The same goes for the open-file limit (RLIMIT_NOFILE): the recorder holds the host set's pinned
links and maps, its rings and its log files at once, and a caller's `ulimit -n 56` or lower made
every start fail ("cannot load the BPF programs: Too many open files", measured here), so it
raises its own to RECORDER_OPEN_FILES; the session gets the caller's back.
"""

import os
import resource

RECORDER_NICE = -10
RECORDER_OPEN_FILES = 1024   # the usual default; a start holds about 60 at once
_caller_nice = None   # the priority the wrapper was started with
_caller_open_files = None   # its (soft, hard) RLIMIT_NOFILE, when raised


def boost() -> None:
    """Raises this process (and what it forks from now on) to RECORDER_NICE, remembering the
    caller's; as non-root, or when the caller's is higher already, nothing changes."""
    global _caller_nice
    _caller_nice = os.getpriority(os.PRIO_PROCESS, 0)
    if _caller_nice > RECORDER_NICE:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, RECORDER_NICE)
        except OSError:
            pass   # not root: the wrapper stops later with its own message
    _raise_open_files()


def _raise_open_files() -> None:
    global _caller_open_files
    caller = soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= RECORDER_OPEN_FILES:
        return
    # Above the hard limit too where root may (CAP_SYS_RESOURCE), else up to it.
    for limit in ((RECORDER_OPEN_FILES, max(hard, RECORDER_OPEN_FILES)),
                  (min(hard, RECORDER_OPEN_FILES), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
        except (OSError, ValueError):
            continue
        _caller_open_files = caller
        return


def restore_caller() -> None:
    """In the session's first process, while still root: the caller's priority and open-file
    limit again."""
    if _caller_nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, _caller_nice)
    if _caller_open_files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, _caller_open_files)
