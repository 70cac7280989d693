"""Issue 9, section 2: user memory rewritten by another thread of the same process while the
kernel works on it, and a file renamed during its opens. The log must state what the kernel
really used, every time: zero mislogged over a few thousand tries."""

import os

OPENS = 3000
EXECS = 2000
# The rename race's opens fail while the file has its other name: 199 to 2,685 of 3,000
# succeeded in 10 sessions here (load 3 to 7), so it makes more, and needs at least these.
RENAME_OPENS = 5000
MIN_RENAME_OPENED = 100


def test_open_path_flipped_by_a_thread(technique, scratch):
    # Names that differ in one byte: the flip is one store, so every open names one of the two
    # files and succeeds (longer differences tear, and the torn names fail to open).
    secret, decoy = str(scratch / "file-1"), str(scratch / "file-2")
    for name in (secret, decoy):
        with open(name, "w") as f:
            f.write(name)
    run, pid = technique("race_open_path", secret, decoy, OPENS)
    really = [path for _, path in run.printed("OPEN")]
    assert len(really) == OPENS, f"only {len(really)} of {OPENS} opens succeeded"
    assert set(really) == {secret, decoy}, "the thread never flipped the path during the opens"
    # The program's own opens are the only ones with flags O_RDONLY alone (the loader's have
    # O_CLOEXEC), whatever path they are logged with.
    logged = [e for e in run.opens(pid) if e["flags"] == os.O_RDONLY and e["return_code"] >= 0]
    assert len(logged) == len(really), (
        f"{len(really)} successful opens of the two files, {len(logged)} logged")
    wrong = [(n, e["path"], path) for n, (e, path) in enumerate(zip(logged, really))
             if e["path"] != path]
    assert not wrong, (f"{len(wrong)} of {len(really)} opens logged with the other file "
                       f"(n, logged, really opened), first ones: {wrong[:5]}")
    assert all(e.get("path_source") == "kernel" for e in logged), run.brief(logged[0])


def test_exec_argv_flipped_by_a_thread(technique):
    run, pid = technique("race_exec_argv", EXECS)
    really = run.lines
    assert len(really) == EXECS, f"{len(really)} of {EXECS} execs printed"
    assert set(really) == {"ARGV-AAAAAAAA", "ARGV-BBBBBBBB"}, (
        f"the thread never flipped the argument during the execs: {set(really)}")
    logged = [e for e in run.session.commands if e["ppid"] == pid]
    assert len(logged) == EXECS, (f"{EXECS} execs of /bin/echo, {len(logged)} logged; the first "
                                  f"ones: {[run.brief(e) for e in logged[:3]]}")
    wrong = [(n, e["path"], e["argv"], arg) for n, (e, arg) in enumerate(zip(logged, really))
             if (e["path"], e["argv"]) != ("/bin/echo", [arg])]
    assert not wrong, (f"{len(wrong)} of {EXECS} execs logged with a path or argv they did not "
                       f"run (n, path, argv, really), first ones: {wrong[:5]}")


def test_connect_sockaddr_rewritten_during_a_blocking_connect(technique, recorder):
    run, pid = technique("race_connect_addr")
    addr, port = run.printed_once("CONNECT")[1:]
    decoy_addr, decoy_port = run.printed_once("DECOY")
    connects = run.of("session.network", pid)
    # Two connects, both to the listener: the one that fills its queue, and the raced one.
    assert [(e["dst_addr"], e["dst_port"], e["protocol"], e["operation"]) for e in connects] == [
        (addr, int(port), "tcp", 0)] * 2, (
        f"network events (pid, operation, protocol, dst_addr, dst_port, connect_return_code): "
        f"{run.sends_and_connects()}")
    mentions = [line for line in recorder.lines() if decoy_addr.encode() in line]
    assert not mentions, f"the decoy {decoy_addr}:{decoy_port}, never contacted, is in the log: {mentions}"
    assert not run.of("session.network", dst_port=int(decoy_port))


def test_fifo_open_while_the_path_buffer_is_rewritten(technique, scratch):
    run, pid = technique("race_fifo_open", scratch)
    fd, fifo = run.printed_once("OPEN")
    (decoy,) = run.printed_once("DECOY")
    assert fifo.startswith(str(scratch)) and os.path.basename(fifo).startswith("fifo-")
    # The reader's open is the one with flags O_RDONLY alone (the loader's have O_CLOEXEC, the
    # writer's O_WRONLY). Its requested_path is the caller's memory when the open returned,
    # which the thread had rewritten by then: it may name the decoy; `path` may not.
    reader = [e for e in run.opens(pid) if e["return_code"] == int(fd)
              and e["flags"] == os.O_RDONLY]
    assert [e["path"] for e in reader] == [fifo], (
        f"the FIFO's reader: expected one read-only open of {fifo}; opens (path, "
        f"requested_path, path_source, flags, return_code, path_flags): {run.describe_opens(pid)}")
    assert reader[0].get("path_source") == "kernel", run.brief(reader[0])
    assert not run.of("session.disk", path=decoy), f"the decoy {decoy}, never opened, is logged as opened"


def test_rename_during_opens(technique, scratch):
    """Every open of the file is logged with one of its two names (or flagged as raced when
    the name changed during the read): never a torn or a third name."""
    run, pid = technique("race_rename_open", scratch, RENAME_OPENS)
    inode, one, two = run.printed_once("FILE")
    opened = len(run.printed("OPEN"))
    assert opened >= MIN_RENAME_OPENED, f"only {opened} of {RENAME_OPENS} opens succeeded"
    # The loop's opens are O_RDONLY; the one that made the file was O_WRONLY|O_CREAT.
    logged = [e for e in run.opens(pid) if e.get("inode") == int(inode)
              and e["flags"] == os.O_RDONLY and e["return_code"] >= 0]
    assert len(logged) == opened, (
        f"{opened} opens of inode {inode}, {len(logged)} logged with that inode; opens (path, "
        f"requested_path, path_source, flags, return_code, path_flags), first ones: "
        f"{run.describe_opens(pid)[:5]}")
    wrong = [e["path"] for e in logged
             if e["path"] not in (one, two) and "raced" not in e.get("path_flags", [])]
    assert not wrong, f"{len(wrong)} opens logged under a name the file never had: {wrong[:5]}"
