"""Secure Metropolis-Hastings gossip: the topology adapter for neighbourhood groups.

Node i is the aggregator of its own group N(i) and a member of each neighbour's group; it mixes
the unmasked sum of its group with its own model (`protocols.mix` over the contributors, up to the
fixed-point bound). Under gossip the next round's share phase rides in this round's messages
(`Prepared`, `prepared_next()`, docs/secagg.md 3.1).

Owns: the gossip round's groups, weights, pipelined setup and result. Must not touch: the roles'
internals (only their methods and read-only state), message bodies, sockets.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from p2pfl.fixedpoint import FixedPoint
from p2pfl.masking import EncodingCache
from p2pfl.messages import Kind, Message, Outbound
from p2pfl.protocols import Rejected
from p2pfl.secagg.aggregator import Aggregator
from p2pfl.secagg.base import SecAggRound, sanitize
from p2pfl.secagg.codec import AGGREGATOR_STEPS, RESHARE, STEP_ABORT, STEP_SHARES, Abort, Shares, is_id, step_of
from p2pfl.secagg.group import Failure, GroupSpec, SecAggParams
from p2pfl.secagg.member import Member
from p2pfl.secagg.sealing import RandomFn, SecretFn
from p2pfl.secagg.states import AggStage, MemberStage


@dataclass
class Prepared:
    """The next round's share phase, done during this one (pipelined setup, docs/secagg.md): the
    member roles whose bundle came with the aggregator's last message (unmask request or proof),
    and the own group if its bundles went out with its last messages. Lives in memory only; a node without it (first round, restart) runs the share phase."""

    round: int
    members: dict[int, Member]
    agg: Aggregator | None


class SecureGossipRound(SecAggRound):
    """Secure Metropolis-Hastings gossip: one node, aggregator of N(i) and member of each N(j).

    adjacency: node id -> neighbour ids; must contain `node_id` and every neighbour of it (the
        whole topology is fine). Neighbourhoods must be symmetric.
    weights: this node's mixing row {j: W_ij} (as for `GossipRound`). W must be symmetric
        (Metropolis-Hastings is): the node contributes W_ij * x_i to neighbour j's group. The
        row without the self weight must sum to at most 1.
    own: the node's flat float32 delta. secret(peer, b"e2e"): the static pairwise key with a
        peer (two hops away at most). rng(n): n random bytes (default `os.urandom`).
    """

    # A node invited far ahead (a healed partition's other side) may give this round up and run
    # its input in that round instead: to the groups of this round it is a member that dropped
    # out, which they survive, and the later round's groups run their own share phase (what this
    # one prepared is for the round after it). docs/secagg.md 3.1.
    retargetable = True

    def __init__(
        self,
        node_id: int,
        round_: int,
        adjacency: Mapping[int, Iterable[int]],
        weights: Mapping[int, float],
        own: np.ndarray,
        params: SecAggParams | None = None,
        secret: SecretFn | None = None,
        rng: RandomFn = os.urandom,
        expected: Iterable[int] | None = None,
        prepared: Prepared | None = None,
        prepare_next: bool = True,
    ) -> None:
        super().__init__(node_id, round_, own, params, secret, rng)
        if prepared is None or prepared.round != round_:
            prepared = Prepared(round_, {}, None)
        if node_id not in adjacency:
            raise ValueError(f"adjacency lacks node {node_id}")
        nbrs = sorted(set(adjacency[node_id]) - {node_id})
        self.weights = self._mixing_row(nbrs, weights)
        x, self.clipped = sanitize(self.own, self.params.clip)
        # neighbours believed alive: the share phase waits only for them, and the node does not
        # wait to serve the groups of the others (it still answers them while the round lasts)
        self.expected = set(nbrs) if expected is None else set(expected) & set(nbrs)
        self._groups: dict[int, tuple[int, ...]] = {}  # aggregator -> members, of every group I am in
        self._length, self._prepare_next = self.own.shape[0], prepare_next
        self._own_group(nbrs, prepared)
        encodings = EncodingCache(x)  # every group I am in masks from it (equal encodings: once)
        self._x, self._encodings = x, encodings  # a membership that shares anew (`_reshare`) masks from them too
        self._reshared: set[int] = set()
        for j in nbrs:
            self._membership(j, adjacency, prepared, x, encodings)
        self._result: np.ndarray | None = None
        self._linger = 0

    @staticmethod
    def _mixing_row(nbrs: list[int], weights: Mapping[int, float]) -> dict[int, float]:
        for j in nbrs:
            if not is_id(j):
                raise ValueError(f"bad neighbour id {j!r}")
            if j not in weights:
                raise ValueError(f"no mixing weight for neighbour {j}")
        row = {j: float(weights[j]) for j in nbrs}
        if any(not 0.0 <= w <= 1.0 for w in row.values()) or sum(row.values()) > 1.0:
            raise ValueError("mixing weights must lie in [0, 1] and the neighbours' sum be at most 1")
        return row

    def _own_group(self, nbrs: list[int], prepared: Prepared) -> None:
        """The aggregator role of N(i): the one prepared last round if it fits, else a fresh one."""
        if len(nbrs) < self.params.min_contributors:
            self.failures.append(Failure(self.node_id, "aggregator", "privacy_floor",
                                         f"group of {len(nbrs)} neighbour(s), floor {self.params.min_contributors}"))
            return
        self._groups[self.node_id] = tuple(nbrs)
        agg = prepared.agg
        if agg is None or agg.spec.members != tuple(nbrs) or agg.spec.length != self._length:
            agg = Aggregator(self._spec(self.round, self.node_id), self.expected)
        # Below the floor without the members marked down (a partition), the share phase stays open
        # for them too while the round runs, so a member heard again joins this very round
        # (`peer_back`); it closes when the rest of the round is over (`_close_for_the_absent`).
        below = agg.stage is AggStage.SHARES and len(self.expected) < max(self.params.min_contributors, agg.spec.quorum)
        agg.expect(nbrs if below else self.expected)
        self.agg = self._pipelined(agg)

    def _pipelined(self, agg: Aggregator) -> Aggregator:
        """`agg`, with the next round's group collecting the shares that ride in this round's masked inputs."""
        if self._prepare_next:
            agg.pipeline(Aggregator(self._spec(self.round + 1, self.node_id), self.expected))
        return agg

    def _group_anew(self) -> list[Outbound]:
        """My prepared group cannot survive a member's replaced process (`Aggregator.voided_by`):
        this round runs a fresh share phase instead, which the new process joins. The members
        that masked for the prepared setup are asked to share anew; the others are asked when
        their masked inputs come (docs/secagg.md 3.1)."""
        assert self.agg is not None
        old, self.agg = self.agg, self._pipelined(Aggregator(self._spec(self.round, self.node_id), self.expected))
        return old.abandon()

    def _membership(self, j: int, adjacency: Mapping[int, Iterable[int]], prepared: Prepared, x: np.ndarray,
                    encodings: EncodingCache) -> None:
        """The member role in neighbour j's group: the one prepared last round if it fits, else a fresh one."""
        if j not in adjacency:
            raise ValueError(f"adjacency lacks neighbour {j}")
        group = set(adjacency[j]) - {j}
        if self.node_id not in group:
            raise ValueError(f"adjacency is not symmetric: {j} does not list {self.node_id}")
        if len(group) < self.params.min_contributors:
            return
        self._groups[j] = tuple(sorted(group))
        m = prepared.members.get(j)
        if m is None or m.spec.members != self._groups[j] or m.spec.length != self._length or not m.ready:
            m = self._fresh_member(j, x)
        m.bind(x, self.weights[j], encodings, functools.partial(self._next_shares, j))
        self.members[j] = m

    def _fresh_member(self, j: int, x: np.ndarray) -> Member:
        return Member(self._spec(self.round, j), self.node_id, self.weights[j], x, self._secret, self._rng)

    def _reshare(self, j: int, body: bytes) -> list[Outbound] | None:
        """Neighbour j's group does not hold the setup my membership was prepared with (it asked
        `RESHARE`): the prepared membership ends and a fresh one runs this round's share phase,
        once per round. My masked input under the old setup was never read (docs/secagg.md 3.1).
        None if this abort is not such a request."""
        m = self.members.get(j)
        if m is None or m.done or not m.sent_masked or j in self._reshared or Abort.decode(body).reason != RESHARE:
            return None
        m.abort(RESHARE)
        return self._share_anew(j)

    def _rejoin(self, j: int) -> list[Outbound]:
        """Neighbour j's new process sent my group its shares for this round, so it runs this round:
        my membership in its group, ended at the restart, shares anew with it (once per round, as
        for `RESHARE`), instead of leaving the new process's group to wait out its share phase."""
        m = self.members.get(j)
        if m is None or m.outcome != "aborted:restarted" or j in self._reshared:
            return []
        return self._share_anew(j)

    def _share_anew(self, j: int) -> list[Outbound]:
        """A fresh membership in j's group, in place of one that ended: it runs this round's share phase."""
        self._reshared.add(j)
        fresh = self._fresh_member(j, self._x)
        fresh.bind(self._x, self.weights[j], self._encodings, functools.partial(self._next_shares, j))
        self.members[j] = fresh
        return [fresh.start()]

    def _spec(self, round_: int, aggregator: int) -> GroupSpec:
        members = self._groups[aggregator]
        enc = FixedPoint(self.params.clip, 1.0, len(members), self.params.bits)
        return GroupSpec(round_, aggregator, members, self._length, enc, self.params)

    def _next_shares(self, group: int) -> Shares | None:
        """The `shares` of my next-round membership in `group`, to ride in my masked input."""
        if not self._prepare_next:
            return None
        nm = Member(self._spec(self.round + 1, group), self.node_id, self.weights[group], None, self._secret, self._rng)
        self.next_members[group] = nm
        return nm.share()

    def prepared_next(self) -> Prepared:
        """What this round prepared for the next one: hand it to the next round's constructor.

        Nothing more is prepared after this: a membership that shares anew late (`_rejoin`, on
        a round the node has finished) carries no shares for the next round, which would
        otherwise set up the neighbour's next group with secrets the next round never got."""
        self._prepare_next = False
        members = {j: m for j, m in self.next_members.items() if m.ready}
        nxt = self.agg.nxt if self.agg is not None else None
        return Prepared(self.round + 1, members, nxt if nxt is not None and nxt.prepared else None)

    # RoundProtocol ----------------------------------------------------------
    def start(self) -> list[Outbound]:
        out = [m.start() for _, m in sorted(self.members.items())]
        if self.agg is not None:
            out += self.agg.start()
            self._after_agg(False)
        return out + self._close_for_the_absent()

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.SECAGG:
            raise Rejected("unexpected_kind", f"{msg.kind.name} in a secure gossip round")
        if msg.round != self.round:
            raise Rejected("wrong_round", f"round {msg.round}, expected {self.round}")
        step, body = step_of(msg)
        if step in AGGREGATOR_STEPS:
            anew = self._rejoin(msg.sender) if step == STEP_SHARES else []
            was_done = self.agg is not None and self.agg.done
            try:
                out = self._agg_step(step, msg, body)
            except Rejected as exc:  # my group is past its share phase: my membership still rejoins
                exc.reply = anew + exc.reply
                raise
            self._after_agg(was_done)
            return anew + out
        if step == STEP_ABORT and (anew := self._reshare(msg.sender, body)) is not None:
            return anew
        out = self._member_step(step, msg, body)
        if step == STEP_ABORT:
            out += self._past_setup(msg.sender)
        return out + self._close_for_the_absent()

    def _past_setup(self, j: int) -> list[Outbound]:
        """Neighbour j aborted my membership because it is past this round's share phase ("late":
        its group finished): it will send my group no shares this round (what it sent earlier on
        this session came before its abort), so my share phase stops waiting for it: a restarted
        node learns at once that its first round is lost instead of waiting out the share
        deadline, and reaches the next round in time for its neighbours. ("resync", a setup of j's
        I lack, says j's membership in my group is prepared too: my group asks it to share anew,
        `RESHARE`, so it is coming.)"""
        m, agg = self.members.get(j), self.agg
        if agg is None or m is None or m.outcome != "aborted:late":
            return []
        was_done = agg.done
        out = agg.not_coming(j)
        self._after_agg(was_done)
        return out

    def peer_restarted(self, j: int) -> list[Outbound]:
        """Neighbour j's old process is gone: my membership in its group ends (its new process
        holds none of that group's state, so nothing more of it would come), and my own group
        stops waiting for whatever j's old process still owed it. Both end at once instead of
        one deadline per phase, so the round j died in costs its neighbours no more than that round.
        What this round prepared for the next with j's old process (its shares in my next group,
        its bundle for my next membership) is dropped too, even after my group finished: the next
        round runs those share phases with the new process instead of failing it (`resync`)."""
        m = self.members.get(j)
        if m is not None and not m.done and m.stage is not MemberStage.NEW:  # NEW: told j nothing yet
            m.abort("restarted")
        self.replaced.add(j)
        self.next_members.pop(j, None)  # a next-round bundle from j so far came from its old process
        agg = self.agg
        if agg is None or j not in agg.spec.members:
            return []
        if agg.done:  # only the next round it prepared can still hold the old process's secrets
            agg.process_gone(j)
            return []
        if agg.voided_by(j):
            return self._group_anew()
        out = agg.process_gone(j)
        self._after_agg(False)
        return out

    def _group_changed(self, out: list[Outbound]) -> list[Outbound]:
        self._after_agg(False)
        return out + self._close_for_the_absent()

    def _takes_members(self) -> bool:
        """True while my group still collects this round's `shares` (its membership not fixed)."""
        agg = self.agg
        return agg is not None and agg.stage is AggStage.SHARES and not agg.prepared

    def _close_for_the_absent(self) -> list[Outbound]:
        """My group's share phase, kept open for members marked down, closes once the rest of the
        round is over (every membership of a neighbour believed alive is done) and only they are
        missing: below the floor it fails, as it would have at the start, but the round is not held
        to its deadline for them."""
        if not self._takes_members():
            return []
        agg = self.agg
        assert agg is not None
        missing = agg.expected - set(agg.pks)
        if not missing or missing & self.expected or not all(m.done for j, m in self.members.items() if j in self.expected):
            return []
        out = agg.close_shares()
        self._after_agg(False)
        return out

    def peer_back(self, j: int) -> list[Outbound]:
        """Neighbour j, marked down as this round began, was heard again (a partition healed). While
        my group still collects `shares` it waits for j's too, and the round waits for my membership
        in j's group: the round that heard j again can be the two sides' first together. Past the
        share phase neither can take j (`rejoin_round`: the next round)."""
        if self._takes_members() and j in self.weights:
            assert self.agg is not None
            self.agg.expect(self.agg.expected | {j})
            self.expected.add(j)
        return []

    def rejoin_round(self) -> int:
        return self.round if self._takes_members() else self.round + 1

    def on_deadline(self) -> list[Outbound]:
        self._tick_members()
        if self.agg is not None and not self.agg.done:
            out = self.agg.on_deadline() + self._cap_aggregator()
            self._after_agg(False)
            return out
        self._linger += 1
        return []

    def _after_agg(self, was_done: bool) -> None:
        """Record the own group's failure the moment it fails."""
        agg = self.agg
        if agg is None or was_done or not agg.done:
            return
        if agg.failure is not None:
            self.failures.append(Failure(self.node_id, "aggregator", agg.failure.reason, agg.failure.detail))

    @property
    def phase(self) -> int:
        """0 shares, 1 masked inputs, 2 confirmations, 3 reveals (own group); then 4, 5, ...
        while member roles in neighbours' groups are still pending (one per deadline)."""
        if self.agg is not None and not self.agg.done:
            return int(self.agg.stage)
        return int(AggStage.DONE) + self._linger

    def finished(self) -> bool:
        return (self.agg is None or self.agg.done) and all(m.done for j, m in self.members.items() if j in self.expected)

    def result(self) -> np.ndarray:
        if self._result is None:
            agg = self.agg
            if agg is None or not agg.ok:
                return self.own.copy()
            assert agg.sum is not None
            kept = 1.0 - sum(self.weights[u] for u in agg.u2)
            mixed = self.own.astype(np.float64)  # kept * own + sum in place: one float64 temporary, not three
            mixed *= kept
            mixed += agg.sum
            self._result = mixed.astype(np.float32)
        return self._result

    def heard(self) -> list[int]:
        return self.contributors

    # reporting --------------------------------------------------------------
    @property
    def status(self) -> str:
        """Outcome of this node's own group: "pending", "ok" or "failed" (see `failures`)."""
        if self.agg is None:
            return "failed"
        if not self.agg.done:
            return "pending"
        return "ok" if self.agg.ok else "failed"

    @property
    def failure_reason(self) -> str | None:
        """Short code of why this node's own group failed, or None."""
        for f in self.failures:
            if f.role == "aggregator":
                return f.reason
        return None

    @property
    def contributors(self) -> list[int]:
        """Members whose inputs are in this node's result (empty unless status is ok)."""
        return list(self.agg.u2) if self.agg is not None and self.agg.ok else []

    def quantization_bound(self) -> float:
        """Bound on |result - exact float64 mix over `contributors`| from the fixed-point
        encoding; add one float32 rounding (2^-24 relative) of the result."""
        if self.agg is None or not self.agg.ok:
            return 0.0
        return self.agg.spec.enc.sum_error_bound(len(self.agg.u2))
