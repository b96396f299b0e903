#!/usr/bin/env python
"""Where a secure round's time goes: CPU per node and round, messages per node and round.

Three measurements (four with --in-situ), plain gossip against secure aggregation in the same run:

1. Whole nodes: every node of the topology as a thread of this process (real sockets, real
   crypto, `p2pfl.inprocess.run_nodes` over loopback tcp://), CPU time per node thread
   (`time.thread_time`) divided by the rounds, the messages each node sent per round, and its
   wake-ups per round (waits on its socket that ended with a message: a node thread put back on
   a core).
2. The protocol alone: the sans-I/O round state machines of all nodes driven from one thread
   over the package's in-memory transport (`p2pfl.transports.memory`: the same sessions, and
   every message sealed and opened as over ZeroMQ, but no sockets, no other threads, no
   wake-ups), with the static pairwise keys cached as the node caches them: what the
   cryptography, the sealing and the bookkeeping cost without sockets.
3. The primitives floor: only the cryptography and messaging a degree-d node cannot avoid in a
   fault-free pipelined round (docs/secagg.md 3.1, 3.3), timed on this thread with no protocol
   around them: d key pairs, d(d-1) X25519 agreements, d^2 + d model-sized keystreams with their
   uint32 adds, 2d Shamir splits and d reconstructions, d(d-1) sealed and opened share bundles,
   and as many raw pyzmq send + receive pairs (loopback TCP) as the extra messages of (1). What
   (1) spends beyond plain + floor is ours: the protocol's Python around the primitives (from
   (2)), and what the whole node adds per extra message beyond raw pyzmq (node and transport
   code, wake-ups, and the memory traffic of 16 nodes sharing the caches).
4. In situ (--in-situ): the same primitives, and the local training, timed inside the nodes of a
   real `p2pfl simulate` run (worker processes, as bench_round.py measures) by wrapping the
   functions that do them. 16 nodes on 2 cores share caches and cores, so these cost more there
   than alone; the secure run's extra primitive CPU, added to the plain node's CPU, is the floor
   the benchmark's round-time ratio can reach with no protocol code at all.

The difference between (1) secure and (1) plain, minus (2), is what the extra messages cost
beyond their sealing: sockets, wake-ups, the node's own code.

    .venv/bin/python scripts/bench_secure_cost.py [--topology regular:d=4] [--nodes 16] [--rounds 30] [--no-verify-views]
    .venv/bin/python scripts/bench_secure_cost.py --task bench_round:digits_mlp_300k   # the 300k-parameter MLP
    .venv/bin/python scripts/bench_secure_cost.py --in-situ [--processes 16]   # and (4)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import zmq
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from p2pfl import crypto, masking, shamir, simulate, topology, wire
from p2pfl.config import ExperimentConfig
from p2pfl.inprocess import drive_round, memory_transports, run_nodes
from p2pfl.masking import mask_vector
from p2pfl.node import Node
from p2pfl.protocols import GossipRound
from p2pfl.secagg import SecAggParams, SecureGossipRound, sealing
from p2pfl.simulate import run_simulation
from p2pfl.training import LocalTrainer


def whole_nodes(cfg: ExperimentConfig) -> tuple[float, float, float, dict[str, int]]:
    """(CPU ms per node and round, messages sent and wake-ups per node and round, drops by reason).

    A wake-up is a wait on the node's socket that ended with a message: a node thread put back on
    a core, with whatever that costs in cold caches when 16 nodes share 2 cores.
    """
    cpu: list[float] = []
    wakeups = [0]
    lock = threading.Lock()  # the node threads poll concurrently
    original, original_poll = Node.run, zmq.Poller.poll

    def timed(self: Node):  # type: ignore[no-untyped-def]
        start = time.thread_time()
        try:
            return original(self)
        finally:
            cpu.append(time.thread_time() - start)

    def counted(self: zmq.Poller, timeout: int | None = None) -> list:
        events = original_poll(self, timeout)
        if events:
            with lock:
                wakeups[0] += 1
        return events

    Node.run = timed  # type: ignore[method-assign]
    zmq.Poller.poll = counted  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            nodes, _ = run_nodes(cfg, Path(tmp))
    finally:
        Node.run = original  # type: ignore[method-assign]
        zmq.Poller.poll = original_poll  # type: ignore[method-assign]
    node_rounds = cfg.nodes * cfg.rounds
    sent = sum(n.transport.stats.messages_sent for n in nodes.values())
    drops: dict[str, int] = {}
    for n in nodes.values():
        for reason, count in n.transport.stats.dropped.items():
            drops[reason] = drops.get(reason, 0) + count
    return 1e3 * sum(cpu) / node_rounds, sent / node_rounds, wakeups[0] / node_rounds, drops


# What `in_situ` times inside the running nodes: label -> (owner, attribute) of the functions that
# do the work. None of them calls another one of them, so no time is counted twice.
IN_SITU_TARGETS: dict[str, list[tuple[object, str]]] = {
    "X25519 (key pairs and agreements)": [(sealing, "crypto_scalarmult"), (sealing, "crypto_scalarmult_base")],
    "keystreams + adds": [(masking, "_keystreams"), (masking, "_add_streams")],
    "Shamir": [(shamir, "split"), (shamir, "combine")],
    "share sealing": [(sealing, "seal"), (sealing, "open_sealed")],
    "raw pyzmq send + receive": [(zmq.Socket, "send_multipart"), (zmq.Socket, "recv_multipart")],
    "training + evaluation": [(LocalTrainer, "train"), (LocalTrainer, "evaluate")],
}
TRAINING = "training + evaluation"  # the same work in both modes: the yardstick, not a primitive


def in_situ(cfg: ExperimentConfig) -> tuple[dict[str, float], float]:
    """(CPU ms per node and round of each group of `IN_SITU_TARGETS`, mean node CPU ms per round),
    timed inside the nodes of a real `p2pfl simulate` run (worker processes, as bench_round.py).

    The same functions cost more there than alone on an idle core: 16 nodes share 2 cores, their
    caches and, within a worker process, the GIL. Comparing these with `primitives_floor` shows by
    how much, and training (the same work in both modes) shows how much of that plain pays too.
    """
    from rich.console import Console

    with tempfile.TemporaryDirectory() as tmp:
        simulate._worker = functools.partial(_timed_worker, tmp)  # type: ignore[assignment]
        try:
            run_simulation(cfg, Path(tmp) / "run", Console(file=open(os.devnull, "w")))
        finally:
            simulate._worker = _SIMULATE_WORKER
        totals = {label: 0.0 for label in IN_SITU_TARGETS}
        for path in Path(tmp).glob("timers-*.json"):
            for label, seconds in json.loads(path.read_text()).items():
                totals[label] += seconds
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    node_cpu = 1e3 * sum(r["cpu_time"] for r in records) / len(records)
    return {label: 1e3 * t / (cfg.nodes * cfg.rounds) for label, t in totals.items()}, node_cpu


_SIMULATE_WORKER = simulate._worker


def _timed_worker(out_dir: str, *args: object) -> None:
    """simulate's worker process with every function of `IN_SITU_TARGETS` timed (thread CPU)."""
    totals = {label: 0.0 for label in IN_SITU_TARGETS}
    lock = threading.Lock()  # the worker's node threads

    def timed(label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*a, **kw):  # type: ignore[no-untyped-def]
            start = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                spent = time.thread_time() - start
                with lock:
                    totals[label] += spent
        return call

    for label, targets in IN_SITU_TARGETS.items():
        for owner, name in targets:
            setattr(owner, name, timed(label, getattr(owner, name)))
    try:
        _SIMULATE_WORKER(*args)
    finally:
        Path(out_dir, f"timers-{os.getpid()}.json").write_text(json.dumps(totals))


