"""The transport seam: one node-level exchange over every address scheme, and the registry.

Real nodes (training, protocols, sessions, AEAD) over tcp:// and ipc:// (real sockets),
inproc:// (one zmq.Context) and mem:// (no sockets): with every message arriving in time the
same seed gives bit-identical models whatever carries the bytes, and nothing is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zmq

from p2pfl import channel, crypto, transport, wire
from p2pfl.channel import Peer
from p2pfl.config import ExperimentConfig
from p2pfl.inprocess import run_nodes
from p2pfl.messages import Kind, Message
from p2pfl.transports.memory import MemoryNetwork, MemoryTransport
from p2pfl.transports.zeromq import ZmqTransport

LIMITS = wire.Limits.for_model(10_000)
WAIT = 10.0


@pytest.fixture(scope="module")
def over_tcp(tmp_path_factory) -> dict[int, np.ndarray]:
    """The reference: the run over loopback TCP, as `p2pfl simulate` runs it."""
    return final_models("tcp", tmp_path_factory.mktemp("tcp"))


CFG = ExperimentConfig(nodes=4, topology="ring", rounds=3, seed=3, round_timeout=30.0).validate()


def final_models(scheme: str, run_dir: Path, cfg: ExperimentConfig = CFG) -> dict[int, np.ndarray]:
    nodes, records = run_nodes(cfg, run_dir, scheme)
    for i, node in nodes.items():
        assert node.transport.stats.dropped == {}, (scheme, i, node.transport.stats.dropped)
        assert [r.arrived for r in records[i]] == [len(node.neighbours)] * cfg.rounds
    expected = MemoryTransport if scheme == "mem" else ZmqTransport
    assert all(type(n.transport) is expected for n in nodes.values())
    return {i: n.trainer.get_flat() for i, n in nodes.items()}


@pytest.mark.parametrize("scheme", ["ipc", "inproc", "mem"])
def test_the_same_run_gives_bit_identical_models_over_every_scheme(scheme, tmp_path, over_tcp):
    got = final_models(scheme, tmp_path)
    assert got.keys() == over_tcp.keys()
    for i in got:
        assert np.array_equal(got[i], over_tcp[i]), f"node {i} over {scheme}:// differs from tcp://"


def test_secure_aggregation_over_ipc_and_mem_matches_tcp(tmp_path):
    cfg = ExperimentConfig(nodes=4, topology="complete", rounds=2, seed=5, secure_agg=True,
                           round_timeout=30.0).validate()
    runs = {s: final_models(s, tmp_path / s, cfg) for s in ("tcp", "ipc", "mem")}
    for s in ("ipc", "mem"):
        for i in runs["tcp"]:
            assert np.array_equal(runs[s][i], runs["tcp"][i]), (s, i)


# -- transports made through the registry ----------------------------------------------------------


def pair(addresses: dict[int, str], context) -> tuple[transport.MessageTransport, transport.MessageTransport]:
    keys = {i: crypto.generate_keypair() for i in (0, 1)}
    peers = {i: Peer(addresses[i], keys[i][1]) for i in (0, 1)}
    return tuple(transport.create(i, keys[i][0], peers, [1 - i], LIMITS, context) for i in (0, 1))  # type: ignore[return-value]


def exchange(a, b) -> None:
    a.start()
    b.start()
    msg = Message(Kind.MODEL, 0, 1, {"samples": 3}, {"delta": np.arange(5000, dtype=np.float32)})
    assert a.send(1, msg)
    got = None
    for _ in range(int(WAIT / 0.01)):
        a.recv(0.005)
        got = b.recv(0.005)
        if got is not None:
            break
    assert got is not None and got.meta == {"samples": 3}
    assert np.array_equal(got.tensors["delta"], msg.tensors["delta"])
    assert b.stats.bytes_received == a.stats.bytes_sent  # handshake steps and the message
    assert a.stats.dropped == b.stats.dropped == {}


@pytest.mark.parametrize("scheme", ["ipc", "inproc"])
def test_zeromq_transport_over_ipc_and_inproc(scheme, tmp_path):
    context = zmq.Context()
    where = {"ipc": f"ipc://{tmp_path}/n", "inproc": f"inproc://{tmp_path}/n"}[scheme]
    a, b = pair({0: f"{where}0", 1: f"{where}1"}, context)
    assert isinstance(a, ZmqTransport)
    try:
        exchange(a, b)
    finally:
        a.close()
        b.close()
        context.term()


def test_memory_transport_through_the_registry():
    a, b = pair({0: "mem://a", 1: "mem://b"}, MemoryNetwork())
    assert isinstance(a, MemoryTransport)
    try:
        exchange(a, b)
    finally:
        a.close()
        b.close()


def test_the_registry_refuses_what_it_cannot_serve():
    keys = {i: crypto.generate_keypair() for i in (0, 1)}
    mixed = {0: Peer("mem://a", keys[0][1]), 1: Peer("tcp://127.0.0.1:1", keys[1][1])}
    with pytest.raises(ValueError, match="needs another transport"):
        transport.create(0, keys[0][0], mixed, [1], LIMITS)
    with pytest.raises(ValueError, match="no transport for udp://"):
        transport.create(0, keys[0][0], {0: Peer("udp://x:1", keys[0][1])}, [], LIMITS)
    with pytest.raises(ValueError, match="SCHEME://"):
        transport.create(0, keys[0][0], {0: Peer("127.0.0.1:1", keys[0][1])}, [], LIMITS)
    with pytest.raises(ValueError, match="not a mem://"):  # an implementation checks its own addresses too
        MemoryTransport(0, keys[0][0], mixed, [1], LIMITS, MemoryNetwork())
    with pytest.raises(ValueError, match="is not one of tcp, ipc, inproc"):
        ZmqTransport(1, keys[1][0], mixed, [0], LIMITS)


def test_a_registered_scheme_is_served_by_its_factory(monkeypatch):
    monkeypatch.setattr(transport, "_registered", {})
    made = []

    def factory(*args, **options):
        made.append((args[0], options))
        return MemoryTransport(*args, **options)

    transport.register("test", factory)
    monkeypatch.setattr("p2pfl.transports.memory.SCHEME", "test")
    key, public = crypto.generate_keypair()
    t = transport.create(0, key, {0: Peer("test://me", public)}, [], LIMITS, MemoryNetwork(), cipher=crypto.XCHACHA20POLY1305)
    assert made == [(0, {"cipher": crypto.XCHACHA20POLY1305})] and t.cipher == crypto.XCHACHA20POLY1305


def test_imports_run_one_way_from_the_seam_to_the_implementations_to_the_channel():
    """transport -> transports.* -> channel, in plain import statements (what an import linter sees):
    channel imports neither, the implementations do not import the seam, the seam no longer
    hands out names lazily."""
    import ast
    import inspect

    from p2pfl.transports import memory, zeromq

    def imported(module) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    assert not [n for n in imported(channel) if n.startswith("p2pfl.transport")]  # nor p2pfl.transports
    for impl in (zeromq, memory):
        assert "p2pfl.channel" in imported(impl) and "p2pfl.transport" not in imported(impl)
    assert not hasattr(transport, "__getattr__") and "importlib" not in imported(transport)
    assert transport.Peer is channel.Peer and transport.TransportStats is channel.TransportStats
    assert transport.factory_for("tcp://127.0.0.1:1") is ZmqTransport is transport.factory_for("ipc:///x")
    assert transport.factory_for("mem://a") is MemoryTransport
