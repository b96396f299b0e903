"""The member role: this node's part in another node's group, for one round.

Share its secrets among their holders, take the aggregator's bundle, mask its weighted input for
the member list U1, check the aggregator's view, confirm it where it must be confirmed, and reveal
shares for it (docs/secagg.md, section 3). Its stage moves only through `states.advance` with
`MEMBER_TRANSITIONS`; a peer's message that does not fit the stage raises `protocols.Rejected`
and changes nothing.

Owns: one membership's secrets, the shares it holds, its stage and outcome. Must not touch: the
aggregator role, deadlines and patience (the round adapters count those), sockets.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

import numpy as np

from p2pfl import shamir
from p2pfl.masking import EncodingCache, Mask, encode_and_mask, induced_connected, pair_seed, pairwise_sign
from p2pfl.messages import Outbound
from p2pfl.privacy import add_wrapped
from p2pfl.protocols import Rejected
from p2pfl.secagg import sealing
from p2pfl.secagg.codec import Abort, Bundle, Confirm, Masked, Proof, Reveal, SharePlain, Shares, Unmask, decode_map, secagg_message
from p2pfl.secagg.group import GroupSpec
from p2pfl.secagg.sealing import PeerKeys, RandomFn, SecretFn
from p2pfl.secagg.states import MEMBER_TRANSITIONS, MemberEvent, MemberStage, advance

NoiseFn = Callable[[], np.ndarray]  # int64 noise for one encoded input, added mod 2^bits
NextShares = Callable[[], "Shares | None"]  # my next-round `shares` in this group, or None


def _no_next_shares() -> Shares | None:
    return None


class Member:
    """This node's part in another node's group: share, mask, confirm the view, reveal."""

    def __init__(self, spec: GroupSpec, me: int, weight: float, x: np.ndarray | None, secret: SecretFn, rng: RandomFn,
                 noise: NoiseFn | None = None) -> None:
        self.spec, self.me, self.weight = spec, me, weight
        self.x: np.ndarray | None = x  # None once released (the round is over), or not yet given
        # the round's encodings of x, shared with my other groups (gossip; None: encode here)
        self.encodings: EncodingCache | None = None
        self._keys = PeerKeys(secret)
        self._rng = rng
        self._noise = noise
        self._stage = MemberStage.NEW
        self.moves: list[tuple[MemberStage, MemberEvent]] = []  # (stage, event) of every move made, in order
        self.outcome = ""  # why it is done: revealed | aborted:<reason> | timeout | global
        self._c_sk = rng(32)
        self._c_pk = sealing.public_key(self._c_sk)
        self._b = rng(32)
        self.view: tuple[list[int], list[int]] | None = None  # (survivors, dropped) I accepted
        self.held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (share of b, share of c_sk) at my position
        self.u1: list[int] = []
        self._pks: dict[int, bytes] = {}  # partners' mask public keys, from the bundle until I mask
        self.next_bundle: Any = None  # what the unmask request or proof carried for the next round (unchecked)
        self._next_shares: NextShares = _no_next_shares
        self.sent_masked = False

    # state ------------------------------------------------------------------
    @property
    def stage(self) -> MemberStage:
        return self._stage

    @property
    def done(self) -> bool:
        return self._stage is MemberStage.DONE

    @property
    def ready(self) -> bool:
        """It holds a checked bundle for its round: it can mask as soon as it has its input."""
        return self._stage is MemberStage.READY

    def _move(self, event: MemberEvent, outcome: str = "") -> None:
        stage = advance(MEMBER_TRANSITIONS, self._stage, event)
        self.moves.append((self._stage, event))
        self._stage = stage
        if outcome:
            self.outcome = outcome

    def bind(self, x: np.ndarray, weight: float, encodings: EncodingCache | None, next_shares: NextShares) -> None:
        """This round's input (also for a membership prepared in the round before), and where the
        next round's `shares` come from when the masked input goes out."""
        self.x, self.weight, self.encodings, self._next_shares = x, weight, encodings, next_shares

    def release(self) -> None:
        """Drop the model-sized input once the membership is over."""
        if self.done:
            self.x = self.encodings = None

    # share phase ------------------------------------------------------------
    def start(self) -> Outbound:
        """The first message of this membership: `shares`, or with a prepared setup the masked input."""
        if self._stage is MemberStage.READY:
            return self._mask()
        return self.spec.aggregator, secagg_message(self.me, self.spec.round, self.share())

    def share(self) -> Shares:
        """Split this round's secrets among their holders: the body of a `shares` step."""
        spec, me = self.spec, self.me
        holders = spec.holders(me)
        xs = [spec.position(h) for h in holders]
        t = spec.threshold(me)
        sb = shamir.split(self._b, t, xs, self._rng)
        sc = shamir.split(self._c_sk, t, xs, self._rng)
        mine = spec.position(me)
        self.held[me] = (sb[mine], sc[mine])
        cts = {}
        for v in holders:
            if v == me:
                continue
            pv = spec.position(v)
            plain = SharePlain(self._c_pk, sb[pv], sc[pv])
            cts[v] = sealing.seal_share(self._keys.box(v), plain, spec.round, spec.aggregator, me, v, self._rng)
        self._move(MemberEvent.SHARE)
        return Shares(self._c_pk, sealing.commit(self._b), cts)

    def on_bundle(self, body: bytes) -> list[Outbound]:
        if self._stage is not MemberStage.SHARED:
            raise Rejected("duplicate" if self._stage in (MemberStage.READY, MemberStage.MASKED, MemberStage.DONE)
                           else "out_of_order", "bundle")
        self.take_bundle(decode_map(body, Bundle.KEYS))
        return [self._mask()]

    def take_bundle(self, obj: Any) -> None:
        """Check a bundle map (the member list U1 and my partners' sealed shares) and keep it."""
        spec, me, p = self.spec, self.me, self.spec.params
        bundle = Bundle.parse(obj)
        u1 = bundle.members
        if not set(u1) <= set(spec.members) or me not in u1:
            raise Rejected("bad_body", "bundle members are not a subset of the group containing me")
        if len(u1) < max(p.min_contributors, spec.quorum):
            raise Rejected("refused", f"bundle lists {len(u1)} members: below the privacy floor {p.min_contributors} or the quorum {spec.quorum}")
        partners = sorted(set(u1) & spec.graph[me])
        if set(bundle.ct) != set(partners):
            raise Rejected("bad_body", "bundle does not carry exactly one sealed share per masking partner")
        held, pks = {}, {}
        for w in partners:
            share = sealing.open_share(self._keys.box(w), bundle.ct[w], spec.round, spec.aggregator, w, me)
            pks[w] = share.pk
            held[w] = (share.b, share.c)
        self.held.update(held)
        self._pks = pks
        self.u1 = u1
        self._move(MemberEvent.BUNDLE)

    # masked input -----------------------------------------------------------
    def _mask(self) -> Outbound:
        """My masked input for the member list of the bundle, attested to every co-member."""
        spec, me, u1 = self.spec, self.me, self.u1
        assert self.x is not None, "a membership masks only once it has its input"
        vec = self._masked_vector()
        # attest to every co-member which member list this input was masked for
        u1_digest = sealing.members_digest(spec.round, spec.aggregator, u1)
        attest = {v: sealing.view_mac(self._keys.mac(v), u1_digest, spec.round, spec.aggregator, me, v) for v in u1 if v != me}
        self._pks = {}
        self._move(MemberEvent.MASK)
        self.sent_masked = True
        # in a fault-free round the masked input is my last message before the reveal: the next
        # round's shares ride in it (docs/secagg.md 3.1)
        nxt = self._next_shares()
        body = Masked(attest, None if nxt is None else nxt.to_obj())
        return spec.aggregator, secagg_message(me, spec.round, body, vec)

    def _masked_vector(self) -> np.ndarray:
        spec, me = self.spec, self.me
        masks: list[Mask] = [(self._b, 1)]
        for w in sorted(self._pks):
            shared = sealing.x25519(self._c_sk, self._pks[w])
            masks.append((pair_seed(shared, spec.round, spec.aggregator, me, w), pairwise_sign(me, w)))
        if self.encodings is not None:
            vec = self.encodings.masked(spec.enc, self.weight, masks, spec.round, spec.aggregator)
        else:
            assert self.x is not None
            vec = encode_and_mask(self.x, spec.enc, self.weight, masks, spec.round, spec.aggregator)
        if self._noise is not None:  # integers add mod 2^32: noise then masks = masks then noise
            vec = add_wrapped(vec, self._noise())
        return vec

    # the view ---------------------------------------------------------------
    def on_unmask(self, body: bytes) -> list[Outbound]:
        """Check the aggregator's view (survivors, dropped) and confirm it to every co-member, or,
        where the view needs no confirmation (`GroupSpec.needs_confirmation`), reveal for it."""
        spec, me = self.spec, self.me
        if self._stage is not MemberStage.MASKED:
            raise Rejected("duplicate" if self._stage in (MemberStage.CONFIRMED, MemberStage.DONE) else "out_of_order",
                           "unmask request")
        req = Unmask.decode(body)
        self._check_view(req)
        self.view = (req.survivors, req.dropped)
        if not spec.needs_confirmation(req.dropped):
            self.next_bundle = req.next
            return [self._reveal()]
        digest = sealing.view_digest(spec.round, spec.aggregator, req.survivors, req.dropped)
        macs = {v: sealing.view_mac(self._keys.mac(v), digest, spec.round, spec.aggregator, me, v) for v in self.u1 if v != me}
        self._move(MemberEvent.CONFIRM)
        return [(spec.aggregator, secagg_message(me, spec.round, Confirm(macs)))]

    def _check_view(self, req: Unmask) -> None:
        spec, me, p = self.spec, self.me, self.spec.params
        s, dr = set(req.survivors), set(req.dropped)
        if s & dr:
            raise Rejected("refused", f"request asks for both secrets of {sorted(s & dr)}")
        if s | dr != set(self.u1):
            raise Rejected("refused", "survivors and dropped do not partition the members of the bundle")
        if len(s) < p.min_contributors:
            raise Rejected("refused", f"{len(s)} survivors, below the privacy floor {p.min_contributors}")
        if not induced_connected(spec.graph, s):
            raise Rejected("refused", "survivors' masking graph is disconnected (would reveal partial sums)")
        # every survivor must have masked for the same member list as I did, or its masks with
        # the "dropped" could be all it has (an aggregator could then unmask it alone)
        u1_digest = sealing.members_digest(spec.round, spec.aggregator, self.u1)
        for w in req.survivors:
            if w != me and not (
                w in req.attest
                and hmac.compare_digest(req.attest[w], sealing.view_mac(self._keys.mac(w), u1_digest, spec.round, spec.aggregator, w, me))
            ):
                raise Rejected("refused", f"survivor {w} did not attest that it masked for my member list")

    def confirmations_needed(self) -> int:
        """Members (myself included) that must have confirmed my view before I reveal: a quorum
        of the whole group (not of U1, which the aggregator chooses), so two views never both
        reach it."""
        return self.spec.quorum

    def on_proof(self, body: bytes) -> list[Outbound]:
        """Reveal shares for my confirmed view once enough co-members vouch for the same view."""
        spec, me = self.spec, self.me
        if self._stage is not MemberStage.CONFIRMED:
            raise Rejected("duplicate" if self._stage is MemberStage.DONE else "out_of_order", "proof")
        assert self.view is not None
        proof = Proof.decode(body)
        if not set(proof.macs) <= set(self.u1) - {me}:
            raise Rejected("bad_body", "proof carries confirmations from outside the group")
        self.next_bundle = proof.next  # the next round's bundle, for the round to hand on (None: none)
        survivors, dropped = self.view
        digest = sealing.view_digest(spec.round, spec.aggregator, survivors, dropped)
        valid = 1 + sum(
            hmac.compare_digest(sealing.view_mac(self._keys.mac(u), digest, spec.round, spec.aggregator, u, me), mac)
            for u, mac in proof.macs.items()
        )
        if valid < self.confirmations_needed():
            raise Rejected("refused", f"only {valid} members confirmed my view, need {self.confirmations_needed()}")
        return [self._reveal()]

    def _reveal(self) -> Outbound:
        """My shares for the view I hold: self-mask seeds of survivors, mask keys of the dropped."""
        spec, me = self.spec, self.me
        assert self.view is not None
        survivors, dropped = self.view
        self_sh = {w: self.held[w][0] for w in survivors if w in self.held}
        # never help remove my own pairwise masks once my masked input is out: with my self-mask
        # shares of an honest majority elsewhere, that could expose my input
        mask_sh = {w: self.held[w][1] for w in dropped if w in self.held and not (w == me and self.sent_masked)}
        self._move(MemberEvent.REVEAL, "revealed")
        return spec.aggregator, secagg_message(me, spec.round, Reveal(self_sh, mask_sh))

    # endings ----------------------------------------------------------------
    def on_abort(self, body: bytes) -> str:
        """The aggregator's `abort`: the membership ends; returns the (cut) reason."""
        if self.done:
            raise Rejected("late", "abort after this membership completed")
        reason = Abort.decode(body).reason
        self.abort(reason)
        return reason

    def abort(self, reason: str) -> None:
        self._move(MemberEvent.ABORT, f"aborted:{reason}")

    def give_up(self) -> None:
        self._move(MemberEvent.GIVE_UP, "timeout")

    def take_global(self) -> None:
        """FedAvg: the hub's average arrived; nothing is left for this membership to do."""
        self._move(MemberEvent.GLOBAL, "global")
