"""Tests for enhrec_wrap.login.ssh (what sshd passes to a ForceCommand) and the --ssh checks of the CLI.
No root needed: accounts are made up and files belong to whoever runs the tests."""

import base64
import os

import pytest

from enhrec_wrap.cli import wrap_command as cli
from enhrec_wrap.login import ssh
from enhrec_wrap.errors import EnhrecError
from enhrec_wrap.host.privileges import Account

ME = Account("alice", os.getuid(), os.getgid(), "/home/alice", "/bin/bash")
# An ed25519 public key (its 32 bytes are 0..31), and what `ssh-keygen -lf` prints for it.
KEY_B64 = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"
FINGERPRINT = "SHA256:ZkAslGjFiUHdGf/WUL8rQvkib4PTvQatUV0OUQSncCA"


# -- addresses ---------------------------------------------------------------------------------

def test_addresses_from_ssh_connection():
    assert ssh.addresses("192.0.2.7 51234 192.0.2.1 22") == {
        "addr.remote": "192.0.2.7:51234", "addr.local": "192.0.2.1:22"}


def test_ipv6_addresses_are_bracketed_as_go_prints_them():
    assert ssh.addresses("2001:db8::7 51234 ::1 2222") == {
        "addr.remote": "[2001:db8::7]:51234", "addr.local": "[::1]:2222"}


@pytest.mark.parametrize("value", ["", "1.2.3.4", "1.2.3.4 x 5.6.7.8 22", "a b c d e",
                                   "evil\x1b[2J 1 1.2.3.4 22", "a" * 100_000 + " 1 1.2.3.4 22",
                                   "1.2.3.4 99999999999999999999 1.2.3.4 22"])
def test_malformed_ssh_connection_gives_no_addresses(value):
    assert ssh.addresses(value) == {}


# -- the command -------------------------------------------------------------------------------

def test_original_command_runs_through_the_users_shell():
    assert ssh.command_for("echo hi | base64", "/bin/zsh") == ["/bin/zsh", "-c", "echo hi | base64"]


def test_internal_sftp_starts_the_first_sftp_server_found(tmp_path):
    missing = str(tmp_path / "missing")
    server = tmp_path / "sftp-server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    assert ssh.command_for("internal-sftp", "/bin/bash", (missing, str(server))) == [str(server)]
    assert ssh.command_for("internal-sftp -l INFO -f AUTH", "/bin/bash", (str(server),)) == [
        str(server), "-l", "INFO", "-f", "AUTH"]


def test_internal_sftp_without_any_sftp_server_goes_to_the_shell(tmp_path):
    argv = ssh.command_for("internal-sftp", "/bin/bash", (str(tmp_path / "none"),))
    assert argv == ["/bin/bash", "-c", "internal-sftp"]


def test_only_the_word_internal_sftp_is_special(tmp_path):
    server = tmp_path / "sftp-server"
    server.write_text("")
    server.chmod(0o755)
    argv = ssh.command_for("internal-sftpx", "/bin/bash", (str(server),))
    assert argv == ["/bin/bash", "-c", "internal-sftpx"]


# -- the key that logged in --------------------------------------------------------------------

def test_fingerprint_of_the_publickey_method():
    assert ssh.key_fingerprint(f"publickey ssh-ed25519 {KEY_B64}\n") == FINGERPRINT


def test_no_fingerprint_without_a_key():
    assert ssh.key_fingerprint("password\nkeyboard-interactive\n") is None
    assert ssh.key_fingerprint("") is None
    assert ssh.key_fingerprint("publickey ssh-ed25519 not*base64\n") is None


def test_last_key_wins_with_several_methods():
    other = base64.b64encode(b"other key").decode()
    text = f"publickey ssh-rsa {other}\npassword\npublickey ssh-ed25519 {KEY_B64}\n"
    assert ssh.key_fingerprint(text) == FINGERPRINT


def test_auth_info_is_read_only_from_the_users_own_regular_file(tmp_path):
    info = tmp_path / "sshauth.1"
    info.write_text(f"publickey ssh-ed25519 {KEY_B64}\n")
    assert ssh.read_auth_info(str(info), os.getuid()) == info.read_text()
    assert ssh.read_auth_info(str(info), os.getuid() + 1) == ""      # someone else's file
    link = tmp_path / "link"
    link.symlink_to(info)
    assert ssh.read_auth_info(str(link), os.getuid()) == ""          # never through a symlink
    assert ssh.read_auth_info(str(tmp_path), os.getuid()) == ""      # not a regular file
    assert ssh.read_auth_info(str(tmp_path / "missing"), os.getuid()) == ""
    big = tmp_path / "big"
    big.write_bytes(b"x" * (ssh.MAX_AUTH_INFO_BYTES + 1))
    assert ssh.read_auth_info(str(big), os.getuid()) == ""


# -- the whole login ---------------------------------------------------------------------------

