"""Round protocols as sans-I/O state machines: what a node sends and how it averages.

Owns the `RoundProtocol` interface and the two plain protocols: Metropolis-Hastings gossip
(D-PSGD averaging) and star FedAvg through a hub. A protocol consumes `Message`s and returns
`(recipient, Message)` pairs; it never touches sockets, clocks or torch, so tests drive it
directly. The node (see `node.py`) feeds it messages and tells it when a phase deadline passed.

Also owns `Schedule`, the public answer to "who takes part in round r" (partial participation,
the FedAvg hub's sample of leaves, spent privacy budgets), which every node computes alike, and
the two forms a shared vector travels in: float32 (`DELTA`) or quantized (`compression`).

Vectors are flat float32 model deltas from the common initial model (every node builds the
same initial model from the seed). Deltas keep values small, which the fixed-point encoding of
secure aggregation needs, and averaging deltas is the same as averaging models because
every weight row sums to one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from p2pfl.compression import QuantizedVector, SharedVectorCodec, dequantize, has_quantized
from p2pfl.messages import Kind, Message, Outbound

DELTA = "delta"  # tensor name of a model delta in MODEL and GLOBAL messages
_SCHEDULE_SALT = 0x5C4ED  # keeps the participation draws apart from other uses of the seed

# The hub's central DP noise: (weighted average, largest weight of one contribution) -> noisy average.
CentralNoise = Callable[[np.ndarray, float], np.ndarray]


class VectorCodec(Protocol):
    """Turns a shared vector into message parts (see `compression.SharedVectorCodec`)."""

    def pack(self, vec: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        """(meta, tensors, the vector the receivers will decode)."""
        ...


class Rejected(Exception):
    """A message the protocol refuses; the node drops it and counts `reason`, then sends `reply`
    (e.g. an abort telling a late sender to stop waiting for an answer that will never come)."""

    def __init__(self, reason: str, detail: str = "", reply: list[Outbound] | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.reply: list[Outbound] = reply or []


class RoundProtocol(ABC):
    """One node's part in one round of aggregation: everything the node may call, and nothing more.

    The node drives every protocol alike: `start()`, then `on_message()` for each message of
    `round` until `finished()`, `on_deadline()` whenever the deadline of `phase` passes; then
    `result()`, `arrived()`, `failure_reason`, `release()` and `prepared_next()` (handed to the
    next round's protocol through its strategy). After the round, messages of `round` that
    `takes_late()` accepts still go to `on_message()`; the rest are stale.
    """

    round: int  # the round this protocol runs (1-based)
    # True where a node invited far ahead mid-round may give this round up and run the same input
    # as that round (`Node._jump_target`): nothing of it is carried to the next round (push-sum's
    # weight is) and its neighbours survive its leaving (plain gossip; secure gossip's groups see a
    # member drop out).
    retargetable = False

    @abstractmethod
    def start(self) -> list[Outbound]:
        """Messages to send as the round begins."""

    @abstractmethod
    def on_message(self, msg: Message) -> list[Outbound]:
        """Take one authenticated message of this round; raise `Rejected` to drop it."""

    @abstractmethod
    def on_deadline(self) -> list[Outbound]:
        """The current phase's deadline passed without the phase completing."""

    @property
    def phase(self) -> int:
        """Index of the current phase; the node restarts its deadline when it changes."""
        return 0

    @abstractmethod
    def finished(self) -> bool:
        """True once `result()` is final."""

    @abstractmethod
    def result(self) -> np.ndarray:
        """The node's new flat delta (float32)."""

    def heard(self) -> list[int]:
        """The neighbours whose contributions made it into this round's result (ascending ids)."""
        return []

    def arrived(self) -> int:
        """How many neighbours' contributions made it into this round's result."""
        return len(self.heard())

    @property
    def failure_reason(self) -> str | None:
        """Why this round's aggregate failed safely (the node kept its own model), or None."""
        return None

    def release(self) -> None:
        """The round is over: drop what only the round needed (secrets, other nodes' vectors)."""

    def prepared_next(self) -> object | None:
        """What this finished round set up for the next one (secure gossip: the next round's
        share phase; push-sum: the node's weight), handed to the next protocol; None: nothing."""
        return None

    def peer_restarted(self, j: int) -> list[Outbound]:
        """Neighbour j's process was replaced by a new one (the transport agreed fresh sessions
        with it): what its old process held of this round is gone. Default: nothing to stop."""
        return []

    def peer_back(self, j: int) -> list[Outbound]:
        """Neighbour j, marked down (not waited for) as this round began, was heard again: a protocol
        that can still take its part in this round may wait for it. Default: nothing changes."""
        return []

    def rejoin_round(self) -> int:
        """The first round of ours a neighbour heard again now takes part in (the node tells it, so
        it skips to that round): this one if `peer_back` took it in, else the next. Default: the next."""
        return self.round + 1

    def peer_moved_on(self, j: int, seen: int) -> list[Outbound]:
        """Neighbour j was seen in round `seen`, later than this one (its link delivers in order, so
        what it sent for this round before has come). A protocol whose messages of a round all leave
        as the round begins has all of j's and stops waiting for it; one whose finished round still
        answers late traffic (secure aggregation's reveals, taken in the next round) knows that only
        once `seen` is two rounds on. Default: nothing to stop."""
        return []

    def takes_late(self, msg: Message) -> bool:
        """After `finished()`: True if `msg`, of this round, is expected traffic this protocol
        still consumes (the node feeds it to `on_message`) rather than a stale message."""
        return False


def mix(own: np.ndarray, contributions: dict[int, tuple[float, np.ndarray]]) -> np.ndarray:
    """Average `own` with weighted neighbour vectors; weight of absent neighbours stays home.

    x_new = x_own + sum_j W_j (x_j - x_own). With every neighbour present this is the
    Metropolis-Hastings row sum_j W_ij x_j; a missing neighbour's weight falls to the node
    itself, so the result is always a convex combination (a valid average) and the row stays
    stochastic (the re-normalisation the protocol documents).
    """
    out = own.astype(np.float32, copy=True)
    for sender in sorted(contributions):  # a fixed order: same inputs, bit-identical result
        weight, vec = contributions[sender]
        out += np.float32(weight) * (vec - own)
    return out


def read_vector(msg: Message, length: int) -> np.ndarray:
    """The shared vector of a MODEL/GLOBAL message, float32 (`DELTA`) or quantized; `Rejected` if bad."""
    if not has_quantized(msg.tensors):
        return check_vector(msg, DELTA, length)
    try:
        q = QuantizedVector.from_message(msg.meta, msg.tensors, SharedVectorCodec.PREFIX, length)
    except ValueError as exc:
        raise Rejected("bad_tensor", f"{msg.kind.name} from {msg.sender}: {exc}") from None
    vec = dequantize(q)
    if not np.isfinite(vec).all():
        raise Rejected("non_finite", f"{msg.kind.name} from {msg.sender} decodes to NaN/Inf")
    return vec


def vector_message(kind: Kind, sender: int, round_: int, vec: np.ndarray, codec: VectorCodec | None = None,
                   meta: dict[str, Any] | None = None) -> tuple[Message, np.ndarray]:
    """(message carrying `vec`, what receivers decode): float32 as is, or through `codec`."""
    meta = dict(meta or {})
    if codec is None:
        return Message(kind, sender, round_, meta=meta, tensors={DELTA: vec}), vec
    qmeta, tensors, decoded = codec.pack(vec)
    meta.update(qmeta)
    return Message(kind, sender, round_, meta=meta, tensors=tensors), decoded


def check_vector(msg: Message, name: str, length: int) -> np.ndarray:
    """The named float32 vector of `msg`, or `Rejected` if it is missing, misshapen or not finite."""
    vec = msg.tensors.get(name)
    if vec is None:
        raise Rejected("missing_tensor", f"{msg.kind.name} from {msg.sender} has no '{name}'")
    if vec.dtype != np.float32 or vec.shape != (length,):
        raise Rejected("wrong_shape", f"{msg.kind.name} from {msg.sender}: {vec.dtype}{vec.shape}, expected float32({length},)")
    if not np.isfinite(vec).all():
        raise Rejected("non_finite", f"{msg.kind.name} from {msg.sender} carries NaN/Inf")
    return vec


class GossipRound(RoundProtocol):
    """D-PSGD averaging with Metropolis-Hastings weights: send to all neighbours, mix what arrives.

    With a `codec` the node sends its vector quantized (the neighbours mix the decoded vector;
    the node mixes its own exact one).
    """

    retargetable = True

    def __init__(self, node_id: int, round_: int, weights: dict[int, float], own: np.ndarray,
                 expected: set[int] | None = None, codec: VectorCodec | None = None) -> None:
        self.node_id = node_id
        self.round = round_
        self.weights = {j: w for j, w in weights.items() if j != node_id}
        # Neighbours we wait for; one marked down may still contribute if it turns up in time.
        self.expected = set(self.weights) if expected is None else set(expected) & set(self.weights)
        self.own = own
        self.codec = codec
        self.received: dict[int, tuple[float, np.ndarray]] = {}
        self._done = not self.expected

    def start(self) -> list[Outbound]:
        msg, _ = vector_message(Kind.MODEL, self.node_id, self.round, self.own, self.codec)
        return [(j, msg) for j in sorted(self.weights)]

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.MODEL:
            raise Rejected("unexpected_kind", f"{msg.kind.name} in a gossip round")
        if msg.sender not in self.weights:
            raise Rejected("not_neighbour", f"node {msg.sender}")
        if msg.sender in self.received:
            raise Rejected("duplicate", f"second MODEL from {msg.sender} in round {self.round}")
        vec = read_vector(msg, self.own.shape[0])
        self.received[msg.sender] = (self.weights[msg.sender], vec)
        self._done = self.expected <= set(self.received)
        return []

    def peer_back(self, j: int) -> list[Outbound]:
        # Back from a partition: it catches up to our round at once (it skips to the round our
        # probe named), so waiting for it makes this round the halves' first together again.
        if j in self.weights and not self._done:
            self.expected.add(j)
            self._done = self.expected <= set(self.received)
        return []

    def rejoin_round(self) -> int:
        return self.round if not self._done else self.round + 1

    def peer_moved_on(self, j: int, seen: int) -> list[Outbound]:
        # j skipped this round (it caught up after a partition, say): its model for it never comes
        self.expected.discard(j)
        self._done = self.expected <= set(self.received)
        return []

    def on_deadline(self) -> list[Outbound]:
        self._done = True  # the missing neighbours' weight stays home (see `mix`)
        return []

    def finished(self) -> bool:
        return self._done

    def result(self) -> np.ndarray:
        return mix(self.own, self.received)

    def heard(self) -> list[int]:
        return sorted(self.received)


class StarRound(RoundProtocol):
    """What every round through a star's hub shares: the leaf's side and the deadlines.

    A subclass sets `node_id`, `round`, `hub`, `own`, `fallback`, `received` (the leaves the hub
    counted), `_result` (None until final) and `_phase` = 0, and implements `start`, the hub's
    `_hub_collect` and `_broadcast` (combine what arrived, answer every leaf). A leaf takes the
    hub's GLOBAL as its result; it waits two deadlines for it, then keeps `fallback`. The hub
    waits one deadline for the leaves, then combines whoever arrived.
    """

    node_id: int
    hub: int
    leaves: list[int]
    active: set[int]
    own: np.ndarray
    fallback: np.ndarray
    received: dict
    _result: np.ndarray | None
    _phase: int

    @property
    def is_hub(self) -> bool:
        return self.node_id == self.hub

    @property
    def phase(self) -> int:
        return self._phase

    def on_message(self, msg: Message) -> list[Outbound]:
        return self._hub_collect(msg) if self.is_hub else self._leaf_receive(msg)

    @abstractmethod
    def _hub_collect(self, msg: Message) -> list[Outbound]:
        """The hub takes one leaf's message; answers every leaf once all expected ones are in."""

    def _check_leaf_model(self, msg: Message) -> None:
        """The hub's checks of a leaf's MODEL before it reads what it carries (raises `Rejected`)."""
        if msg.kind != Kind.MODEL:
            raise Rejected("unexpected_kind", f"{msg.kind.name} sent to the hub")
        if msg.sender not in self.leaves:
            raise Rejected("not_neighbour", f"node {msg.sender}")
        if msg.sender not in self.active:
            raise Rejected("not_scheduled", f"MODEL from {msg.sender}, which sits this round out")
        if msg.sender in self.received or self._result is not None:
            raise Rejected("duplicate", f"MODEL from {msg.sender} after it was counted")

    @abstractmethod
    def _broadcast(self) -> list[Outbound]:
        """The hub combines what arrived, sets its result and answers every leaf."""

    def _leaf_receive(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.GLOBAL or msg.sender != self.hub:
            raise Rejected("unexpected_kind", f"{msg.kind.name} from {msg.sender} at a leaf")
        if self._result is not None:
            raise Rejected("duplicate", f"second GLOBAL in round {self.round}")
        self._result = read_vector(msg, self.own.shape[0])
        return []

    def on_deadline(self) -> list[Outbound]:
        if self.is_hub:
            return self._broadcast()  # average whoever arrived; the others resync next round
        self._phase += 1
        if self._phase >= 2:
            self._result = self.fallback  # no answer from the hub: keep our model this round
        return []

    def finished(self) -> bool:
        return self._result is not None

    def result(self) -> np.ndarray:
        assert self._result is not None, "result() before the round finished"
        return self._result

    def heard(self) -> list[int]:
        if self.is_hub:
            return sorted(self.received)
        return [self.hub] if self._result is not None and self._result is not self.fallback else []


class FedAvgRound(StarRound):
    """Star FedAvg: leaves send to the hub, the hub averages by sample count and sends it back.

    Every node, hub included, trains on its own data; after a complete round all nodes hold the
    same model. A leaf waits two deadlines for the hub's answer (the hub itself waits one for
    the leaves), then keeps `fallback` (default: its own model) for this round.

    active: the leaves that contribute this round (`Schedule`; default all). The others send
        nothing and only wait for the hub's average, which goes to every leaf.
    samples: the node's weight; the hub may pass 0 (it sits this round out).
    noise: central DP at the hub, applied to the average before it is broadcast.
    codec: quantizes what this node sends (a leaf's vector, the hub's average); the hub adopts
        the decoded average it broadcast, so every node still holds the same model.
    """

    def __init__(self, node_id: int, round_: int, hub: int, leaves: list[int], own: np.ndarray, samples: int,
                 expected: set[int] | None = None, active: Iterable[int] | None = None,
                 fallback: np.ndarray | None = None, noise: CentralNoise | None = None,
                 codec: VectorCodec | None = None) -> None:
        self.node_id = node_id
        self.round = round_
        self.hub = hub
        self.leaves = [j for j in leaves if j != hub]
        self.active = set(self.leaves) if active is None else set(active) & set(self.leaves)
        # Leaves the hub waits for (the others may still count if they arrive in time).
        self.expected = set(self.active) if expected is None else set(expected) & self.active
        self.own = own
        self.fallback = own if fallback is None else fallback
        self.samples = samples
        self.noise = noise
        self.codec = codec
        self.received: dict[int, tuple[int, np.ndarray]] = {}
        self._result: np.ndarray | None = None
        self._phase = 0
        self._pending_broadcast = self.is_hub and not self.expected

    def start(self) -> list[Outbound]:
        if self._pending_broadcast:  # nobody to wait for: answer whoever is there right away
            return self._broadcast()
        if self.is_hub or self.node_id not in self.active:
            return []
        msg, _ = vector_message(Kind.MODEL, self.node_id, self.round, self.own, self.codec, {"samples": self.samples})
        return [(self.hub, msg)]

    def _hub_collect(self, msg: Message) -> list[Outbound]:
        self._check_leaf_model(msg)
        samples = msg.meta.get("samples")
        if not isinstance(samples, int) or isinstance(samples, bool) or not 0 < samples < 2**40:
            raise Rejected("bad_meta", f"samples={samples!r} from {msg.sender}")
        self.received[msg.sender] = (samples, read_vector(msg, self.own.shape[0]))
        if self.expected <= set(self.received):
            return self._broadcast()
        return []

    def _broadcast(self) -> list[Outbound]:
        total = self.samples + sum(n for n, _ in self.received.values())
        if total == 0:  # the hub sits out and no leaf arrived: nothing new to average
            self._result = self.fallback
        else:
            avg = (self.samples / total) * self.own.astype(np.float64)
            for sender in sorted(self.received):  # a fixed order: same inputs, bit-identical result
                n, vec = self.received[sender]
                avg += (n / total) * vec.astype(np.float64)
            if self.noise is not None:
                avg = self.noise(avg, max([self.samples, *(n for n, _ in self.received.values())]) / total)
            self._result = avg.astype(np.float32)
        msg, self._result = vector_message(Kind.GLOBAL, self.node_id, self.round, self._result, self.codec)
        return [(j, msg) for j in self.leaves]



@dataclass
class Schedule:
    """Who trains and shares in each round: a public function of (seed, round), alike on every node.

    participation: each node takes part in a round with probability p, drawn independently per
        round from a generator seeded with (seed, round), so every node knows who sits out.
    hub, sample: in a star, the hub samples `sample` of the leaves each round (0 = all); a leaf
        takes part when it is sampled *and* its participation draw says so; the hub's own data
        is subject to the participation draw only (it aggregates every round regardless).
    max_steps: a node that has taken part in this many rounds sits out every later round (its
        privacy budget is spent); None = no budget. All nodes share the accountant settings,
        so this too is public.

    With p = 1, no sampling and no budget every node takes part in every round and nothing is
    drawn at all.
    """

    seed: int
    nodes: tuple[int, ...]
    participation: float = 1.0
    hub: int | None = None
    sample: int = 0
    max_steps: int | None = None
    everyone: frozenset[int] | None = None  # `nodes` as a set; given (with `nodes` sorted) to share both
    _active: list[frozenset[int]] = field(default_factory=list, repr=False)
    _steps: list[dict[int, int]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        # The nodes of a 10,000-node simulation each hold a schedule: they pass the sorted ids and
        # their set made once per process (`topology.members`), not 10,000 copies of each.
        if self.everyone is None:
            self.nodes = tuple(sorted(self.nodes))
            self.everyone = frozenset(self.nodes)
        elif len(self.everyone) != len(self.nodes):
            raise ValueError("everyone must be the set of nodes")
        if not 0 < self.participation <= 1:
            raise ValueError(f"participation must be in (0, 1], got {self.participation}")
        leaves = len(self.nodes) - (self.hub is not None)
        if self.sample < 0 or self.sample > leaves or (self.sample and self.hub is None):
            raise ValueError(f"sample must be in [0, {leaves}] and needs a hub, got {self.sample}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 or None, got {self.max_steps}")

    @property
    def trivial(self) -> bool:
        """True when every node takes part in every round."""
        return self.participation >= 1 and not self.sample and self.max_steps is None

    def drawn(self, r: int) -> frozenset[int]:
        """Who the participation draw and the hub's sample pick for round r (budgets aside)."""
        if self.participation >= 1 and not self.sample:
            assert self.everyone is not None
            return self.everyone
        rng = np.random.default_rng([_SCHEDULE_SALT, self.seed, r])
        u = rng.random(len(self.nodes))
        chosen = {v for v, x in zip(self.nodes, u) if x < self.participation}
        if self.sample:
            leaves = [v for v in self.nodes if v != self.hub]
            picked = rng.choice(len(leaves), size=self.sample, replace=False)
            chosen &= {leaves[i] for i in picked} | {self.hub}
        return frozenset(chosen)

    def active(self, r: int) -> frozenset[int]:
        """Who takes part in round r (1-based): drawn, and with budget left."""
        if r < 1:
            raise ValueError(f"rounds are 1-based, got {r}")
        if self.trivial:
            assert self.everyone is not None
            return self.everyone
        while len(self._active) < r:
            k = len(self._active) + 1
            before = self._steps[-1] if self._steps else {v: 0 for v in self.nodes}
            cap = self.max_steps
            act = frozenset(v for v in self.drawn(k) if cap is None or before[v] < cap)
            self._active.append(act)
            self._steps.append({v: before[v] + (v in act) for v in self.nodes})
        return self._active[r - 1]

    def steps(self, node: int, r: int) -> int:
        """Rounds among 1..r in which `node` took part (its privacy accountant's steps)."""
        if r < 1:
            return 0
        if self.trivial:
            return r
        self.active(r)
        return self._steps[r - 1][node]

    def exhausted(self, node: int, r: int) -> bool:
        """True if `node` can take part in no round after r (its budget is spent)."""
        return self.max_steps is not None and self.steps(node, r) >= self.max_steps
