"""Soak: 8 real nodes run 1,000 rounds in this process; memory and file descriptors stay flat.

Real `p2pfl.node.Node`s, one thread each (as `simulate`'s workers host them), real ZeroMQ on
127.0.0.1 and real keys and crypto; a ring, digits-mlp, one local step of a small learning rate
per round and evaluation only at the end, so a round costs ~15 ms and the whole soak ~15-30 s
on 2 cores. Node 0's `on_round` callback samples this process's resident memory (VmRSS) and its
open file descriptors every SAMPLE_EVERY rounds. After WARMUP rounds (sockets connected, buffers
and allocator arenas at their working size) neither may grow by more than RSS_BOUND_MB /
FD_BOUND until the last round, and every node must run every round hearing both neighbours.

The series is printed (run with -s) and the outcomes go to the fault table (tests/faultlog.py).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from faultlog import record_fault, recording

from p2pfl.config import Cluster, ExperimentConfig
from p2pfl.data import partition
from p2pfl.launch import Workload, build_node
from p2pfl.node import Node, RoundRecord
from p2pfl.simulate import prepare_cluster
from p2pfl.training import load_task

pytestmark = pytest.mark.slow

NODES = 8
ROUNDS = 1000
SEED = 5
SAMPLE_EVERY = 50  # rounds between samples (plus round 1)
WARMUP = 100  # growth is measured from this round's sample
RSS_BOUND_MB = 40.0
FD_BOUND = 8
RUN_TIMEOUT = 240.0  # the soak takes ~15-30 s; only a hung node gets near this
ACC_FLOOR = 0.8  # it trains: 10 classes, chance is 0.1 (1,000 SGD steps reach ~0.95)
SOAK = f"{NODES}-node ring, {ROUNDS:,} rounds in one process (real sockets and crypto)"


@dataclass
class Sample:
    round: int
    elapsed: float  # s since the nodes started
    rss_mb: float
    fds: int


@dataclass
class SoakRun:
    records: dict[int, list[RoundRecord]]
    nodes: dict[int, Node]
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0

    def at(self, r: int) -> Sample:
        return next(s for s in self.samples if s.round == r)

    def after_warmup(self) -> list[Sample]:
        return [s for s in self.samples if s.round >= WARMUP]

    def rss_growth(self) -> float:
        return max(s.rss_mb for s in self.after_warmup()) - self.at(WARMUP).rss_mb

    def fd_growth(self) -> int:
        return max(s.fds for s in self.after_warmup()) - self.at(WARMUP).fds


def vm_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> SoakRun:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as simulate's workers: one compute thread per node thread
    try:
        yield run_soak(tmp_path_factory.mktemp("soak"))
    finally:
        torch.set_num_threads(threads)


def run_soak(run_dir: Path) -> SoakRun:
    cfg = ExperimentConfig(task="digits-mlp", nodes=NODES, topology="ring", rounds=ROUNDS, seed=SEED, lr=0.01,
                           local_steps=1, eval_every=ROUNDS, round_timeout=30.0, startup_timeout=30.0).validate()
    cluster = Cluster.load(prepare_cluster(cfg, run_dir), seed=cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    workload = Workload(task, partition(task.dataset.y_train, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed))
    context = zmq.Context()
    run = SoakRun(records={}, nodes={})
    started = 0.0

    def sample(record: RoundRecord) -> None:  # node 0's thread, right after each of its rounds
        if record.round == 1 or record.round % SAMPLE_EVERY == 0:
            run.samples.append(Sample(record.round, time.monotonic() - started, vm_rss_mb(), open_fds()))

    for i in range(NODES):
        run.nodes[i] = build_node(cfg, cluster, i, workload=workload, context=context,
                                  on_round=sample if i == 0 else None)
    errors: dict[int, BaseException] = {}

    def run_one(i: int) -> None:
        try:
            run.records[i] = run.nodes[i].run()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors[i] = exc

    threads = [threading.Thread(target=run_one, args=(i,), name=f"soak-node-{i}", daemon=True) for i in range(NODES)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, started + RUN_TIMEOUT - time.monotonic()))
    run.wall = time.monotonic() - started
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"{hung} still running after {RUN_TIMEOUT:.0f}s"
    assert not errors, errors
    term = threading.Thread(target=context.term, daemon=True)
    term.start()
    term.join(30)
    assert not term.is_alive(), "context.term() hung: a socket was left open"
    print_series(run)
    return run


def print_series(run: SoakRun) -> None:
    times = [rec.round_time * 1000 for rec in run.records[0]]
    print(f"\nsoak: {NODES} nodes, {ROUNDS} rounds in {run.wall:.1f}s; node 0 round time median "
          f"{statistics.median(times):.1f} ms, p99 {np.percentile(times, 99):.1f} ms, max {max(times):.0f} ms")
    print("round  elapsed_s  rss_mb  open_fds")
    for s in run.samples:
        print(f"{s.round:5d}  {s.elapsed:9.1f}  {s.rss_mb:6.1f}  {s.fds:8d}")


def test_soak_every_node_runs_every_round(soak: SoakRun) -> None:
    with recording(SOAK, NODES * ROUNDS, unit="node-rounds") as fault:
        rounds = {i: [rec.round for rec in recs] for i, recs in soak.records.items()}
        short = {i: sum(rec.arrived < 2 for rec in recs) for i, recs in soak.records.items()}
        dropped = {i: node.transport.stats.dropped for i, node in soak.nodes.items() if node.transport.stats.dropped}
        accs = [recs[-1].test_acc for recs in soak.records.values()]
        fault.outcome = (f"every node ran rounds 1-{ROUNDS}" if all(r == list(range(1, ROUNDS + 1)) for r in rounds.values())
                         else f"rounds run per node {({i: len(r) for i, r in rounds.items()})}")
        fault.outcome += (f"; rounds missing a neighbour: {sum(short.values())}; messages dropped: "
                          f"{sum(sum(d.values()) for d in dropped.values())}; final accuracy "
                          f"{min(accs):.2f}-{max(accs):.2f}")
        assert sorted(soak.records) == list(range(NODES))
        for i, got in rounds.items():
            assert got == list(range(1, ROUNDS + 1)), f"node {i} ran {len(got)} rounds"
        assert short == {i: 0 for i in range(NODES)}, f"rounds where a neighbour's model did not arrive: {short}"
        assert dropped == {}, dropped
        for i, node in soak.nodes.items():
            assert np.isfinite(node.trainer.get_flat()).all(), f"node {i}'s model is not finite"
        assert min(accs) > ACC_FLOOR, accs
    assert [s.round for s in soak.samples] == [1, *range(SAMPLE_EVERY, ROUNDS + 1, SAMPLE_EVERY)]


def test_soak_open_fds_stay_flat(soak: SoakRun) -> None:
    with recording(f"{SOAK}: open file descriptors", ROUNDS, unit="rounds") as fault:
        growth = soak.fd_growth()
        fault.outcome = (f"{soak.at(WARMUP).fds} open at round {WARMUP}, at most +{growth} by round {ROUNDS} "
                         f"(bound +{FD_BOUND}; {len(soak.after_warmup())} samples)")
        assert growth <= FD_BOUND, [(s.round, s.fds) for s in soak.samples]


# Node.run() keeps the RoundRecords it returns; each record's model-sized `delta` is released
# after `on_round` (the consensus distance needs it there, nobody after), or memory would grow by
# nodes x params x 4 bytes per round without bound.
LEAK = "model-sized deltas kept per round"


def test_soak_memory_stays_flat(soak: SoakRun) -> None:
    with recording(f"{SOAK}: resident memory", ROUNDS, unit="rounds") as fault:
        growth = soak.rss_growth()
        params = soak.nodes[0].trainer.num_params
        per_round_kb = growth * 1024 / (ROUNDS - WARMUP)
        deltas_kb = NODES * params * 4 / 1024
        fault.outcome = (f"RSS {soak.at(WARMUP).rss_mb:.0f} MB at round {WARMUP}, +{growth:.0f} MB by round {ROUNDS} "
                         f"(bound +{RSS_BOUND_MB:.0f} MB)")
        if growth > RSS_BOUND_MB:
            fault.outcome += (f"; {per_round_kb:.0f} KB per round, the size of {NODES} model deltas "
                              f"({deltas_kb:.0f} KB): {LEAK}")
        assert growth <= RSS_BOUND_MB, [(s.round, round(s.rss_mb, 1)) for s in soak.samples]
