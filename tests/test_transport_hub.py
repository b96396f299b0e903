"""The hub transport: many nodes of one process behind one ZeroMQ endpoint, real sockets, real crypto.

What it must keep from the per-node ZeroMQ transport: every message is a node's own, sealed for
one recipient, fresh; and what it adds, a routing prefix, must give an attacker nothing: a frame
set rerouted to another node, replayed, or that cannot be routed at all is dropped and counted,
and the nodes keep running.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq

from p2pfl import crypto, wire
from p2pfl.channel import Peer
from p2pfl.config import Cluster, ConfigError, NodeEntry, write_cluster
from p2pfl.messages import Kind, Message
from p2pfl.transports.hub import _ROUTE as ROUTE, Hub, HubTransport

LIMITS = wire.Limits.for_model(10_000)
WAIT = 10.0  # generous: only a broken transport ever waits this long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hubs:
    """Nodes 0..n-1 spread over hubs (`placement[i]`: node i's hub); every node neighbours every other."""

    def __init__(self, placement: list[int], context: zmq.Context) -> None:
        self.context = context
        ports = {h: free_port() for h in set(placement)}
        self.hubs = {h: Hub(f"hub+tcp://127.0.0.1:{p}", context, capacity=placement.count(h)) for h, p in ports.items()}
        self.keys = {i: crypto.generate_keypair() for i in range(len(placement))}
        self.peers = {i: Peer(self.hubs[h].address, self.keys[i][1]) for i, h in enumerate(placement)}
        self.nodes = {i: HubTransport(i, self.keys[i][0], self.peers, [j for j in self.peers if j != i], LIMITS,
                                      self.hubs[h]) for i, h in enumerate(placement)}
        self.sockets: list[zmq.Socket] = []
        self.sent: list[list[bytes]] = []  # what went out of every hub, as a wire tap sees it

    def start(self) -> None:
        for t in self.nodes.values():
            t.start()

    def tap(self) -> None:
        """Record every frame set the hubs send (an attacker on the network sees these bytes)."""
        for hub in self.hubs.values():
            original = hub._send

            def recording(sock, frames, sender, what, _original=original):
                self.sent.append([bytes(f) if not isinstance(f, zmq.Frame) else f.bytes for f in frames])
                return _original(sock, frames, sender, what)
            hub._send = recording

    def agree(self) -> None:
        deadline = time.monotonic() + WAIT
        while not all(t.established(j) for t in self.nodes.values() for j in t.neighbours):
            assert time.monotonic() < deadline, "sessions not agreed in time"
            for t in self.nodes.values():
                t.recv(0.002)

    def raw_dealer(self, hub: int) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.hubs[hub].endpoint)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for t in self.nodes.values():
            t.close()
        for s in self.sockets:
            s.close(linger=0)


@pytest.fixture
def make_hubs():
    context = zmq.Context()
    made: list[Hubs] = []

    def make(placement: list[int]) -> Hubs:
        made.append(Hubs(placement, context))
        made[-1].start()
        return made[-1]

    yield make
    for h in made:
        h.close()
    done = threading.Thread(target=context.term, daemon=True)
    done.start()
    done.join(WAIT)
    assert not done.is_alive(), "context.term() hung: a hub socket was left open"


def model(sender: int, round_: int = 1, seed: int = 0) -> Message:
    data = np.random.default_rng(seed).standard_normal(1000).astype(np.float32)
    return Message(Kind.MODEL, sender, round_, {"samples": 5}, {"delta": data})


def route(frame: bytes) -> tuple[bytes, int, int]:
    return ROUTE.unpack(frame)


def receive(t: HubTransport, timeout: float = WAIT) -> Message | None:
    return t.recv(timeout)


def test_nodes_on_one_hub_and_across_hubs_exchange_sealed_messages(make_hubs) -> None:
    h = make_hubs([0, 0, 1])  # nodes 0 and 1 share hub 0; node 2 is alone on hub 1
    h.agree()
    for sender, to in [(0, 1), (0, 2), (2, 1)]:
        sent = model(sender, seed=to)
        assert h.nodes[sender].send(to, sent)
        got = receive(h.nodes[to])
        assert got is not None and got.sender == sender
        assert np.array_equal(got.tensors["delta"], sent.tensors["delta"])
    # one connection per hub its nodes talk to (its own included), shared by its nodes: sockets
    # grow with hubs, not with nodes
    assert sorted(h.hubs[0]._dealers) == sorted([h.hubs[0].endpoint, h.hubs[1].endpoint])
    assert list(h.hubs[1]._dealers) == [h.hubs[0].endpoint]


