"""Every node of a config in this process, one thread each: real sockets and crypto, no spawn.

For tests that look inside the nodes (their protocols, what they send) or need a run quickly.
`run_nodes` returns the finished `Node`s and their `RoundRecord`s; `sent` (optional) collects
every (sender, recipient, message) a node hands to its transport.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
import zmq

from p2pfl.config import Cluster, ExperimentConfig
from p2pfl.launch import build_node, load_workload
from p2pfl.messages import Message
from p2pfl.node import Node, RoundRecord
from p2pfl.simulate import prepare_cluster


def run_nodes(cfg: ExperimentConfig, run_dir: Path,
              sent: list[tuple[int, int, Message]] | None = None) -> tuple[dict[int, Node], dict[int, list[RoundRecord]]]:
    cluster_path = prepare_cluster(cfg, run_dir)
    cluster = Cluster.load(cluster_path, seed=cfg.seed)
    workload = load_workload(cfg)
    context = zmq.Context()
    lock = threading.Lock()
    nodes = {}
    for i in range(cfg.nodes):
        node = build_node(cfg, cluster, i, workload=workload, context=context)
        if sent is not None:
            node.transport.send = _recording(node.id, node.transport.send, sent, lock)  # type: ignore[method-assign]
        nodes[i] = node
    records: dict[int, list[RoundRecord]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            records[i] = nodes[i].run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(threads_before)
        context.term()
    if errors:
        raise errors[0]
    return nodes, records


def _recording(node_id, send, log, lock):
    def wrapped(to: int, msg: Message) -> bool:
        with lock:
            log.append((node_id, to, msg))
        return send(to, msg)

    return wrapped
