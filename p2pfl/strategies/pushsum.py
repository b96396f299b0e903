"""Push-sum (Kempe et al. 2003; Nedic and Olshevsky 2015): averaging over directed graphs.

Each node keeps a pair (x, w), its model being z = x / w. In a round it keeps 1/(d+1) of both
and pushes a 1/(d+1) share of each to its d out-neighbours, then adds up what it kept and what
its in-neighbours pushed. Only out-degrees are needed (the mixing matrix is column stochastic,
not doubly stochastic): the weights w carry the bias that the missing symmetry would cause, and
z = x / w converges to the average of the inputs on any strongly connected directed graph,
also on a time-varying one that is jointly strongly connected.

The strategy runs push-sum over the topology's undirected graph as a time-varying directed
one, one out-neighbour per round (Stochastic Gradient Push, Assran et al. 2019, and its
one-peer exponential graph): node i walks its neighbours in the order of their id offset
(j - i) mod n, one per round. On circulant graphs (ring, exponential, complete) every node
then pushes along the same offset in a round, so each receives exactly one share and w stays
1; on other graphs w corrects the uneven in-degrees. One message per node per round, where
gossip sends one per neighbour. Local training moves z (the node's model): the node shares
x = w * z, so its update enters the sum weighted by w (1 on the circulant graphs).

Owns the strategy, the round's out-/in-neighbours and its sans-I/O protocol `PushSumRound`,
which takes any directed out/in sets (the tests drive it on directed graphs directly). The
weight w lives in memory, from one round's `prepared_next()` to the next round's context: a
node that restarts, catches up or skips rounds starts again from w = 1. Must not touch: the
node's state. Plain only (config refuses secure_agg); DP: local noise only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from p2pfl.messages import Kind, Message, Outbound
from p2pfl.protocols import Rejected, RoundProtocol, VectorCodec, read_vector, vector_message
from p2pfl.strategies import register
from p2pfl.strategies.base import RoundContext, Strategy

WEIGHT = "weight"  # meta key of the pushed share of w
MAX_WEIGHT = 2.0**32  # shares of w sum to the node count: anything near this cannot be honest


@dataclass(frozen=True)
class PushSumWeight:
    """The node's push-sum weight w for `round` (handed from one round to the next)."""

    round: int
    weight: float


def out_peer(adjacency: Mapping[int, Iterable[int]], node: int, round_: int) -> int | None:
    """The neighbour `node` pushes to in `round_`: its neighbours by id offset, one per round."""
    nbrs = [j for j in adjacency[node] if j != node]
    if not nbrs:
        return None
    modulus = max(adjacency) + 1
    order = sorted(nbrs, key=lambda j: (j - node) % modulus)
    return order[(round_ - 1) % len(order)]


def in_peers(adjacency: Mapping[int, Iterable[int]], node: int, round_: int) -> frozenset[int]:
    """The neighbours that push to `node` in `round_`."""
    return frozenset(j for j in adjacency[node] if j != node and out_peer(adjacency, j, round_) == node)


class PushSumRound(RoundProtocol):
    """One push-sum step on a directed graph: keep a share of (x, w), push a share to each out-neighbour.

    out: who this node pushes to; senders: who pushes to it this round (it waits for those of
    them in `expected`; one that misses the deadline loses its share of the mass, which biases
    the average slightly but keeps z a convex combination). own: the node's model z (flat
    float32 delta); weight: its w, so it shares x = w * z. With a `codec` the pushed shares of x
    travel quantized (the node keeps its own share exact).
    """

    def __init__(self, node_id: int, round_: int, out: Iterable[int], senders: Iterable[int], own: np.ndarray,
                 weight: float = 1.0, expected: Iterable[int] | None = None,
                 codec: VectorCodec | None = None) -> None:
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"push-sum weight must be positive and finite, got {weight}")
        self.node_id = node_id
        self.round = round_
        self.out = sorted(set(out) - {node_id})
        self.senders = set(senders) - {node_id}
        self.expected = set(self.senders) if expected is None else set(expected) & self.senders
        self.own = own
        self.codec = codec
        share = 1.0 / (len(self.out) + 1)
        self.kept_x = (weight * share) * own.astype(np.float64)
        self.kept_w = float(weight * share)
        self.received: dict[int, tuple[float, np.ndarray]] = {}  # sender -> (w share, x share)
        self._done = not self.expected
        self._weight: float | None = None

    def start(self) -> list[Outbound]:
        if not self.out:
            return []
        msg, _ = vector_message(Kind.MODEL, self.node_id, self.round, self.kept_x.astype(np.float32), self.codec,
                                {WEIGHT: self.kept_w})
        return [(j, msg) for j in self.out]

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.MODEL:
            raise Rejected("unexpected_kind", f"{msg.kind.name} in a push-sum round")
        if msg.sender not in self.senders:
            raise Rejected("not_scheduled", f"MODEL from {msg.sender}, which does not push to us in round {self.round}")
        if msg.sender in self.received:
            raise Rejected("duplicate", f"second MODEL from {msg.sender} in round {self.round}")
        w = msg.meta.get(WEIGHT)
        if not isinstance(w, float) or not (math.isfinite(w) and 0 < w < MAX_WEIGHT):
            raise Rejected("bad_meta", f"{WEIGHT}={w!r} from {msg.sender}")
        self.received[msg.sender] = (w, read_vector(msg, self.own.shape[0]))
        self._done = self.expected <= set(self.received)
        return []

    def on_deadline(self) -> list[Outbound]:
        self._done = True  # the missing shares are lost to this round's sum
        return []

    def finished(self) -> bool:
        return self._done

    def _sums(self) -> tuple[np.ndarray, float]:
        x, w = self.kept_x.copy(), self.kept_w
        for sender in sorted(self.received):  # a fixed order: same inputs, bit-identical result
            ws, xs = self.received[sender]
            x += xs.astype(np.float64)
            w += ws
        return x, w

    def result(self) -> np.ndarray:
        x, w = self._sums()
        self._weight = w
        return (x / w).astype(np.float32)

    def heard(self) -> list[int]:
        return sorted(self.received)

    def prepared_next(self) -> PushSumWeight:
        return PushSumWeight(self.round + 1, self._weight if self._weight is not None else self._sums()[1])


@register("pushsum")
class PushSum(Strategy):
    """Push-sum over a one-peer time-varying directed graph drawn from the topology (see the module)."""

    def protocol(self, ctx: RoundContext) -> RoundProtocol:
        carried = ctx.prepared
        weight = carried.weight if isinstance(carried, PushSumWeight) and carried.round == ctx.round else 1.0
        peer = out_peer(ctx.adjacency, ctx.node_id, ctx.round)
        return PushSumRound(ctx.node_id, ctx.round, [] if peer is None else [peer], self.senders(ctx), ctx.own,
                            weight, expected=ctx.expected, codec=ctx.codec)

    def senders(self, ctx: RoundContext) -> frozenset[int]:
        return in_peers(ctx.adjacency, ctx.node_id, ctx.round)
