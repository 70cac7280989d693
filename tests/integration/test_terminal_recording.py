"""The session's terminal, recorded: sessions run by the installed wrapper on a real pty whose
master this test holds (as a terminal emulator or sshd does), then read back with the installed
`enhrec` (ENHREC overrides it) and Debian's asciinema. Root only; these fail, never skip."""

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import termios
import time
import zlib

import pytest
from screen import Terminal

from enhrec_wrap.log import terminal_recording

ENHREC = shlex.split(os.environ.get("ENHREC", "/usr/local/bin/enhrec"))
PROMPT = b"# "        # bash's default root prompt: the session's environment is a clean one
SECRET = "hunter2-Sekr1t"


@pytest.fixture(scope="module", autouse=True)
def require_tools():
    for path in (ENHREC[0], shutil.which("asciinema") or "/usr/bin/asciinema"):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run `make install` (it installs asciinema too)",
                        pytrace=False)


def session_terminal(recorder, command, **kwargs):
    env = recorder.environment({"TERM": "xterm"})
    return Terminal(recorder.argv(command), env, **kwargs)


def bash(recorder, **kwargs):
    # +o history: the test's root shells leave root's ~/.bash_history alone
    t = session_terminal(recorder, ["bash", "--norc", "--noprofile", "+o", "history", "-i"],
                         **kwargs)
    t.wait_raw()
    t.expect(PROMPT)
    return t


def enhrec(recorder, *args, check=True, timeout=60, **kwargs):
    result = subprocess.run([*ENHREC, args[0], "--config", recorder.config_path, *args[1:]],
                            capture_output=True, timeout=timeout, **kwargs)
    assert b"Traceback" not in result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"enhrec {' '.join(args)}: {result.stderr}"
    return result


def export(recorder, sid):
    # lines end in \n only: output may hold U+2028 and other characters splitlines() splits at
    lines = enhrec(recorder, "export", sid, "--format", "asciicast").stdout.decode().split("\n")[:-1]
    return json.loads(lines[0]), [json.loads(x) for x in lines[1:]]


def session_dir(recorder):
    (found,) = glob.glob(os.path.join(recorder.data_dir, "log", "*", "sessions", "default"))
    return found


def screen(body) -> str:
    """All the output of an export's events: a read may split any text between two of them."""
    return "".join(e[2] for e in body if e[1] == "o")


def everything_stored(recorder) -> bytes:
    """Every byte under the data_dir, gzip files decompressed (as far as they go)."""
    blobs = []
    for root, _, files in os.walk(recorder.data_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            if name.endswith(".gz"):
                data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
            blobs.append(data)
    return b"\n".join(blobs)


def test_a_session_with_a_marker_a_resize_and_a_secret(recorder):
    t = bash(recorder)
    t.type(b"echo MARK''ER-one\r")
    t.expect(b"MARKER-one")
    t.resize(30, 100)
    t.type(b"stty size\r")
    t.expect(b"30 100")
    t.type(b"/bin/echo EXEC''-MARK\r")
    t.expect(b"EXEC-MARK")
    t.type(b"stty -echo; read -r s; stty echo; echo got ${#s}\r")
    t.expect(b"stty echo")
    time.sleep(0.3)
    t.type(SECRET.encode() + b"\r")
    t.expect(f"got {len(SECRET)}".encode())
    t.type(b"exit 3\r")
    assert t.wait() == 3
    assert termios.tcgetattr(t.fd) == t.initial_mode, "the terminal's mode was not restored"
    (session,) = recorder.sessions().values()
    assert session.start["session_recording"] == session.end["session_recording"] == "node"
    assert session.end["terminal_recording"] == {
        "recorded_bytes": session.end["terminal_recording"]["recorded_bytes"],
        "truncated": False, "bytes_not_kept": 0, "unwritten_bytes": 0, "input_recorded": False}

    header, body = export(recorder, session.sid)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)
    assert header["enhrec"]["sid"] == session.sid and header["enhrec"]["login"] == "root"
    assert "MARKER-one" in screen(body)
    assert [e[2] for e in body if e[1] == "r"] == ["100x30"]
    assert any(e[1] == "m" and e[2] == "/bin/echo EXEC-MARK" for e in body)
    times = [e[0] for e in body]
    assert times == sorted(times)
    assert SECRET.encode() not in everything_stored(recorder)
    directory = session_dir(recorder)
    assert os.stat(directory).st_mode & 0o777 == 0o700
    for path in glob.glob(os.path.join(directory, f"{session.sid}-*.tty.gz")):
        assert os.stat(path).st_mode & 0o777 == 0o600

    shown = enhrec(recorder, "show", session.sid[:8]).stdout.decode()
    assert "screen recorded" in shown and "at 80x24" in shown