def test_exec_request(tmp_path):
    info = tmp_path / "sshauth.2"
    info.write_text(f"publickey ssh-ed25519 {KEY_B64}\n")
    environ = {"SSH_ORIGINAL_COMMAND": "ls -l; exit 3", "SSH_CONNECTION": "10.0.0.9 4000 10.0.0.1 22",
               "SSH_CLIENT": "10.0.0.9 4000 22", "SSH_USER_AUTH": str(info),
               "PATH": "/tmp/evil", "SUDO_UID": "1000"}
    login = ssh.ssh_login(ME, environ)
    assert login.command == ["/bin/bash", "-c", "ls -l; exit 3"]
    assert login.interactive is False
    assert login.start_fields == {"initial_command": ["ls -l; exit 3"],
                                  "ssh_key_fingerprint": FINGERPRINT}
    assert login.connection_fields == {"addr.remote": "10.0.0.9:4000", "addr.local": "10.0.0.1:22",
                                       "server_addr": "10.0.0.1:22", "proto": "ssh"}
    # Only sshd's own variables go on; the auth file is sshd's business.
    assert login.environment == {"SSH_ORIGINAL_COMMAND": "ls -l; exit 3",
                                 "SSH_CONNECTION": "10.0.0.9 4000 10.0.0.1 22",
                                 "SSH_CLIENT": "10.0.0.9 4000 22"}


def test_shell_request_with_a_terminal():
    login = ssh.ssh_login(ME, {"SSH_TTY": "/dev/pts/3", "SSH_CONNECTION": "::1 5 ::1 22"})
    assert login.command is None
    assert login.interactive is True
    assert login.start_fields["initial_command"] == []
    assert "ssh_key_fingerprint" not in login.start_fields
    assert login.environment == {"SSH_TTY": "/dev/pts/3", "SSH_CONNECTION": "::1 5 ::1 22"}
    assert login.connection_fields == {"addr.remote": "[::1]:5", "addr.local": "[::1]:22",
                                       "server_addr": "[::1]:22", "proto": "ssh"}


def test_an_ssh_session_without_usable_addresses_is_still_ssh():
    assert ssh.connection_fields("") == {"proto": "ssh"}
    assert ssh.connection_fields("10.0.0.9 x 10.0.0.1 22") == {"proto": "ssh"}


def test_an_empty_original_command_is_still_a_command():
    # `ssh host ''` is an exec request; sshd runs `$SHELL -c ''`, not a login shell.
    assert ssh.ssh_login(ME, {"SSH_ORIGINAL_COMMAND": ""}).command == ["/bin/bash", "-c", ""]


def test_foreign_auth_info_gives_no_fingerprint(tmp_path):
    info = tmp_path / "sshauth.3"
    info.write_text(f"publickey ssh-ed25519 {KEY_B64}\n")
    someone = Account("bob", os.getuid() + 1, os.getgid(), "/home/bob", "/bin/sh")
    login = ssh.ssh_login(someone, {"SSH_USER_AUTH": str(info), "SSH_ORIGINAL_COMMAND": "true"})
    assert "ssh_key_fingerprint" not in login.start_fields


# -- nested sessions ---------------------------------------------------------------------------

def test_enclosing_session_from_proc_cgroup(tmp_path):
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("12:pids:/\n0::/enhrec/5f1c3c1e-0000-4000-8000-000000000000\n")
    assert ssh.enclosing_session(str(cgroup)) == "5f1c3c1e-0000-4000-8000-000000000000"
    cgroup.write_text("0::/user.slice/user-1000.slice\n")
    assert ssh.enclosing_session(str(cgroup)) is None
    cgroup.write_text("0::/enhrec\n")
    assert ssh.enclosing_session(str(cgroup)) is None
    assert ssh.enclosing_session(str(tmp_path / "missing")) is None


# -- what --ssh accepts from whom (cli) ------------------------------------------------------

@pytest.fixture
def caller(monkeypatch):
    def as_uid(uid, inside=None):
        account = Account("caller", uid, uid, "/home/caller", "/bin/sh")
        monkeypatch.setattr(cli, "caller_account", lambda: account)
        monkeypatch.setattr(ssh, "enclosing_session", lambda: inside)
        return account
    return as_uid


@pytest.mark.parametrize("config_path, user_name, command, named", [
    ("/tmp/mine.yaml", None, (), "--config"),
    (None, "root", (), "--user"),
    (None, None, ("sh",), "COMMAND"),
])
def test_ssh_refuses_options_from_non_root(caller, config_path, user_name, command, named):
    caller(1000)
    with pytest.raises(EnhrecError, match=f"--ssh takes no {named} from a non-root caller"):
        cli.check_ssh_caller(config_path, user_name, command)


def test_ssh_refuses_to_start_inside_a_recorded_session(caller):
    caller(1000, inside="some-sid")
    with pytest.raises(EnhrecError, match="already inside recorded session some-sid"):
        cli.check_ssh_caller(None, None, ())


def test_ssh_accepts_root_with_options(caller):
    account = caller(0, inside="some-sid")
    assert cli.check_ssh_caller("/etc/x.yaml", "bob", ("id",)) is account


def test_ssh_accepts_a_plain_login(caller):
    account = caller(1000)
    assert cli.check_ssh_caller(None, None, ()) is account


def test_ssh_option_is_in_the_help(capsys):
    assert cli.main(["--help"], watchdog=None) == 0
    assert "--ssh" in capsys.readouterr().out
