"""Secure aggregation composed with a strategy: the secagg round protocols as the node sees them.

Owns one rule the node needs and secagg does not state in `RoundProtocol` terms: an aggregator
unmasks as soon as it holds t shares of each secret, so the other members' reveals reach it
after its round ended. They are expected traffic, not stale messages: a finished secure round
`takes_late` its own round's SECAGG messages (and refuses what it must, counted by the node).

Must not touch: secagg's internals (the protocols are used as they are, only this method is added).
"""

from __future__ import annotations

from p2pfl.messages import Kind, Message
from p2pfl.secagg import SecureFedAvgRound, SecureGossipRound


class SecureGossip(SecureGossipRound):
    """`SecureGossipRound`, taking its round's late SECAGG messages after it finished."""

    def takes_late(self, msg: Message) -> bool:
        return msg.kind == Kind.SECAGG


class SecureFedAvg(SecureFedAvgRound):
    """`SecureFedAvgRound`, taking its round's late SECAGG messages after it finished."""

    def takes_late(self, msg: Message) -> bool:
        return msg.kind == Kind.SECAGG