def test_record_input_keeps_what_was_typed_but_not_at_a_no_echo_prompt(recorder):
    recorder.configure("enhrec:\n  record_input: true\n")
    t = bash(recorder)
    t.type(b"echo typed-in''put\r")
    t.expect(b"typed-input")
    t.type(b"stty -echo; read -r s; stty echo; echo got ${#s}\r")
    t.expect(b"stty echo")
    time.sleep(0.3)
    t.type(SECRET.encode() + b"\r")
    t.expect(f"got {len(SECRET)}".encode())
    t.type(b"exit\r")
    assert t.wait() == 0
    (session,) = recorder.sessions().values()
    assert session.end["terminal_recording"]["input_recorded"] is True
    _, body = export(recorder, session.sid)
    typed = "".join(e[2] for e in body if e[1] == "i")
    assert "echo typed-in''put" in typed
    assert SECRET.encode() not in everything_stored(recorder)


def test_asciinema_reads_the_export(recorder, tmp_path):
    t = bash(recorder)
    t.type(b"printf 'caf\\303\\251 \\377 ok\\n'; echo ASCII''NEMA-MARK\r")
    t.expect(b"ASCIINEMA-MARK")
    t.type(b"exit\r")
    t.wait()
    (session,) = recorder.sessions().values()
    cast = tmp_path / "session.cast"
    cast.write_bytes(enhrec(recorder, "export", session.sid).stdout)
    body = [json.loads(x) for x in cast.read_text().split("\n")[1:-1]]
    # invalid UTF-8 becomes U+FFFD, as asciinema records it
    assert "café \ufffd ok" in screen(body)
    for command in (["asciinema", "cat", str(cast)], ["asciinema", "play", "-s", "20", str(cast)]):
        viewer = Terminal(command, dict(os.environ, TERM="xterm"))
        assert viewer.wait() == 0, viewer.seen
        assert b"ASCIINEMA-MARK" in viewer.seen


def test_play_at_twenty_times_with_events(recorder, tmp_path):
    written = tmp_path / "written"
    t = bash(recorder)
    # events are placed to the millisecond (their `time`): apart by more, their order is sure
    t.type(f"sleep 1; echo PLAY''-MARK; sleep 0.2; /bin/echo played > {written}\r".encode())
    t.expect(b"PLAY-MARK")
    t.type(b"exit\r")
    t.wait()
    (session,) = recorder.sessions().values()
    begin = time.monotonic()
    played = enhrec(recorder, "play", "--speed", "20", session.sid).stdout
    took = time.monotonic() - begin
    assert b"PLAY-MARK" in played
    assert took < 5
    with_events = enhrec(recorder, "play", "--speed", "20", "--events", session.sid).stdout
    assert b"exec /usr/bin/sleep 1" in with_events
    assert f"write {written} (bash)".encode() in with_events
    assert b"write /dev/null" not in with_events
    assert with_events.index(b"exec /bin/echo played") > with_events.index(b"PLAY-MARK")


def test_job_control_through_the_relay(recorder):
    """Ctrl-C, Ctrl-Z and fg reach the session's jobs through its own pty, as on a terminal."""
    t = bash(recorder)
    t.type(b"sleep 100\r")
    time.sleep(0.5)
    t.type(b"\x03")                       # Ctrl-C
    t.expect(PROMPT)
    t.type(b"echo st=$?\r")
    t.expect(b"st=130")
    t.type(b"sleep 101\r")
    time.sleep(0.5)
    t.type(b"\x1a")                       # Ctrl-Z
    t.expect(b"Stopped")
    t.type(b"jobs -l; fg\r")
    t.expect(b"sleep 101")
    time.sleep(0.3)
    t.type(b"\x03")
    t.type(b"echo after-''fg\r")
    t.expect(b"after-fg")
    t.type(b"exit\r")
    assert t.wait() == 0
    (session,) = recorder.sessions().values()
    assert [e["argv"] for e in session.commands_with(name="sleep")] == [["100"], ["101"]]


