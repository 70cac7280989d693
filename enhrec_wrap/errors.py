"""The one exception type for failures a user must read.

Raised anywhere; turned into `enhrec-wrap: <message>` and an exit code only in the CLI.
"""

EXIT_SETUP_FAILED = 125


class EnhrecError(Exception):
    """A failure with a one-line message that says what failed and how to fix it."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP_FAILED):
        super().__init__(message)
        self.exit_code = exit_code
