"""16 nodes on synthetic stand-ins of the published datasets' shapes, through the real CLI.

No MNIST, CIFAR or LEAF files are on this machine and nothing can be downloaded, so this measures the
pipeline, not those datasets: files written byte for byte in each publisher's format by
tests/helpers/publish.py (each class a random prototype image plus Gaussian noise, std 60 of 255:
harder than the tests' files, not a real dataset), loaded by p2pfl's loaders, split, trained on 16
nodes of a torus with each dataset's default model, for a few rounds. It prints the final accuracy
(whole test set) and the wall time per round, next to the default digits run measured in the same
invocation as the baseline.

    .venv/bin/python scripts/bench_standins.py
    .venv/bin/python scripts/bench_standins.py --rounds 5 --per-node 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import publish as P  # noqa: E402

P2PFL = str(Path(sys.executable).parent / "p2pfl")


def run(args: list[str], out: Path) -> dict:
    proc = subprocess.run([P2PFL, "simulate", *args, "--out", str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"simulate {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-node", type=int, default=100, help="training samples per node")
    a = ap.parse_args()
    n_train, n_test = a.per_node * a.nodes, 500
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cases = [
            ("digits (baseline, real data)", ["--task", "digits-mlp"]),
            ("mnist-shaped IDX, cnn28, dirichlet 0.5",
             ["--dataset", "mnist", "--data-dir", str(P.write_idx_dataset(t / "mnist", n_train=n_train, n_test=n_test)),
              "--partition", "dirichlet", "--alpha", "0.5"]),
            ("cifar10-shaped binary, cnn32, iid",
             ["--dataset", "cifar10", "--data-dir", str(P.write_cifar10(t / "cifar", per_batch=n_train // 5, n_test=n_test))]),
            ("cifar10-shaped binary, resnet8, iid",
             ["--dataset", "cifar10", "--data-dir", str(t / "cifar"), "--model", "resnet8"]),
            # The stand-in's classes are fixed noise patterns, which a shifted crop no longer matches: augmentation
            # makes them much harder to learn (natural images are the other way round). Run to time its cost.
            ("cifar10-shaped binary, cnn32 +augment, iid",
             ["--dataset", "cifar10", "--data-dir", str(t / "cifar"), "--augment"]),
            ("femnist-shaped LEAF (32 writers), cnn28, natural",
             ["--dataset", "femnist", "--data-dir", str(P.write_femnist(t / "femnist", writers=2 * a.nodes,
                                                                       per_writer=a.per_node // 2)),
              "--partition", "natural"]),
        ]
        print(f"{a.nodes} nodes, torus, {a.rounds} rounds, {a.per_node} training samples per node, seed 0")
        print("| run | final accuracy (mean over nodes) | local_acc | wall s / round | vs digits |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for label, args in cases:
            out = t / f"run-{len(label)}-{abs(hash(label))}"
            s = run([*args, "-n", str(a.nodes), "-t", "torus", "-r", str(a.rounds), "--seed", "0"], out)
            recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            per_round = (max(r["wall_time"] for r in recs) - max(r["wall_time"] for r in recs if r["round"] == 1)) \
                / max(1, a.rounds - 1)
            local = [r["local_acc"] for r in recs if r["round"] == a.rounds and r["local_acc"] is not None]
            base = base or per_round
            print(f"| {label} | {100 * s['final_acc_mean']:.1f}% | "
                  f"{f'{100 * sum(local) / len(local):.1f}%' if local else '-'} | {per_round:.2f} | "
                  f"{per_round / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