def protocol_alone(cfg: ExperimentConfig, params: int, secure: bool, rounds: int = 10) -> float:
    """CPU ms per node and round of the round protocols over in-memory transports, one thread."""
    graph = cfg.graph()
    adjacency = {v: sorted(graph.neighbors(v)) for v in graph.nodes}
    weights = {v: topology.mh_weights(graph, v) for v in graph.nodes}
    keys = {v: crypto.generate_keypair() for v in graph.nodes}
    secrets = {v: _secret_of(v, keys) for v in graph.nodes}
    xs = {v: (np.random.default_rng(v).standard_normal(params) * 0.1).astype(np.float32) for v in graph.nodes}
    transports = memory_transports(adjacency, wire.Limits.for_model(params))  # sessions agreed, untimed

    prepared: dict = {v: None for v in graph.nodes}

    def one(r: int) -> None:
        if secure:  # each round takes the share phase the previous one prepared, as the node does
            sa = SecAggParams(verify_views=cfg.secagg_verify_views)
            protos = {v: SecureGossipRound(v, r, adjacency, weights[v], xs[v], sa, secrets[v],
                                           prepared=prepared[v]) for v in graph.nodes}
        else:
            protos = {v: GossipRound(v, r, weights[v], xs[v]) for v in graph.nodes}
        drive_round(protos, transports)
        if secure:
            prepared.update({v: p.prepared_next() for v, p in protos.items()})

    try:
        one(0)  # warm-up: the pairwise keys are made once, as a node makes them once
        start = time.thread_time()
        for r in range(1, rounds + 1):
            one(r)
        return 1e3 * (time.thread_time() - start) / (rounds * cfg.nodes)
    finally:
        for t in transports.values():
            t.close()


