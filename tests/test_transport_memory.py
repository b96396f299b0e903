"""The in-memory transport against an attacker: it refuses what the ZeroMQ one refuses.

`MemoryTransport` shares `channel.Channels` with the ZeroMQ transport, so the same frames must
meet the same fate. The attacker holds node 0's private key on a bare connection to the victim
(`RawEndpoint`), agrees a session by hand (tests/helpers/handshake.py) and seals exactly what it
wants; a good message sent after the bad ones on the same connection arrives after them, so one
`recv` must skip the bad frames and return the good one (as tests/test_transport.py over TCP).
"""

from __future__ import annotations

import time

import pytest

from helpers.handshake import Initiator
from test_transport import CIPHERS, LIMITS, WAIT, assert_same, model_msg

from p2pfl import channel, crypto, session
from p2pfl.channel import KEY_CONTEXT, Peer
from p2pfl.messages import Kind, Message
from p2pfl.transports.memory import MemoryNetwork, MemoryTransport, RawEndpoint


class MemCluster:
    """n nodes on one MemoryNetwork; transports and raw endpoints made on demand, closed at the end."""

    def __init__(self, n: int) -> None:
        self.network = MemoryNetwork()
        self.keys = {i: crypto.generate_keypair() for i in range(n)}
        self.peers = {i: Peer(f"mem://node-{i}", self.keys[i][1]) for i in range(n)}
        self.opened: list = []

    def transport(self, i: int, neighbours=None, peers=None, cipher: str = "auto") -> MemoryTransport:
        neighbours = [j for j in self.peers if j != i] if neighbours is None else neighbours
        t = MemoryTransport(i, self.keys[i][0], peers or self.peers, neighbours, LIMITS, self.network, cipher=cipher)
        self.opened.append(t)
        t.start()
        return t

    def raw(self, i: int) -> RawEndpoint:
        endpoint = RawEndpoint(self.network, self.peers[i].address)
        self.opened.append(endpoint)
        return endpoint

    def key(self, a: int, b: int, private: bytes | None = None) -> bytes:
        return crypto.pairwise_key(private or self.keys[a][0], a, self.peers[b].public_key, b, KEY_CONTEXT)

    def close(self) -> None:
        for t in self.opened:
            t.close()


@pytest.fixture
def cluster():
    made: list[MemCluster] = []

    def make(n: int) -> MemCluster:
        made.append(MemCluster(n))
        return made[-1]

    yield make
    for c in made:
        c.close()


class Attacker:
    """Node 0 played by hand on a bare connection to `victim`, with a session agreed as a transport would."""

    def __init__(self, c: MemCluster, victim: MemoryTransport, sender: int = 0) -> None:
        self.endpoint = c.raw(victim.node_id)
        self.session = Initiator(sender, c.keys[sender][0], victim.node_id, c.peers[victim.node_id].public_key, LIMITS)
        self.session.agree(self.endpoint, pump=lambda: victim.recv(0))

    def seal(self, msg: Message, **changes) -> list[bytes]:
        return self.session.seal(msg, **changes)

    def send(self, frames: list) -> None:
        self.endpoint.send_multipart(frames)


def handshake(*transports: MemoryTransport) -> None:
    deadline = time.monotonic() + WAIT
    while not all(t.established(j) for t in transports for j in t.neighbours):
        assert time.monotonic() < deadline, "sessions not agreed in time"
        for t in transports:
            assert t.recv(0.001) is None


def then_good(attacker: Attacker, victim: MemoryTransport, bad: list[list]) -> None:
    for frames in bad:
        attacker.send(frames)
    good = model_msg(0, round_=3, seed=5)
    attacker.send(attacker.seal(good))
    assert_same(victim.recv(WAIT), good)


