#!/usr/bin/env python
"""Where a secure round's time goes: CPU per node and round, messages per node and round.

Two measurements, plain gossip against secure aggregation in the same run:

1. Whole nodes: every node of the topology as a thread of this process (real sockets, real
   crypto, `tests/helpers/inproc.run_nodes`), CPU time per node thread (`time.thread_time`)
   divided by the rounds, and the messages each node sent per round.
2. The protocol alone: the sans-I/O round state machines of all nodes driven in memory (the
   router of `tests/test_secagg.py`), with the static pairwise keys cached as the node caches
   them: what the cryptography and bookkeeping cost without any message passing.

The difference between (1) secure and (1) plain, minus (2), is what the extra messages cost.

    .venv/bin/python scripts/bench_secure_cost.py [--topology regular:d=4] [--nodes 16] [--rounds 30] [--no-verify-views]
    .venv/bin/python scripts/bench_secure_cost.py --task bench_round:digits_mlp_300k   # the 300k-parameter MLP
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The in-process runner and the in-memory router are test helpers; reuse them rather than copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers.inproc import run_nodes  # noqa: E402
from test_secagg import Router, make_secrets  # noqa: E402

from p2pfl import topology  # noqa: E402
from p2pfl.config import ExperimentConfig  # noqa: E402
from p2pfl.node import Node  # noqa: E402
from p2pfl.protocols import GossipRound  # noqa: E402
from p2pfl.secagg import SecAggParams, SecureGossipRound  # noqa: E402


def whole_nodes(cfg: ExperimentConfig) -> tuple[float, float, dict[str, int]]:
    """(CPU ms per node and round, messages sent per node and round, drops by reason)."""
    cpu: list[float] = []
    original = Node.run

    def timed(self: Node):  # type: ignore[no-untyped-def]
        start = time.thread_time()
        try:
            return original(self)
        finally:
            cpu.append(time.thread_time() - start)

    Node.run = timed  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            nodes, _ = run_nodes(cfg, Path(tmp))
    finally:
        Node.run = original  # type: ignore[method-assign]
    node_rounds = cfg.nodes * cfg.rounds
    sent = sum(n.transport.stats.messages_sent for n in nodes.values())
    drops: dict[str, int] = {}
    for n in nodes.values():
        for reason, count in n.transport.stats.dropped.items():
            drops[reason] = drops.get(reason, 0) + count
    return 1e3 * sum(cpu) / node_rounds, sent / node_rounds, drops


def protocol_alone(cfg: ExperimentConfig, params: int, secure: bool, rounds: int = 10) -> float:
    """CPU ms per node and round of the round protocols alone, driven in memory."""
    graph = cfg.graph()
    adjacency = {v: sorted(graph.neighbors(v)) for v in graph.nodes}
    weights = {v: topology.mh_weights(graph, v) for v in graph.nodes}
    secrets = {v: functools.lru_cache(None)(f) for v, f in make_secrets(graph.nodes).items()}
    xs = {v: (np.random.default_rng(v).standard_normal(params) * 0.1).astype(np.float32) for v in graph.nodes}

    prepared: dict = {v: None for v in graph.nodes}

    def one(r: int) -> None:
        if secure:  # each round takes the share phase the previous one prepared, as the node does
            sa = SecAggParams(verify_views=cfg.secagg_verify_views)
            protos = {v: SecureGossipRound(v, r, adjacency, weights[v], xs[v], sa, secrets[v],
                                           prepared=prepared[v]) for v in graph.nodes}
        else:
            protos = {v: GossipRound(v, r, weights[v], xs[v]) for v in graph.nodes}
        Router(protos).run()
        if secure:
            prepared.update({v: p.prepared_next() for v, p in protos.items()})

    one(0)  # warm-up: the pairwise keys are made once, as a node makes them once
    start = time.thread_time()
    for r in range(1, rounds + 1):
        one(r)
    return 1e3 * (time.thread_time() - start) / (rounds * cfg.nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default="regular:d=4")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--no-verify-views", action="store_true", help="secure without view verification (the semi-honest variant)")
    ap.add_argument("--task", default="digits-mlp", help="a task spec, e.g. bench_round:digits_mlp_300k (scripts/ is on the path)")
    args = ap.parse_args()
    print("| mode | CPU per node and round | messages per node and round | protocol alone | drops |")
    print("|---|---:|---:|---:|---|")
    rows = {}
    for secure in (False, True):
        cfg = ExperimentConfig(nodes=args.nodes, topology=args.topology, rounds=args.rounds, task=args.task,
                               secure_agg=secure, secagg_verify_views=not args.no_verify_views).validate()
        cpu, msgs, drops = whole_nodes(cfg)
        alone = protocol_alone(cfg, _model_size(cfg), secure)
        rows[secure] = (cpu, msgs, alone)
        print(f"| {'secure' if secure else 'plain'} | {cpu:.1f} ms | {msgs:.1f} | {alone:.2f} ms | {drops or '-'} |")
    (pc, pm, pa), (sc, sm, sa) = rows[False], rows[True]
    extra = (sc - pc) - (sa - pa)
    print(f"\nsecure / plain CPU: {sc / pc:.2f}x; of the {sc - pc:.1f} ms extra, the protocol alone is "
          f"{sa - pa:.1f} ms and {sm - pm:.1f} extra messages are {extra:.1f} ms ({extra / (sm - pm):.2f} ms each)")


def _model_size(cfg: ExperimentConfig) -> int:
    from p2pfl.training import init_model, load_task

    return sum(p.numel() for p in init_model(load_task(cfg.task, cfg.seed), cfg.seed).parameters())


if __name__ == "__main__":
    main()
