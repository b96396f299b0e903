"""The stages of the two secure-aggregation roles and the only legal moves between them.

Modelled on h11's `_state.py`: each role has a Stage enum, the events that move it, and a
transition table {stage: {event: next stage}}; `advance` is the one function that moves a stage,
and it raises `IllegalTransition` on any move the table lacks. A role checks a peer's message
first and answers a misplaced one with `protocols.Rejected` (a peer's fault, counted); reaching
`advance` with an illegal move is this code's own bug, so it raises instead of being counted.

Owns: `MemberStage`, `MemberEvent`, `AggStage`, `AggEvent`, `MEMBER_TRANSITIONS`,
`AGGREGATOR_TRANSITIONS`, `advance`. Must not touch: messages, keys, arrays, the roles' data.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import TypeVar


class IllegalTransition(RuntimeError):
    """A role tried a move its transition table does not allow (a bug, not a peer's fault)."""


class MemberStage(Enum):
    """A member role in one group: new -> shared -> ready -> masked [-> confirmed] -> done."""

    NEW = "new"  # made, nothing sent
    SHARED = "shared"  # its `shares` went out (or rode in the previous round's masked input)
    READY = "ready"  # it holds a checked bundle: the member list U1 and its partners' shares
    MASKED = "masked"  # its masked input went out
    CONFIRMED = "confirmed"  # it confirmed a view that needs a quorum's proof before revealing
    DONE = "done"  # revealed, aborted, given up, or (FedAvg) the hub's average came


class MemberEvent(Enum):
    SHARE = "share"  # split the secrets, send `shares`
    BUNDLE = "bundle"  # take the aggregator's bundle
    MASK = "mask"  # send the masked input
    CONFIRM = "confirm"  # accept a view that needs confirmation, send `confirm`
    REVEAL = "reveal"  # send `reveal` for the accepted view
    ABORT = "abort"  # the aggregator said stop
    GIVE_UP = "give_up"  # the aggregator stayed silent too long
    GLOBAL = "global"  # FedAvg: the hub's average arrived, nothing more to do


class AggStage(IntEnum):
    """The aggregator of one group; the values are the round's `phase` (docs/secagg.md 6)."""

    SHARES = 0  # collecting `shares`
    MASKED = 1  # bundles out, collecting masked inputs
    CONFIRM = 2  # view out, collecting confirmations
    REVEAL = 3  # reveals requested (by the view itself or by proofs), collecting shares
    DONE = 4  # unmasked, or failed safely


class AggEvent(Enum):
    FIX_MEMBERS = "fix_members"  # close the share phase on U1: bundles go out (or are prepared)
    ASK_CONFIRM = "ask_confirm"  # close the masked phase with a view that must be confirmed
    ASK_REVEAL = "ask_reveal"  # close the masked phase with a view revealed at once
    SEND_PROOFS = "send_proofs"  # close the confirmations: proofs go out
    UNMASK = "unmask"  # every secret rebuilt, the sum decoded
    FAIL = "fail"  # fail safely: abort whoever still waits
    ABANDON = "abandon"  # a replaced member voided the prepared setup: a fresh share phase of the round takes over


# Moves that end a membership whatever it was doing.
_MEMBER_ENDINGS = {MemberEvent.ABORT: MemberStage.DONE, MemberEvent.GIVE_UP: MemberStage.DONE,
                   MemberEvent.GLOBAL: MemberStage.DONE}

def _frozen(table: dict) -> MappingProxyType:
    return MappingProxyType({stage: MappingProxyType(moves) for stage, moves in table.items()})


MEMBER_TRANSITIONS: Mapping[MemberStage, Mapping[MemberEvent, MemberStage]] = _frozen({
    MemberStage.NEW: {MemberEvent.SHARE: MemberStage.SHARED, **_MEMBER_ENDINGS},
    MemberStage.SHARED: {MemberEvent.BUNDLE: MemberStage.READY, **_MEMBER_ENDINGS},
    MemberStage.READY: {MemberEvent.MASK: MemberStage.MASKED, **_MEMBER_ENDINGS},
    MemberStage.MASKED: {MemberEvent.CONFIRM: MemberStage.CONFIRMED, MemberEvent.REVEAL: MemberStage.DONE,
                         **_MEMBER_ENDINGS},
    MemberStage.CONFIRMED: {MemberEvent.REVEAL: MemberStage.DONE, **_MEMBER_ENDINGS},
    MemberStage.DONE: {},
})

AGGREGATOR_TRANSITIONS: Mapping[AggStage, Mapping[AggEvent, AggStage]] = _frozen({
    AggStage.SHARES: {AggEvent.FIX_MEMBERS: AggStage.MASKED, AggEvent.FAIL: AggStage.DONE},
    AggStage.MASKED: {AggEvent.ASK_CONFIRM: AggStage.CONFIRM, AggEvent.ASK_REVEAL: AggStage.REVEAL,
                      AggEvent.FAIL: AggStage.DONE, AggEvent.ABANDON: AggStage.DONE},
    AggStage.CONFIRM: {AggEvent.SEND_PROOFS: AggStage.REVEAL, AggEvent.FAIL: AggStage.DONE},
    AggStage.REVEAL: {AggEvent.UNMASK: AggStage.DONE, AggEvent.FAIL: AggStage.DONE},
    AggStage.DONE: {},
})

S = TypeVar("S", bound=Enum)
E = TypeVar("E", bound=Enum)


def advance(table: Mapping[S, Mapping[E, S]], stage: S, event: E) -> S:
    """The stage `event` moves `stage` to; `IllegalTransition` if the table has no such move."""
    try:
        return table[stage][event]
    except KeyError:
        raise IllegalTransition(f"{event.name} is not a legal move from stage {stage.name}") from None
