"""Red team: opens whose request is not the file, and names that are hard to write down. The
event's `path` is the file the kernel opened; the request is kept as `requested_path`."""

import os

import pytest

O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)


def test_openat2_resolve_in_root_names_the_file_under_the_root(technique, scratch):
    """RESOLVE_IN_ROOT makes "/etc/shadow" mean ROOT/etc/shadow."""
    (scratch / "root" / "etc").mkdir(parents=True)
    (scratch / "root" / "etc" / "shadow").write_text("IN-ROOT\n")
    run, pid = technique("openat2_in_root", scratch / "root", "/etc/shadow")
    fd, really = run.printed_once("OPEN")
    assert really == str(scratch / "root" / "etc" / "shadow")
    opened = run.one_open(pid, "the openat2", return_code=int(fd))
    facts = run.brief(opened)
    assert (opened["path"], opened.get("requested_path"), opened.get("path_source")) == (
        really, "/etc/shadow", "kernel"), facts
    assert not run.of("session.disk", pid, path="/etc/shadow"), "the request was logged as the file"


def test_o_path_open_then_reopen_through_proc(run_in_session, scratch):
    """An O_PATH fd (no read allowed) reopened for reading through its magic link."""
    target = scratch / "o-path-target"
    target.write_text("O-PATH-SECRET\n")
    code = ("import os, sys\n"
            f"p = os.open({str(target)!r}, os.O_PATH)\n"
            "fd = os.open(f'/proc/self/fd/{p}', os.O_RDONLY)\n"
            "print('OPEN', p, fd, os.read(fd, 100).decode().strip())\n")
    run = run_in_session(["python3", "-c", code])
    o_path, fd, content = run.printed_once("OPEN")
    assert content == "O-PATH-SECRET"
    pid = run.pid_of("python3")
    first = run.one_open(pid, "the O_PATH open", return_code=int(o_path), path=str(target))
    assert first["flags"] & os.O_PATH, run.brief(first)
    again = run.one_open(pid, "the reopen", return_code=int(fd), path=str(target))
    assert again.get("requested_path") == f"/proc/self/fd/{o_path}", run.brief(again)


def test_o_tmpfile_then_linkat_is_the_inode_its_name_has_later(run_in_session, scratch):
    """A file written with no name, then linked into place: the O_TMPFILE open names the
    directory and the inode, which the later open of the linked name shares (a link is not an
    open, and is not recorded)."""
    code = ("import os\n"
            f"fd = os.open({str(scratch)!r}, os.O_TMPFILE | os.O_WRONLY, 0o600)\n"
            "os.write(fd, b'NO-NAME\\n')\n"
            # linkat(AT_SYMLINK_FOLLOW) of the magic link (a dir fd makes Python use linkat)
            f"os.link(f'/proc/self/fd/{{fd}}', {str(scratch / 'linked')!r}, "
            "src_dir_fd=os.open('/', os.O_PATH))\n"
            f"again = os.open({str(scratch / 'linked')!r}, os.O_RDONLY)\n"
            "print('OPEN', fd, again, os.fstat(fd).st_ino)\n")
    run = run_in_session(["python3", "-c", code])
    fd, again, inode = run.printed_once("OPEN")
    pid = run.pid_of("python3")
    unnamed = run.one_open(pid, "the O_TMPFILE open", return_code=int(fd),
                           flags=O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC)
    facts = run.brief(unnamed)
    assert unnamed["path"] == f"{scratch}/#{inode} (deleted)", facts
    assert "deleted" in unnamed.get("path_flags", []) and unnamed["inode"] == int(inode), facts
    named = run.one_open(pid, "the open of the linked name", return_code=int(again),
                         path=str(scratch / "linked"))
    assert named["inode"] == int(inode), run.brief(named)


# A newline, quotes, a backslash, a right-to-left override, and bytes that are not UTF-8.
ODD_NAMES = [b"new\nline", b"quo\"te's", b"back\\slash", "rtl\u202egnp.exe".encode(),
             b"not-utf8-\xff\xfe"]


@pytest.mark.parametrize("name", ODD_NAMES, ids=["newline", "quotes", "backslash", "rtl",
                                                 "invalid-utf8"])
def test_odd_file_names_are_written_exactly(run_in_session, scratch, name):
    from enhrec_wrap.events.teleport import unescape
    path = os.fsencode(scratch) + b"/" + name
    with open(path, "wb") as f:
        f.write(b"odd\n")
    run = run_in_session(["cat", os.fsdecode(path)])
    opened = [e for e in run.of("session.disk", run.pid_of("cat"))
              if e.get("path_source") == "kernel" and e["flags"] == os.O_RDONLY
              and (unescape(e["path"]) if "path" in e.get("escaped_fields", []) else
                   e["path"].encode()) == path]
    assert len(opened) == 1, [(e["path"], e.get("escaped_fields")) for e in run.session.disks]


def test_path_longer_than_the_walk_buffer_keeps_its_leaf_side(run_in_session, scratch):
    """Twenty directories of 250-byte names (5,000 bytes, more than PATH_MAX), reached by
    relative opens: the path is marked truncated and keeps its leaf end."""
    name = "n" * 250
    code = ("import os\n"
            f"os.chdir({str(scratch)!r})\n"
            "for _ in range(20):\n"
            f"    os.mkdir({name!r}); os.chdir({name!r})\n"
            "fd = os.open('LEAF', os.O_WRONLY | os.O_CREAT, 0o600)\n"
            "print('OPEN', fd)\n")
    run = run_in_session(["python3", "-c", code])
    (fd,) = run.printed_once("OPEN")
    opened = run.one_open(run.pid_of("python3"), "the deep open", return_code=int(fd),
                          requested_path="LEAF")
    facts = run.brief(opened)
    assert opened["path"].startswith("<truncated>/"), facts
    assert opened["path"].endswith(f"/{name}/LEAF"), facts
    assert "truncated" in opened.get("path_flags", []), facts
    assert len(opened["path"].encode()) <= 4096 + len("<truncated>"), facts
