"""The compiled-program cache (kernel/program_cache.py): the load that finds no entry for its
programs compiles them with BCC and stores them; a later load (after the host's set was
unloaded) takes them from /var/cache/enhrec-wrap without BCC's compiler, and records the same.
The cache is root's alone, and an entry anyone else could have written is never loaded."""

import os
import stat

from enhrec_wrap.kernel import program_cache

CACHE_DIR = program_cache.CACHE_DIR


def _session(recorder, target):
    """Runs `cat target` in a session; returns that session (the log holds earlier ones too)."""
    before = set(recorder.sessions())
    result = recorder.run(["/bin/cat", str(target)])
    assert result.returncode == 0, result.stderr
    (sid,) = set(recorder.sessions()) - before
    session = recorder.sessions()[sid]
    assert len([e for e in session.disks if e["path"] == str(target)]) == 1, session.summary()
    assert session.commands_with(path="/bin/cat", argv=[str(target)], return_code=0)
    assert session.end["lost_events"] == {"command": 0, "disk": 0, "network": 0}
    return session


def _fresh_entry(recorder):
    """No set loaded and no cache entry: the next session compiles. Returns the entry's path."""
    version = recorder.unload_our_programs()
    path = os.path.join(CACHE_DIR, version + ".json")
    if os.path.exists(path):
        os.unlink(path)
    return path


def test_the_first_load_compiles_and_later_loads_use_the_cache(recorder, tmp_path,
                                                               kernel_to_ourselves):
    entry = _fresh_entry(recorder)
    target = tmp_path / "target"
    target.write_text("x\n")
    _session(recorder, target)
    assert os.path.exists(entry), "the first load did not cache its programs"
    st = os.stat(entry)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    directory = os.stat(CACHE_DIR)
    assert directory.st_uid == 0 and stat.S_IMODE(directory.st_mode) == 0o700
    recorder.unload_our_programs()
    _session(recorder, target)
    assert os.stat(entry).st_mtime_ns == st.st_mtime_ns, "the second load compiled again"


def test_an_entry_others_could_write_is_not_loaded(recorder, tmp_path, kernel_to_ourselves):
    entry = _fresh_entry(recorder)
    target = tmp_path / "target"
    target.write_text("x\n")
    _session(recorder, target)
    recorder.unload_our_programs()
    with open(entry, "w") as f:   # what a tamperer would leave: not even ours, and writable
        f.write('{"format": "x"}')
    os.chmod(entry, 0o666)
    _session(recorder, target)    # compiles instead, and replaces the entry
    replaced = os.stat(entry)
    assert stat.S_IMODE(replaced.st_mode) == 0o600 and replaced.st_size > 1000
