"""Compatibility with real Teleport events (tests/teleport_compat.py has the rules and where the
fixtures come from): first the fixtures and the rules against each other, then the events our
own code builds, for every kind, with and without an SSH connection and a terminal."""

import errno
import os
import socket

import orjson
import pytest

from enhrec_wrap.config import Config
from enhrec_wrap.events import teleport as events
from enhrec_wrap.host.privileges import Account
from enhrec_wrap.events.kernel import KernelEvents
from enhrec_wrap.kernel import abi
from enhrec_wrap.login import ssh
from enhrec_wrap.session import lifecycle
from enhrec_wrap.session.lifecycle import Request, Session

SID = "0b5f7c1e-6c7e-4a43-9a8e-2f3f6a1d2c4b"
SERVER_ID = "5d2f4d7a-92c4-4c1e-8b3c-7b0e1f6a9d10"
CGROUP_ID = 4294968064
SSH_CONNECTION = "192.0.2.7 51234 192.0.2.1 22"


# --- the fixtures and the rules -----------------------------------------------------------------

def test_fixtures_hold_every_kind(teleport_compat):
    real = teleport_compat.real_events()
    assert all(real[kind] for kind in teleport_compat.TELEPORT_KINDS)
    lines = teleport_compat.FIXTURES.read_text().splitlines()
    assert len(lines) == 11 and len(set(lines)) == 11


def test_real_events_have_the_forms_the_rules_expect(teleport_compat):
    """The form table is Teleport's: every value of the real events fits it, but for the one
    known deviation of Elastic's hand-edited line."""
    misfits = set()
    for kind, found in teleport_compat.real_events().items():
        for event in found:
            for name, value in event.items():
                assert name in teleport_compat.FORMS, f"{kind}.{name} has no form rule"
                if not teleport_compat.FORMS[name][1](value):
                    misfits.add((kind, name, value))
    assert misfits == teleport_compat.FIXTURE_QUIRKS


def test_real_events_use_only_the_fields_of_the_proto(teleport_compat):
    for kind, found in teleport_compat.real_events().items():
        for event in found:
            assert event.keys() <= teleport_compat.PROTO_FIELDS[kind], (kind, event.keys() -
                                                                     teleport_compat.PROTO_FIELDS[kind])


def test_real_events_pass_the_check(teleport_compat):
    """What the check asks of ours, Teleport's own events give (but the fields we do not write,
    and the quirk): the check is not stricter than Teleport."""
    for kind, found in teleport_compat.real_events().items():
        for event in found:
            ssh_session = "proto" in event
            terminal = "size" in event
            left = [p for p in teleport_compat.problems(event, ssh_session, terminal)
                    if "lacks" not in p and "dst_port = '3000'" not in p]
            assert left == [], (kind, left)


def test_the_renamed_fields_include_what_broke_consumers(teleport_compat):
    renames = teleport_compat.PIPELINE_RENAMES
    assert renames["return_code"] == "process.exit_code"
    assert renames["addr.remote"].startswith("client.")
    assert renames["operation"] == "teleport.audit.network.operation"


