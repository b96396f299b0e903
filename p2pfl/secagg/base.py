"""What the two topology adapters (gossip, FedAvg) share: one node's roles in one round.

Holds the node's aggregator role (its own group, if any) and member roles (one per group it is
in), routes each SECAGG step to the right role, counts deadlines and each membership's silent
ones against `patience` and `max_deadlines`, and keeps the round's `Failure` list. It uses the
roles only through their methods and read-only state.

Owns: routing of steps to roles, deadline and patience counting, the failures list.
Must not touch: the roles' internals, message bodies, the result's arithmetic, sockets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from p2pfl.messages import Message, Outbound
from p2pfl.protocols import Rejected, RoundProtocol
from p2pfl.secagg.aggregator import Aggregator
from p2pfl.secagg.codec import STEP_ABORT, STEP_BUNDLE, STEP_PROOF, STEP_UNMASK, Bundle, is_id
from p2pfl.secagg.group import Failure, SecAggParams
from p2pfl.secagg.member import Member
from p2pfl.secagg.sealing import RandomFn, SecretFn


def validate_common(node_id: int, round_: int, own: np.ndarray) -> np.ndarray:
    if not is_id(node_id):
        raise ValueError(f"node ids must be integers >= 0, not {node_id!r}")
    if not is_id(round_):
        raise ValueError(f"round must be an integer >= 0, not {round_!r}")
    own = np.asarray(own)
    if own.ndim != 1 or own.dtype != np.float32:
        raise ValueError("own must be a flat float32 vector")
    return own


def sanitize(own: np.ndarray, clip: float) -> tuple[np.ndarray, int]:
    """(a finite copy of `own` fit for encoding, number of values beyond the clip bound or non-finite)."""
    clipped = int(np.count_nonzero(~(np.abs(own) <= clip)))
    if clipped and not np.isfinite(own).all():
        return np.nan_to_num(own, nan=0.0, posinf=clip, neginf=-clip), clipped
    return own, clipped


class SecAggRound(RoundProtocol):
    """One node's roles in one round of secure aggregation (the adapters add the topology)."""

    def __init__(self, node_id: int, round_: int, own: np.ndarray, params: SecAggParams | None,
                 secret: SecretFn | None, rng: RandomFn) -> None:
        if secret is None:
            raise ValueError("secure aggregation needs the pairwise secret callable")
        self.own = validate_common(node_id, round_, own)
        self.node_id = node_id
        self.round = round_
        self.params = params or SecAggParams()
        self._secret = secret
        self._rng = rng
        self.agg: Aggregator | None = None
        self.members: dict[int, Member] = {}
        self.next_members: dict[int, Member] = {}  # next-round member roles (pipelined setup)
        self.failures: list[Failure] = []
        self.clipped = 0
        self.deadlines = 0  # deadlines this round so far
        self._idle: dict[int, int] = {}  # group -> deadlines in a row without a word from its aggregator
        self.replaced: set[int] = set()  # neighbours whose process was replaced during this round

    def release(self) -> None:
        """Drop the model-sized state once the node has taken the result.

        A node keeps its finished round only to take late messages (the surplus reveals that
        reach an aggregator after it unmasked), which need none of it; a member role still
        pending keeps its input, it may yet be asked to mask it.
        """
        for m in self.members.values():
            m.release()
        if self.agg is not None:
            self.agg.release()

    def peer_moved_on(self, j: int, seen: int) -> list[Outbound]:
        """Neighbour j was seen in round `seen`. One round on it may still send this round's late
        traffic (its node feeds that to its previous round); two rounds on it never will: for this
        round it is as good as a process that is gone (`peer_restarted`), and it will send my group
        no shares either (`Aggregator.not_coming`). A partition's lagging side skipped this round.
        A process that replaced j's during this round started at its neighbours' round or later and
        never runs an earlier one: one round on is enough for it."""
        if seen < self.round + (1 if j in self.replaced else 2):
            return []
        out = self.peer_restarted(j)
        agg = self.agg  # only a node that aggregates has one (a FedAvg hub, every gossip node)
        if agg is not None and not agg.done and j in agg.spec.members:
            out += self._group_changed(agg.not_coming(j))
        return out

    def _group_changed(self, out: list[Outbound]) -> list[Outbound]:
        """What the adapter does once its own group moved (it may have ended): `out` plus its answers."""
        return out

    def _fail_member(self, group: int, reason: str, detail: str = "") -> None:
        self.failures.append(Failure(group, "member", reason, detail))

    def _agg_step(self, step: str, msg: Message, body: bytes) -> list[Outbound]:
        if self.agg is None:
            raise Rejected("no_group", f"{step} from {msg.sender}: this node aggregates no group this round")
        return self.agg.receive(step, msg, body)

    def _member_step(self, step: str, msg: Message, body: bytes) -> list[Outbound]:
        group = msg.sender
        m = self.members.get(group)
        if m is None:
            raise Rejected("not_neighbour", f"{step} from {group}: not a group this node is a member of")
        if m.done:
            raise Rejected("late", f"{step} from {group} after this membership completed")
        out: list[Outbound] = []
        if step == STEP_BUNDLE:
            out = m.on_bundle(body)
        elif step == STEP_UNMASK:
            out = m.on_unmask(body)
        elif step == STEP_PROOF:
            out = m.on_proof(body)
        else:
            assert step == STEP_ABORT
            self._fail_member(group, "aborted", m.on_abort(body))
        self._idle[group] = 0
        # the next round's bundle rides in the last aggregator message: unmask, or the proof
        if step in (STEP_PROOF, STEP_UNMASK) and m.done:
            self._take_next_bundle(group, m.next_bundle)
        return out

    def _take_next_bundle(self, group: int, d: Any) -> None:
        """Keep the next round's bundle that the unmask request or the proof carried; without
        one, or a bad one, the next round runs its own share phase."""
        nm = self.next_members.pop(group, None)
        if nm is None or d is None:
            return
        try:
            if not isinstance(d, dict) or set(d) != Bundle.KEYS:
                raise Rejected("bad_body", "next-round bundle is not a map with keys ['ct', 'members']")
            nm.take_bundle(d)
        except Rejected as exc:
            self._fail_member(group, "bad_setup", f"{exc.reason}: {exc}")
            return
        self.next_members[group] = nm

    def _tick_members(self) -> None:
        """A deadline passed: memberships silent for `patience` deadlines (or all, at the cap) give up."""
        self.deadlines += 1
        capped = self.deadlines >= self.params.max_deadlines
        for j, m in self.members.items():
            if not m.done:
                idle = self._idle[j] = self._idle.get(j, 0) + 1
                if idle >= self.params.patience or capped:
                    m.give_up()
                    self._fail_member(j, "member_timeout", f"no message from aggregator {j} for {idle} deadlines")

    def _cap_aggregator(self) -> list[Outbound]:
        """At the hard deadline cap, fail the own group if it is still running."""
        if self.agg is not None and not self.agg.done and self.deadlines >= self.params.max_deadlines:
            return self.agg.fail("round_timeout", f"{self.deadlines} deadlines")
        return []
