"""Model reconstruction: every other node's contribution per round, from the coalition's view alone.

A passive coalition knows the protocol (Metropolis-Hastings gossip: node i's next round starts
from sum_l W_il x_l(r), and the vector x_i(r+1) it contributes is that plus its local update),
the topology and mixing weights, its own vectors, and what it decrypted:

- plain gossip: each neighbour's vector x_j(r) itself (a MODEL message), exactly;
- secure gossip: for each member k and each round in which every neighbour contributed, only the
  weighted sum of its neighbours, S_k(r) = result_k(r) - W_kk x_k(r) = sum_j W_kj x_j(r);
- FedAvg through a hub: the hub's average (GLOBAL), the same for every victim.

Gossip: the unknown vectors x_i(r) of every node outside the coalition are solved for jointly by
least squares over all rounds: the observed sums as near-hard equations (weight `HARD`), and the
dynamics x_i(r) - sum_l W_il x_l(r-1) = u_i(r) with the local update u_i(r) unknown, as soft
equations asking u to be small (round 1 starts from the common initial model, delta 0). This is
the minimum-update explanation of everything seen (Pasquini et al., S&P 2023, use the same
equations; Dekker et al., PoPETs 2025, the overlapping sums). The coefficient matrix is the same
for every parameter, so one factorisation serves the whole model.

Owns: the estimates and which of them were observed exactly. Must not touch: truth/, scoring,
torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from p2pfl.audit.view import View, ViewError

HARD = 1e3  # weight of an observed sum against a soft dynamics equation
MAX_UNKNOWNS = 6000  # node-rounds solved for at once; beyond it only the last rounds are (`window`)


@dataclass
class Estimates:
    """The coalition's estimate of x_i(r) (node i's contributed vector in round r, a delta from the
    reference) for every node outside it, and which (i, r) it saw exactly."""

    coalition: tuple[int, ...]
    rounds: list[int]
    vectors: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    exact: set[tuple[int, int]] = field(default_factory=set)
    method: str = ""

    def of(self, i: int, r: int) -> np.ndarray | None:
        return self.vectors.get((i, r))


def reconstruct(view: View, window: int = 0) -> Estimates:
    """Estimate every outside node's contributed vector per round (see the module docstring).

    `window` > 0: solve the last `window` rounds only (0: as many as `MAX_UNKNOWNS` allows).
    """
    aggregation = view.config.get("aggregation", "gossip")
    if aggregation == "fedavg":
        return _fedavg(view)
    if aggregation != "gossip":
        raise ViewError(f"audit reconstructs gossip and FedAvg runs; this run's aggregation is {aggregation}")
    return _gossip(view, window)


def _fedavg(view: View) -> Estimates:
    """A FedAvg leaf sees the hub's average only: that is its estimate of every node's model."""
    est = Estimates(view.coalition, list(range(1, view.rounds + 1)), method="fedavg: the hub's average")
    for k in view.coalition:
        for msg in view.received(k):
            if msg.kind == "GLOBAL" and "delta" in msg.tensors:
                for i in range(view.nodes):
                    if i not in view.coalition:
                        est.vectors[(i, msg.round)] = np.asarray(msg.tensors["delta"], np.float32)
    return est


def _gossip(view: View, window: int) -> Estimates:
    n, rounds, coalition = view.nodes, view.rounds, view.coalition
    known: dict[tuple[int, int], np.ndarray] = {}
    sums: list[tuple[dict[int, float], np.ndarray, int]] = []  # ({j: W_kj}, S_k(r), r)
    for k in coalition:
        for own in view.own_rounds(k):
            known[(k, own.round)] = own.own.astype(np.float64)
            others = {j: w for j, w in own.weights.items() if j != k}
            if own.outcome == "ok" and own.contributors == len(others) and others:
                kept = own.weights.get(k, 1.0 - sum(others.values()))
                sums.append((others, own.result.astype(np.float64) - kept * own.own.astype(np.float64), own.round))
        for msg in view.received(k):
            if msg.kind == "MODEL" and "delta" in msg.tensors and 1 <= msg.round <= rounds:
                known[(msg.sender, msg.round)] = np.asarray(msg.tensors["delta"], np.float64)
    if not known:
        raise ViewError("the recorded view holds none of the coalition's rounds")
    size = next(iter(known.values())).size
    outside = [i for i in range(n) if i not in coalition]
    span = max(1, min(rounds, window or rounds, MAX_UNKNOWNS // max(1, len(outside))))
    first = rounds - span + 1
    rs = list(range(first, rounds + 1))
    unknown = [(i, r) for r in rs for i in range(n) if (i, r) not in known]
    col = {key: c for c, key in enumerate(unknown)}
    rows: list[dict[int, float]] = []
    rhs: list[np.ndarray] = []

    def equation(terms: dict[tuple[int, int], float], value: np.ndarray, weight: float) -> None:
        """sum terms[key] * x[key] = value, known terms moved to the right-hand side."""
        row: dict[int, float] = {}
        b = value.copy()
        for key, coef in terms.items():
            if key in col:
                row[col[key]] = row.get(col[key], 0.0) + weight * coef
            elif key in known:
                b -= coef * known[key]
            else:
                return  # refers to a round outside the window: no equation
        if row:
            rows.append(row)
            rhs.append(weight * b)

    zero = np.zeros(size)
    for others, total, r in sums:
        if r >= first:
            equation({(j, r): w for j, w in others.items()}, total, HARD)
    same_init = bool(view.config.get("same_init", True))
    for r in rs:
        for i in range(n):
            terms = {(i, r): 1.0}
            if r == 1:
                if not same_init:
                    continue  # each node's own initial model: not known to the coalition
            else:
                for l, w in view.mixing_row(r - 1, i).items():
                    terms[(l, r - 1)] = terms.get((l, r - 1), 0.0) - w
            equation(terms, zero, 1.0)
    est = Estimates(coalition, rs, method="least squares over observed sums and the gossip dynamics")
    if unknown:
        a = np.zeros((len(rows), len(unknown)))
        for e, row in enumerate(rows):
            for c, v in row.items():
                a[e, c] = v
        b = np.stack(rhs) if rhs else np.zeros((0, size))
        solution, *_ = np.linalg.lstsq(a, b, rcond=None)
        for key, c in col.items():
            est.vectors[key] = solution[c].astype(np.float32)
    for key, vec in known.items():
        if key[0] not in coalition and key[1] >= first:
            est.vectors[key] = vec.astype(np.float32)
            est.exact.add(key)
    return est