@pytest.mark.parametrize("program", ["vim", "top"])
def test_a_full_screen_program(recorder, tmp_path, program):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i} of the file\n" for i in range(200)))
    os.chmod(tmp_path, 0o755)
    argv = {"vim": ["vim", "-u", "NONE", "-N", str(text)], "top": ["top", "-d", "0.5"]}[program]
    t = session_terminal(recorder, argv, rows=30, cols=100)
    t.wait_raw()
    if program == "vim":
        t.expect(b"line 0 of the file")
        t.type(b"G")
        t.expect(b"199 of the file")
        t.type(b"dd")
        t.resize(40, 120)
        time.sleep(0.5)
        t.type(b":wq\r")
    else:
        t.expect(b"load average")
        t.resize(40, 120)
        time.sleep(1)
        t.type(b"q")
    assert t.wait() == 0
    (session,) = recorder.sessions().values()
    header, body = export(recorder, session.sid)
    assert (header["width"], header["height"]) == (100, 30)
    assert ["r", "120x40"] in [e[1:] for e in body]
    if program == "vim":
        assert "line 199" not in text.read_text()
        assert "\x1b[?1049h" in screen(body)


def cat_in_a_session(recorder, tmp_path, blob: bytes) -> "Terminal":
    """A session that cats `blob` between START and END, its terminal seen raw."""
    path = tmp_path / "blob"
    path.write_bytes(blob)
    os.chmod(tmp_path, 0o755)
    # the session's pty raw too, so that its line discipline changes no byte (ONLCR)
    t = session_terminal(recorder, ["sh", "-c", f"stty raw -echo; printf START; cat {path}; "
                                                "printf END; sleep 0.2"])
    t.wait_raw()
    return t


def test_binary_output_passes_byte_for_byte(recorder, tmp_path):
    blob = bytes(range(256)) * 16 + os.urandom(50_000)
    t = cat_in_a_session(recorder, tmp_path, blob)
    assert t.wait() == 0
    start = t.seen.index(b"START") + 5
    assert t.seen[start:start + len(blob) + 3] == blob + b"END"


def test_a_terminal_that_falls_behind_gets_every_byte_and_the_recording_too(recorder, tmp_path):
    """Output far faster than the terminal reads: the relay's backlog fills to its high water,
    wraps around and is moved back in its buffer; nothing is lost or reordered, on the screen
    or in the recording."""
    blob = os.urandom(3 << 20)
    t = cat_in_a_session(recorder, tmp_path, blob)
    time.sleep(1.0)                  # not read: the session's cat and the relay fill up
    for _ in range(300):             # then read in small bites, slower than cat writes
        t.read(0.01)
        time.sleep(0.002)
    assert t.wait() == 0
    start = t.seen.index(b"START") + 5
    assert t.seen[start:start + len(blob) + 3] == blob + b"END"
    (session,) = recorder.sessions().values()
    recorded = b"".join(frame.data for frame in terminal_recording.read_frames(
        terminal_recording.part_paths(session_dir(recorder), session.sid))
        if frame.kind == terminal_recording.OUTPUT)
    assert b"START" + blob + b"END" in recorded
    assert session.end["terminal_recording"]["recorded_bytes"] == len(recorded)


def test_the_size_bound(recorder):
    recorder.configure("enhrec:\n  tty_recording_max_bytes: 1000\n")
    t = session_terminal(recorder, ["sh", "-c", "stty -onlcr; i=0; while [ $i -lt 100 ]; do "
                                                "printf '%049d\\n' $i; i=$((i+1)); done"])
    # no wait_raw(): the session may be over before this test could see its terminal raw
    assert t.wait() == 0
    assert t.seen.count(b"\n") == 100, "output past the bound must still reach the terminal"
    (session,) = recorder.sessions().values()
    tty = session.end["terminal_recording"]
    assert tty["truncated"] is True
    assert tty["recorded_bytes"] == 1000 and tty["bytes_not_kept"] == 4000
    _, body = export(recorder, session.sid)
    assert sum(len(e[2]) for e in body if e[1] == "o") == 1000
    assert any(e[1] == "m" and "truncated" in e[2] for e in body)


