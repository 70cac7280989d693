"""Capture keeps up with the default config: the reference loses commands of
`while sleep .5; do ls; done` (Teleport #48774); we log every one, and nothing is counted lost."""

import os

EXEC_STORM = 2000


def _no_loss(session):
    end = session.end
    assert end["lost_events"] == {"command": 0, "disk": 0, "network": 0}, end["lost_events"]


def test_ls_every_50ms_thirty_times_is_recorded_thirty_times(recorder):
    loop = "i=0; while sleep .05; do ls / >/dev/null; i=$((i+1)); [ $i -lt 30 ] || break; done"
    _, session = recorder.record(["/bin/bash", "-c", loop])
    ls = session.commands_with(name="ls", argv=["/"])
    assert len(ls) == 30, f"{len(ls)}/30 ls recorded; commands: {session.summary()}"
    assert all(e["return_code"] == 0 for e in ls)
    sleeps = session.commands_with(name="sleep", argv=[".05"])
    assert len(sleeps) == 30, f"{len(sleeps)}/30 sleep recorded"
    _no_loss(session)


def test_exec_storm_of_2000_is_recorded_whole(recorder, tmp_path):
    true = tmp_path / "storm-true"   # its own path: nothing else in the session matches it
    os.symlink("/bin/true", true)
    loop = f"for ((i = 0; i < {EXEC_STORM}; i++)); do {true} $i; done"
    _, session = recorder.record(["/bin/bash", "-c", loop])
    storm = session.commands_with(path=str(true))
    assert len(storm) == EXEC_STORM, f"{len(storm)}/{EXEC_STORM} execs recorded"
    assert sorted(int(e["argv"][0]) for e in storm) == list(range(EXEC_STORM))
    assert all(e["return_code"] == 0 for e in storm)
    _no_loss(session)