def test_the_check_finds_what_schema_1_got_wrong(teleport_compat):
    """Issue 14's findings, as schema 1 wrote them, each caught."""
    (teleport_network, *_) = teleport_compat.real_events()["session.network"]
    network = {**teleport_network, "return_code": -111}
    del network["operation"], network["action"]
    found = teleport_compat.problems(network, ssh=False, terminal=False)
    assert "session.network lacks operation, which Teleport's events carry" in found
    assert "session.network lacks action, which Teleport's events carry" in found
    assert any(p.startswith("session.network.return_code is ours but Teleport's name: Elastic's "
                            "pipeline makes it process.exit_code") for p in found), found

    (teleport_command, *_) = teleport_compat.real_events()["session.command"]
    command = {**teleport_command, "return_code": None}
    assert teleport_compat.problems(command, ssh=False, terminal=False) == [
        "session.command.return_code = None: Teleport's is int32"]

    (_, _, teleport_end) = teleport_compat.real_events()["session.end"]
    end = {k: v for k, v in teleport_end.items() if not k.startswith("addr.")}
    assert "session.end lacks addr.local, which Teleport's events carry" in \
        teleport_compat.problems(end, ssh=True, terminal=False)
    assert not any("addr." in p for p in teleport_compat.problems(end, ssh=False, terminal=False))

    start = {**teleport_compat.real_events()["session.start"][0], "time": "2020-03-30 15:58:54"}
    assert "session.start.time = '2020-03-30 15:58:54': Teleport's is RFC 3339 UTC time" in \
        teleport_compat.problems(start, ssh=True, terminal=True)
    undocumented = {**teleport_command, "made_up_field": 1}
    assert teleport_compat.problems(undocumented, ssh=False, terminal=False) == [
        "session.command.made_up_field is ours and not listed under \"Ours\" in docs/events.md"]


def test_docs_list_our_fields(teleport_compat):
    ours = teleport_compat.documented_as_ours()
    assert {"schema_version", "interactive", "ppid", "ssh_key_fingerprint", "connect_return_code",
            "return_code_unknown", "exit_status", "lost_events"} <= ours
    # Nothing listed as ours is a Teleport field of the same kind with another meaning.
    assert not ours & {"return_code", "operation", "action", "cluster_name", "proto"}


# --- events our code builds -----------------------------------------------------------------------

def factory():
    return events.EventFactory(SID, SERVER_ID, "node-1", "alice", "alice", "main")


def kernel_events(records):
    """One of each: successful and failed exec, opens that succeeded and failed, TCP and UDP
    connects over IPv4 and IPv6, refused and in progress, a connect with no connect() call (io_uring,
    32-bit, Fast Open), an unconnected UDP send, and a refused call."""
    made = [KernelEvents().build(record) for record in (
        records.exec(2653, b"/bin/ping", [b"ping", b"google.com"], comm=b"ping"),
        records.failed_exec(2654, b"/nonexistent", [b"nonexistent"], -errno.ENOENT),
        records.open(b"/etc/ld.so.cache", 3, resolved=b"/etc/ld.so.cache", flags=0o2000000),
        records.open(b"/root/.secret", -errno.EACCES),
        records.connect(socket.AF_INET, "127.0.0.1", "127.0.0.1", 443, 0, abi.CONNECT_TCP,
                        sport=50000),
        records.connect(socket.AF_INET, "127.0.0.1", "0.0.0.0", 9, -errno.ECONNREFUSED,
                        abi.CONNECT_TCP),
        records.connect(socket.AF_INET6, "::1", "::", 53, 0, 0, protocol=17),
        records.connect(socket.AF_INET6, "2001:db8::1", "::1", 443, -errno.EINPROGRESS,
                        abi.CONNECT_TCP),
        records.connect(socket.AF_INET, "192.0.2.9", "0.0.0.0", 80, 0, abi.CONNECT_NO_SYSCALL),
        records.connect(socket.AF_INET, "192.0.2.53", "0.0.0.0", 53, 0, 0, protocol=17,
                        record_type=abi.RECORD_SEND),
        records.refused(425, 0xC000003E, abi.REFUSED_ERRNO, ret=-errno.EPERM))]
    f = factory()
    return [orjson.loads(events.encode(f.make_from(kind, 1_000_000, fields)))
            for kind, fields in made]


def test_kernel_events_are_compatible(teleport_compat, records):
    made = kernel_events(records)
    assert sorted({e["event"] for e in made}) == ["session.command", "session.disk",
                                                   "session.network", "session.refused"]
    teleport_compat.assert_compatible(made, ssh=False, terminal=False)


