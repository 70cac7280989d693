"""The compiled-program cache (program_cache.py, bpf.py): a session whose programs were compiled before loads them
from /var/cache/enhrec-wrap without BCC's compiler, and records the same; the cache is root's
alone, and an entry anyone else could have written is never loaded."""

import os
import random
import stat

from enhrec_wrap.kernel import loader as bpf
from enhrec_wrap.kernel import program_cache
from enhrec_wrap.config import load_config

CACHE_DIR = program_cache.CACHE_DIR


def _fresh_key(recorder):
    """A config with ring sizes of its own, and its programs' entry removed from the cache: the
    next session compiles them. Returns the entry's path."""
    pages = random.choice([2**k for k in range(2, 12)])
    recorder.configure("ssh_service:\n  enhanced_recording:\n"
                       f"    network_buffer_size: {pages}\n    disk_buffer_size: {pages}\n")
    path = os.path.join(CACHE_DIR, bpf.program_cache_key(load_config(recorder.config_path)) + ".json")
    if os.path.exists(path):
        os.unlink(path)
    return path


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


def test_second_session_loads_the_cached_programs_and_records_the_same(recorder, tmp_path):
    entry = _fresh_key(recorder)
    target = tmp_path / "target"
    target.write_text("x\n")
    _session(recorder, target)
    assert os.path.exists(entry), "the first session did not cache its programs"
    st = os.stat(entry)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    directory = os.stat(CACHE_DIR)
    assert directory.st_uid == 0 and stat.S_IMODE(directory.st_mode) == 0o700
    _session(recorder, target)
    assert os.stat(entry).st_mtime_ns == st.st_mtime_ns, "the second session compiled again"


def test_an_entry_others_could_write_is_not_loaded(recorder, tmp_path):
    entry = _fresh_key(recorder)
    target = tmp_path / "target"
    target.write_text("x\n")
    _session(recorder, target)
    with open(entry, "w") as f:   # what a tamperer would leave: not even ours, and writable
        f.write('{"format": "x"}')
    os.chmod(entry, 0o666)
    _session(recorder, target)    # compiles instead, and replaces the entry
    replaced = os.stat(entry)
    assert stat.S_IMODE(replaced.st_mode) == 0o600 and replaced.st_size > 1000