def test_the_hangup_of_the_real_terminal_hangs_up_the_session(recorder, tmp_path):
    """The client vanishing: the session gets its SIGHUP, runs its trap and ends (`wait` is
    where bash runs a trap at once), as from a real terminal's hangup."""
    flag = tmp_path / "hup"
    t = session_terminal(recorder, ["bash", "-c", f"trap 'echo hup > {flag}; exit 7' HUP; "
                                                  "echo tra''pped; sleep 100 & wait"])
    t.wait_raw()
    t.expect(b"trapped")
    os.close(t.fd)
    deadline = time.monotonic() + 30
    while not os.waitpid(t.pid, os.WNOHANG)[0]:
        assert time.monotonic() < deadline, "the wrapper did not end after the hangup"
        time.sleep(0.05)
    assert flag.read_text() == "hup\n"
    (session,) = recorder.sessions().values()
    assert session.end["exit_status"] == 7 and session.end["end_reason"] == "hangup"
    assert session.end["terminal_recording"]["truncated"] is False
    assert "trapped" in screen(export(recorder, session.sid)[1])


def test_a_killed_recorder_leaves_the_terminal_restored_and_the_recording_ended(recorder):
    t = bash(recorder)
    t.type(b"echo BEFORE-''KILL\r")
    t.expect(b"BEFORE-KILL")
    os.kill(t.pid, signal.SIGKILL)        # the wrapper; its watchdog kills the session
    deadline = time.monotonic() + 30
    while termios.tcgetattr(t.fd) != t.initial_mode:
        assert time.monotonic() < deadline, "the terminal stayed in raw mode"
        t.read(0.05)
    t.expect(b"the recorder stopped, so the session was ended")
    sid = next(iter(recorder.sessions()))
    paths = glob.glob(os.path.join(session_dir(recorder), f"{sid}-*.tty.gz"))

    def recorded():   # as far as it goes: it may not have its trailer yet
        with open(paths[0], "rb") as f:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(f.read())
    deadline = time.monotonic() + 10
    while b'"recorded_bytes"' not in recorded():   # the relay's end frame
        assert time.monotonic() < deadline, "the recording has no end"
        time.sleep(0.05)
    assert b"BEFORE-KILL" in recorded()


def test_no_pty_without_a_terminal(recorder):
    """`ssh host cmd`, scp and rsync: the wrapper's output is a pipe, so the session's is too."""
    blob = bytes(range(256)) * 4
    result = recorder.run(["sh", "-c", "cat; tty"], input=blob, text=False)
    assert result.returncode == 1        # `tty` says: not a tty
    assert result.stdout == blob + b"not a tty\n"
    (session,) = recorder.sessions().values()
    assert "terminal_recording" not in session.end
    assert session.start["session_recording"] == session.end["session_recording"] == "off"
    assert not glob.glob(os.path.join(session_dir(recorder), "*.tty.gz"))
    shown = enhrec(recorder, "show", session.sid).stdout.decode()
    assert "screen not recorded" in shown
    played = enhrec(recorder, "play", session.sid, check=False)
    assert played.returncode == 2 and b"no terminal recording" in played.stderr


def test_all_relays_and_records_a_session_without_a_terminal(recorder, tmp_path):
    """`tty_recording: all`: standard output and error through pipes of the wrapper's, byte for
    byte, each to where it went before, and recorded; standard input stays what it was."""
    recorder.configure("enhrec:\n  tty_recording: all\n")
    blob = os.urandom(300_000)
    source = tmp_path / "input"
    source.write_bytes(blob)
    with open(source, "rb") as stdin:
        proc = recorder.popen(["sh", "-c", "test -f /dev/stdin && echo stdin-is-the-file >&2; "
                                           "cat; echo to-err >&2; tty"], stdin=stdin, text=False)
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1            # `tty`: not a tty
    assert out == blob + b"not a tty\n"
    assert err == b"stdin-is-the-file\nto-err\n"
    (session,) = recorder.sessions().values()
    tty = session.end["terminal_recording"]
    assert session.end["session_recording"] == "node"
    assert tty["recorded_bytes"] == len(blob) + len(b"not a tty\nstdin-is-the-file\nto-err\n")
    assert tty["input_recorded"] is False
    header, body = export(recorder, session.sid)
    assert (header["width"], header["height"]) == (80, 24)
    shown = screen(body)
    assert "to-err" in shown and "not a tty" in shown
    assert "without a terminal" in enhrec(recorder, "show", session.sid).stdout.decode()


