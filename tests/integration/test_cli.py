"""The command line as a user meets it: --user, config errors, refusal without root, exit codes
126/127, recording switched off, --help/--version and bad options."""

import os
import shutil
import subprocess
import tempfile

from enhrec_wrap import __version__

PROGRAM_PREFIX = "enhrec-wrap: "


def _as_user(user, argv, **kwargs):
    """Runs argv with the user's uid, gid and groups only (no root left), from /."""
    command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
               "--init-groups", "--", *argv]
    env = {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "USER": user.pw_name,
           "LANG": "C.UTF-8"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd="/",
                          timeout=60, **kwargs)


# --- --user ---------------------------------------------------------------------------------------

def _status_ids(status_text, field):
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return line.split()[1:]
    raise AssertionError(f"no {field}: line in /proc/self/status")


def test_user_option_drops_privileges(recorder, test_user):
    result, session = recorder.record(
        ["sh", "-c", "id -u; id -g; cat /proc/self/status"], options=["--user", test_user.pw_name])
    uid, gid, status = result.stdout.split("\n", 2)
    assert (int(uid), int(gid)) == (test_user.pw_uid, test_user.pw_gid)
    assert _status_ids(status, "Uid") == [str(test_user.pw_uid)] * 4   # real, effective, saved, fs
    assert _status_ids(status, "Gid") == [str(test_user.pw_gid)] * 4
    assert sorted(map(int, _status_ids(status, "Groups"))) == recorder.user_groups(test_user)
    assert _status_ids(status, "CapEff") == ["0000000000000000"]

    assert all(e["login"] == test_user.pw_name for e in session.events)
    assert all(e["user"] == "root" for e in session.events)   # who started it
    shell = session.command(argv=["-c", "id -u; id -g; cat /proc/self/status"])
    assert shell["ppid"] == result.pid
    ids = session.commands_with(name="id", return_code=0)
    assert [c["argv"] for c in ids] == [["-u"], ["-g"]]
    assert all(c["ppid"] == shell["pid"] for c in ids)
    assert session.command(name="cat", argv=["/proc/self/status"])["return_code"] == 0


def test_user_option_without_command_runs_a_clean_login_shell(recorder, test_user):
    name, home = test_user.pw_name, test_user.pw_dir
    # As sudo would leave it: the wrapper must take the sudo caller from SUDO_UID and pass none
    # of the caller's environment on.
    caller_env = {"SUDO_USER": "x", "SUDO_UID": str(test_user.pw_uid),
                  "SUDO_GID": str(test_user.pw_gid), "SUDO_COMMAND": "/bin/sh", "FOO": "bar"}
    result, session = recorder.record([], options=["--user", name], env=caller_env,
                                      input="echo $HOME $0; pwd; env\n")
    first, second, *env_lines = result.stdout.splitlines()
    assert first == f"{home} -bash"
    assert second == home
    env = dict(line.split("=", 1) for line in env_lines if "=" in line)
    assert "FOO" not in env
    assert [k for k in env if k.startswith("SUDO_")] == []
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (home, name, name, "/bin/bash")
    assert env["PATH"]
    assert env["ENHREC_SESSION_ID"] == session.sid

    assert session.start["initial_command"] == []
    assert session.start["interactive"] is False
    assert all(e["login"] == name and e["user"] == name for e in session.events)
    login_shell = session.commands[0]
    # argv[0] ("-bash") is not part of a recorded argv; the shell's output above shows it.
    assert (login_shell["path"], login_shell["argv"]) == ("/bin/bash", [])
    assert login_shell["ppid"] == result.pid and login_shell["return_code"] == 0
    env_command = session.command(name="env", argv=[])
    assert env_command["ppid"] == login_shell["pid"]


# --- failures before anything runs ---------------------------------------------------------------

