"""Metropolis-Hastings gossip (D-PSGD): every node mixes with all of its neighbours, every round.

Owns the strategy's traits; the plain protocol is `protocols.GossipRound`, the secure one
`secagg.SecureGossipRound` (via `strategies.secure`). Must not touch: the node's state.
"""

from __future__ import annotations

from p2pfl.protocols import GossipRound, RoundProtocol
from p2pfl.strategies import register
from p2pfl.strategies.base import DISTRIBUTED, LOCAL, RoundContext, Strategy
from p2pfl.strategies.secure import SecureGossip


@register("gossip")
class Gossip(Strategy):
    """D-PSGD with Metropolis-Hastings weights on any connected undirected graph."""

    secure = True
    overlapping_groups = True

    def protocol(self, ctx: RoundContext) -> RoundProtocol:
        if ctx.secure:
            # Pipelining (the next round's share phase riding in this round's messages) needs the next
            # round's groups to be this round's: on a time-varying graph they are other nodes' groups,
            # reached over edges this round does not have, so each round runs its own share phase.
            return SecureGossip(ctx.node_id, ctx.round, ctx.adjacency, ctx.weights, ctx.own, ctx.secagg,
                                ctx.secret, expected=ctx.expected, prepared=ctx.prepared,
                                prepare_next=ctx.round < ctx.last_round and not ctx.time_varying)
        return GossipRound(ctx.node_id, ctx.round, ctx.weights, ctx.own, expected=ctx.expected, codec=ctx.codec)

    def senders(self, ctx: RoundContext) -> frozenset[int]:
        return frozenset(ctx.neighbours)

    def dp_problem(self, placement: str, secure: bool) -> str | None:
        if placement == LOCAL:
            return None
        if placement == DISTRIBUTED:
            return ("distributed DP is implemented for the secure FedAvg star only: in secure gossip it costs "
                    "degree + 1 releases of each update per round, so dp = local (with secure_agg) protects as "
                    "well for less noise (docs/privacy.md)")
        return ("central DP needs a trusted aggregator, which only aggregation = fedavg has (the star hub); "
                "use dp = local for gossip")

    def label(self, topology: str) -> str:
        return topology