def test_a_frame_set_rerouted_to_another_node_of_the_hub_is_dropped_as_wrong_recipient(make_hubs) -> None:
    h = make_hubs([0, 1, 1])  # node 0 on hub 0; nodes 1 and 2 on hub 1
    h.agree()
    h.tap()
    assert h.nodes[0].send(1, model(0))
    assert receive(h.nodes[1]) is not None
    captured = next(f for f in h.sent if f[0][:1] == b"M" and route(f[0])[1] == 1)
    attacker = h.raw_dealer(1)
    rerouted = [ROUTE.pack(b"M", 2, 0), *captured[1:]]  # the same sealed bytes, to node 2
    attacker.send_multipart(rerouted)
    assert receive(h.nodes[2], 1.0) is None
    assert h.nodes[2].stats.dropped.get("wrong_recipient") == 1
    attacker.send_multipart(captured[0:])  # and replayed, byte for byte, to node 1 itself
    assert receive(h.nodes[1], 1.0) is None
    assert h.nodes[1].stats.dropped.get("replay") == 1
    # the nodes keep working
    assert h.nodes[0].send(2, model(0, seed=9))
    got = receive(h.nodes[2])
    assert got is not None and got.sender == 0


def test_frames_a_hub_cannot_route_are_dropped_counted_and_harmless(make_hubs) -> None:
    h = make_hubs([0, 1])
    h.agree()
    attacker = h.raw_dealer(1)
    attacker.send_multipart([b"garbage"])  # one frame: no route and nothing to route
    attacker.send_multipart([b"M\x00\x01", b"x"])  # a routing frame too short
    attacker.send_multipart([ROUTE.pack(b"A", 1, 0), b"x"])  # an answer's route on the message connection
    attacker.send_multipart([ROUTE.pack(b"M", 77, 0), b"x"])  # no such node here
    attacker.send_multipart([ROUTE.pack(b"M", 1, 0), b"not a sealed frame"])
    assert receive(h.nodes[1], 1.0) is None
    assert h.hubs[1].dropped == {"bad_routing": 3, "unknown_node": 1}
    assert sum(h.nodes[1].stats.dropped.values()) == 1  # the last reached node 1's channels, which refused it
    assert h.nodes[0].send(1, model(0))
    got = receive(h.nodes[1])
    assert got is not None and got.sender == 0


def test_a_forged_sender_in_the_routing_prefix_fails_authentication(make_hubs) -> None:
    h = make_hubs([0, 1, 2])  # three hubs: node 2 is the attacker's own node, with its own key
    h.agree()
    h.tap()
    assert h.nodes[2].send(1, model(2))
    assert receive(h.nodes[1]) is not None
    captured = next(f for f in h.sent if f[0][:1] == b"M" and route(f[0])[1] == 1)
    attacker = h.raw_dealer(1)
    attacker.send_multipart([ROUTE.pack(b"M", 1, 0), *captured[1:]])  # "from node 0"
    assert receive(h.nodes[1], 1.0) is None  # the sealed header says 2; node 2's counter is spent: refused
    assert sum(h.nodes[1].stats.dropped.values()) == 1


def test_a_cluster_file_may_share_a_hub_address_but_not_a_plain_one(tmp_path) -> None:
    keys = [crypto.generate_keypair()[1] for _ in range(3)]
    shared = [NodeEntry(i, "hub+tcp://127.0.0.1:7000", keys[i]) for i in range(3)]
    write_cluster(tmp_path / "hub.toml", shared, "ring")
    assert len(Cluster.load(tmp_path / "hub.toml").nodes) == 3
    plain = [NodeEntry(i, "tcp://127.0.0.1:7000", keys[i]) for i in range(3)]
    write_cluster(tmp_path / "plain.toml", plain, "ring")
    with pytest.raises(ConfigError, match="also used by node 0"):
        Cluster.load(tmp_path / "plain.toml")
    bad = [NodeEntry(0, "hub+udp://127.0.0.1:7000", keys[0]), *shared[1:]]
    write_cluster(tmp_path / "bad.toml", bad, "ring")
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.address"):
        Cluster.load(tmp_path / "bad.toml")
