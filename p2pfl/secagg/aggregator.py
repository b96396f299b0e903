"""The aggregator role: this node's own group, for one round.

Collect `shares`, fix the member list U1 and send the bundles, sum the masked inputs as they
arrive, send the view (survivors U2, dropped D) with the attestations, collect confirmations and
send proofs where the view must be confirmed, collect reveals, rebuild the secrets and unmask the
sum (docs/secagg.md, section 3). Its stage moves only through `states.advance` with
`AGGREGATOR_TRANSITIONS`; a message that does not fit raises `protocols.Rejected` and changes
nothing. A failure is final and typed (`GroupFailure`, with the members it told).

Owns: one group's collected shares, inputs, confirmations and reveals, its stage, the pipelined
next-round group. Must not touch: member roles, deadlines counting, the round's result, sockets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pfl import shamir
from p2pfl.masking import Mask, induced_connected, mask_vector, pair_seed, pairwise_sign
from p2pfl.messages import Message, Outbound
from p2pfl.protocols import Rejected
from p2pfl.secagg import sealing
from p2pfl.secagg.codec import (
    MASKED,
    RESHARE,
    STEP_CONFIRM,
    STEP_MASKED,
    STEP_REVEAL,
    STEP_SHARES,
    Abort,
    Body,
    Bundle,
    Confirm,
    Masked,
    Proof,
    Reveal,
    Shares,
    Unmask,
    decode_map,
    secagg_message,
)
from p2pfl.secagg.group import GroupSpec
from p2pfl.secagg.states import AGGREGATOR_TRANSITIONS, AggEvent, AggStage, advance


@dataclass(frozen=True)
class GroupFailure:
    """Why the group failed safely, and which members its `abort` (with `reason`) went to."""

    reason: str
    detail: str
    told: frozenset[int]


class Aggregator:
    """This node's own group: collect shares, forward them, sum masked inputs, agree a view, unmask."""

    def __init__(self, spec: GroupSpec, expected: Iterable[int] | None = None) -> None:
        self.spec = spec
        # members whose shares phase 0 waits for (others still count if they share before it closes)
        self.expected = set(spec.members) if expected is None else set(expected) & set(spec.members)
        self._stage = AggStage.SHARES
        self.moves: list[tuple[AggStage, AggEvent]] = []  # (stage, event) of every move made, in order
        self.pks: dict[int, bytes] = {}
        self.commits: dict[int, bytes] = {}
        self.cts: dict[int, dict[int, bytes]] = {}
        self.u1: list[int] = []
        self.u2: list[int] = []
        self.dropped: list[int] = []
        self.inputs: set[int] = set()
        self.attest: dict[int, dict[int, bytes]] = {}  # survivor -> {co-member: MAC of U1}
        self.total: np.ndarray | None = None
        self.macs: dict[int, dict[int, bytes]] = {}  # confirmer -> {co-member: MAC}
        self.confirmers: list[int] = []
        self.responded: set[int] = set()
        self.self_shares: dict[int, dict[int, int]] = {}
        self.mask_shares: dict[int, dict[int, int]] = {}
        self.revealed_self: dict[int, bytes] = {}  # b_u of survivors (reconstructed)
        self.revealed_mask: dict[int, bytes] = {}  # c_u of dropped members (reconstructed)
        self.sum: np.ndarray | None = None  # decoded float64 group sum
        self.failure: GroupFailure | None = None
        self.prepared = False  # U1 was fixed and the bundles sent in the previous round
        self.lost: set[int] = set()  # members of U1 that came without the prepared setup, or whose process is gone
        self.gone: set[int] = set()  # confirmers whose process is gone before they revealed
        self.nxt: Aggregator | None = None  # the next round's group, collecting shares (pipelined)

    # state ------------------------------------------------------------------
    @property
    def stage(self) -> AggStage:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage is AggStage.DONE

    @property
    def ok(self) -> bool:
        return self.done and self.failure is None

    def _move(self, event: AggEvent) -> None:
        stage = advance(AGGREGATOR_TRANSITIONS, self._stage, event)
        self.moves.append((self._stage, event))
        self._stage = stage

    def expect(self, expected: Iterable[int]) -> None:
        """The members believed alive this round (a prepared group learns them a round late)."""
        self.expected = set(expected)

    def pipeline(self, nxt: Aggregator | None) -> None:
        """The next round's group, which collects the shares riding in this round's masked inputs."""
        self.nxt = nxt

    def release(self) -> None:
        """Drop the model-sized arrays once the round's result is taken."""
        self.sum = self.total = None

    def _send(self, to: Iterable[int], body: Body) -> list[Outbound]:
        msg = secagg_message(self.spec.aggregator, self.spec.round, body)
        return [(u, msg) for u in sorted(to)]

    def fail(self, reason: str, detail: str) -> list[Outbound]:
        """Fail safely: unmask nothing and tell whoever still waits."""
        waiting = {
            AggStage.SHARES: set(self.spec.members),
            AggStage.MASKED: set(self.u1) - self.lost,
            AggStage.CONFIRM: set(self.u1) - self.lost,
            AggStage.REVEAL: set(self.confirmers) - self.responded - self.gone,
        }.get(self._stage, set())
        if self._stage < AggStage.REVEAL:  # no proof went out, so no member holds the next round's bundle
            self.nxt = None
        self._move(AggEvent.FAIL)
        self.failure = GroupFailure(reason, detail, frozenset(waiting))
        self.total = None
        return self._send(waiting, Abort(reason))

    def receive(self, step: str, msg: Message, body: bytes) -> list[Outbound]:
        """A member -> aggregator step from `msg.sender`."""
        u = msg.sender
        if u not in self.spec.members:
            raise Rejected("not_neighbour", f"{step} from {u}, not a member of this node's group")
        if self.done and step != STEP_REVEAL:
            raise Rejected("late", f"{step} from {u} after the group finished", self._late_reply(step, u))
        if step == STEP_SHARES:
            return self.on_shares(u, body)
        if step == STEP_MASKED:
            return self.on_masked(u, msg, body)
        if step == STEP_CONFIRM:
            return self.on_confirm(u, body)
        return self.on_reveal(u, body)

    # phase 0: shares ---------------------------------------------------------
    def on_shares(self, u: int, body: bytes) -> list[Outbound]:
        if self._stage is not AggStage.SHARES:
            if self.prepared and u not in self.inputs:
                return self._resync(u)
            raise Rejected("late", f"shares from {u} after the share phase closed", self._late_reply(STEP_SHARES, u))
        self.take_shares(u, decode_map(body, Shares.KEYS))
        if self.expected <= set(self.pks):
            return self.close_shares()
        return []

    def _late_reply(self, step: str, u: int) -> list[Outbound]:
        """Late `shares` are answered with an abort: a member that joined after the share phase
        (a restarted process) stops waiting for this group at once instead of a deadline per
        step, and learns this node is past the round's setup (`SecureGossipRound`)."""
        return self._send([u], Abort("late")) if step == STEP_SHARES else []

    def not_coming(self, u: int) -> list[Outbound]:
        """Member u said it is past this round's share phase: stop waiting for its shares."""
        if u not in self.expected:
            return []
        self.expected = self.expected - {u}
        if self._stage is AggStage.SHARES and not self.prepared and self.expected <= set(self.pks):
            return self.close_shares()
        return []

    def process_gone(self, u: int) -> list[Outbound]:
        """Member u's process is gone (a new one agreed fresh sessions with us, so nothing more of
        this round comes from the old one, and the new one holds none of its secrets): stop
        waiting for it now rather than at the phase's deadline. Never moves a member whose masked
        input arrived into the dropped set (that would rebuild both of its secrets).

        The next round, if this one prepared it with u's shares, holds secrets the new process does
        not have: it is dropped, so that round runs its own share phase with the new process (the
        members that hold its bundles are asked to share anew, `RESHARE`) instead of dropping u
        there, which a ring's group of two cannot survive."""
        if self.nxt is not None and self.nxt.prepared and u in self.nxt.u1:
            self.nxt = None
        stage = self._stage
        if stage is AggStage.SHARES:
            if u in self.pks:  # shares of the old process: the new one cannot mask with them
                del self.pks[u], self.commits[u], self.cts[u]
                self.expected = self.expected - {u}
                if self.expected <= set(self.pks):
                    return self.close_shares()
            return []
        if stage is AggStage.MASKED and u in self.u1 and u not in self.inputs:
            self.lost.add(u)
            return self.close_masked() if self.inputs | self.lost >= set(self.u1) else []
        if stage is AggStage.CONFIRM and u in self.u1 and u not in self.macs:
            self.lost.add(u)
            return self.close_confirms() if set(self.macs) | self.lost >= set(self.u1) else []
        if stage is AggStage.REVEAL and u in self.confirmers and u not in self.responded:
            self.gone.add(u)
            if self.responded | self.gone >= set(self.confirmers):
                return self.fail("too_few_reveals", f"confirmer {u}'s process is gone and some secret still lacks t shares")
        return []

    def voided_by(self, u: int) -> bool:
        """Member u's process was replaced and this prepared group cannot survive it: u's masked
        input did not come (the new process holds none of the prepared secrets), and without u
        the others are below the floor (a ring's group of two). The round then shares anew in
        place of this group (`abandon`) rather than fail it."""
        return (self.prepared and self._stage is AggStage.MASKED and u in self.u1 and u not in self.inputs
                and len(set(self.u1) - self.lost - {u}) < self.spec.params.min_contributors)

    def abandon(self) -> list[Outbound]:
        """This prepared group ends unread, replaced by a fresh share phase of the same round: the
        members whose masked inputs came are asked to share anew (`RESHARE`). Their inputs are
        never unmasked: no reveal is ever asked for this setup (docs/threat-model.md)."""
        asked = sorted(self.inputs)
        self.nxt, self.total, self.inputs = None, None, set()
        self._move(AggEvent.ABANDON)
        return self._send(asked, Abort(RESHARE))

    def take_shares(self, u: int, obj: Any) -> None:
        """Check and keep member u's `shares` map (its mask public key, commitment, sealed shares)."""
        if u in self.pks:
            raise Rejected("duplicate", f"second shares from {u}")
        shares = Shares.parse(obj)
        if set(shares.ct) != set(self.spec.graph[u]):
            raise Rejected("bad_body", f"shares from {u} are not addressed to exactly its share holders")
        self.pks[u], self.commits[u], self.cts[u] = shares.pk, shares.commit, dict(shares.ct)

    def _resync(self, u: int) -> list[Outbound]:
        """Member u has no setup for this round although we prepared one (it restarted, or lost
        the proof that carried it): it cannot mask for U1, so it counts as dropped at once (its
        pairwise masks are removed from c_u's shares) and is told to stop waiting."""
        if u in self.u1:
            self.lost.add(u)
        out = self._send([u], Abort("resync"))
        if self._stage is AggStage.MASKED and self.u1 and self.inputs | self.lost >= set(self.u1):
            out += self.close_masked()
        return out

    def start(self) -> list[Outbound]:
        """Nothing to send; but with no member expected, phase 0 closes at once (and fails)."""
        return self.close_shares() if not self.expected and not self.prepared else []

    def _usable(self) -> set[int]:
        """Members that shared, minus those whose secrets cannot reach t holders among them."""
        spec = self.spec
        u1 = set(self.pks)
        changed = True
        while changed:  # a member whose secrets cannot reach t holders among U1 cannot be unmasked
            changed = False
            for u in sorted(u1):
                if len(u1 & set(spec.holders(u))) < spec.threshold(u):
                    u1.discard(u)
                    changed = True
        return u1

    def _fix_members(self, u1: set[int]) -> dict[int, Bundle]:
        """Close the share phase on U1: the bundle for each member of it."""
        spec = self.spec
        self.u1 = sorted(u1)
        bundles = {v: Bundle(self.u1, {u: self.cts[u][v] for u in self.u1 if v in spec.graph[u]}) for v in self.u1}
        self.cts = {}
        self._move(AggEvent.FIX_MEMBERS)
        self.total = np.zeros(spec.length, dtype=np.uint32)
        return bundles

    def close_shares(self) -> list[Outbound]:
        spec, p = self.spec, self.spec.params
        u1 = self._usable()
        if len(u1) < max(p.min_contributors, spec.quorum):
            return self.fail("too_few_members", f"{len(self.pks)} of {len(spec.members)} members shared keys, {len(u1)} usable; floor {p.min_contributors}, quorum {spec.quorum}")
        out = [(v, secagg_message(spec.aggregator, spec.round, b)) for v, b in self._fix_members(u1).items()]
        return out + self._send(set(spec.members) - u1, Abort("excluded"))

    def prepare(self, required: set[int]) -> dict[int, Bundle] | None:
        """Close the share phase of this next-round group early (pipelined setup): the bundle for
        each member of U1, to ride in this round's last aggregator messages; None (nothing
        prepared) unless every member in `required` shared, so that a live member outside is never shut out for
        longer than a round (without a prepared setup the next round runs its own share phase)."""
        spec, p = self.spec, self.spec.params
        u1 = self._usable()
        if not required <= u1 or len(u1) < max(p.min_contributors, spec.quorum):
            return None
        self.prepared = True
        return self._fix_members(u1)

    # phase 1: masked inputs --------------------------------------------------
    def on_masked(self, u: int, msg: Message, body: bytes) -> list[Outbound]:
        self._check_masked_sender(u)
        vec = msg.tensors.get(MASKED)
        if not isinstance(vec, np.ndarray) or vec.dtype != np.uint32 or vec.shape != (self.spec.length,):
            raise Rejected("bad_tensor", f"masked input from {u} is not uint32({self.spec.length},)")
        masked = Masked.decode(body)
        if set(masked.attest) != set(self.u1) - {u}:
            raise Rejected("bad_body", f"masked input from {u} is not attested to exactly its co-members")
        self._take_next(u, masked.next)
        assert self.total is not None
        np.add(self.total, vec, out=self.total)
        self.inputs.add(u)
        self.attest[u] = dict(masked.attest)
        if self.inputs | self.lost >= set(self.u1):
            return self.close_masked()
        return []

    def _check_masked_sender(self, u: int) -> None:
        if self._stage is AggStage.SHARES:
            # What a member with a prepared setup sends to an aggregator that does not hold it (it
            # restarted, or dropped it for a member's replaced process, `process_gone`): the member
            # is asked to share anew; its masked input is never read.
            ask = u in self.spec.members and u not in self.pks
            raise Rejected("out_of_order", f"masked input from {u} before the bundles went out",
                           self._send([u], Abort(RESHARE)) if ask else [])
        if self._stage >= AggStage.CONFIRM:
            raise Rejected("late", f"masked input from {u} after unmasking began (declared dropped: unusable)")
        if u not in self.u1:
            raise Rejected("excluded", f"masked input from {u}, not in this round's group")
        if u in self.inputs:
            raise Rejected("duplicate", f"second masked input from {u}")
        if u in self.lost:  # it said it had no setup for this round: it cannot have masked for U1
            raise Rejected("excluded", f"masked input from {u}, which came without this round's setup")

    def _take_next(self, u: int, shares: Any) -> None:
        """u's shares for the next round: a bad one costs u its prepared setup, not this round."""
        if shares is not None and self.nxt is not None:
            try:
                self.nxt.take_shares(u, shares)
            except Rejected:
                pass

    def _next_bundles(self) -> dict[int, Bundle]:
        """Prepare the next round's group as this round's last aggregator message goes out."""
        bundles = self.nxt.prepare(self.expected) if self.nxt is not None else None
        if bundles is None:
            self.nxt = None
        return bundles or {}

    def close_masked(self) -> list[Outbound]:
        spec, p = self.spec, self.spec.params
        u2 = sorted(self.inputs)
        if len(u2) < p.min_contributors:
            return self.fail("privacy_floor", f"{len(u2)} masked input(s), below the privacy floor {p.min_contributors}")
        if not induced_connected(spec.graph, u2):
            return self.fail("mask_graph_disconnected", "survivors' masking graph is disconnected")
        self.u2 = u2
        self.dropped = sorted(set(self.u1) - self.inputs)
        confirm = spec.needs_confirmation(self.dropped)
        bundles = {} if confirm else self._next_bundles()
        asked = [v for v in self.u1 if v not in self.lost]
        out = []
        for v in asked:
            attest = {w: self.attest[w][v] for w in self.u2 if w != v}
            nxt = bundles.get(v)
            body = Unmask(self.u2, self.dropped, attest, None if nxt is None else nxt.to_obj())
            out.append((v, secagg_message(spec.aggregator, spec.round, body)))
        self.attest = {}
        if confirm:
            self._move(AggEvent.ASK_CONFIRM)
        else:  # no confirmation step: whoever was asked reveals for this view
            self._await_reveals(asked, AggEvent.ASK_REVEAL)
        return out

    def _await_reveals(self, confirmers: list[int], event: AggEvent) -> None:
        self.confirmers = sorted(confirmers)
        self.self_shares = {w: {} for w in self.u2}
        self.mask_shares = {w: {} for w in self.dropped}
        self._move(event)

    # phase 2: view confirmations ---------------------------------------------
    def needed_confirmations(self) -> int:
        return self.spec.quorum

    def on_confirm(self, u: int, body: bytes) -> list[Outbound]:
        if self._stage < AggStage.CONFIRM:
            raise Rejected("out_of_order", f"confirmation from {u} before the unmask request")
        if self._stage > AggStage.CONFIRM:
            raise Rejected("late", f"confirmation from {u} after the reveals were requested")
        if u not in self.u1:
            raise Rejected("excluded", f"confirmation from {u}, not in this round's group")
        if u in self.macs:
            raise Rejected("duplicate", f"second confirmation from {u}")
        confirm = Confirm.decode(body)
        if set(confirm.macs) != set(self.u1) - {u}:
            raise Rejected("bad_body", f"confirmation from {u} is not addressed to exactly its co-members")
        self.macs[u] = dict(confirm.macs)
        if set(self.macs) | self.lost >= set(self.u1):
            return self.close_confirms()
        return []

    def close_confirms(self) -> list[Outbound]:
        if len(self.macs) < self.needed_confirmations():
            return self.fail("too_few_confirmations", f"{len(self.macs)} of {len(self.u1)} members confirmed, need {self.needed_confirmations()}")
        bundles = self._next_bundles()
        out = []
        for v in sorted(self.macs):
            nxt = bundles.get(v)
            body = Proof({u: self.macs[u][v] for u in self.macs if u != v}, None if nxt is None else nxt.to_obj())
            out.append((v, secagg_message(self.spec.aggregator, self.spec.round, body)))
        self._await_reveals(list(self.macs), AggEvent.SEND_PROOFS)
        self.macs = {}
        return out + self._send(set(self.u1) - set(self.confirmers) - self.lost, Abort("excluded"))

    # phase 3: reveals ----------------------------------------------------------
    def on_reveal(self, u: int, body: bytes) -> list[Outbound]:
        if self._stage < AggStage.REVEAL:
            raise Rejected("out_of_order", f"reveal from {u} before any proof")
        if u not in self.confirmers:
            raise Rejected("excluded", f"reveal from {u}, who was sent no proof")
        if u in self.responded:
            raise Rejected("duplicate", f"second reveal from {u}")
        if self.done:
            self.responded.add(u)
            return []  # answered after the sum was complete: harmless, unused
        self._take_reveal(u, Reveal.decode(body))
        self.responded.add(u)
        if self._complete():
            return self.finish()
        if self.responded | self.gone >= set(self.confirmers):
            return self.fail("too_few_reveals", "every confirmer answered and some secret still lacks t shares")
        return []

    def _take_reveal(self, u: int, reveal: Reveal) -> None:
        spec = self.spec
        may_self = {w for w in self.u2 if u in spec.holders(w)}
        may_mask = {w for w in self.dropped if u in spec.holders(w)}
        if not set(reveal.self_shares) <= may_self or not set(reveal.mask_shares) <= may_mask:
            raise Rejected("overreach", f"reveal from {u} carries shares that were not requested")
        try:
            ys = {w: shamir.decode_share(s) for w, s in reveal.self_shares.items()}
            ym = {w: shamir.decode_share(s) for w, s in reveal.mask_shares.items()}
        except shamir.ShamirError as exc:
            raise Rejected("bad_share", str(exc)) from None
        x = spec.position(u)
        for w, y in ys.items():
            self.self_shares[w][x] = y
        for w, y in ym.items():
            self.mask_shares[w][x] = y

    def _complete(self) -> bool:
        t = self.spec.threshold
        return all(len(self.self_shares[w]) >= t(w) for w in self.u2) and all(len(self.mask_shares[w]) >= t(w) for w in self.dropped)

    def finish(self) -> list[Outbound]:
        """Rebuild every requested secret, remove the masks and decode the sum."""
        try:
            self._rebuild_secrets()
        except shamir.ShamirError as exc:
            return self.fail("bad_share", str(exc))
        try:
            masks = self._unmasking()
        except Rejected as exc:
            return self.fail("bad_key", str(exc))
        spec = self.spec
        assert self.total is not None
        mask_vector(self.total, masks, spec.round, spec.aggregator)
        self.sum = spec.enc.decode(self.total)
        self.total = None
        self._move(AggEvent.UNMASK)
        return []

    def _rebuild_secrets(self) -> None:
        """b_w of every survivor and c_w of every dropped member, each checked (ShamirError if not)."""
        spec = self.spec
        for w in self.u2:
            pts = {x: y.to_bytes(shamir.SHARE_BYTES, "big") for x, y in self.self_shares[w].items()}
            b = shamir.combine(pts, spec.threshold(w))
            if sealing.commit(b) != self.commits[w]:
                raise shamir.ShamirError(f"self-mask seed of {w} does not match its commitment")
            self.revealed_self[w] = b
        for w in self.dropped:
            pts = {x: y.to_bytes(shamir.SHARE_BYTES, "big") for x, y in self.mask_shares[w].items()}
            c = shamir.combine(pts, spec.threshold(w))
            if sealing.public_key(c) != self.pks[w]:
                raise shamir.ShamirError(f"mask key of {w} does not match its public key")
            self.revealed_mask[w] = c

    def _unmasking(self) -> list[Mask]:
        """The masks to subtract: survivors' self masks, and the masks survivors applied with the dropped."""
        spec = self.spec
        masks: list[Mask] = [(self.revealed_self[w], -1) for w in self.u2]
        alive = set(self.u2)
        for d in self.dropped:
            for v in sorted(spec.graph[d] & alive):
                seed = pair_seed(sealing.x25519(self.revealed_mask[d], self.pks[v]), spec.round, spec.aggregator, d, v)
                masks.append((seed, -pairwise_sign(v, d)))  # v applied sign(v, d); undo it
        return masks

    def on_deadline(self) -> list[Outbound]:
        if self._stage is AggStage.SHARES:
            return self.close_shares()
        if self._stage is AggStage.MASKED:
            return self.close_masked()
        if self._stage is AggStage.CONFIRM:
            return self.close_confirms()
        if self._stage is AggStage.REVEAL:
            t = self.spec.threshold
            missing = [w for w in self.u2 if len(self.self_shares[w]) < t(w)]
            missing += [w for w in self.dropped if len(self.mask_shares[w]) < t(w)]
            return self.fail("too_few_reveals", f"{len(self.responded)} of {len(self.confirmers)} confirmers answered; no t shares for {missing}")
        return []
