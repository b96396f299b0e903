"""FedNova (Wang et al., NeurIPS 2020) on the star: normalised averaging for uneven local steps.

With plain FedAvg a node that takes more local steps moves further, and the average drifts
towards its objective (the "objective inconsistency" of the paper). FedNova has each node send
its round update u_i = x_i - x_start_i and its number of local steps tau_i; the hub averages
the *per-step* updates and rescales by the mean step count:

    p_i = n_i / sum_j n_j        tau_eff = sum_i p_i tau_i
    x_new = x_start_hub + tau_eff * sum_i p_i u_i / tau_i

over the hub (unless it sits the round out) and the leaves that arrived. With equal tau_i this
is FedAvg. The paper normalises by ||a_i||_1, the sum of the weights its optimiser gives the
round's gradients: tau_i for plain SGD. The node's SGD momentum buffer persists across rounds,
so in steady state every step's gradient weighs 1 / (1 - rho) on every node alike; a common
factor cancels in tau_eff * u_i / a_i, leaving tau_i.

Owns the strategy and its sans-I/O protocol `FedNovaRound`. Must not touch: the node's state,
FedAvg's protocol (it shares only the leaf's side and the deadlines, `protocols.StarRound`). Plain only: there is no secure protocol for it (config refuses secure_agg);
DP: local noise only (the hub's weights tau_eff p_i / tau_i need not be at most 1, which
central noise calibrated by the largest weight assumes).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from p2pfl.messages import Kind, Message, Outbound
from p2pfl.protocols import Rejected, StarRound, VectorCodec, read_vector, vector_message
from p2pfl.strategies import register
from p2pfl.strategies.base import LOCAL, RoundContext, Strategy
from p2pfl.strategies.fedavg import star_senders

MAX_STEPS = 2**31  # a leaf claiming more local steps than this cannot be honest


def _positive_int(value: object, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < limit


class FedNovaRound(StarRound):
    """One node's part in a FedNova round through the hub of a star.

    own: the node's vector after local training; start: its vector at the round's start (the
        leaf sends own - start; the hub adds the normalised average to its own start).
    samples, steps: the node's n_i and tau_i; a hub that sits the round out passes samples 0.
    Deadlines, `active`, `expected`, `fallback` and `codec` behave as in `FedAvgRound`: a leaf
    waits two deadlines for the hub's answer, then keeps `fallback` (default: `own`).
    """

    def __init__(self, node_id: int, round_: int, hub: int, leaves: Iterable[int], own: np.ndarray,
                 start: np.ndarray, samples: int, steps: int, expected: Iterable[int] | None = None,
                 active: Iterable[int] | None = None, fallback: np.ndarray | None = None,
                 codec: VectorCodec | None = None) -> None:
        self.node_id = node_id
        self.round = round_
        self.hub = hub
        self.leaves = sorted(set(leaves) - {hub})
        self.active = set(self.leaves) if active is None else set(active) & set(self.leaves)
        self.expected = set(self.active) if expected is None else set(expected) & self.active
        self.own, self.origin = own, start
        self.fallback = own if fallback is None else fallback
        self.samples, self.steps = samples, steps
        self.codec = codec
        contributes = samples > 0 if self.is_hub else node_id in self.active
        if contributes and steps < 1:
            raise ValueError(f"node {node_id} contributes to round {round_} but took {steps} local steps")
        self.received: dict[int, tuple[int, int, np.ndarray]] = {}  # leaf -> (n, tau, update)
        self._result: np.ndarray | None = None
        self._phase = 0

    def start(self) -> list[Outbound]:
        if self.is_hub:
            return self._broadcast() if not self.expected else []
        if self.node_id not in self.active:
            return []
        update = (self.own - self.origin).astype(np.float32)
        meta = {"samples": self.samples, "steps": self.steps}
        msg, _ = vector_message(Kind.MODEL, self.node_id, self.round, update, self.codec, meta)
        return [(self.hub, msg)]

    def _hub_collect(self, msg: Message) -> list[Outbound]:
        self._check_leaf_model(msg)
        samples, steps = msg.meta.get("samples"), msg.meta.get("steps")
        if not _positive_int(samples, 2**40) or not _positive_int(steps, MAX_STEPS):
            raise Rejected("bad_meta", f"samples={samples!r} steps={steps!r} from {msg.sender}")
        self.received[msg.sender] = (samples, steps, read_vector(msg, self.own.shape[0]))
        return self._broadcast() if self.expected <= set(self.received) else []

    def _contributions(self) -> list[tuple[int, int, np.ndarray]]:
        """(n_i, tau_i, u_i) of the hub (if it takes part) and of the leaves that arrived, in id order."""
        out = []
        if self.samples > 0:
            out.append((self.samples, self.steps, (self.own - self.origin).astype(np.float64)))
        out += [(n, tau, u.astype(np.float64)) for _, (n, tau, u) in sorted(self.received.items())]
        return out

    def _broadcast(self) -> list[Outbound]:
        parts = self._contributions()
        if not parts:  # the hub sits out and no leaf arrived: nothing new to average
            self._result = self.fallback
        else:
            total = sum(n for n, _, _ in parts)
            tau_eff = sum(n * tau for n, tau, _ in parts) / total
            direction = np.zeros(self.own.shape[0], dtype=np.float64)
            for n, tau, u in parts:
                direction += (n / total / tau) * u
            self._result = (self.origin.astype(np.float64) + tau_eff * direction).astype(np.float32)
        msg, self._result = vector_message(Kind.GLOBAL, self.node_id, self.round, self._result, self.codec)
        return [(j, msg) for j in self.leaves]



@register("fednova")
class FedNova(Strategy):
    """FedNova through the hub of a star: FedAvg with updates normalised by local steps."""

    needs_hub = True

    def protocol(self, ctx: RoundContext) -> RoundProtocol:
        assert ctx.hub is not None, "fednova needs a hub"
        return FedNovaRound(ctx.node_id, ctx.round, ctx.hub, ctx.leaves, ctx.own, ctx.start, ctx.samples,
                            ctx.local_steps, expected=ctx.expected, active=ctx.active, fallback=ctx.fallback,
                            codec=ctx.codec)

    def senders(self, ctx: RoundContext) -> frozenset[int]:
        return star_senders(ctx)

    def dp_problem(self, placement: str, secure: bool) -> str | None:
        if placement == LOCAL:
            return None
        return (f"{placement} DP is not implemented for aggregation = fednova (its hub weights tau_eff * p_i / tau_i "
                "may exceed 1, which the central and distributed noise calibration assumes they do not); use dp = local")

    def label(self, topology: str) -> str:
        return "star-fednova"
