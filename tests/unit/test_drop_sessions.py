"""kernel/host.py drop_sessions: dead sessions leave the set's maps in one batch per map (each
delete from the hash of maps waits for an RCU grace period: one at a time, 4,096 dead sessions
held a start for 120 s), and only the keys that are there are in the batch."""

import struct

from enhrec_wrap.kernel import abi, host


def fake_maps(monkeypatch, present):
    calls = []
    fds = {"session_rings": 10, "lost_events": 11}
    monkeypatch.setattr(host, "obj_get", lambda path: fds[path.rsplit("map-", 1)[1]])
    monkeypatch.setattr(host.os, "close", lambda fd: None)
    monkeypatch.setattr(host, "map_keys", lambda fd, size: list(present[fd]))
    monkeypatch.setattr(host, "map_delete_batch", lambda fd, keys: calls.append(("batch", fd, keys)))
    monkeypatch.setattr(host, "map_delete", lambda fd, key: calls.append(("one", fd, key)))
    return calls


def ring_keys(cgroup_id):
    return [host.RING_KEY.pack(cgroup_id, s, 0) for s in abi.RING_STREAM_NAMES]


def test_many_dead_sessions_go_in_one_batch_per_map(monkeypatch):
    dead = list(range(1000, 1300))
    present = {10: [k for c in dead + [7] for k in ring_keys(c)],
               11: [struct.pack("=Q", c) for c in dead + [7]]}
    calls = fake_maps(monkeypatch, present)
    host.drop_sessions("v" * 64, dead)
    assert [(kind, fd) for kind, fd, _ in calls] == [("batch", 10), ("batch", 11)]
    assert calls[0][2] == [k for c in dead for k in ring_keys(c)]
    assert calls[1][2] == [struct.pack("=Q", c) for c in dead]


def test_a_session_with_some_rings_only_loses_those(monkeypatch):
    present = {10: ring_keys(5)[:1], 11: []}
    calls = fake_maps(monkeypatch, present)
    host.drop_sessions("v" * 64, [5])
    assert calls == [("batch", 10, ring_keys(5)[:1])]


def test_no_dead_session_touches_no_map(monkeypatch):
    calls = fake_maps(monkeypatch, {10: [], 11: []})
    host.drop_sessions("v" * 64, [])
    assert calls == []
