"""The relay's pieces that need no root (session/terminal*.py): raw mode, what counts as a
terminal, what counts as a no-echo prompt, and the pipe relay of `tty_recording: all`."""

import os
import termios

from enhrec_wrap.log import terminal_recording as rec
from enhrec_wrap.session import terminal, terminal_modes, terminal_relay

SID = "4f1c2b9e-0000-4000-8000-000000000002"


def test_raw_mode_is_cfmakeraw():
    master, slave = os.openpty()
    try:
        mode = terminal_modes.raw_mode(termios.tcgetattr(slave))
        termios.tcsetattr(slave, termios.TCSANOW, mode)
        iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(slave)
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        assert not oflag & termios.OPOST
        assert not iflag & (termios.ICRNL | termios.IXON | termios.ISTRIP)
        assert cflag & termios.CSIZE == termios.CS8
        assert (cc[termios.VMIN], cc[termios.VTIME]) == (1, 0)
    finally:
        os.close(master)
        os.close(slave)


def test_pipes_and_files_are_no_terminal(tmp_path):
    r, w = os.pipe()
    with open(tmp_path / "f", "w") as f:
        assert not terminal.has_terminal(r, w)
        assert not terminal.has_terminal(r, f.fileno())
    os.close(r)
    os.close(w)


def test_a_no_echo_prompt_is_a_line_read_without_echo():
    master, slave = os.openpty()
    try:
        mode = termios.tcgetattr(slave)
        mode[3] = (mode[3] | termios.ICANON) & ~termios.ECHO     # `stty -echo`, getpass(3)
        termios.tcsetattr(slave, termios.TCSANOW, mode)
        assert terminal_modes.no_echo_prompt(master)
        mode[3] &= ~termios.ICANON                                # readline, vim: key by key
        termios.tcsetattr(slave, termios.TCSANOW, mode)
        assert not terminal_modes.no_echo_prompt(master)
        mode[3] |= termios.ICANON | termios.ECHO                  # a plain line, echoed
        termios.tcsetattr(slave, termios.TCSANOW, mode)
        assert not terminal_modes.no_echo_prompt(master)
    finally:
        os.close(master)
        os.close(slave)


def test_window_size_round_trip():
    master, slave = os.openpty()
    try:
        terminal_modes.set_window_size(master, (132, 43))
        assert terminal_modes.window_size(slave) == (132, 43)
    finally:
        os.close(master)
        os.close(slave)


def test_the_pipe_relay_passes_every_byte_on_and_records_it(tmp_path):
    directory = str(tmp_path / "sessions" / "default")
    os.makedirs(tmp_path / "sessions")
    out_r, out_w = os.pipe()       # the session's standard output
    dest_r, dest_w = os.pipe()     # where the wrapper's went
    status_r, status_w = os.pipe()
    blob = bytes(range(256)) * 100
    pid = os.fork()
    if pid == 0:                   # the session writes, in two goes, then ends
        os.close(out_r)
        os.write(out_w, blob[:10_000])
        os.write(out_w, blob[10_000:])
        os._exit(0)
    os.close(out_w)
    relay = terminal_relay.PipeRelay({out_r: dest_w}, "close", status_w)
    relay.writer = rec.Writer(directory, SID, {"sid": SID, "terminal": False}, 1 << 20)
    relay.writer.start()
    relay.run()
    os.waitpid(pid, 0)
    os.close(dest_w)
    got = b""
    while chunk := os.read(dest_r, 65536):
        got += chunk
    assert got == blob
    frames = list(rec.read_frames(rec.part_paths(directory, SID)))
    assert b"".join(f.data for f in frames if f.kind == rec.OUTPUT) == blob
    os.close(status_w)
    assert b'"end"' in os.read(status_r, 65536)


def test_the_backlog_moves_what_waits_to_its_start_when_the_two_overlap():
    backlog = terminal_relay.Backlog()
    pattern = bytes(range(251)) * (backlog.CAPACITY // 251 + 1)
    size = backlog.CAPACITY - terminal_relay.READ_SIZE + 1   # no room for a read after it
    backlog.view[:size] = pattern[:size]
    backlog.added(size)
    backlog.taken(1000)          # what waits (from 1000 on) overlaps where it goes (from 0)
    room = backlog.room()
    assert (backlog.start, backlog.end) == (0, size - 1000)
    assert bytes(backlog.waiting()) == pattern[1000:size]
    assert len(room) == terminal_relay.READ_SIZE


def test_the_backlog_keeps_every_byte_in_order_as_it_wraps_around():
    import random
    backlog = terminal_relay.Backlog()
    expected = bytearray()
    sent = bytearray()
    rng = random.Random(7)
    pattern = bytes(range(251)) * (terminal_relay.READ_SIZE // 251 + 2)
    counter = 0
    for _ in range(2000):
        if len(backlog) < terminal_relay.HIGH_WATER:    # the relay reads only then
            room = backlog.room()
            assert len(room) == terminal_relay.READ_SIZE
            size = rng.randrange(1, len(room) + 1)
            data = pattern[counter % 251:counter % 251 + size]
            counter += size
            room[:size] = data
            assert bytes(backlog.added(size)) == data
            expected += data
        waiting = backlog.waiting()
        assert bytes(waiting) == expected[len(sent):]
        taken = rng.randrange(0, len(waiting) + 1)   # what the terminal took of it
        sent += waiting[:taken]
        backlog.taken(taken)
    assert sent == expected[:len(sent)] and len(sent) > 10 * terminal_relay.Backlog.CAPACITY
