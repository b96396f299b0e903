"""Final accuracy of 16 digits nodes under the partitions people cite, against a centralized reference.

Runs `p2pfl simulate` (the real CLI: processes, sockets, crypto) for every topology x partition x seed
and prints mean ± std over seeds of the nodes' mean final accuracy (full test set), next to the
centralized reference measured in the same run: the same MLP trained on the whole training set for
the same number of epochs (40 rounds of one local epoch = 40 epochs), same optimiser, same seeds.

    .venv/bin/python scripts/bench_partitions.py                       # torus, ring; iid, dir 0.5, dir 0.1; 3 seeds
    .venv/bin/python scripts/bench_partitions.py --partitions iid,pathological:2 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

P2PFL = str(Path(sys.executable).parent / "p2pfl")


def centralized(task: str, rounds: int, seed: int) -> float:
    """The task's model trained on the whole training set, `rounds` epochs, the nodes' optimiser settings."""
    import torch

    from p2pfl.config import ExperimentConfig
    from p2pfl.data import Shard
    from p2pfl.node import train_config
    from p2pfl.training import LocalTrainer, init_model, load_task

    torch.set_num_threads(1)
    cfg = ExperimentConfig(task=task, seed=seed)
    t = load_task(task, seed)
    trainer = LocalTrainer(init_model(t, seed), Shard(t.dataset.x_train, t.dataset.y_train), train_config(cfg), seed)
    for _ in range(rounds):
        trainer.train()
    return trainer.evaluate(t.dataset.x_test, t.dataset.y_test)[1]


def run(args: list[str], out: Path) -> dict:
    cmd = [P2PFL, "simulate", *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def partition_args(spec: str) -> list[str]:
    """iid | dirichlet:ALPHA | pathological:K | shard:K | size-skew:ALPHA -> simulate flags."""
    kind, _, value = spec.partition(":")
    if kind in ("dirichlet", "size-skew"):
        return ["--partition", kind, "--alpha", value or "0.5"]
    if kind in ("pathological", "shard"):
        return ["--partition", kind, "--shards-per-node", value or "2"]
    return ["--partition", kind]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits-mlp")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--topologies", default="torus,ring")
    ap.add_argument("--partitions", default="iid,dirichlet:0.5,dirichlet:0.1")
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    ref = [centralized(a.task, a.rounds, s) for s in seeds]
    print(f"centralized reference ({a.task}, {a.rounds} epochs): {100 * statistics.mean(ref):.1f}% "
          f"(seeds {', '.join(f'{100 * r:.1f}' for r in ref)})")
    print(f"| topology | partition | final accuracy, mean ± std over seeds {a.seeds} | per seed | vs centralized |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for topo in a.topologies.split(","):
            for part in a.partitions.split(","):
                accs = []
                began = time.monotonic()
                for s in seeds:
                    args = ["--task", a.task, "-n", str(a.nodes), "-r", str(a.rounds), "-t", topo, "--seed", str(s),
                            *partition_args(part)]
                    accs.append(run(args, Path(tmp) / f"{topo}-{part}-{s}")["final_acc_mean"])
                mean = statistics.mean(accs)
                std = statistics.stdev(accs) if len(accs) > 1 else 0.0
                print(f"| {topo} | {part} | {100 * mean:.1f}% ± {100 * std:.1f} | "
                      f"{', '.join(f'{100 * x:.1f}' for x in accs)} | {mean / statistics.mean(ref):.3f} |"
                      f"  <!-- {time.monotonic() - began:.0f}s -->", flush=True)


if __name__ == "__main__":
    main()
