"""Round protocols as sans-I/O state machines: what a node sends and how it averages.

Owns the `RoundProtocol` interface and the two plain protocols: Metropolis-Hastings gossip
(D-PSGD averaging) and star FedAvg through a hub. A protocol consumes `Message`s and returns
`(recipient, Message)` pairs; it never touches sockets, clocks or torch, so tests drive it
directly. The node (see `node.py`) feeds it messages and tells it when a phase deadline passed.

Vectors are flat float32 model deltas from the common initial model (every node builds the
same initial model from the seed). Deltas keep values small, which the fixed-point encoding of
secure aggregation needs, and averaging deltas is the same as averaging models because
every weight row sums to one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from p2pfl.messages import Kind, Message, Outbound

DELTA = "delta"  # tensor name of a model delta in MODEL and GLOBAL messages


class Rejected(Exception):
    """A message the protocol refuses; the node drops it and counts `reason`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class RoundProtocol(ABC):
    """One node's part in one round of aggregation."""

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

    def arrived(self) -> int:
        """How many neighbours' contributions made it into this round's result."""
        return 0


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
    """D-PSGD averaging with Metropolis-Hastings weights: send to all neighbours, mix what arrives."""

    def __init__(self, node_id: int, round_: int, weights: dict[int, float], own: np.ndarray,
                 expected: set[int] | None = None) -> None:
        self.node_id = node_id
        self.round = round_
        self.weights = {j: w for j, w in weights.items() if j != node_id}
        # Neighbours we wait for; one marked down may still contribute if it turns up in time.
        self.expected = set(self.weights) if expected is None else set(expected) & set(self.weights)
        self.own = own
        self.received: dict[int, tuple[float, np.ndarray]] = {}
        self._done = not self.expected

    def start(self) -> list[Outbound]:
        msg = Message(Kind.MODEL, self.node_id, self.round, tensors={DELTA: self.own})
        return [(j, msg) for j in sorted(self.weights)]

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.MODEL:
            raise Rejected("unexpected_kind", f"{msg.kind.name} in a gossip round")
        if msg.sender not in self.weights:
            raise Rejected("not_neighbour", f"node {msg.sender}")
        if msg.sender in self.received:
            raise Rejected("duplicate", f"second MODEL from {msg.sender} in round {self.round}")
        vec = check_vector(msg, DELTA, self.own.shape[0])
        self.received[msg.sender] = (self.weights[msg.sender], vec)
        self._done = self.expected <= set(self.received)
        return []

    def on_deadline(self) -> list[Outbound]:
        self._done = True  # the missing neighbours' weight stays home (see `mix`)
        return []

    def finished(self) -> bool:
        return self._done

    def result(self) -> np.ndarray:
        return mix(self.own, self.received)

    def arrived(self) -> int:
        return len(self.received)


class FedAvgRound(RoundProtocol):
    """Star FedAvg: leaves send to the hub, the hub averages by sample count and sends it back.

    Every node, hub included, trains on its own data; after a complete round all nodes hold the
    same model. A leaf waits two deadlines for the hub's answer (the hub itself waits one for
    the leaves), then keeps its own model for this round.
    """

    def __init__(self, node_id: int, round_: int, hub: int, leaves: list[int], own: np.ndarray, samples: int,
                 expected: set[int] | None = None) -> None:
        self.node_id = node_id
        self.round = round_
        self.hub = hub
        self.leaves = [j for j in leaves if j != hub]
        # Leaves the hub waits for (the others may still count if they arrive in time).
        self.expected = set(self.leaves) if expected is None else set(expected) & set(self.leaves)
        self.own = own
        self.samples = samples
        self.received: dict[int, tuple[int, np.ndarray]] = {}
        self._result: np.ndarray | None = None
        self._phase = 0
        self._pending_broadcast = self.is_hub and not self.expected

    @property
    def is_hub(self) -> bool:
        return self.node_id == self.hub

    @property
    def phase(self) -> int:
        return self._phase

    def start(self) -> list[Outbound]:
        if self._pending_broadcast:  # nobody to wait for: answer whoever is there right away
            return self._broadcast()
        if self.is_hub:
            return []
        msg = Message(Kind.MODEL, self.node_id, self.round, meta={"samples": self.samples}, tensors={DELTA: self.own})
        return [(self.hub, msg)]

    def on_message(self, msg: Message) -> list[Outbound]:
        return self._hub_collect(msg) if self.is_hub else self._leaf_receive(msg)

    def _hub_collect(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.MODEL:
            raise Rejected("unexpected_kind", f"{msg.kind.name} sent to the hub")
        if msg.sender not in self.leaves:
            raise Rejected("not_neighbour", f"node {msg.sender}")
        if msg.sender in self.received or self._result is not None:
            raise Rejected("duplicate", f"MODEL from {msg.sender} after it was counted")
        samples = msg.meta.get("samples")
        if not isinstance(samples, int) or isinstance(samples, bool) or not 0 < samples < 2**40:
            raise Rejected("bad_meta", f"samples={samples!r} from {msg.sender}")
        self.received[msg.sender] = (samples, check_vector(msg, DELTA, self.own.shape[0]))
        if self.expected <= set(self.received):
            return self._broadcast()
        return []

    def _broadcast(self) -> list[Outbound]:
        total = self.samples + sum(n for n, _ in self.received.values())
        avg = (self.samples / total) * self.own.astype(np.float64)
        for n, vec in self.received.values():
            avg += (n / total) * vec.astype(np.float64)
        self._result = avg.astype(np.float32)
        msg = Message(Kind.GLOBAL, self.node_id, self.round, tensors={DELTA: self._result})
        return [(j, msg) for j in self.leaves]

    def _leaf_receive(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.GLOBAL or msg.sender != self.hub:
            raise Rejected("unexpected_kind", f"{msg.kind.name} from {msg.sender} at a leaf")
        if self._result is not None:
            raise Rejected("duplicate", f"second GLOBAL in round {self.round}")
        self._result = check_vector(msg, DELTA, self.own.shape[0])
        return []

    def on_deadline(self) -> list[Outbound]:
        if self.is_hub:
            return self._broadcast()  # average whoever arrived; the others resync next round
        self._phase += 1
        if self._phase >= 2:
            self._result = self.own  # no answer from the hub: keep our own model this round
        return []

    def finished(self) -> bool:
        return self._result is not None

    def result(self) -> np.ndarray:
        assert self._result is not None, "result() before the round finished"
        return self._result

    def arrived(self) -> int:
        if self.is_hub:
            return len(self.received)
        return 1 if self._result is not None and self._result is not self.own else 0
