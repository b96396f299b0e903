"""Public facts of secure aggregation: the parameters and the shape of one group.

Every party computes a `GroupSpec` identically from the topology and the parameters: members,
Shamir x-coordinates, masking partners (dense, or a sparse SecAgg+ graph), share holders,
thresholds, the confirmation quorum, and whether a view needs confirming. `Failure` is how a
round reports why a group or a membership did not complete.

Owns: `SecAggParams`, `GroupSpec`, `Failure`. Must not touch: messages, keys, protocol state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from p2pfl.fixedpoint import FixedPoint
from p2pfl.masking import auto_degree, graph_seed, mask_graph


@dataclass(frozen=True)
class SecAggParams:
    """Protocol parameters; every node of a cluster must use the same values.

    threshold: Shamir threshold as a fraction of the holders of a member's secrets:
        t = floor(threshold * holders) + 1 (0.5: strict majority). At least 0.5, so that the
        aggregator can never collect t shares of both secrets of one member (see docs).
    min_contributors: privacy floor; a group sum with fewer contributors (besides the
        aggregator) is never unmasked, the round fails safely for that group.
    clip: contributions are clipped to [-clip, clip] per coordinate before encoding.
    bits: width of the fixed-point integers (32: uint32 on the wire).
    sparse_above: groups with more members than this mask with a sparse graph (SecAgg+).
    sparse_degree: masking degree in sparse groups; 0 picks `masking.auto_degree(n)`.
    max_samples: FedAvg weights are min(samples, max_samples) / max_samples.
    patience: a member role (or FedAvg leaf) gives up after this many deadlines in a row
        without a message from its aggregator.
    max_deadlines: hard cap: after this many deadlines in one round the protocol finishes
        whatever is pending (own group: failed "round_timeout"; member roles: given up).
    verify_views: members confirm the aggregator's view (who survived, who dropped) to each
        other before revealing shares (two extra steps, taken only for views that drop someone
        or in sparse groups: `GroupSpec.needs_confirmation`). False is Bonawitz et al.'s semi-honest
        variant: secure against honest-but-curious nodes, not against an aggregator that shows
        members different views (docs/threat-model.md).
    """

    threshold: float = 0.5
    min_contributors: int = 2
    clip: float = 16.0
    bits: int = 32
    sparse_above: int = 12
    sparse_degree: int = 0
    max_samples: int = 1 << 16
    patience: int = 3
    max_deadlines: int = 8
    verify_views: bool = True

    def __post_init__(self) -> None:
        if not 0.5 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0.5, 1), not {self.threshold}")
        if self.min_contributors < 2:
            raise ValueError("min_contributors below 2 would reveal single inputs")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be finite and > 0, not {self.clip}")
        if self.bits != 32:
            raise ValueError("the masked wire format is uint32: bits must be 32")
        if self.sparse_above < 2:
            raise ValueError("sparse_above must be >= 2")
        if self.sparse_degree != 0 and self.sparse_degree < 2:
            raise ValueError("sparse_degree must be 0 (auto) or >= 2")
        if not 1 <= self.max_samples < 2**40:
            raise ValueError("max_samples must be in [1, 2^40)")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if self.max_deadlines < 4:
            raise ValueError("max_deadlines must be >= 4 (one per aggregator phase)")

    def threshold_for(self, holders: int) -> int:
        return max(1, min(holders, math.floor(self.threshold * holders) + 1))


@dataclass(frozen=True)
class Failure:
    """Why a group (role "aggregator") or a membership (role "member") did not complete."""

    group: int  # the aggregator's node id
    role: str  # "aggregator" | "member"
    reason: str  # short code, for counting
    detail: str = ""


class GroupSpec:
    """Public facts of one group that every party computes identically from the topology."""

    def __init__(self, round_: int, aggregator: int, members: Iterable[int], length: int, enc: FixedPoint, params: SecAggParams) -> None:
        self.round = round_
        self.aggregator = aggregator
        self.members = tuple(sorted(set(members)))
        self.length = length
        self.enc = enc
        self.params = params
        n = len(self.members)
        if n > params.sparse_above:
            degree = params.sparse_degree or auto_degree(n)
            self._pos, self.graph, self._holders = _group_shape(self.members, degree, graph_seed(round_, aggregator, self.members))
            self.sparse = self.graph[self.members[0]] != frozenset(self.members) - {self.members[0]}
        else:
            self._pos, self.graph, self._holders = _dense_shape(self.members)
            self.sparse = False

    def position(self, u: int) -> int:
        return self._pos[u]

    def holders(self, u: int) -> tuple[int, ...]:
        """Who holds shares of u's secrets: u itself and its masking partners."""
        return self._holders[u]

    def threshold(self, u: int) -> int:
        return self.params.threshold_for(len(self._holders[u]))

    @property
    def quorum(self) -> int:
        """Confirmations needed before anyone reveals: threshold_for(group size)."""
        return self.params.threshold_for(len(self.members))

    def needs_confirmation(self, dropped: list[int]) -> bool:
        """Whether members must confirm a view dropping `dropped` before revealing for it.

        A view that drops no one asks only for self-mask shares. In a dense group (every member
        holds shares of every other, t(u) = quorum) collecting t of them takes as many honest
        members as a confirmation would, so the confirmation adds nothing there and is skipped
        (docs/secagg.md 3.3). A view that drops someone, or any view of a sparse group (t(u)
        counts only u's holders, fewer than the quorum), is confirmed.
        """
        return self.params.verify_views and (bool(dropped) or self.sparse)


GroupShape = tuple[Mapping[int, int], Mapping[int, frozenset[int]], Mapping[int, tuple[int, ...]]]


def _group_shape(members: tuple[int, ...], degree: int | None, seed: bytes) -> GroupShape:
    """(Shamir x-coordinate, masking partners, share holders) of each member, read-only."""
    pos = {u: i + 1 for i, u in enumerate(members)}  # Shamir x-coordinates, never 0
    graph = mask_graph(members, degree, seed)
    holders = {u: tuple(sorted(graph[u] | {u})) for u in members}
    return MappingProxyType(pos), MappingProxyType(graph), MappingProxyType(holders)


@functools.lru_cache(maxsize=256)
def _dense_shape(members: tuple[int, ...]) -> GroupShape:
    """A dense group's shape depends only on its members: a node builds it once per group, not
    twice a round (a sparse group's graph changes with every round's seed, so it is not cached)."""
    return _group_shape(members, None, b"")
