"""Parameter count and per-round CPU cost of every model of `p2pfl.models`, on this machine, one thread.

A round of a node is one local epoch over its shard (the default), then an evaluation of the test sample
(`eval_sample`, default 2,000 rows). For each model this times, on one thread as every node runs
(simulate sets one compute thread per process), one epoch over a shard of the size a node holds when the
dataset that model is for is split over 16 nodes, and one evaluation of 2,000 rows; the inputs are
random tensors of the dataset's shape (the cost does not depend on the values). The baseline, measured
in the same run, is the default task (digits MLP, 1,437 / 16 = 90 samples per node): the ratio column
says how many default rounds one round of that model costs. A 16-node round on this machine's 2 cores
needs about 16 x (train + eval) / 2 seconds of wall time at best.

    .venv/bin/python scripts/bench_models.py
    .venv/bin/python scripts/bench_models.py --nodes 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from p2pfl import models  # noqa: E402
from p2pfl.data import Shard  # noqa: E402
from p2pfl.training import LocalTrainer, TrainConfig  # noqa: E402

# model -> (the dataset it is for, input shape, classes, training samples of that dataset, augment)
CASES = [
    ("mlp", "digits (the default task)", (64,), 10, 1437, False),
    ("cnn28", "MNIST / Fashion-MNIST / FEMNIST", (1, 28, 28), 10, 60000, False),
    ("cnn32", "CIFAR-10", (3, 32, 32), 10, 50000, False),
    ("cnn32", "CIFAR-10, --augment", (3, 32, 32), 10, 50000, True),
    ("resnet8", "CIFAR-10", (3, 32, 32), 10, 50000, False),
    ("resnet20", "CIFAR-10", (3, 32, 32), 10, 50000, False),
    ("char-lstm", "Shakespeare (LEAF, ~4.2e6 lines)", (80,), 80, 4_226_158, False),
]
SHAKESPEARE_CAP = 4000  # a 16th of LEAF's Shakespeare is 264k lines: timed on this many, scaled up


def inputs(shape: tuple[int, ...], classes: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, classes, (n, *shape), generator=g).float() if len(shape) == 1 and classes == 80 \
        else torch.randn(n, *shape, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


def time_case(name: str, shape: tuple[int, ...], classes: int, shard: int, augment: bool, eval_rows: int,
              repeats: int) -> tuple[int, float, float]:
    """(parameters, seconds of one local epoch over `shard` samples, seconds to evaluate `eval_rows`)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = models.build(name, shape, classes, augment)
    timed = min(shard, SHAKESPEARE_CAP) if name == "char-lstm" else shard
    x, y = inputs(shape, classes, timed, g)
    trainer = LocalTrainer(model, Shard(x.numpy(), y.numpy()), TrainConfig(), 0)
    xe, ye = inputs(shape, classes, eval_rows, g)
    trainer.train()  # first call pays one-time set-up
    train = min(_clock(trainer.train) for _ in range(repeats)) * shard / timed
    ev = min(_clock(lambda: trainer.evaluate(xe.numpy(), ye.numpy())) for _ in range(repeats))
    return models.parameter_count(model), train, ev


def _clock(f) -> float:  # noqa: ANN001
    began = time.process_time()
    f()
    return time.process_time() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--eval-sample", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, one thread; {a.nodes} nodes, one local epoch, "
          f"batch 32, eval on {a.eval_sample} rows; CPU seconds")
    print("| model | for | parameters | samples per node | train s / round | eval s / round | "
          "node round / default round |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = None
    for name, what, shape, classes, samples, augment in CASES:
        shard = samples // a.nodes
        rows = min(a.eval_sample, 360) if name == "mlp" else a.eval_sample  # digits has 360 test rows
        params, train, ev = time_case(name, shape, classes, shard, augment, rows, a.repeats)
        base = base or train + ev
        print(f"| {name}{' +augment' if augment else ''} | {what} | {params:,} | {shard:,} | {train:.3f} | {ev:.3f} | "
              f"{(train + ev) / base:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
