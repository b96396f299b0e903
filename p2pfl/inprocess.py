"""Every node of a config as a thread of this process, over the transport an address scheme names.

Owns one thing: running the ordinary `Node`s of a config side by side in this process, each on
a thread, over `tcp://` (loopback ports, one zmq.Context), `ipc://` (Unix sockets in the run
directory), `inproc://` (one zmq.Context) or `mem://` (one `MemoryNetwork`, no sockets), and
handing back the finished nodes and their records. For tests that look inside the nodes and for
benchmarks; `simulate` runs the same nodes as separate processes. It does not know about
protocols, sockets or bytes: the node builds its transport with `transport.create`.

The cluster file it writes lists loopback tcp:// addresses (what `config` accepts); for the
other schemes the nodes are given the same cluster with each address rewritten.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from p2pfl.config import Cluster, ExperimentConfig
from p2pfl.crypto import load_private_key
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

    from p2pfl.data import shard
    from p2pfl.node import Node, NodeSpec
    from p2pfl.training import load_task, partition_task

    cluster = cluster_for(cfg, run_dir, scheme)
    task = load_task(cfg.task, cfg.seed)
    parts = partition_task(task, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed)
    context = context_for(scheme)
    lock = threading.Lock()
    nodes = {}
    for i in range(cfg.nodes):
        key = load_private_key(cluster.nodes[i].key_file)  # Cluster.load resolves it against the file
        node = Node(NodeSpec(i, cfg, cluster, key), task, shard(task.dataset, parts[i]), context)
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
