"""Issue 9, section 5: what `enhrec` shows of names a hostile user chose. One recorded session
in which cat opens four files: one through /usr/share/locale/../../.., one whose name holds
U+202E (right-to-left override), one whose name holds the four characters `\\x1b` and one whose
name holds a real ESC."""

import json
import os
import uuid

import pytest

RLO = "\u202e"
ESC = "\x1b"


@pytest.fixture(scope="module")
def shown(make_recorder, enhrec, tmp_path_factory):
    recorder = make_recorder("display")
    scratch = tmp_path_factory.mktemp("names").resolve()
    tmp_file = f"/tmp/enhrec-adv-{uuid.uuid4().hex[:12]}"
    names = {"locale": tmp_file, "rlo": str(scratch / f"evil-{RLO}gnp.exe"),
             "literal": str(scratch / "lit-a\\x1bb"), "esc": str(scratch / f"esc-a{ESC}b")}
    for path in names.values():
        with open(path, "w") as f:
            f.write("x\n")
    requested = dict(names, locale="/usr/share/locale/../../.." + tmp_file)
    try:
        result = recorder.run(["cat", *requested.values()])
    finally:
        os.unlink(tmp_file)
    assert result.returncode == 0, result.stderr
    (sid,) = recorder.sessions()
    show = enhrec(recorder.config_path, "show", sid).stdout
    search = enhrec(recorder.config_path, "search", "--sid", sid).stdout
    return recorder, names, show, search


def _open_line(output, part):
    """The path of the one `open` line (`open MODE PATH ...`) whose path contains `part`; none
    of these paths has a space."""
    paths = [line.split()[2] for line in output.splitlines()
             if line.split()[:1] == ["open"] and part in line.split()[2]]
    assert len(paths) == 1, f"expected one open line with {part!r}, got {paths}; output:\n{output}"
    return paths[0]


def test_show_decides_library_reads_on_the_resolved_path(shown):
    """/usr/share/locale/../../../tmp/x is /tmp/x: not a locale read, so it is shown."""
    _, names, show, _ = shown
    assert _open_line(show, os.path.basename(names["locale"])) == names["locale"], show


def test_search_path_finds_the_resolved_path(shown, enhrec):
    recorder, names, _, _ = shown
    found = enhrec(recorder.config_path, "search", "--path", names["locale"], "--event", "open",
                   "--json").stdout
    events = [json.loads(line) for line in found.splitlines()]
    assert [(e["event"], e["path"]) for e in events] == [("session.disk", names["locale"])], found


def test_right_to_left_override_is_escaped(shown):
    _, _, show, search = shown
    for command, output in (("show", show), ("search", search)):
        assert RLO not in output, f"enhrec {command} printed U+202E as it is:\n{output!r}"
        line = next(line for line in output.splitlines() if "evil-" in line)
        assert "202e" in line.lower(), f"enhrec {command}: U+202E is not shown by its code: {line!r}"


def test_literal_backslash_x1b_prints_unlike_a_real_esc(shown):
    _, _, show, search = shown
    for command, output in (("show", show), ("search", search)):
        assert ESC not in output, f"enhrec {command} printed a real ESC:\n{output!r}"
    literal = _open_line(show, "lit-a").split("lit-", 1)[1]
    esc = _open_line(show, "esc-a").split("esc-", 1)[1]
    assert literal != esc, (f"the name with the text \\x1b and the one with a real ESC both "
                            f"print as {literal!r}")


def test_unix_sockets_with_hostile_names_are_shown_escaped(make_recorder, enhrec, tmp_path):
    """A connect to a socket file whose name holds terminal escapes and U+202E, and to an
    abstract name holding a newline that would start a fake line, as `enhrec show` and
    `search` print them (schema 4's unix connects): every such character escaped, the socket
    named once, on its own `connect unix` line."""
    recorder = make_recorder("display-unix")
    directory = tmp_path.resolve()
    name = f"ok{ESC}[2J{ESC}[Hfake{RLO}kcos"
    abstract = f"enhrec-adv-{uuid.uuid4().hex[:8]}\nconnect unix /run/docker.sock"
    code = ("import socket, sys\n"
            "srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen(1)\n"
            "socket.socket(socket.AF_UNIX).connect(sys.argv[1])\n"
            "try: socket.socket(socket.AF_UNIX).connect('\\0' + sys.argv[2])\n"
            "except ConnectionRefusedError: pass\n")
    result = recorder.run(["python3", "-c", code, str(directory / name), abstract])
    assert result.returncode == 0, result.stderr
    (sid,) = recorder.sessions()
    show = enhrec(recorder.config_path, "show", sid).stdout
    search = enhrec(recorder.config_path, "search", "--sid", sid).stdout
    for command, output in (("show", show), ("search", search)):
        assert ESC not in output and RLO not in output, f"enhrec {command}:\n{output!r}"
        socket_lines = [line for line in output.splitlines()
                        if f"connect unix {directory}/" in line or "connect unix @" in line]
        assert len(socket_lines) == 2, f"enhrec {command}:\n{output}"
        on_disk, in_abstract = socket_lines
        assert "\\x1b[2J\\x1b[Hfake" in on_disk and "\\u202e" in on_disk.lower(), on_disk
        assert "@enhrec-adv-" in in_abstract and "\\nconnect unix /run/docker.sock" in in_abstract
    assert not any(line.lstrip().startswith("connect unix /run/docker.sock")
                   for line in show.splitlines()), show