def _secret_of(v: int, keys: dict[int, tuple[bytes, bytes]]) -> Callable[[int, bytes], bytes]:
    """Node v's pairwise secrets, cached as the node caches them (`Node._secret`)."""
    @functools.lru_cache(None)
    def secret(peer: int, context: bytes) -> bytes:
        return crypto.pairwise_key(keys[v][0], v, keys[peer][1], peer, context)

    return secret


def primitives_floor(degree: int, params: int, messages: float, repeats: int = 20) -> dict[str, float]:
    """CPU ms per node and round of each unavoidable primitive (see the module docstring, 3)."""
    d, words = degree, params
    rng = np.random.default_rng(0)
    sk = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(d)]
    pk = [crypto_scalarmult_base(k) for k in sk]
    vec = np.zeros(words, dtype=np.uint32)
    holders = list(range(1, d + 1))  # a member's group: the aggregator's d neighbours
    t = SecAggParams().threshold_for(d)
    key, nonce, bundle = bytes(32), bytes(crypto.NONCE_BYTES), bytes(100)  # a share bundle is ~100 B of plaintext
    sealed = bytes(crypto.seal(key, nonce, bundle, b"aad", crypto.XCHACHA20POLY1305))
    shares = shamir.split(bytes(32), t, holders)

    def keystreams() -> None:
        mask_vector(vec, [(k, 1) for k in sk[:1]] * (d * d + d), 1, 0)

    def agreements() -> None:
        for i in range(d * (d - 1)):
            crypto_scalarmult(sk[i % d], pk[(i + 1) % d])

    def sharing() -> None:
        for _ in range(2 * d):
            shamir.split(bytes(32), t, holders)
        for _ in range(d):
            shamir.combine(dict(list(shares.items())[:t]), t)

    def sealing() -> None:
        for _ in range(d * (d - 1)):
            crypto.seal(key, nonce, bundle, b"aad", crypto.XCHACHA20POLY1305)
            crypto.unseal(key, nonce, sealed, b"aad", cipher=crypto.XCHACHA20POLY1305)

    parts = {"key pairs": lambda: [crypto_scalarmult_base(k) for k in sk], "X25519 agreements": agreements,
             "keystreams + adds": keystreams, "Shamir": sharing, "share sealing": sealing}
    out = {name: _thread_ms(fn, repeats) for name, fn in parts.items()}
    out["raw messages"] = _raw_message_ms(max(0, round(messages)), repeats)
    return out


def _thread_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.thread_time()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.thread_time() - start) / repeats


