"""The terminal's modes and sizes, as the wrapper and the relay set and read them
(session/terminal.py)."""

import fcntl
import struct
import termios

_WINSIZE = struct.Struct("HHHH")


def window_size(fd: int) -> tuple[int, int] | None:
    """(columns, rows) of the terminal on fd, or None."""
    try:
        rows, cols, _, _ = _WINSIZE.unpack(fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (cols, rows) if cols and rows else None


def raw_mode(mode: list) -> list:
    """cfmakeraw(3) of a termios list (Python 3.11's tty module lacks it)."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = mode
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
               | termios.IGNCR | termios.ICRNL | termios.IXON)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    return [iflag, oflag, cflag, lflag, ispeed, ospeed, cc]


def set_window_size(fd: int, size: tuple[int, int]) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, _WINSIZE.pack(size[1], size[0], 0, 0))


def no_echo_prompt(master: int) -> bool:
    """Whether the pty reads a line without echoing it: how password prompts read (sudo, ssh,
    passwd, getpass(3), `read -s`, `stty -echo`). Line editors (readline) and full-screen
    programs read key by key without the pty's echo, and echo themselves: they are not this."""
    try:
        lflag = termios.tcgetattr(master)[3]
    except termios.error:
        return True
    return not lflag & termios.ECHO and bool(lflag & termios.ICANON)
