"""The one exception type for failures a user must read, and the kinds of failure it reports.

Raised anywhere; turned into `<program>: <message>` and an exit status only in cli/, where each
command line gives every kind its own status (cli/wrap.py, cli/enhrec.py).
"""

import enum


class Failure(enum.Enum):
    """What kind of failure an EnhrecError is: the one thing a command line's exit status tells."""

    FAILED = "failed"                                  # what was asked could not be done
    COMMAND_NOT_FOUND = "command not found"            # the session's command does not exist
    COMMAND_NOT_EXECUTABLE = "command not executable"  # it exists, and exec refused it
    NO_MATCH = "no match"                              # enhrec: nothing matched the question
    CANNOT_RECORD = "cannot record"                    # enhrec doctor: a check failed
    NOT_INTACT = "not intact"                          # enhrec verify: a host's chain is broken


class EnhrecError(Exception):
    """A failure with a one-line message that says what failed and how to fix it."""

    def __init__(self, message: str, failure: Failure = Failure.FAILED):
        super().__init__(message)
        self.failure = failure
