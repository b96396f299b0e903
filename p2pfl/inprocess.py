"""Every node of a config as a thread of this process, over the transport an address scheme names.

Owns running nodes side by side in this process: the ordinary `Node`s of a config, each on
a thread, over `tcp://` (loopback ports, one zmq.Context), `ipc://` (Unix sockets in the run
directory), `inproc://` (one zmq.Context) or `mem://` (one `MemoryNetwork`, no sockets), and
handing back the finished nodes and their records. For tests that look inside the nodes and for
benchmarks; `simulate` runs the same nodes as separate processes. It does not know what a
protocol does, nor sockets or bytes: the node builds its transport with `transport.create`. And, with no
`Node` at all, the round protocols of all nodes driven from one thread over in-memory
transports (`memory_transports`, `drive_round`): what a protocol costs with real sessions and
sealing but no sockets, or a test of protocols with every message really sealed and opened.

The cluster file it writes lists loopback tcp:// addresses (what `config` accepts); for the
other schemes the nodes are given the same cluster with each address rewritten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from p2pfl.config import Cluster, ExperimentConfig
from p2pfl.messages import Message
from p2pfl.record import RoundRecord

SCHEMES = ("tcp", "ipc", "inproc", "mem")


def addresses(scheme: str, ids: list[int], run_dir: Path) -> dict[int, str]:
    """Node addresses of `scheme` for a run in `run_dir` (ipc sockets live there)."""
    if scheme == "ipc":
        return {i: f"ipc://{run_dir.resolve()}/node-{i}.sock" for i in ids}
    if scheme in ("inproc", "mem"):
        return {i: f"{scheme}://{run_dir.resolve()}/node-{i}" for i in ids}
    raise ValueError(f"scheme {scheme!r}: tcp addresses come from the cluster file; one of {SCHEMES}")


def cluster_for(cfg: ExperimentConfig, run_dir: Path, scheme: str = "tcp") -> Cluster:
    """A cluster of `cfg.nodes` nodes in `run_dir` (keys, topology, cluster file), addressed by `scheme`."""
    from p2pfl.simulate import prepare_cluster  # simulate imports torch-free modules only; here on use

    cluster = Cluster.load(prepare_cluster(cfg, run_dir), seed=cfg.seed)
    if scheme == "tcp":
        return cluster
    where = addresses(scheme, sorted(cluster.nodes), run_dir)
    return replace(cluster, nodes={i: replace(e, address=where[i]) for i, e in cluster.nodes.items()})


def context_for(scheme: str) -> Any:
    """The shared state the nodes' transports need: a zmq.Context, or a MemoryNetwork for mem://."""
    if scheme == "mem":
        from p2pfl.transports.memory import MemoryNetwork

        return MemoryNetwork()
    import zmq

    return zmq.Context()


