"""The recorder's scheduling priority.

The recorder and its watchdog run at nice RECORDER_NICE (auditd boosts itself the same way,
`priority_boost` in auditd.conf): a session that keeps the CPUs busy must not keep its own
recorder from reading the rings and pausing it in time (session/backpressure.py), nor its
watchdog from killing it the moment the recorder dies. The recorder's CPU time is its
session's events' (and its session is paused while it works them off), so the boost cannot
take more than the session gives it to do. Measured here with four static open loops on two
CPUs: at -5 one run in four lost records (1,063 and 1,933 of 200,000), at -10 none of 10.
The session itself runs at the caller's own priority: its first process is given it back
before it drops privileges.
"""

import os

RECORDER_NICE = -10
_caller_nice = None   # the priority the wrapper was started with


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


def restore_caller() -> None:
    """In the session's first process, while still root: the caller's priority again."""
    if _caller_nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, _caller_nice)
