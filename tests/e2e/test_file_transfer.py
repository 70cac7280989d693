"""scp (both protocols), sftp and rsync through the ForceCommand: files arrive intact, and the
recording shows the server side of each transfer and the files it opened."""

import filecmp
import os

import pytest


@pytest.fixture
def payload(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(300_000))
    return path


def home_path(host, name):
    return os.path.join(host.user.pw_dir, name)


@pytest.mark.parametrize("legacy", [True, False], ids=["scp-protocol", "sftp-protocol"])
def test_scp_both_ways(host, payload, tmp_path, legacy):
    name = f"scp-{'legacy' if legacy else 'sftp'}.bin"
    mark = host.mark()
    up = host.scp(str(payload), host.remote(name), legacy=legacy)
    assert up.returncode == 0, up.stderr
    assert filecmp.cmp(payload, home_path(host, name), shallow=False)
    back = tmp_path / "back.bin"
    down = host.scp(host.remote(name), str(back), legacy=legacy)
    assert down.returncode == 0, down.stderr
    assert filecmp.cmp(payload, back, shallow=False)

    upload, download = host.sessions_since(mark, 2)
    target = home_path(host, name)
    if legacy:
        assert upload.start["initial_command"] == [f"scp -t {name}"]
        assert download.start["initial_command"] == [f"scp -f {name}"]
        assert [e["argv"] for e in upload.commands_named("scp")] == [["-t", name]]
        assert [e["argv"] for e in download.commands_named("scp")] == [["-f", name]]
    else:
        # sshd's internal-sftp cannot run behind a ForceCommand: the system's sftp-server does.
        for session in (upload, download):
            assert session.start["initial_command"] == ["internal-sftp"]
            assert session.commands_named("sftp-server"), session.summary()
    # Relative paths resolve in the home directory, as with sshd; both opens are recorded.
    assert any(e["return_code"] >= 0 for e in upload.opened(target) + upload.opened(name))
    assert any(e["return_code"] >= 0 for e in download.opened(target) + download.opened(name))
    for session in (upload, download):
        assert session.end["exit_status"] == 0
        assert session.start["interactive"] is False


def test_sftp_batch(host, payload, tmp_path):
    batch = tmp_path / "batch"
    back = tmp_path / "from-sftp.bin"
    batch.write_text(f"mkdir sftp-dir\nput {payload} sftp-dir/put.bin\nls -l sftp-dir\n"
                     f"get sftp-dir/put.bin {back}\nrm sftp-dir/put.bin\nrmdir sftp-dir\n")
    mark = host.mark()
    result = host.sftp("-b", str(batch), host.target)
    assert result.returncode == 0, result.stderr
    assert "put.bin" in result.stdout
    assert filecmp.cmp(payload, back, shallow=False)
    assert not os.path.exists(home_path(host, "sftp-dir"))
    session = host.session_since(mark)
    assert session.start["initial_command"] == ["internal-sftp"]
    servers = session.commands_named("sftp-server")
    assert len(servers) == 1 and servers[0]["argv"] == [], session.summary()
    assert session.end["exit_status"] == 0


def test_sftp_with_the_server_path_as_command(host, payload, tmp_path):
    """`sftp -s /path/sftp-server` asks for the program itself; it runs through the shell."""
    server = next(p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
                  if os.path.exists(p))
    batch = tmp_path / "batch"
    batch.write_text(f"put {payload} sftp-path.bin\n")
    mark = host.mark()
    result = host.sftp("-s", server, "-b", str(batch), host.target)
    assert result.returncode == 0, result.stderr
    assert filecmp.cmp(payload, home_path(host, "sftp-path.bin"), shallow=False)
    session = host.session_since(mark)
    assert session.start["initial_command"] == [server]
    assert [e["path"] for e in session.commands_named("sftp-server")] == [server]


def test_rsync_both_ways(host, payload, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "payload.bin").write_bytes(payload.read_bytes())
    (tree / "note.txt").write_text("rsync over a recorded session\n")
    mark = host.mark()
    up = host.rsync("-a", f"{tree}/", host.remote("rsync-tree/"))
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = host.rsync("-a", host.remote("rsync-tree/"), f"{back}/")
    assert down.returncode == 0, down.stderr
    assert filecmp.dircmp(tree, back).diff_files == []
    assert filecmp.cmp(payload, back / "sub" / "payload.bin", shallow=False)

    upload, download = host.sessions_since(mark, 2)
    assert upload.start["initial_command"][0].startswith("rsync --server ")
    assert download.start["initial_command"][0].startswith("rsync --server --sender ")
    for session in (upload, download):
        servers = session.commands_named("rsync")
        assert servers and servers[0]["argv"][0] == "--server", session.summary()
        assert session.end["exit_status"] == 0