def run_nodes(cfg: ExperimentConfig, run_dir: Path, scheme: str = "tcp",
              sent: list[tuple[int, int, Message]] | None = None) -> tuple[dict[int, Any], dict[int, list[RoundRecord]]]:
    """Run every node of `cfg` to the end; (the finished `Node`s, their `RoundRecord`s by node id).

    `sent` (optional) collects every (sender, recipient, message) a node hands to its transport.
    The first exception of any node is raised once all have stopped.
    """
    import torch

    from p2pfl.launch import build_node, load_workload  # torch: only runs that train need it

    cluster = cluster_for(cfg, run_dir, scheme)
    workload = load_workload(cfg)
    context = context_for(scheme)
    lock = threading.Lock()
    nodes = {}
    for i in range(cfg.nodes):
        node = build_node(cfg, cluster, i, workload=workload, context=context)
        if sent is not None:
            node.transport.send = _recording(node.id, node.transport.send, sent, lock)
        nodes[i] = node
    records: dict[int, list[RoundRecord]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            records[i] = nodes[i].run()
        except BaseException as exc:  # raised below, once every node has stopped
            errors.append(exc)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # one compute thread per node thread: N node threads share the cores
    try:
        threads = [threading.Thread(target=run, args=(i,), name=f"node-{i}") for i in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(threads_before)
        if scheme != "mem":
            context.term()
    if errors:
        raise errors[0]
    return nodes, records


def _recording(node_id: int, send: Any, log: list, lock: threading.Lock) -> Any:
    def wrapped(to: int, msg: Message) -> bool:
        with lock:
            log.append((node_id, to, msg))
        return send(to, msg)

    return wrapped


# -- round protocols alone, over in-memory transports ---------------------------------------------


def memory_transports(adjacency: dict[int, list[int]], limits: Any, timeout: float = 10.0) -> dict[int, Any]:
    """A started `MemoryTransport` per node of `adjacency` on a fresh `MemoryNetwork`, every
    session agreed (real keys, made here): for driving round protocols with no sockets."""
    from p2pfl import crypto
    from p2pfl.transport import Peer
    from p2pfl.transports.memory import MemoryNetwork, MemoryTransport

    keys = {v: crypto.generate_keypair() for v in adjacency}
    peers = {v: Peer(f"mem://node-{v}", keys[v][1]) for v in adjacency}
    network = MemoryNetwork()
    transports = {v: MemoryTransport(v, keys[v][0], peers, adjacency[v], limits, network) for v in adjacency}
    for t in transports.values():
        t.start()
    deadline = time.monotonic() + timeout
    while not all(t.established(j) for t in transports.values() for j in t.neighbours):
        if time.monotonic() > deadline:
            raise TimeoutError("the in-memory sessions were not agreed in time")
        for t in transports.values():
            t.recv(0.001)
    return transports


def drive_round(protos: dict[int, Any], transports: dict[int, Any], max_deadlines: int = 20,
                hold: Callable[[int, int, Message], bool] | None = None,
                dead: set[int] | None = None) -> list[tuple[int, int, Message]]:
    """Run one round of every node's `RoundProtocol` over `transports`, from this thread, as the
    node loop does: send `start()`, deliver until nothing is in flight, then pass every unfinished
    node's deadline, until all have finished (AssertionError after `max_deadlines` deadlines).

    A message the protocol rejects (`protocols.Rejected`) is dropped, as the node drops it.
    `hold(sender, to, msg)` True keeps a message back instead of sending it; the held ones are
    returned in order (send them later to play a late or reordered delivery). A node in `dead`
    has crashed: it sends nothing and what reaches it is discarded unread; `hold` may add a node to it
    (a crash at that step: that message and everything after it is lost).
    """
    from p2pfl.protocols import Rejected

    held: list[tuple[int, int, Message]] = []
    dead = set() if dead is None else dead

    def post(v: int, outs: Iterable[tuple[int, Message]]) -> None:
        for to, msg in outs:
            if v in dead:
                return
            if hold is not None and hold(v, to, msg):
                held.append((v, to, msg))
            elif v in dead:  # `hold` crashed it at this message
                return
            elif not transports[v].send(to, msg):
                raise AssertionError(f"node {v} could not send to {to}: its queue is full")

    for v, proto in protos.items():
        post(v, proto.start())
    deadlines = 0
    while True:
        delivered = True
        while delivered:  # until a sweep over every node finds nothing in flight
            delivered = False
            for v, t in transports.items():
                while (msg := t.recv(0)) is not None:
                    if v in dead:
                        continue  # read only so that its neighbours' queues to it never fill
                    delivered = True
                    try:
                        post(v, protos[v].on_message(msg))
                    except Rejected:
                        t.drop("rejected", f"round protocol rejected a message from node {msg.sender}")
        unfinished = [v for v, p in protos.items() if v not in dead and not p.finished()]
        if not unfinished:
            return held
        assert deadlines < max_deadlines, "protocol did not finish"
        deadlines += 1
        for v in unfinished:
            post(v, protos[v].on_deadline())