@pytest.mark.parametrize("cipher", CIPHERS)
def test_two_memory_transports_exchange_messages_intact(cluster, cipher):
    c = cluster(2)
    a, b = c.transport(0, cipher=cipher), c.transport(1, cipher=cipher)
    handshake(a, b)
    to_b, to_a = model_msg(0, seed=1), model_msg(1, seed=2)
    assert a.send(1, to_b) and b.send(0, to_a)
    assert_same(b.recv(WAIT), to_b)
    assert_same(a.recv(WAIT), to_a)
    assert b.stats.bytes_received == a.stats.bytes_sent and b.stats.sessions_accepted == 1
    assert 0 < a.stats.bytes_sent - to_b.payload_bytes() < 0.01 * to_b.payload_bytes()
    assert a.stats.dropped == b.stats.dropped == {}


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampered_frame_dropped(cluster, cipher):
    c = cluster(2)
    b = c.transport(1)
    attacker = Attacker(c, b)
    frames = attacker.seal(model_msg(0), cipher=cipher)
    frames[2] = frames[2][:100] + bytes([frames[2][100] ^ 1]) + frames[2][101:]
    header = attacker.seal(model_msg(0, seed=3), cipher=cipher)
    header[0] = header[0][:-1] + bytes([header[0][-1] ^ 1])  # the session id: an unknown session
    then_good(attacker, b, [frames, header])
    assert b.stats.dropped == {"tampered": 1, "no_session": 1}


@pytest.mark.parametrize("cipher", CIPHERS)
def test_replayed_frames_dropped(cluster, cipher):
    c = cluster(2)
    b = c.transport(1)
    attacker = Attacker(c, b)
    sent = [model_msg(0, seed=i) for i in range(3)]
    captured = [attacker.seal(m, cipher=cipher) for m in sent]
    attacker.send(captured[0])
    assert_same(b.recv(WAIT), sent[0])
    attacker.send(captured[0])
    attacker.send(captured[1])
    assert_same(b.recv(WAIT), sent[1])
    attacker.send(captured[0])
    attacker.send(captured[1])
    attacker.send(captured[2])
    assert_same(b.recv(WAIT), sent[2])
    assert b.stats.dropped == {"replay": 3}


def test_unknown_peer_forged_sender_and_wrong_recipient_dropped(cluster):
    c = cluster(3)
    b = c.transport(1, neighbours=[0])  # node 2 is in the cluster but not a neighbour
    attacker = Attacker(c, b)
    outsider, _ = crypto.generate_keypair()
    stranger = attacker.seal(model_msg(7), key=c.key(0, 1, private=outsider))  # id 7: nobody
    not_neighbour = attacker.seal(model_msg(2), key=c.key(2, 1))
    impostor = attacker.seal(model_msg(0), key=c.key(0, 1, private=outsider))  # 0's session, not 0's key
    static = attacker.seal(model_msg(0), key=c.key(0, 1), sid=b"")  # 0's static key, but no session
    elsewhere = attacker.seal(model_msg(0), recipient=2)
    then_good(attacker, b, [stranger, not_neighbour, impostor, static, elsewhere])
    assert b.stats.dropped == {"unknown_peer": 2, "tampered": 1, "no_session": 1, "wrong_recipient": 1}


def test_garbage_dropped_and_counted_in_bytes(cluster):
    c = cluster(2)
    b = c.transport(1)
    attacker = Attacker(c, b)
    garbage = [[b"garbage"], [b"\xc1" * 50, b"x"], [b"\x92\x01", b"", b""], []]
    then_good(attacker, b, garbage)
    assert b.stats.dropped == {"bad_header": 2, "truncated": 2}
    assert b.stats.messages_received == 1


def test_a_recorded_session_replayed_at_a_restarted_receiver_is_refused(cluster):
    c = cluster(2)
    b = c.transport(1)
    attacker = Attacker(c, b)
    data = [attacker.seal(model_msg(0, round_=r, seed=r)) for r in range(1, 4)]
    for frames in data:
        attacker.send(frames)
        assert b.recv(WAIT) is not None
    recording = [*attacker.session.sent, *data]  # INIT, CONFIRM, three models: the whole session
    b.close()
    fresh = c.transport(1)  # the same node restarted at the same address: a new ephemeral key
    replayer = c.raw(1)
    for frames in recording:
        replayer.send_multipart(frames)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert fresh.recv(0.05) is None
    assert fresh.stats.messages_received == 0 and fresh.stats.sessions_accepted == 0
    assert fresh.stats.dropped == {"no_session": 1 + len(data)}