def test_all_keeps_the_order_of_output_and_errors_sent_to_one_file(recorder, tmp_path):
    recorder.configure("enhrec:\n  tty_recording: all\n")
    out = tmp_path / "both"
    with open(out, "wb") as f:
        result = recorder.run(["sh", "-c", "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"],
                              stdout=f, stderr=subprocess.STDOUT)
    assert result.returncode == 0
    assert out.read_text() == "".join(f"out{i}\nerr{i}\n" for i in range(1, 6))


def test_all_passes_a_vanished_reader_on_as_sigpipe(recorder):
    recorder.configure("enhrec:\n  tty_recording: all\n")
    proc = recorder.popen(["yes"], stdin=subprocess.DEVNULL, text=False)
    assert proc.stdout.read(10) == b"y\ny\ny\ny\ny\n"
    proc.stdout.close()                    # as `| head` does
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE


def test_a_wrapper_started_in_the_background_gives_no_pty(recorder):
    """`enhrec-wrap -- cmd &` at a shell: the wrapper may not read the terminal from the
    background, so its session uses the terminal as it did before."""
    t = Terminal(["bash", "--norc", "--noprofile", "+o", "history", "-i"],
                 recorder.environment({"TERM": "xterm", "PS1": "$ "}))
    t.expect(b"$ ")
    line = shlex.join(recorder.argv(["sh", "-c", "echo bg-$(tty)"]))
    t.type(f"{line} & wait; echo waited-''done\r".encode())
    t.expect(b"waited-done")
    t.type(b"exit\r")
    t.wait()
    (session,) = recorder.sessions().values()
    assert "terminal_recording" not in session.end
    assert b"bg-/dev/pts/" in t.seen


def test_tty_recording_off(recorder):
    recorder.configure("enhrec:\n  tty_recording: off\n")
    t = session_terminal(recorder, ["sh", "-c", "tty; echo OFF-MARK"])
    t.expect(b"OFF-MARK")
    assert t.wait() == 0
    (session,) = recorder.sessions().values()
    assert "terminal_recording" not in session.end
    assert not glob.glob(os.path.join(session_dir(recorder), "*.tty.gz"))


# --- a full disk ----------------------------------------------------------------------------

def burst_then_go_on(data_dir, outside):
    """Most of the disk filled, then ~2.7 MB of base64 of random bytes (it hardly compresses, so
    the recording cannot fit), then room again (past the recording's 1 s retry)."""
    return ["sh", "-c", f"sleep 0.3; dd if=/dev/zero of={data_dir}/fill bs=64k count=10 "
                        "2>/dev/null; head -c 2000000 /dev/urandom | base64; echo BURST-END; "
                        f"sleep 0.5; rm -f {data_dir}/fill; sleep 1.5; echo AFTER-ROOM; "
                        f"echo survived > {outside}/marker"]


def test_a_full_disk_ends_the_session_by_default(recorder, small_disk, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    t = session_terminal(recorder, burst_then_go_on(small_disk, outside))
    t.wait_raw()
    assert t.wait() == 128 + signal.SIGKILL
    assert b"No space left on device" in t.seen
    assert b"the session is ended (on_log_failure: close)" in t.seen
    assert not (outside / "marker").exists(), "the session went on after the log failed"
    assert termios.tcgetattr(t.fd) == t.initial_mode


def test_a_full_disk_with_continue_counts_what_the_recording_lost(recorder, small_disk,
                                                                   tmp_path):
    recorder.configure("enhrec:\n  on_log_failure: continue\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    t = session_terminal(recorder, burst_then_go_on(small_disk, outside))
    t.wait_raw()
    assert t.wait() == 0
    assert b"(on_log_failure: continue)" in t.seen
    assert b"BURST-END" in t.seen, "the output stopped with the recording"
    assert (outside / "marker").exists()
    (session,) = recorder.sessions().values()
    tty = session.end["terminal_recording"]
    assert tty["unwritten_bytes"] > 0 and tty["truncated"] is False
    _, body = export(recorder, session.sid)    # what was written stays readable ...
    shown = screen(body)
    assert "AFTER-ROOM" in shown               # ... and recording went on once there was room
