"""Red team: destinations written in another form, and sockets connected more than once. The
destination is the kernel's copy; an IPv4-mapped IPv6 address (::ffff:a.b.c.d), whose packets
are IPv4, is written as the IPv4 address (docs/events.md)."""

import socket


def _network(run, pid, port):
    return [(e["operation"], e["protocol"], e["dst_addr"], e["version"], e.get("src_addr"))
            for e in run.of("session.network", pid, dst_port=port)]


def test_tcp_connect_to_an_ipv4_mapped_address_is_the_ipv4_address(run_in_session):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        code = ("import socket\n"
                "s = socket.socket(socket.AF_INET6)\n"
                f"s.connect(('::ffff:127.0.0.1', {port}))\n"
                "print('CONNECT', s.getsockname()[1])\n")
        run = run_in_session(["python3", "-c", code])
    (sport,) = run.printed_once("CONNECT")
    pid = run.pid_of("python3")
    assert _network(run, pid, port) == [(0, "tcp", "127.0.0.1", 4, "127.0.0.1")], (
        run.sends_and_connects())
    (event,) = run.of("session.network", pid, dst_port=port)
    assert (event.get("src_port"), event["connect_return_code"]) == (int(sport), 0), run.brief(event)


def test_udp_socket_connected_then_connected_elsewhere(run_in_session):
    """One IPv6 UDP socket connected to A (v4-mapped), sends, is connected to B, sends, and
    sends to C with an address of its own: three destinations, each recorded as itself."""
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for r in receivers:
            r.bind(("127.0.0.1", 0))
            r.settimeout(5)
        a, b, c = (r.getsockname()[1] for r in receivers)
        code = ("import socket\n"
                "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
                f"s.connect(('::ffff:127.0.0.1', {a})); s.send(b'a')\n"
                f"s.connect(('::ffff:127.0.0.1', {b})); s.send(b'b')\n"
                f"s.sendto(b'c', ('::ffff:127.0.0.1', {c}))\n"
                "print('SENT')\n")
        run = run_in_session(["python3", "-c", code])
        assert [r.recv(4) for r in receivers] == [b"a", b"b", b"c"]
    finally:
        for r in receivers:
            r.close()
    pid = run.pid_of("python3")
    for port in (a, b):
        connects = [e for e in _network(run, pid, port) if e[0] == 0]
        assert connects == [(0, "udp", "127.0.0.1", 4, "0.0.0.0")], run.sends_and_connects()
    assert (1, "udp", "127.0.0.1", 4, "0.0.0.0") in _network(run, pid, c), run.sends_and_connects()
    assert not [e for e in run.session.networks if e["dst_addr"].startswith("::ffff:")]
