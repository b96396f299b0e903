"""What an aggregation strategy is: the traits config and privacy ask about, and the round context.

Owns `Strategy` (one small object per aggregation scheme: which topologies it needs, whether it
has a secure-aggregation protocol, which DP placements and compression it implements, who owes
a node a message in a round, and the sans-I/O `RoundProtocol` it hands the node for a round)
and `RoundContext` (everything the node knows when a round's protocol is built).

Must not touch: sockets, clocks, torch, config files, and the node's state: a strategy reads a
context and returns a protocol; what persists from one round to the next travels through
`RoundProtocol.prepared_next()` and comes back as `RoundContext.prepared`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from p2pfl.protocols import CentralNoise, RoundProtocol, VectorCodec

SecretFn = Callable[[int, bytes], bytes]  # (peer, context) -> the static pairwise key with that peer

LOCAL, CENTRAL, DISTRIBUTED = "local", "central", "distributed"  # privacy.Placement values


@dataclass(frozen=True)
class RoundContext:
    """One node's view of one round, filled by the node, read by `Strategy.protocol`.

    Vectors are flat float32 deltas from the common initial model. `own` is what the node puts
    into the round (trained, clipped and noised as its DP placement says); `start` is its public
    state at the start of the round (before local training); `fallback` is what it keeps if the
    round fails (None: `own`).
    """

    node_id: int
    round: int
    last_round: int  # the run's budget: secure gossip sets up no round after it
    adjacency: Mapping[int, tuple[int, ...]]  # every node's sorted neighbours (the whole graph of this round)
    weights: Mapping[int, float]  # this node's Metropolis-Hastings row of this round's graph, self included
    hub: int | None  # the star's hub where the strategy needs one
    own: np.ndarray
    start: np.ndarray
    fallback: np.ndarray | None
    samples: int  # the node's weight in a sample-weighted average (0: a hub that sits out)
    local_steps: int  # optimizer steps the node took this round (0: it sat out)
    expected: frozenset[int]  # neighbours believed alive: the round waits only for them
    active: frozenset[int]  # nodes that train and share this round (`protocols.Schedule`)
    prepared: Any = None  # what the previous round's `prepared_next()` returned
    codec: VectorCodec | None = None  # compression of plain vectors
    central_noise: CentralNoise | None = None  # DP placed at a trusted aggregator
    distributed_noise: Any = None  # secagg.DistributedNoise: each contributor's share of the DP noise
    secagg: Any = None  # secagg.SecAggParams when secure aggregation is on, else None
    secret: SecretFn | None = None  # pairwise keys, for secure aggregation
    # The graph is drawn afresh every round (`topology.TimeVarying`): `adjacency` and `weights` are this
    # round's, and the next round's neighbourhoods are other ones, so nothing is set up for them here.
    time_varying: bool = False

    @property
    def neighbours(self) -> tuple[int, ...]:
        return self.adjacency[self.node_id]

    @property
    def secure(self) -> bool:
        return self.secagg is not None

    @property
    def leaves(self) -> list[int]:
        """Every node but the hub, sorted (a star's leaves)."""
        return [v for v in sorted(self.adjacency) if v != self.hub]


class Strategy(ABC):
    """One aggregation scheme. Subclasses set the traits and build the round protocol.

    name: the `aggregation` value that selects it (set by `register`).
    needs_hub: it runs on a star and its hub aggregates (config refuses other graphs; the
        hub is a trusted aggregator for central DP; `fedavg_sample` picks leaves for it).
    secure: it has a secure-aggregation protocol (config refuses `secure_agg` otherwise).
    compression: its plain vectors may travel quantized.
    overlapping_groups: under secure aggregation a node's input enters one secure sum per
        neighbour (gossip), not a single sum: distributed DP then releases it degree + 1 times.
    """

    name: ClassVar[str] = ""
    needs_hub: ClassVar[bool] = False
    secure: ClassVar[bool] = False
    compression: ClassVar[bool] = True
    overlapping_groups: ClassVar[bool] = False

    @abstractmethod
    def protocol(self, ctx: RoundContext) -> RoundProtocol:
        """The node's protocol for `ctx.round`."""

    @abstractmethod
    def senders(self, ctx: RoundContext) -> frozenset[int]:
        """Neighbours that owe this node a message in `ctx.round` (liveness counts only their silence)."""

    def dp_problem(self, placement: str, secure: bool) -> str | None:
        """Why this strategy cannot run DP `placement` (with/without secure aggregation), or None.

        The default implements local noise only, which composes with any protocol: each node
        noises its own update before it leaves, everything after is post-processing.
        """
        if placement == LOCAL:
            return None
        if placement == CENTRAL:
            return (f"central DP needs a trusted aggregator that noises the average, which aggregation = {self.name} "
                    "does not implement (aggregation = fedavg has one: the star hub); use dp = local")
        return f"distributed DP is implemented for the secure FedAvg star only, not aggregation = {self.name}; use dp = local"

    def label(self, topology: str) -> str:
        """The run's name in reports, from the topology's name."""
        return f"{topology}-{self.name}"
