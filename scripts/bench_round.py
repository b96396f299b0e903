"""Wall time per round of a whole simulation, against the compute floor measured in the same run.

Runs `p2pfl simulate` configurations (16 digits nodes by default, evaluating every round) and
reports, per configuration: the median wall time per round (slowest node, startup excluded), the
compute floor (every node's local training and evaluation for one round, run back to back in
this process, divided by the cores), their ratio, bytes sent per node per round, and the CPU a
node's own thread spends per round (`cpu_time` in the metrics: training, protocol, crypto,
evaluation; mean over nodes and rounds 2 on). With --secure both, plain and secure aggregation
run side by side and their ratios are printed too (round time, node CPU and bytes on the wire,
secure / plain). With 16 nodes on 2 cores a round is CPU-bound, so the round-time ratio follows
the CPU ratio, which is much less noisy on a shared machine.

The last column is the share of the machine's CPU time the hypervisor gave to other guests
during the run ("steal" in /proc/stat; "-" where there is none to read). On a shared VM it
varies from run to run and slows the wall time much more than the node CPU.

    .venv/bin/python scripts/bench_round.py --topologies ring,regular:d=4 --secure both
    .venv/bin/python scripts/bench_round.py --topologies ring,regular:d=4 --secure both --task bench_round:digits_mlp_1m
    .venv/bin/python scripts/bench_round.py --topologies ring,regular:d=4 --secure both --repeats 3
    .venv/bin/python scripts/bench_round.py --topologies ring,regular:d=4 --secure both --repeats 3 --no-verify-views

The default task (digits-mlp, 8,970 parameters) makes a round almost all fixed cost; the wider
digits MLPs defined here (`digits_mlp_300k`, `digits_mlp_1m`: hidden layers of 512 and 1024)
show how the per-round cost of secure aggregation compares once the model has a realistic size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from p2pfl import models
from p2pfl.config import ExperimentConfig
from p2pfl.data import load_digits
from p2pfl.simulate import run_simulation
from p2pfl.training import Task


def digits_mlp_300k(seed: int) -> Task:
    """Digits with a 64-512-512-10 MLP (301,066 parameters)."""
    ds = load_digits(seed=seed)
    return Task("digits-mlp-300k", lambda: models.mlp(64, ds.num_classes, hidden=(512, 512)), ds)


def digits_mlp_1m(seed: int) -> Task:
    """Digits with a 64-1024-1024-10 MLP (1,126,410 parameters)."""
    ds = load_digits(seed=seed)
    return Task("digits-mlp-1m", lambda: models.mlp(64, ds.num_classes, hidden=(1024, 1024)), ds)


def compute_floor(cfg: ExperimentConfig, repeats: int = 5) -> float:
    """Seconds one round of every node's local training and evaluation takes on all cores, no network.

    Measured here, in this process, one node after the other on one thread, then divided by the
    cores: the time a perfect simulator with free communication would need per round.
    """
    import time

    one_round = local_work(cfg)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_round()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) / (os.cpu_count() or 1)


def local_work(cfg: ExperimentConfig) -> Callable[[], None]:
    """A function that runs one round of every node's local training and evaluation, on this thread."""
    import torch

    from p2pfl.data import partition, shard
    from p2pfl.training import LocalTrainer, TrainConfig, init_model, load_task

    torch.set_num_threads(1)
    task = load_task(cfg.task, cfg.seed)
    parts = partition(task.dataset.y_train, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed)
    trainers = [LocalTrainer(init_model(task, cfg.seed), shard(task.dataset, p), TrainConfig(lr=cfg.lr), i)
                for i, p in enumerate(parts)]

    def one_round() -> None:
        for t in trainers:
            t.train()
            t.evaluate(task.dataset.x_test, task.dataset.y_test)

    return one_round


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, all) jiffies of the whole machine so far, from /proc/stat; None where it is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]  # user .. steal
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def measure(cfg: ExperimentConfig, workdir: Path, tag: str = "") -> dict[str, float | None]:
    run_dir = workdir / f"{cfg.display_label().replace(':', '_')}{tag}"
    before = cpu_ticks()
    run_simulation(cfg, run_dir, Console(file=open(os.devnull, "w")))
    steal = steal_share(before, cpu_ticks())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = sorted({r["round"] for r in records})
    end = {k: max(r["wall_time"] for r in records if r["round"] == k) for k in rounds}
    per_round = [end[k] - end[k - 1] for k in rounds[1:]]  # round 1 includes start-up skew
    sent = max(r["bytes_sent"] for r in records) / len(rounds)
    later = [r for r in records if r["round"] > 1]
    cpu = statistics.fmean(r["cpu_time"] for r in later)
    # a node's own round: local training, then the exchange (protocol, waiting for neighbours, evaluation)
    train = statistics.median(r["train_time"] for r in later)
    exchange = statistics.median(r["round_time"] - r["train_time"] for r in later)
    return {"round_s": statistics.median(per_round), "floor_s": compute_floor(cfg), "bytes_per_round": sent,
            "train_s": train, "exchange_s": exchange, "cpu_s": cpu, "steal": steal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--topologies", default="ring")
    parser.add_argument("--secure", choices=["off", "on", "both"], default="off")
    parser.add_argument("--processes", type=int, default=0)
    parser.add_argument("--task", default="digits-mlp", help="a task spec, e.g. bench_round:digits_mlp_1m")
    parser.add_argument("--repeats", type=int, default=1,
                        help="with --secure both: run plain and secure alternately this many times and report "
                             "the median secure / plain ratio and its range (this machine's speed drifts)")
    parser.add_argument("--no-verify-views", action="store_true",
                        help="secure runs without view verification (the semi-honest variant: 2 steps fewer in rounds that drop someone)")
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.secure]
    print("| topology | secure | nodes | wall per round | compute floor | ratio | sent per node per round "
          "| node: train + exchange | node CPU per round | steal |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.topologies.split(","):
            ratios: list[float] = []
            cpu_ratios: list[float] = []
            for repeat in range(max(1, args.repeats)):
                results = {}
                for secure in modes:
                    cfg = ExperimentConfig(nodes=args.nodes, topology=spec, rounds=args.rounds, secure_agg=secure,
                                           processes=args.processes, task=args.task,
                                           secagg_verify_views=not args.no_verify_views).validate()
                    m = results[secure] = measure(cfg, Path(tmp), f"-{repeat}")
                    print(f"| {spec} | {'yes' if secure else 'no'} | {args.nodes} | {m['round_s']:.3f} s | "
                          f"{m['floor_s']:.3f} s | {m['round_s'] / m['floor_s']:.2f}x | {m['bytes_per_round'] / 1024:.1f} KiB | "
                          f"{m['train_s'] * 1e3:.0f} + {m['exchange_s'] * 1e3:.0f} ms | {m['cpu_s'] * 1e3:.1f} ms | "
                          f"{'-' if m['steal'] is None else format(m['steal'], '.0%')} |")
                if len(results) == 2:
                    plain, sec = results[False], results[True]
                    ratios.append(sec["round_s"] / plain["round_s"])
                    cpu_ratios.append(sec["cpu_s"] / plain["cpu_s"])
                    print(f"| {spec} | secure / plain | | {ratios[-1]:.2f}x | | | "
                          f"{sec['bytes_per_round'] / plain['bytes_per_round']:.2f}x | | {cpu_ratios[-1]:.2f}x | |")
            if len(ratios) > 1:
                print(f"| {spec} | secure / plain, median of {len(ratios)} | | {statistics.median(ratios):.2f}x "
                      f"({min(ratios):.2f}-{max(ratios):.2f}) | | | | | {statistics.median(cpu_ratios):.2f}x "
                      f"({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) | |")

if __name__ == "__main__":
    main()