def test_network_events_say_connect_or_send_observed_and_keep_their_result_apart(
        teleport_compat, records):
    networks = [e for e in kernel_events(records) if e["event"] == "session.network"]
    assert len(networks) == 6
    connects, sends = networks[:5], networks[5:]
    assert all((e["operation"], e["action"]) == (0, 0) for e in connects)   # CONNECT, OBSERVED
    assert [(e["operation"], e["action"], e["protocol"]) for e in sends] == [(1, 0, "udp")]
    assert all("return_code" not in e for e in networks)
    assert [e["connect_return_code"] for e in connects] == [0, -111, 0, -115, None]
    assert all("connect_return_code" not in e for e in sends)


def test_exec_results_are_real_results(teleport_compat, records):
    commands = {e["path"]: e for e in kernel_events(records) if e["event"] == "session.command"}
    assert commands["/bin/ping"]["return_code"] == 0
    assert commands["/nonexistent"]["return_code"] == -errno.ENOENT
    assert all("return_code_unknown" not in e for e in commands.values())


def session_events(tmp_path, monkeypatch, ssh_connection=None, terminal=False,
                   cluster_name=None):
    """session.start and session.end as Session writes them (recording off: no BPF needed)."""
    config = Config(data_dir=str(tmp_path), enabled=False, nodename="node-1",
                    cluster_name=cluster_name)
    account = Account("alice", os.getuid(), os.getgid(), str(tmp_path), "/bin/sh")
    request = Request(account=account, user="alice", command=None if terminal else ["true"],
                      interactive=terminal)
    if ssh_connection is not None:
        login = ssh.ssh_login(account, {"SSH_CONNECTION": ssh_connection,
                                        **({"SSH_TTY": "/dev/pts/1"} if terminal else
                                           {"SSH_ORIGINAL_COMMAND": "true"})})
        request.start_fields, request.connection_fields = login.start_fields, login.connection_fields
    # Whether the test runner has a terminal must not decide the test.
    monkeypatch.setattr(lifecycle, "_terminal_size", lambda: "80:25" if terminal else None)
    session = Session(config, request)
    try:
        session.write_start()
        session.write_end(exit_status=0, killed=0)
    finally:
        session.close()
    with open(tmp_path / "log" / "events.log", "rb") as f:
        return [orjson.loads(line) for line in f.read().splitlines()]


@pytest.mark.parametrize("ssh_connection, terminal", [
    (None, False), (SSH_CONNECTION, False), (SSH_CONNECTION, True), ("::1 40000 ::1 2222", True),
])
def test_session_start_and_end_are_compatible(teleport_compat, tmp_path, monkeypatch,
                                              ssh_connection, terminal):
    made = session_events(tmp_path, monkeypatch, ssh_connection, terminal)
    assert [e["event"] for e in made] == ["session.start", "session.end"]
    teleport_compat.assert_compatible(made, ssh=ssh_connection is not None, terminal=terminal)
    for e in made:
        assert e["session_recording"] == "off"   # the terminal is not recorded
        assert e["cluster_name"] == "node-1"     # no auth_service.cluster_name: the nodename


def test_ssh_session_end_has_the_connection_of_its_start(tmp_path, monkeypatch):
    start, end = session_events(tmp_path, monkeypatch, SSH_CONNECTION)
    for e in (start, end):
        assert (e["addr.remote"], e["addr.local"], e["server_addr"], e["proto"]) == \
            ("192.0.2.7:51234", "192.0.2.1:22", "192.0.2.1:22", "ssh")


def test_a_local_session_has_no_connection_fields(tmp_path, monkeypatch):
    for e in session_events(tmp_path, monkeypatch):
        assert not e.keys() & {"addr.remote", "addr.local", "server_addr", "proto"}


def test_cluster_name_comes_from_the_config(tmp_path, monkeypatch):
    made = session_events(tmp_path, monkeypatch, cluster_name="main")
    assert {e["cluster_name"] for e in made} == {"main"}
