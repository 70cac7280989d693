"""SSH logins through sshd's ForceCommand: commands and interactive shells, recorded as what they
really ran, with the connection's addresses, the key that logged in and the exit status."""

import base64

# The obfuscated command: nothing of it is visible on the ssh command line.
HIDDEN = "id -un; cat /etc/hostname; echo hidden-$((6 * 7))"


def test_piped_base64_is_recorded_as_what_ran(host):
    mark = host.mark()
    encoded = base64.b64encode(HIDDEN.encode()).decode()
    result = host.ssh(f"echo {encoded} | base64 -d | sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == host.user.pw_name
    assert "hidden-42" in result.stdout
    assert result.stderr == ""

    session = host.session_since(mark)
    start, end = session.start, session.end
    assert start["login"] == start["user"] == host.user.pw_name
    assert start["initial_command"] == [f"echo {encoded} | base64 -d | sh"]
    assert start["interactive"] is False and end["interactive"] is False
    assert start["addr.local"] == f"127.0.0.1:{host.port}"
    assert start["addr.remote"].startswith("127.0.0.1:")
    assert start["ssh_key_fingerprint"] == host.fingerprint
    assert "size" not in start
    assert end["exit_status"] == 0
    # The shell that decoded it, and what it ran: the recording sees through the encoding.
    assert [e["argv"] for e in session.commands_named("base64")] == [["-d"]]
    assert [e["argv"] for e in session.commands_named("id")] == [["-un"]]
    assert [e["argv"] for e in session.commands_named("cat")] == [["/etc/hostname"]]
    assert session.opened("/etc/hostname"), "the open of /etc/hostname was not recorded"
    # sshd's way of running a command: the user's shell with -c, as the user.
    shells = [e for e in session.commands if e["path"] == host.user.pw_shell]
    assert shells and shells[0]["argv"] == ["-c", start["initial_command"][0]], session.summary()


def test_exit_status_reaches_the_client(host):
    mark = host.mark()
    result = host.ssh("echo bye; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "bye\n"
    assert host.session_since(mark).end["exit_status"] == 3


def test_command_runs_in_home_with_a_clean_environment(host):
    mark = host.mark()
    result = host.ssh("pwd; env")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == host.user.pw_dir
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["USER"] == env["LOGNAME"] == host.user.pw_name
    assert env["HOME"] == host.user.pw_dir
    assert env["SSH_ORIGINAL_COMMAND"] == "pwd; env"
    assert env["SSH_CONNECTION"].split()[2:] == ["127.0.0.1", str(host.port)]
    session = host.session_since(mark)
    assert env["ENHREC_SESSION_ID"] == session.sid
    # Nothing of sudo's or of the wrapper's own: the session is the user's login, not root's.
    leaked = sorted(k for k in env if k.startswith(("SUDO_", "PYTHON", "BCC_")) or k == "SSH_USER_AUTH")
    assert leaked == []


def test_interactive_login_with_hidden_typing(host, pty_driver, tmp_path):
    """A login shell on a terminal; the command typed after `stty -echo` never reaches the
    screen, but is recorded."""
    steps = tmp_path / "steps"
    steps.write_text("stty -echo\nuname -s -m\nstty echo\necho visible-$((2 * 21))\nexit 4\n")
    mark = host.mark()
    result = host.client([*pty_driver, "--steps", str(steps), "--timeout", "60", "--",
                          *host.ssh_argv(tty=True)])
    assert result.returncode == 4, f"{result.stdout}\n{result.stderr}"
    assert "visible-42" in result.stdout
    assert "uname -s" not in result.stdout, "the hidden command was echoed"

    session = host.session_since(mark)
    start, end = session.start, session.end
    assert start["interactive"] is True and end["interactive"] is True
    assert start["initial_command"] == []
    assert start["size"] == "80:24"
    assert end["exit_status"] == 4
    assert [e["argv"] for e in session.commands_named("uname")] == [["-s", "-m"]]
    assert [e["argv"] for e in session.commands_named("stty")] == [["-echo"], ["echo"]]
    # The login shell: the account's shell, started the way login(1) starts it.
    shells = [e for e in session.commands if e["path"] == host.user.pw_shell]
    assert shells and shells[0]["argv"] == [], session.summary()


def test_wrapper_options_are_refused_to_users(host):
    """What the sudo rule allows is `enhrec-wrap --ssh` and nothing more; the wrapper itself
    also refuses to start a session inside a recorded one."""
    mark = host.mark()
    wrapper = "/usr/local/bin/enhrec-wrap"
    script = "; ".join([
        f"sudo -n {wrapper} --ssh --config /dev/null; echo config=$?",
        f"sudo -n {wrapper} --config /dev/null --ssh; echo config2=$?",
        f"sudo -n {wrapper} --ssh -- id; echo command=$?",
        f"sudo -n {wrapper} -- id; echo plain=$?",
        f"sudo -n -E {wrapper} --ssh; echo preserve=$?",
        f"sudo -n PYTHONPATH=/tmp {wrapper} --ssh; echo setenv=$?",
        f"SSH_ORIGINAL_COMMAND=id sudo -n {wrapper} --ssh; echo nested=$?",
    ])
    result = host.ssh(script)
    codes = dict(line.split("=") for line in result.stdout.splitlines() if "=" in line)
    assert codes == {"config": "1", "config2": "1", "command": "1", "plain": "1",
                     "preserve": "1", "setenv": "1", "nested": "125"}, result.stderr
    nested = [line for line in result.stderr.splitlines() if line.startswith("enhrec-wrap:")]
    assert len(nested) == 1 and "already inside recorded session" in nested[0], result.stderr
    # One session: the refused attempts started none, and every attempt is in the recording.
    session = host.session_since(mark)
    sudo_runs = [e for e in session.commands_named("sudo")]
    assert len(sudo_runs) == 7, session.summary()
    assert any("--config" in e["argv"] for e in sudo_runs)
