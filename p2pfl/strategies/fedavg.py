"""Star FedAvg, the baseline: leaves send to the hub, which averages by sample count and answers.

Owns the strategy's traits; the plain protocol is `protocols.FedAvgRound`, the secure one
`secagg.SecureFedAvgRound` (via `strategies.secure`). Must not touch: the node's state.
"""

from __future__ import annotations

from p2pfl.protocols import FedAvgRound, RoundProtocol
from p2pfl.strategies import register
from p2pfl.strategies.base import CENTRAL, DISTRIBUTED, LOCAL, RoundContext, Strategy
from p2pfl.strategies.secure import SecureFedAvg


def star_senders(ctx: RoundContext) -> frozenset[int]:
    """A hub hears from the leaves that take part; a leaf from the hub (its average, every round)."""
    if ctx.node_id == ctx.hub:
        return frozenset(j for j in ctx.neighbours if j in ctx.active)
    return frozenset({ctx.hub}) if ctx.hub is not None else frozenset()


@register("fedavg")
class FedAvg(Strategy):
    """FedAvg through the hub of a star; every node, hub included, trains."""

    needs_hub = True
    secure = True

    def protocol(self, ctx: RoundContext) -> RoundProtocol:
        assert ctx.hub is not None, "fedavg needs a hub"
        if ctx.secure:
            return SecureFedAvg(ctx.node_id, ctx.round, ctx.hub, ctx.leaves, ctx.own, ctx.samples, ctx.secagg,
                                ctx.secret, expected=ctx.expected, active=ctx.active, fallback=ctx.fallback,
                                dp=ctx.distributed_noise)
        return FedAvgRound(ctx.node_id, ctx.round, ctx.hub, ctx.leaves, ctx.own, ctx.samples, expected=ctx.expected,
                           active=ctx.active, fallback=ctx.fallback, noise=ctx.central_noise, codec=ctx.codec)

    def senders(self, ctx: RoundContext) -> frozenset[int]:
        return star_senders(ctx)

    def dp_problem(self, placement: str, secure: bool) -> str | None:
        # local: any aggregation; central: the plain hub noises the average; distributed: each
        # secure leaf noises its share (config refuses central with secure_agg, distributed without)
        return None if placement in (LOCAL, CENTRAL, DISTRIBUTED) else f"unknown DP placement {placement!r}"

    def label(self, topology: str) -> str:
        return "star-fedavg"
