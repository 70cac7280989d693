"""Compatibility with real Teleport events (tests/teleport_compat.py), checked on the events of
real recorded sessions: execs that succeed and fail, opens that succeed and fail, TCP and UDP
connects over IPv4 and IPv6. Installed wrapper, root, real BPF."""

import errno
import json
import os
import socket

import pytest

PYTHON = "/usr/bin/python3"
# Runs inside the session: every kind of kernel event, each once or twice.
DRIVER = r'''
import json, os, socket, subprocess, sys
tcp4, tcp6, closed, results = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open("/etc/hostname") as f:
    f.read()
try:
    open("/nonexistent/compat")
except FileNotFoundError:
    pass
subprocess.run(["/bin/true"], check=True)
try:
    subprocess.run(["/nonexistent/compat-prog"])
except FileNotFoundError:
    pass
socket.create_connection(("127.0.0.1", tcp4)).close()
socket.create_connection(("::1", tcp6)).close()
try:
    socket.create_connection(("127.0.0.1", closed)).close()
except ConnectionRefusedError:
    pass
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    udp = socket.socket(family, socket.SOCK_DGRAM)
    udp.connect((host, 9))
    udp.close()
import ctypes   # io_uring_setup(1, params): refused by the session's seccomp filter
params = ctypes.create_string_buffer(120)
assert ctypes.CDLL(None, use_errno=True).syscall(425, 1, params) == -1
with open(results, "w") as f:
    json.dump({"pid": os.getpid()}, f)
'''


def record_kernel_session(recorder):
    driver = os.path.join(recorder.dir, "driver.py")
    with open(driver, "w") as f:
        f.write(DRIVER)
    results = os.path.join(recorder.dir, "results.json")
    with socket.socket(socket.AF_INET) as listener4, socket.socket(socket.AF_INET6) as listener6, \
            socket.socket(socket.AF_INET) as closed:
        listener4.bind(("127.0.0.1", 0))
        listener4.listen(8)
        listener6.bind(("::1", 0))
        listener6.listen(8)
        closed.bind(("127.0.0.1", 0))   # bound, never listening: connects to it are refused
        ports = [s.getsockname()[1] for s in (listener4, listener6, closed)]
        _, session = recorder.record([PYTHON, "-I", driver, *map(str, ports), results])
    with open(results) as f:   # written last: the driver got through all of it
        driver_pid = json.load(f)["pid"]
    assert session.command(path=PYTHON)["pid"] == driver_pid
    return session, ports


@pytest.fixture(scope="module")
def kernel_session(make_recorder):
    return record_kernel_session(make_recorder("compat"))


def test_every_event_of_a_recorded_session_is_compatible(kernel_session, teleport_compat):
    session, _ = kernel_session
    kinds = {e["event"] for e in session.events}
    # session.io_uring needs refuse_io_uring: false (tests/adversarial records one).
    assert kinds == set(teleport_compat.KINDS) - {"session.io_uring"}, kinds
    teleport_compat.assert_compatible(session.events, ssh=False, terminal=False)


def test_execs_and_opens_have_teleports_result_codes(kernel_session):
    session, _ = kernel_session
    assert session.command(path="/bin/true")["return_code"] == 0
    assert session.command(path="/nonexistent/compat-prog")["return_code"] == -errno.ENOENT
    assert all("return_code_unknown" not in e for e in session.commands)
    opened = {e["path"]: e["return_code"] for e in session.disks}
    assert opened["/etc/hostname"] >= 0 and opened["/nonexistent/compat"] == -errno.ENOENT


def test_tcp_and_udp_connects_are_teleports_connect_operation(kernel_session):
    session, (tcp4, tcp6, closed) = kernel_session
    found = {(e["dst_addr"], e["dst_port"], e["protocol"]): e for e in session.networks}
    expected = {("127.0.0.1", tcp4, "tcp"): 0, ("::1", tcp6, "tcp"): 0,
                ("127.0.0.1", closed, "tcp"): -errno.ECONNREFUSED,
                ("127.0.0.1", 9, "udp"): 0, ("::1", 9, "udp"): 0}
    assert {key: found[key]["connect_return_code"] for key in expected} == expected, found.keys()
    for e in session.networks:
        assert (e["operation"], e["action"]) == (0, 0)   # CONNECT, OBSERVED
        assert "return_code" not in e
        assert e["version"] == (6 if ":" in e["dst_addr"] else 4)


def test_events_carry_the_nodename_as_cluster_name(kernel_session):
    session, _ = kernel_session
    assert {e["cluster_name"] for e in session.events} == {socket.gethostname()}
    assert session.start["session_recording"] == session.end["session_recording"] == "off"
    assert not session.start.keys() & {"addr.remote", "addr.local", "server_addr", "proto"}


def test_cluster_name_from_auth_service(recorder, teleport_compat):
    recorder.configure("auth_service:\n  enabled: false\n  cluster_name: compat-cluster\n")
    _, session = recorder.record(["/bin/cat", "/etc/hostname"])
    assert {e["cluster_name"] for e in session.events} == {"compat-cluster"}
    teleport_compat.assert_compatible(session.events, ssh=False, terminal=False)