def _raw_message_ms(count: int, repeats: int) -> float:
    """Thread CPU of `count` small DEALER -> ROUTER messages over loopback TCP, each received after its send."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    frames = [bytes(64), bytes(200)]  # header and a small sealed body, the size of a protocol step
    try:
        def one_round() -> None:
            for _ in range(count):
                dealer.send_multipart(frames, copy=False)
                router.recv_multipart(copy=False)

        return _thread_ms(one_round, repeats)
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topology", default="regular:d=4")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--no-verify-views", action="store_true", help="secure without view verification (the semi-honest variant)")
    ap.add_argument("--task", default="digits-mlp", help="a task spec, e.g. bench_round:digits_mlp_300k (scripts/ is on the path)")
    ap.add_argument("--in-situ", action="store_true",
                    help="also time the primitives and the training inside the running nodes (two more runs)")
    ap.add_argument("--processes", type=int, default=0, help="--in-situ: OS processes the nodes are spread over (0: as simulate)")
    args = ap.parse_args()
    print("| mode | CPU per node and round | messages per node and round | wake-ups per node and round | protocol alone | drops |")
    print("|---|---:|---:|---:|---:|---|")
    rows = {}
    for secure in (False, True):
        cfg = ExperimentConfig(nodes=args.nodes, topology=args.topology, rounds=args.rounds, task=args.task,
                               secure_agg=secure, secagg_verify_views=not args.no_verify_views).validate()
        cpu, msgs, wakeups, drops = whole_nodes(cfg)
        alone = protocol_alone(cfg, _model_size(cfg), secure)
        rows[secure] = (cpu, msgs, alone)
        print(f"| {'secure' if secure else 'plain'} | {cpu:.1f} ms | {msgs:.1f} | {wakeups:.1f} | {alone:.2f} ms | {drops or '-'} |")
    (pc, pm, pa), (sc, sm, sa) = rows[False], rows[True]
    extra = (sc - pc) - (sa - pa)
    print(f"\nsecure / plain CPU: {sc / pc:.2f}x; of the {sc - pc:.1f} ms extra, the protocol alone is "
          f"{sa - pa:.1f} ms and {sm - pm:.1f} extra messages are {extra:.1f} ms ({extra / (sm - pm):.2f} ms each)")
    degree = round(2 * cfg.graph().number_of_edges() / args.nodes)
    floor = primitives_floor(degree, _model_size(cfg), sm - pm)
    total = sum(floor.values())
    print(f"\nprimitives floor (degree {degree}): {total:.2f} ms per node and round: "
          + ", ".join(f"{name} {ms:.2f}" for name, ms in floor.items()))
    compute = total - floor["raw messages"]
    print(f"plain + floor would be {(pc + total) / pc:.2f}x plain. Beyond the floor the secure node spends "
          f"{sa - pa - compute:.1f} ms in the protocol's own Python and the sealing of its messages (protocol alone "
          f"minus its primitives) and "
          f"{extra - floor['raw messages']:.1f} ms in the whole node beyond that and raw pyzmq (node and transport code, "
          f"wake-ups, memory traffic)")
    if args.in_situ:
        print_in_situ(replace(cfg, processes=args.processes), floor)


def print_in_situ(cfg: ExperimentConfig, floor: dict[str, float]) -> None:
    """The primitives and the training timed inside the running nodes, against the same work alone.

    "in situ / alone" compares the secure run's extra (secure - plain) for a primitive, and the
    plain run's own for training, with the same work timed alone.
    """
    from bench_round import local_work

    runs = {secure: in_situ(replace(cfg, secure_agg=secure)) for secure in (False, True)}
    situ = {secure: run[0] for secure, run in runs.items()}
    plain_cpu = runs[False][1]
    alone = {
        "X25519 (key pairs and agreements)": floor["key pairs"] + floor["X25519 agreements"],
        "keystreams + adds": floor["keystreams + adds"],
        "Shamir": floor["Shamir"],
        "share sealing": floor["share sealing"],
        "raw pyzmq send + receive": floor["raw messages"],
        TRAINING: _thread_ms(local_work(cfg), 5) / cfg.nodes,
    }
    print("\n| work | alone (floor; training: one node) | plain, in situ | secure, in situ | secure - plain in situ | in situ / alone |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in IN_SITU_TARGETS:
        diff = situ[True][label] - situ[False][label]
        base = situ[False][label] if label == TRAINING else diff
        print(f"| {label} | {alone[label]:.2f} ms | {situ[False][label]:.2f} ms | {situ[True][label]:.2f} ms | "
              f"{diff:.2f} ms | {base / alone[label]:.2f}x |")
    extra = sum(situ[True][k] - situ[False][k] for k in IN_SITU_TARGETS if k != TRAINING)
    print(f"\nin situ, the primitives' extra CPU is {extra:.2f} ms per node and round: plain + that would be "
          f"{(plain_cpu + extra) / plain_cpu:.2f}x plain (the floor alone said {(plain_cpu + sum(floor.values())) / plain_cpu:.2f}x); "
          f"node CPU in these runs: plain {plain_cpu:.1f} ms, secure {runs[True][1]:.1f} ms ({runs[True][1] / plain_cpu:.2f}x)")


def _model_size(cfg: ExperimentConfig) -> int:
    from p2pfl.training import init_model, load_task

    return sum(p.numel() for p in init_model(load_task(cfg.task, cfg.seed), cfg.seed).parameters())


if __name__ == "__main__":
    main()