def test_a_second_live_process_with_the_same_identity_is_refused(cluster, monkeypatch):
    monkeypatch.setattr(channel, "DUPLICATE_GRACE_S", 1.0)
    c = cluster(2)
    real, b = c.transport(0), c.transport(1)
    handshake(real, b)
    impostor = c.transport(0, peers={**c.peers, 0: Peer("mem://elsewhere", c.peers[0].public_key)})
    assert impostor.send(1, Message(Kind.MODEL, 0, 7, {"impostor": True}))
    deadline = time.monotonic() + WAIT
    with pytest.raises(session.DuplicateIdentity):
        while time.monotonic() < deadline:
            assert b.recv(0.01) is None  # nothing of the impostor is delivered
            real.recv(0.01)
            impostor.recv(0.01)
    assert b.stats.dropped.get("duplicate_identity", 0) >= 1
    assert real.stats.dropped.get("duplicate_identity", 0) >= 1  # told of the conflict
    good = model_msg(0, seed=9)
    assert real.send(1, good)  # the first process keeps its session
    assert_same(b.recv(WAIT), good)


def test_a_restarted_sender_gets_a_new_session_at_once(cluster):
    c = cluster(2)
    a, b = c.transport(0), c.transport(1)
    handshake(a, b)
    a.close()  # its connection is gone at once: the next process of node 0 is a restart, not a rival
    again = c.transport(0)
    handshake(again, b)
    msg = model_msg(0, round_=2, seed=2)
    assert again.send(1, msg)
    assert_same(b.recv(WAIT), msg)
    assert b.stats.dropped == {} and b.stats.sessions_accepted == 2


def test_send_never_blocks_and_fails_once_the_queue_is_full(cluster):
    c = cluster(2)
    a, b = c.transport(0), c.transport(1)
    handshake(a, b)
    results = [a.send(1, model_msg(0, n=1000)) for _ in range(200)]  # b never receives
    accepted = results.count(True)
    assert results == [True] * accepted + [False] * (len(results) - accepted)
    assert a.stats.dropped == {"send_queue_full": len(results) - accepted}
    got = 0
    while b.recv(0) is not None:
        got += 1
    assert got == accepted


# -- round protocols over in-memory transports (p2pfl.inprocess) ------------------------------------


def test_round_protocols_over_memory_transports_secure_matches_plain():
    import networkx as nx
    import numpy as np

    from p2pfl import topology, wire
    from p2pfl.inprocess import drive_round, memory_transports
    from p2pfl.protocols import GossipRound
    from p2pfl.secagg import SecAggParams, SecureGossipRound

    graph = nx.random_regular_graph(4, 8, seed=1)
    adjacency = {v: sorted(graph.neighbors(v)) for v in graph.nodes}
    weights = {v: topology.mh_weights(graph, v) for v in graph.nodes}
    xs = {v: np.random.default_rng(v).standard_normal(500).astype(np.float32) for v in graph.nodes}
    keys = {v: crypto.generate_keypair() for v in graph.nodes}

    def secret(v):
        return lambda peer, context: crypto.pairwise_key(keys[v][0], v, keys[peer][1], peer, context)

    transports = memory_transports(adjacency, wire.Limits.for_model(500))
    try:
        plain = {v: GossipRound(v, 1, weights[v], xs[v]) for v in graph.nodes}
        assert drive_round(plain, transports) == []
        secure = {v: SecureGossipRound(v, 2, adjacency, weights[v], xs[v], SecAggParams(), secret(v))
                  for v in graph.nodes}
        drive_round(secure, transports)
        for v in graph.nodes:
            assert np.allclose(secure[v].result(), plain[v].result(), atol=1e-3)
        # held back: node 0's model never reaches node adjacency[0][0], whose round ends at its deadline
        late = {v: GossipRound(v, 3, weights[v], xs[v]) for v in graph.nodes}
        held = drive_round(late, transports, hold=lambda v, to, msg: v == 0 and to == adjacency[0][0])
        assert [(v, to) for v, to, _ in held] == [(0, adjacency[0][0])]
        assert not np.array_equal(late[adjacency[0][0]].result(), plain[adjacency[0][0]].result())
        assert all(t.stats.dropped == {} for t in transports.values())
        # node 0 crashes as it is about to send its model: its neighbours finish at their deadline without it
        crashed = {v: GossipRound(v, 4, weights[v], xs[v]) for v in graph.nodes}
        dead: set[int] = set()
        drive_round(crashed, transports, hold=lambda v, to, msg: v == 0 and dead.add(0), dead=dead)
        assert dead == {0} and not crashed[0].finished()
        assert all(crashed[v].finished() for v in graph.nodes if v != 0)
        assert not np.array_equal(crashed[adjacency[0][0]].result(), plain[adjacency[0][0]].result())
    finally:
        for t in transports.values():
            t.close()