def test_bad_config_key_runs_nothing(recorder):
    recorder.configure("ssh_service:\n  enhanced_recording:\n    disk_bufer_size: 3\n")
    marker = os.path.join(recorder.dir, "marker")
    result = recorder.run(["touch", marker])
    assert result.returncode == 125
    line = recorder.one_line(result.stderr)
    assert line.startswith(PROGRAM_PREFIX)
    assert recorder.config_path in line
    assert "ssh_service.enhanced_recording.disk_bufer_size" in line
    assert "disk_buffer_size" in line   # the hint at the right name
    assert not os.path.exists(marker)
    assert recorder.lines() == []
    assert not os.path.exists(os.path.join(recorder.data_dir, "log"))


def test_refusal_when_not_root(recorder, test_user):
    # pytest's own temporary directories are root's alone: the user's marker goes elsewhere.
    marker_dir = tempfile.mkdtemp(prefix="enhrec-it-")
    try:
        os.chown(marker_dir, test_user.pw_uid, test_user.pw_gid)
        marker = os.path.join(marker_dir, "marker")
        result = _as_user(test_user, [*recorder.wrapper, "--", "touch", marker])
        marker_made = os.path.exists(marker)
    finally:
        shutil.rmtree(marker_dir)
    assert result.returncode == 125, result
    line = recorder.one_line(result.stderr)
    assert line.startswith(PROGRAM_PREFIX + "must run as root")
    assert not marker_made
    assert result.stdout == ""


def test_help_version_and_bad_option_without_root(recorder, test_user):
    help_result = _as_user(test_user, [*recorder.wrapper, "--help"])
    assert help_result.returncode == 0, help_result
    assert help_result.stdout.startswith("Usage: enhrec-wrap ")
    for option in ("--config", "--user", "--version"):
        assert option in help_result.stdout

    version = _as_user(test_user, [*recorder.wrapper, "--version"])
    assert version.returncode == 0, version
    assert __version__ in version.stdout and "enhrec-wrap" in version.stdout

    bad = _as_user(test_user, [*recorder.wrapper, "--no-such-option", "--", "true"])
    assert bad.returncode == 125
    line = recorder.one_line(bad.stderr)
    assert line.startswith(PROGRAM_PREFIX) and "--no-such-option" in line
    assert bad.stdout == ""


# --- the command cannot run ----------------------------------------------------------------------

def test_command_not_found(recorder):
    result, session = recorder.record(["enhrec-no-such-command"], expect_status=127)
    line = recorder.one_line(result.stderr)
    assert line.startswith(PROGRAM_PREFIX) and "enhrec-no-such-command" in line
    assert "not found" in line
    assert session.end["exit_status"] == 127
    assert session.start["initial_command"] == ["enhrec-no-such-command"]


def test_command_not_executable(recorder):
    script = os.path.join(recorder.dir, "not-executable.sh")
    marker = os.path.join(recorder.dir, "marker")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(script, 0o644)
    result, session = recorder.record([script], expect_status=126)
    line = recorder.one_line(result.stderr)
    assert line.startswith(PROGRAM_PREFIX) and script in line
    assert not os.path.exists(marker)
    attempt = session.command(path=script)
    assert attempt["return_code"] == -13   # EACCES
    assert attempt["ppid"] == result.pid
    assert session.end["exit_status"] == 126


# --- recording switched off ----------------------------------------------------------------------

def test_recording_disabled_still_logs_start_and_end(recorder):
    recorder.configure("ssh_service:\n  enhanced_recording:\n    enabled: false\n")
    result, session = recorder.record(["sh", "-c", "echo ran; /bin/true"])
    assert result.stdout == "ran\n"
    assert [(e["ei"], e["event"]) for e in session.events] == [(0, "session.start"),
                                                               (1, "session.end")]
    assert session.start["enhanced_recording"] is False
    assert session.end["enhanced_recording"] is False
    assert session.end["exit_status"] == 0
    assert "cgroup_id" not in session.start
