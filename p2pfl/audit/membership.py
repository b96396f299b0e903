"""Membership inference: the loss-threshold attack (Yeom et al., 2018) and its metrics with confidence intervals.

The attacker holds an estimate of the victim's model (`reconstruct`) and a candidate record; it
scores the record by minus its loss under that model (a record the model trained on has a lower
loss). The score is all the attack does: which candidates are members is the experimenter's
knowledge, and enters only in `auc` and `tpr_at_fpr`, through the labels the scorer passes.

Metrics: AUC (Mann-Whitney, ties counted half) and TPR at a fixed FPR (1%: the low-FPR regime
that Carlini et al., 2022, argue is what matters), each with a percentile bootstrap CI that
resamples members and non-members independently, with a seeded generator (reproducible).

Owns: the attack's scores and the metrics. Must not touch: truth/ or any file (it is handed arrays).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from p2pfl.training import Task, init_model

BOOTSTRAP = 400  # resamples per CI
FPR = 0.01


class LossAttack:
    """Scores records by -loss under a model given as a flat delta from the task's reference model."""

    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.reference = task.initial_flat(seed).astype(np.float32)
        self.model: nn.Module = init_model(task, seed)
        self.model.eval()

    def scores(self, delta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """-loss of every record (x[i], y[i]) under reference + delta: higher means "more likely a member"."""
        flat = torch.from_numpy(np.asarray(self.reference + delta, dtype=np.float32))
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(flat, self.model.parameters())
            logits = self.model(torch.from_numpy(np.asarray(x, dtype=np.float32)))
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(y, dtype=np.int64)), reduction="none")
        return -loss.numpy().astype(np.float64)


def auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counted half (Mann-Whitney U)."""
    n = np.sort(np.asarray(non_members, np.float64))
    m = np.asarray(members, np.float64)
    below = np.searchsorted(n, m, side="left")
    equal = np.searchsorted(n, m, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(m) * len(n)))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float = FPR) -> float:
    """Share of members scored above the threshold that lets through at most `fpr` of the non-members."""
    n = np.sort(np.asarray(non_members, np.float64))
    allowed = int(np.floor(fpr * len(n)))  # non-members allowed strictly above the threshold
    threshold = n[len(n) - allowed - 1] if allowed < len(n) else -np.inf
    return float((np.asarray(members) > threshold).mean())


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(pairs: list[tuple[np.ndarray, np.ndarray]], metric: Callable[[np.ndarray, np.ndarray], float],
              seed: int = 0, reps: int = BOOTSTRAP) -> Interval:
    """The mean of `metric` over the (members, non-members) pairs, with a 95% percentile bootstrap CI
    (each replicate resamples every pair's members and non-members with replacement)."""
    rng = np.random.default_rng(seed)
    value = float(np.mean([metric(m, n) for m, n in pairs]))
    draws = []
    for _ in range(reps):
        draws.append(np.mean([metric(m[rng.integers(0, len(m), len(m))], n[rng.integers(0, len(n), len(n))])
                              for m, n in pairs]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return Interval(value, float(low), float(high))
