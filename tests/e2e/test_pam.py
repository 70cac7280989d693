"""`enhrec-wrap --user NAME` as root goes through PAM (service enhrec-wrap) like `runuser -l`: an
account PAM refuses gets one line naming it and PAM's reason, exit 125, and nothing runs."""

import json
import os
import subprocess

WRAPPER = "/usr/local/bin/enhrec-wrap"


def run_wrapper(*args):
    # Without SUDO_*: the test run itself may have been started with sudo.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    return subprocess.run([WRAPPER, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=90)


def test_expired_account_is_refused_and_nothing_runs(host, expired_user, tmp_path):
    name = expired_user.pw_name
    marker = tmp_path / "ran"
    os.chmod(tmp_path, 0o777)
    subprocess.run(["chage", "-E", "0", name], check=True)
    try:
        before = len(host.events())
        result = run_wrapper("--user", name, "--", "touch", str(marker))
    finally:
        subprocess.run(["chage", "-E", "-1", name], check=True)
    assert result.returncode == 125, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("enhrec-wrap: PAM account check refused user ")
    assert repr(name) in lines[0]
    assert "expired" in lines[0].lower()
    assert not marker.exists(), "the command ran"
    assert name not in [e["login"] for e in host.events()[before:]], "a session was logged"


def test_valid_account_gets_a_pam_session(host, expired_user, tmp_path):
    """The same account once renewed: PAM admits it and the session runs, recorded."""
    name = expired_user.pw_name
    before = len(host.events())
    result = run_wrapper("--user", name, "--", "sh", "-c", "id -un; echo $HOME")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [name, expired_user.pw_dir]
    events = host.events()[before:]
    assert len([e for e in events if e["event"] == "session.start"]) == 1
    ends = [e for e in events if e["event"] == "session.end"]
    assert len(ends) == 1 and ends[0]["login"] == name and ends[0]["exit_status"] == 0
    assert any(e["event"] == "session.command" and e["argv"] == ["-un"] for e in events), \
        json.dumps(events)[:2000]
