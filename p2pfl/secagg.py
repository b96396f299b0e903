"""Secure aggregation over neighbourhoods, as sans-I/O round protocols (see docs/secagg.md).

Node i aggregates its group G(i) = N(i): every neighbour u sends i a masked fixed-point
encoding of W_iu * x_u; the masks cancel in the sum, the self masks are removed with secrets
Shamir-shared among the group, and the pairwise masks of members that dropped out are removed
with their (per-round, ephemeral) X25519 mask keys, also Shamir-shared. For each member the
aggregator learns one of the two secrets, never both. The node adds its own model in plain:

    x_new = (1 - sum_{u in U2} W_iu) * x_i + sum_{u in U2} W_iu * x_u     (= protocols.mix)

`SecureGossipRound` is one node's part in one round: aggregator of its own group and member of
each neighbour's group. `SecureFedAvgRound` is the star: the hub securely sums
(n_u / max_samples) * [x_u, 1] over the leaves and sends the plain weighted average back as
`Kind.GLOBAL`. With `DistributedNoise` every leaf adds its share of a discrete Gaussian to its
fixed-point integers, so the unmasked sum carries the full DP noise (docs/privacy.md).

Messages: `Message(Kind.SECAGG, sender, round, meta={"step": str, "body": bytes})`, bodies in
msgpack (never pickle) decoded with limits, plus the tensor "masked" (uint32) in step "masked".
Per group, in order: member -> aggregator "shares"; aggregator -> member "bundle"; "masked"
(with MACs attesting the member list it was masked for); "unmask" (the aggregator's view:
survivors and dropped, with the survivors' attestations); "confirm" (MACs of that view to every
co-member); "proof" (the co-members' MACs: a quorum of the group must vouch for one view);
"reveal" (Shamir shares for the view); "abort" at any time. A view that drops no one skips
"confirm" and "proof" in dense groups (`GroupSpec.needs_confirmation`), as does every view with
`verify_views=False`. Every step is validated strictly; bad ones raise `protocols.Rejected` and
leave the state unchanged. Under gossip the next round's "shares" ride in "masked" and its
"bundle" in the aggregator's last message, "unmask" or "proof" (`Prepared`, `prepared_next()`).

It owns the protocol state and message bodies; it uses `crypto` only to seal shares end to
end, and never touches sockets, the wire layout or training.
"""

from __future__ import annotations

import functools
import hmac
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np
from nacl.bindings import (
    crypto_scalarmult,
    crypto_scalarmult_base,
)

from p2pfl import crypto, shamir
from p2pfl.fixedpoint import FixedPoint
from p2pfl.masking import (
    EncodingCache,
    Mask,
    auto_degree,
    blake2b,
    encode_and_mask,
    graph_seed,
    induced_connected,
    mask_graph,
    mask_vector,
    pair_seed,
    pairwise_sign,
)
from p2pfl.messages import Kind, Message, Outbound
from p2pfl.privacy import add_wrapped
from p2pfl.protocols import DELTA, Rejected, RoundProtocol, check_vector

MASKED = "masked"  # tensor name of a masked input
STEP_SHARES, STEP_MASKED, STEP_CONFIRM, STEP_REVEAL = "shares", "masked", "confirm", "reveal"  # member -> aggregator
STEP_BUNDLE, STEP_UNMASK, STEP_PROOF, STEP_ABORT = "bundle", "unmask", "proof", "abort"  # aggregator -> member
AGGREGATOR_STEPS = frozenset({STEP_SHARES, STEP_MASKED, STEP_CONFIRM, STEP_REVEAL})
MEMBER_STEPS = frozenset({STEP_BUNDLE, STEP_UNMASK, STEP_PROOF, STEP_ABORT})
MAC_BYTES = 16

MAX_BODY = 4 << 20  # bytes of one msgpack body
MAX_ITEMS = 1 << 16  # entries of one list or map in a body (group size bound)
_CT_MIN, _CT_MAX = 24 + 16 + 1, 1024  # a sealed share bundle: nonce + tag + plaintext
_AAD_PREFIX = b"p2pfl-secagg-v1/share"
SecretFn = Callable[[int, bytes], bytes]
RandomFn = Callable[[int], bytes]
NoiseFn = Callable[[], np.ndarray]  # int64 noise for one encoded input, added mod 2^bits
HEADROOM_STDS = 12.0  # fixed-point room for the noise: P(wrap) < d * 4e-33 per round (docs/privacy.md)


@dataclass(frozen=True)
class DistributedNoise:
    """Distributed DP for `SecureFedAvgRound`: each contributing leaf noises its own input.

    std: what one contributor adds, per coordinate, in the float domain of its weighted
        contribution (`privacy.noise_std("distributed", sigma, C, floor, w_max)`), so any sum
        that secure aggregation unmasks (at least the privacy floor of inputs) carries sigma*C*w_max.
    sample: (n, sigma_int) -> int64 array of n discrete Gaussian samples with std sigma_int
        (`privacy.SecureNoise.discrete_gaussian`); the noise goes on the fixed-point integers,
        so masking and noise compose exactly.
    """

    std: float
    sample: Callable[[int, float], np.ndarray]

    def headroom(self, contributors: int) -> float:
        """Extra fixed-point clip bound for the noise of a sum of `contributors` inputs."""
        return HEADROOM_STDS * self.std * math.sqrt(max(contributors, 1))


# --------------------------------------------------------------------------- parameters


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


@dataclass
class Prepared:
    """The next round's share phase, done during this one (pipelined setup, docs/secagg.md): the
    member roles whose bundle came with the aggregator's last message (unmask request or proof),
    and the own group if its bundles went out with its last messages. Lives in memory only; a node without it (first round, restart) runs the share phase."""

    round: int
    members: dict[int, _Member]
    agg: _Aggregator | None


# --------------------------------------------------------------------------- body codec


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(body: Any, keys: set[str]) -> dict:
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise Rejected("bad_body", "body is not bytes or too large")
    try:
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=False, use_list=True, max_bin_len=MAX_BODY,
            max_str_len=1024, max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types on malformed input
        raise Rejected("bad_body", f"undecodable body: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or set(obj) != keys:
        raise Rejected("bad_body", f"expected a map with keys {sorted(keys)}")
    return obj


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _id_list(v: Any, what: str) -> list[int]:
    if not isinstance(v, list) or not all(_is_id(x) for x in v) or any(a >= b for a, b in zip(v, v[1:])):
        raise Rejected("bad_body", f"{what}: not a sorted list of distinct node ids")
    return v


def _bytes(v: Any, n: int, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != n:
        raise Rejected("bad_body", f"{what}: expected {n} bytes")
    return v


def _id_map(v: Any, what: str, lo: int, hi: int) -> dict[int, bytes]:
    if not isinstance(v, dict) or not all(_is_id(k) for k in v):
        raise Rejected("bad_body", f"{what}: not a map of node ids")
    for k, b in v.items():
        if not isinstance(b, bytes) or not lo <= len(b) <= hi:
            raise Rejected("bad_body", f"{what}[{k}]: expected {lo}..{hi} bytes")
    return v


def _secagg_msg(sender: int, round_: int, step: str, body: dict, masked: np.ndarray | None = None) -> Message:
    tensors = {MASKED: masked} if masked is not None else {}
    return Message(Kind.SECAGG, sender, round_, meta={"step": step, "body": _pack(body)}, tensors=tensors)


def _step_of(msg: Message) -> tuple[str, bytes]:
    meta = msg.meta
    if not isinstance(meta, dict) or set(meta) != {"step", "body"}:
        raise Rejected("bad_meta", f"SECAGG meta must hold exactly step and body, got {sorted(meta) if isinstance(meta, dict) else meta!r}")
    step, body = meta["step"], meta["body"]
    if not isinstance(step, str) or not isinstance(body, bytes):
        raise Rejected("bad_meta", "step must be a string and body bytes")
    if step not in AGGREGATOR_STEPS and step not in MEMBER_STEPS:
        raise Rejected("unknown_step", repr(step[:32]))
    allowed = {MASKED} if step == STEP_MASKED else set()
    if set(msg.tensors) != allowed:
        raise Rejected("bad_tensor", f"step {step} carries tensors {sorted(msg.tensors)}")
    return step, body


# --------------------------------------------------------------------------- e2e sealing of shares


def _e2e_keys(secret: SecretFn, peer: int) -> tuple[bytes, bytes]:
    """(AEAD key for sealed shares, MAC key for view confirmations) shared with `peer`."""
    raw = secret(peer, b"e2e")
    if not isinstance(raw, bytes) or not 16 <= len(raw) <= 64:
        raise ValueError(f"secret({peer}, b'e2e') must return 16..64 bytes")
    return blake2b(b"share-box", person=b"p2pfl-sa-e2e", key=raw), blake2b(b"view-mac", person=b"p2pfl-sa-e2e", key=raw)


def view_digest(round_: int, aggregator: int, survivors: list[int], dropped: list[int]) -> bytes:
    """Hash of one unmasking view (who survived, who dropped) of one group and round."""
    return blake2b(_pack([round_, aggregator, survivors, dropped]), person=b"p2pfl-sa-view")


def members_digest(round_: int, aggregator: int, members: list[int]) -> bytes:
    """Hash of the member list U1 a masked input was made for (its masking partners)."""
    return blake2b(_pack([round_, aggregator, members]), person=b"p2pfl-sa-u1")


def _view_mac(key: bytes, digest: bytes, round_: int, aggregator: int, sender: int, recipient: int) -> bytes:
    data = struct.pack("<QQQQ", round_, aggregator, sender, recipient) + digest
    return blake2b(data, person=b"p2pfl-sa-vmac", key=key, size=MAC_BYTES)


def _aad(round_: int, aggregator: int, sender: int, recipient: int) -> bytes:
    return _AAD_PREFIX + struct.pack("<QQQQ", round_, aggregator, sender, recipient)


def _seal(key: bytes, aad: bytes, plaintext: bytes, rng: RandomFn) -> bytes:
    nonce = rng(crypto.NONCE_BYTES)  # random 24-byte XChaCha20 nonces: collisions are negligible
    return nonce + bytes(crypto.seal(key, nonce, plaintext, aad, crypto.XCHACHA20POLY1305))


def _open(key: bytes, aad: bytes, blob: bytes) -> bytes:
    n = crypto.NONCE_BYTES
    try:
        return bytes(crypto.unseal(key, blob[:n], blob[n:], aad, cipher=crypto.XCHACHA20POLY1305))
    except crypto.CryptoError:
        raise Rejected("decrypt_failed", "a share bundle failed authentication") from None


def _commit(seed: bytes) -> bytes:
    return blake2b(seed, person=b"p2pfl-sa-commit")


def _x25519(sk: bytes, pk: bytes) -> bytes:
    try:
        return crypto_scalarmult(sk, pk)
    except Exception:
        raise Rejected("bad_key", "X25519 with a low-order or invalid public key") from None


# --------------------------------------------------------------------------- member role


class _Member:
    """This node's part in another node's group: share, mask, confirm the view, reveal."""

    def __init__(self, spec: GroupSpec, me: int, weight: float, x: np.ndarray, secret: SecretFn, rng: RandomFn,
                 noise: NoiseFn | None = None) -> None:
        self.spec, self.me, self.weight = spec, me, weight
        self.x: np.ndarray | None = x  # None once released (the round is over)
        # the round's encodings of x, shared with my other groups (gossip; None: encode here)
        self.encodings: EncodingCache | None = None
        self._secret, self._rng = secret, rng
        self._noise = noise
        self.stage = "new"  # new -> shared -> ready (bundle taken) -> masked -> confirmed -> done
        self.outcome = ""  # why it is done: revealed | aborted:<reason> | timeout
        self.idle = 0
        self._c_sk = rng(32)
        self._c_pk = crypto_scalarmult_base(self._c_sk)
        self._b = rng(32)
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self.view: tuple[list[int], list[int]] | None = None  # (survivors, dropped) I confirmed
        self.held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (share of b, share of c_sk) at my position
        self.u1: list[int] = []
        self._pks: dict[int, bytes] = {}  # partners' mask public keys, from the bundle until I mask
        self.next_bundle: Any = None  # what the proof carried for the next round (unchecked)
        # the `shares` body of my next-round membership in this group, or None (set by the round)
        self.next_shares: Callable[[], dict | None] = lambda: None
        self.sent_masked = False

    @property
    def done(self) -> bool:
        return self.stage == "done"

    def _key(self, peer: int) -> bytes:
        return self._both_keys(peer)[0]

    def _mac_key(self, peer: int) -> bytes:
        return self._both_keys(peer)[1]

    def _both_keys(self, peer: int) -> tuple[bytes, bytes]:
        if peer not in self._keys:
            self._keys[peer] = _e2e_keys(self._secret, peer)
        return self._keys[peer]

    def start(self) -> Outbound:
        """The first message of this membership: `shares`, or with a prepared setup the masked input."""
        if self.stage == "ready":
            return self._mask()
        return self.spec.aggregator, _secagg_msg(self.me, self.spec.round, STEP_SHARES, self.share())

    def share(self) -> dict:
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
            plain = _pack({"pk": self._c_pk, "b": sb[pv], "c": sc[pv]})
            cts[v] = _seal(self._key(v), _aad(spec.round, spec.aggregator, me, v), plain, self._rng)
        self.stage = "shared"
        return {"pk": self._c_pk, "commit": _commit(self._b), "ct": cts}

    def on_bundle(self, body: bytes) -> list[Outbound]:
        if self.stage != "shared":
            raise Rejected("duplicate" if self.stage in ("ready", "masked", "done") else "out_of_order", "bundle")
        self.take_bundle(_unpack(body, {"members", "ct"}))
        return [self._mask()]

    def take_bundle(self, d: dict) -> None:
        """Check a bundle (the member list U1 and my partners' sealed shares) and keep it: stage "ready"."""
        spec, me, p = self.spec, self.me, self.spec.params
        u1 = _id_list(d["members"], "members")
        if not set(u1) <= set(spec.members) or me not in u1:
            raise Rejected("bad_body", "bundle members are not a subset of the group containing me")
        if len(u1) < max(p.min_contributors, spec.quorum):
            raise Rejected("refused", f"bundle lists {len(u1)} members: below the privacy floor {p.min_contributors} or the quorum {spec.quorum}")
        partners = sorted(set(u1) & spec.graph[me])
        cts = _id_map(d["ct"], "ct", _CT_MIN, _CT_MAX)
        if set(cts) != set(partners):
            raise Rejected("bad_body", "bundle does not carry exactly one sealed share per masking partner")
        held, pks = {}, {}
        for w in partners:
            plain = _open(self._key(w), _aad(spec.round, spec.aggregator, w, me), cts[w])
            inner = _unpack(plain, {"pk", "b", "c"})
            pks[w] = _bytes(inner["pk"], 32, "pk")
            held[w] = (_bytes(inner["b"], shamir.SHARE_BYTES, "b"), _bytes(inner["c"], shamir.SHARE_BYTES, "c"))
        self.held.update(held)
        self._pks = pks
        self.u1 = u1
        self.stage = "ready"

    def _mask(self) -> Outbound:
        """My masked input for the member list of the bundle, attested to every co-member."""
        spec, me, u1 = self.spec, self.me, self.u1
        assert self.x is not None, "a membership masks only once it has its input"
        masks: list[Mask] = [(self._b, 1)]
        for w in sorted(self._pks):
            shared = _x25519(self._c_sk, self._pks[w])
            masks.append((pair_seed(shared, spec.round, spec.aggregator, me, w), pairwise_sign(me, w)))
        if self.encodings is not None:
            vec = self.encodings.masked(spec.enc, self.weight, masks, spec.round, spec.aggregator)
        else:
            vec = encode_and_mask(self.x, spec.enc, self.weight, masks, spec.round, spec.aggregator)
        if self._noise is not None:  # integers add mod 2^32: noise then masks = masks then noise
            vec = add_wrapped(vec, self._noise())
        # attest to every co-member which member list this input was masked for
        u1_digest = members_digest(spec.round, spec.aggregator, u1)
        attest = {v: _view_mac(self._mac_key(v), u1_digest, spec.round, spec.aggregator, me, v) for v in u1 if v != me}
        self._pks = {}
        self.stage = "masked"
        self.sent_masked = True
        # in a fault-free round the masked input is my last message before the reveal: the next
        # round's shares ride in it (docs/secagg.md 3.1)
        nxt = self.next_shares()
        return spec.aggregator, _secagg_msg(me, spec.round, STEP_MASKED, {"attest": attest, "next": nxt}, vec)

    def on_unmask(self, body: bytes) -> list[Outbound]:
        """Check the aggregator's view (survivors, dropped) and confirm it to every co-member, or,
        where the view needs no confirmation (`GroupSpec.needs_confirmation`), reveal for it."""
        spec, me, p = self.spec, self.me, self.spec.params
        if self.stage != "masked":
            raise Rejected("duplicate" if self.stage in ("confirmed", "done") else "out_of_order", "unmask request")
        d = _unpack(body, {"survivors", "dropped", "attest", "next"})
        survivors = _id_list(d["survivors"], "survivors")
        dropped = _id_list(d["dropped"], "dropped")
        attest = _id_map(d["attest"], "attest", MAC_BYTES, MAC_BYTES)
        s, dr = set(survivors), set(dropped)
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
        u1_digest = self._u1_digest()
        for w in survivors:
            if w != me and not (
                w in attest
                and hmac.compare_digest(attest[w], _view_mac(self._mac_key(w), u1_digest, spec.round, spec.aggregator, w, me))
            ):
                raise Rejected("refused", f"survivor {w} did not attest that it masked for my member list")
        self.view = (survivors, dropped)
        if not spec.needs_confirmation(dropped):
            self.next_bundle = d["next"]
            return [self._reveal()]
        digest = view_digest(spec.round, spec.aggregator, survivors, dropped)
        macs = {v: _view_mac(self._mac_key(v), digest, spec.round, spec.aggregator, me, v) for v in self.u1 if v != me}
        self.stage = "confirmed"
        return [(spec.aggregator, _secagg_msg(me, spec.round, STEP_CONFIRM, {"macs": macs}))]

    def _u1_digest(self) -> bytes:
        return members_digest(self.spec.round, self.spec.aggregator, self.u1)

    def confirmations_needed(self) -> int:
        """Members (myself included) that must have confirmed my view before I reveal: a quorum
        of the whole group (not of U1, which the aggregator chooses), so two views never both
        reach it."""
        return self.spec.quorum

    def on_proof(self, body: bytes) -> list[Outbound]:
        """Reveal shares for my confirmed view once enough co-members vouch for the same view."""
        spec, me = self.spec, self.me
        if self.stage != "confirmed":
            raise Rejected("duplicate" if self.stage == "done" else "out_of_order", "proof")
        assert self.view is not None
        d = _unpack(body, {"macs", "next"})
        macs = _id_map(d["macs"], "macs", MAC_BYTES, MAC_BYTES)
        if not set(macs) <= set(self.u1) - {me}:
            raise Rejected("bad_body", "proof carries confirmations from outside the group")
        self.next_bundle = d["next"]  # the next round's bundle, for the round to hand on (None: none)
        survivors, dropped = self.view
        digest = view_digest(spec.round, spec.aggregator, survivors, dropped)
        valid = 1 + sum(
            hmac.compare_digest(_view_mac(self._mac_key(u), digest, spec.round, spec.aggregator, u, me), mac)
            for u, mac in macs.items()
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
        self.stage, self.outcome = "done", "revealed"
        return spec.aggregator, _secagg_msg(me, spec.round, STEP_REVEAL, {"self": self_sh, "mask": mask_sh})

    def on_abort(self, body: bytes) -> str:
        if self.stage == "done":
            raise Rejected("late", "abort after this membership completed")
        d = _unpack(body, {"reason"})
        reason = d["reason"] if isinstance(d["reason"], str) else "?"
        self.stage, self.outcome = "done", f"aborted:{reason[:64]}"
        return reason[:64]

    def give_up(self) -> None:
        self.stage, self.outcome = "done", "timeout"


# --------------------------------------------------------------------------- aggregator role


class _Aggregator:
    """This node's own group: collect shares, forward them, sum masked inputs, agree a view, unmask."""

    DONE = 4

    def __init__(self, spec: GroupSpec, expected: Iterable[int] | None = None) -> None:
        self.spec = spec
        # members whose shares phase 0 waits for (others still count if they share before it closes)
        self.expected = set(spec.members) if expected is None else set(expected) & set(spec.members)
        self.stage = 0  # 0 shares, 1 masked inputs, 2 confirmations, 3 reveals, 4 done
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
        self.failure: tuple[str, str] | None = None
        self.prepared = False  # U1 was fixed and the bundles sent in the previous round
        self.lost: set[int] = set()  # members of U1 that came without the prepared setup
        self.nxt: _Aggregator | None = None  # the next round's group, collecting shares (pipelined)

    @property
    def done(self) -> bool:
        return self.stage == self.DONE

    @property
    def ok(self) -> bool:
        return self.done and self.failure is None

    def _send(self, to: Iterable[int], step: str, body: dict) -> list[Outbound]:
        msg = _secagg_msg(self.spec.aggregator, self.spec.round, step, body)
        return [(u, msg) for u in sorted(to)]

    def fail(self, reason: str, detail: str) -> list[Outbound]:
        waiting = {
            0: set(self.spec.members),
            1: set(self.u1) - self.lost,
            2: set(self.u1) - self.lost,
            3: set(self.confirmers) - self.responded,
        }.get(self.stage, set())
        if self.stage < 3:  # no proof went out, so no member holds the next round's bundle
            self.nxt = None
        self.stage, self.failure = self.DONE, (reason, detail)
        self.total = None
        return self._send(waiting, STEP_ABORT, {"reason": reason})

    # phase 0: shares ---------------------------------------------------------
    def on_shares(self, u: int, body: bytes) -> list[Outbound]:
        if self.stage != 0:
            if self.prepared and u not in self.inputs:
                return self._resync(u)
            raise Rejected("late", f"shares from {u} after the share phase closed")
        self.take_shares(u, _unpack(body, {"pk", "commit", "ct"}))
        if self.expected <= set(self.pks):
            return self.close_shares()
        return []

    def take_shares(self, u: int, d: Any) -> None:
        """Check and keep member u's `shares` body (its mask public key, commitment, sealed shares)."""
        if u in self.pks:
            raise Rejected("duplicate", f"second shares from {u}")
        if not isinstance(d, dict) or set(d) != {"pk", "commit", "ct"}:
            raise Rejected("bad_body", f"shares from {u}: expected a map with keys ['commit', 'ct', 'pk']")
        pk = _bytes(d["pk"], 32, "pk")
        commit = _bytes(d["commit"], 32, "commit")
        cts = _id_map(d["ct"], "ct", _CT_MIN, _CT_MAX)
        if set(cts) != set(self.spec.graph[u]):
            raise Rejected("bad_body", f"shares from {u} are not addressed to exactly its share holders")
        self.pks[u], self.commits[u], self.cts[u] = pk, commit, cts

    def _resync(self, u: int) -> list[Outbound]:
        """Member u has no setup for this round although we prepared one (it restarted, or lost
        the proof that carried it): it cannot mask for U1, so it counts as dropped at once (its
        pairwise masks are removed from c_u's shares) and is told to stop waiting."""
        if u in self.u1:
            self.lost.add(u)
        out = self._send([u], STEP_ABORT, {"reason": "resync"})
        if self.stage == 1 and self.u1 and self.inputs | self.lost >= set(self.u1):
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

    def _fix_members(self, u1: set[int]) -> dict[int, dict]:
        """Close the share phase on U1: the bundle body for each member of it."""
        spec = self.spec
        self.u1 = sorted(u1)
        bundles = {v: {"members": self.u1, "ct": {u: self.cts[u][v] for u in self.u1 if v in spec.graph[u]}}
                   for v in self.u1}
        self.cts = {}
        self.stage = 1
        self.total = np.zeros(spec.length, dtype=np.uint32)
        return bundles

    def close_shares(self) -> list[Outbound]:
        spec, p = self.spec, self.spec.params
        u1 = self._usable()
        if len(u1) < max(p.min_contributors, spec.quorum):
            return self.fail("too_few_members", f"{len(self.pks)} of {len(spec.members)} members shared keys, {len(u1)} usable; floor {p.min_contributors}, quorum {spec.quorum}")
        out = [(v, _secagg_msg(spec.aggregator, spec.round, STEP_BUNDLE, b)) for v, b in self._fix_members(u1).items()]
        return out + self._send(set(spec.members) - u1, STEP_ABORT, {"reason": "excluded"})

    def prepare(self, required: set[int]) -> dict[int, dict] | None:
        """Close the share phase of this next-round group early (pipelined setup): the bundle body
        for each member of U1, to ride in this round's last aggregator messages; None (nothing
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
        if self.stage == 0:
            # (also what a member with a prepared setup sends to an aggregator that lost its own,
            # by a restart: that group then fails at the share deadline and aborts its members)
            raise Rejected("out_of_order", f"masked input from {u} before the bundles went out")
        if self.stage >= 2:
            raise Rejected("late", f"masked input from {u} after unmasking began (declared dropped: unusable)")
        if u not in self.u1:
            raise Rejected("excluded", f"masked input from {u}, not in this round's group")
        if u in self.inputs:
            raise Rejected("duplicate", f"second masked input from {u}")
        if u in self.lost:  # it said it had no setup for this round: it cannot have masked for U1
            raise Rejected("excluded", f"masked input from {u}, which came without this round's setup")
        vec = msg.tensors.get(MASKED)
        if not isinstance(vec, np.ndarray) or vec.dtype != np.uint32 or vec.shape != (self.spec.length,):
            raise Rejected("bad_tensor", f"masked input from {u} is not uint32({self.spec.length},)")
        d = _unpack(body, {"attest", "next"})
        attest = _id_map(d["attest"], "attest", MAC_BYTES, MAC_BYTES)
        if set(attest) != set(self.u1) - {u}:
            raise Rejected("bad_body", f"masked input from {u} is not attested to exactly its co-members")
        self._take_next(u, d["next"])
        assert self.total is not None
        np.add(self.total, vec, out=self.total)
        self.inputs.add(u)
        self.attest[u] = attest
        if self.inputs | self.lost >= set(self.u1):
            return self.close_masked()
        return []

    def _take_next(self, u: int, shares: Any) -> None:
        """u's shares for the next round: a bad one costs u its prepared setup, not this round."""
        if shares is not None and self.nxt is not None:
            try:
                self.nxt.take_shares(u, shares)
            except Rejected:
                pass

    def _next_bundles(self) -> dict[int, dict]:
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
            body = {"survivors": self.u2, "dropped": self.dropped, "attest": attest, "next": bundles.get(v)}
            out.append((v, _secagg_msg(self.spec.aggregator, self.spec.round, STEP_UNMASK, body)))
        self.attest = {}
        if confirm:
            self.stage = 2
        else:  # no confirmation step: whoever was asked reveals for this view
            self._await_reveals(asked)
        return out

    def _await_reveals(self, confirmers: list[int]) -> None:
        self.confirmers = sorted(confirmers)
        self.self_shares = {w: {} for w in self.u2}
        self.mask_shares = {w: {} for w in self.dropped}
        self.stage = 3

    # phase 2: view confirmations ---------------------------------------------
    def needed_confirmations(self) -> int:
        return self.spec.quorum

    def on_confirm(self, u: int, body: bytes) -> list[Outbound]:
        if self.stage < 2:
            raise Rejected("out_of_order", f"confirmation from {u} before the unmask request")
        if self.stage > 2:
            raise Rejected("late", f"confirmation from {u} after the reveals were requested")
        if u not in self.u1:
            raise Rejected("excluded", f"confirmation from {u}, not in this round's group")
        if u in self.macs:
            raise Rejected("duplicate", f"second confirmation from {u}")
        d = _unpack(body, {"macs"})
        macs = _id_map(d["macs"], "macs", MAC_BYTES, MAC_BYTES)
        if set(macs) != set(self.u1) - {u}:
            raise Rejected("bad_body", f"confirmation from {u} is not addressed to exactly its co-members")
        self.macs[u] = macs
        if set(self.macs) | self.lost >= set(self.u1):
            return self.close_confirms()
        return []

    def close_confirms(self) -> list[Outbound]:
        if len(self.macs) < self.needed_confirmations():
            return self.fail("too_few_confirmations", f"{len(self.macs)} of {len(self.u1)} members confirmed, need {self.needed_confirmations()}")
        bundles = self._next_bundles()
        out = []
        for v in sorted(self.macs):
            proof = {u: self.macs[u][v] for u in self.macs if u != v}
            body = {"macs": proof, "next": bundles.get(v)}
            out.append((v, _secagg_msg(self.spec.aggregator, self.spec.round, STEP_PROOF, body)))
        self._await_reveals(list(self.macs))
        self.macs = {}
        return out + self._send(set(self.u1) - set(self.confirmers) - self.lost, STEP_ABORT, {"reason": "excluded"})

    # phase 3: reveals ----------------------------------------------------------
    def on_reveal(self, u: int, body: bytes) -> list[Outbound]:
        spec = self.spec
        if self.stage < 3:
            raise Rejected("out_of_order", f"reveal from {u} before any proof")
        if u not in self.confirmers:
            raise Rejected("excluded", f"reveal from {u}, who was sent no proof")
        if u in self.responded:
            raise Rejected("duplicate", f"second reveal from {u}")
        if self.done:
            self.responded.add(u)
            return []  # answered after the sum was complete: harmless, unused
        d = _unpack(body, {"self", "mask"})
        self_sh = _id_map(d["self"], "self", shamir.SHARE_BYTES, shamir.SHARE_BYTES)
        mask_sh = _id_map(d["mask"], "mask", shamir.SHARE_BYTES, shamir.SHARE_BYTES)
        may_self = {w for w in self.u2 if u in spec.holders(w)}
        may_mask = {w for w in self.dropped if u in spec.holders(w)}
        if not set(self_sh) <= may_self or not set(mask_sh) <= may_mask:
            raise Rejected("overreach", f"reveal from {u} carries shares that were not requested")
        try:
            ys = {w: shamir.decode_share(s) for w, s in self_sh.items()}
            ym = {w: shamir.decode_share(s) for w, s in mask_sh.items()}
        except shamir.ShamirError as exc:
            raise Rejected("bad_share", str(exc)) from None
        x = spec.position(u)
        for w, y in ys.items():
            self.self_shares[w][x] = y
        for w, y in ym.items():
            self.mask_shares[w][x] = y
        self.responded.add(u)
        if self._complete():
            return self.finish()
        if self.responded >= set(self.confirmers):
            return self.fail("too_few_reveals", "every confirmer answered and some secret still lacks t shares")
        return []

    def _complete(self) -> bool:
        t = self.spec.threshold
        return all(len(self.self_shares[w]) >= t(w) for w in self.u2) and all(len(self.mask_shares[w]) >= t(w) for w in self.dropped)

    def finish(self) -> list[Outbound]:
        spec = self.spec
        try:
            for w in self.u2:
                pts = {x: y.to_bytes(shamir.SHARE_BYTES, "big") for x, y in self.self_shares[w].items()}
                b = shamir.combine(pts, spec.threshold(w))
                if _commit(b) != self.commits[w]:
                    raise shamir.ShamirError(f"self-mask seed of {w} does not match its commitment")
                self.revealed_self[w] = b
            for w in self.dropped:
                pts = {x: y.to_bytes(shamir.SHARE_BYTES, "big") for x, y in self.mask_shares[w].items()}
                c = shamir.combine(pts, spec.threshold(w))
                if crypto_scalarmult_base(c) != self.pks[w]:
                    raise shamir.ShamirError(f"mask key of {w} does not match its public key")
                self.revealed_mask[w] = c
        except shamir.ShamirError as exc:
            return self.fail("bad_share", str(exc))
        masks: list[Mask] = [(self.revealed_self[w], -1) for w in self.u2]
        alive = set(self.u2)
        try:
            for d in self.dropped:
                for v in sorted(spec.graph[d] & alive):
                    seed = pair_seed(_x25519(self.revealed_mask[d], self.pks[v]), spec.round, spec.aggregator, d, v)
                    masks.append((seed, -pairwise_sign(v, d)))  # v applied sign(v, d); undo it
        except Rejected as exc:
            return self.fail("bad_key", str(exc))
        assert self.total is not None
        mask_vector(self.total, masks, spec.round, spec.aggregator)
        self.sum = spec.enc.decode(self.total)
        self.total = None
        self.stage = self.DONE
        return []

    def on_deadline(self) -> list[Outbound]:
        if self.stage == 0:
            return self.close_shares()
        if self.stage == 1:
            return self.close_masked()
        if self.stage == 2:
            return self.close_confirms()
        if self.stage == 3:
            t = self.spec.threshold
            missing = [w for w in self.u2 if len(self.self_shares[w]) < t(w)]
            missing += [w for w in self.dropped if len(self.mask_shares[w]) < t(w)]
            return self.fail("too_few_reveals", f"{len(self.responded)} of {len(self.confirmers)} confirmers answered; no t shares for {missing}")
        return []


# --------------------------------------------------------------------------- shared plumbing


def _validate_common(node_id: int, round_: int, own: np.ndarray) -> np.ndarray:
    if not _is_id(node_id):
        raise ValueError(f"node ids must be integers >= 0, not {node_id!r}")
    if not _is_id(round_):
        raise ValueError(f"round must be an integer >= 0, not {round_!r}")
    own = np.asarray(own)
    if own.ndim != 1 or own.dtype != np.float32:
        raise ValueError("own must be a flat float32 vector")
    return own


def _sanitize(own: np.ndarray, clip: float) -> tuple[np.ndarray, int]:
    """(a finite copy of `own` fit for encoding, number of values beyond the clip bound or non-finite)."""
    clipped = int(np.count_nonzero(~(np.abs(own) <= clip)))
    if clipped and not np.isfinite(own).all():
        return np.nan_to_num(own, nan=0.0, posinf=clip, neginf=-clip), clipped
    return own, clipped


class _SecAggBase(RoundProtocol):
    def __init__(self, node_id: int, round_: int, params: SecAggParams, secret: SecretFn, rng: RandomFn) -> None:
        self.node_id = node_id
        self.round = round_
        self.params = params
        self._secret = secret
        self._rng = rng
        self.agg: _Aggregator | None = None
        self.members: dict[int, _Member] = {}
        self.next_members: dict[int, _Member] = {}  # next-round member roles (pipelined setup)
        self.failures: list[Failure] = []
        self.clipped = 0
        self.deadlines = 0  # deadlines this round so far

    def release(self) -> None:
        """Drop the model-sized state once the node has taken the result.

        A node keeps its finished round only to take late messages (the surplus reveals that
        reach an aggregator after it unmasked), which need none of it; a member role still
        pending keeps its input, it may yet be asked to mask it.
        """
        for m in self.members.values():
            if m.done:
                m.x = m.encodings = None
        if self.agg is not None:
            self.agg.sum = self.agg.total = None

    def _fail_member(self, group: int, reason: str, detail: str = "") -> None:
        self.failures.append(Failure(group, "member", reason, detail))

    def _agg_step(self, step: str, msg: Message, body: bytes) -> list[Outbound]:
        agg = self.agg
        if agg is None:
            raise Rejected("no_group", f"{step} from {msg.sender}: this node aggregates no group this round")
        if msg.sender not in agg.spec.members:
            raise Rejected("not_neighbour", f"{step} from {msg.sender}, not a member of this node's group")
        if agg.done and step != STEP_REVEAL:
            raise Rejected("late", f"{step} from {msg.sender} after the group finished")
        if step == STEP_SHARES:
            out = agg.on_shares(msg.sender, body)
        elif step == STEP_MASKED:
            out = agg.on_masked(msg.sender, msg, body)
        elif step == STEP_CONFIRM:
            out = agg.on_confirm(msg.sender, body)
        else:
            out = agg.on_reveal(msg.sender, body)
        return out

    def _member_step(self, step: str, msg: Message, body: bytes) -> list[Outbound]:
        m = self.members.get(msg.sender)
        if m is None:
            raise Rejected("not_neighbour", f"{step} from {msg.sender}: not a group this node is a member of")
        if m.done:
            raise Rejected("late", f"{step} from {msg.sender} after this membership completed")
        if step == STEP_BUNDLE:
            out = m.on_bundle(body)
        elif step == STEP_UNMASK:
            out = m.on_unmask(body)
        elif step == STEP_PROOF:
            out = m.on_proof(body)
        else:
            reason = m.on_abort(body)
            self._fail_member(msg.sender, "aborted", reason)
            out = []
        m.idle = 0
        # the next round's bundle rides in the last aggregator message: unmask, or the proof
        if step in (STEP_PROOF, STEP_UNMASK) and m.done:
            self._take_next_bundle(msg.sender, m.next_bundle)
        return out

    def _next_shares(self, group: int) -> dict | None:
        """The `shares` body of my next-round membership in `group`, to ride in my masked input;
        None where the protocol prepares no next round (FedAvg, the last round)."""
        return None

    def _take_next_bundle(self, group: int, d: Any) -> None:
        """Keep the next round's bundle that the unmask request or the proof carried; without
        one, or a bad one, the next round runs its own share phase."""
        nm = self.next_members.pop(group, None)
        if nm is None or d is None:
            return
        try:
            if not isinstance(d, dict) or set(d) != {"members", "ct"}:
                raise Rejected("bad_body", "next-round bundle is not a map with keys ['ct', 'members']")
            nm.take_bundle(d)
        except Rejected as exc:
            self._fail_member(group, "bad_setup", f"{exc.reason}: {exc}")
            return
        self.next_members[group] = nm

    def _tick_members(self) -> None:
        self.deadlines += 1
        capped = self.deadlines >= self.params.max_deadlines
        for j, m in self.members.items():
            if not m.done:
                m.idle += 1
                if m.idle >= self.params.patience or capped:
                    m.give_up()
                    self._fail_member(j, "member_timeout", f"no message from aggregator {j} for {m.idle} deadlines")

    def _cap_aggregator(self) -> list[Outbound]:
        """At the hard deadline cap, fail the own group if it is still running."""
        if self.agg is not None and not self.agg.done and self.deadlines >= self.params.max_deadlines:
            return self.agg.fail("round_timeout", f"{self.deadlines} deadlines")
        return []


# --------------------------------------------------------------------------- gossip


class SecureGossipRound(_SecAggBase):
    """Secure Metropolis-Hastings gossip: one node, aggregator of N(i) and member of each N(j).

    adjacency: node id -> neighbour ids; must contain `node_id` and every neighbour of it (the
        whole topology is fine). Neighbourhoods must be symmetric.
    weights: this node's mixing row {j: W_ij} (as for `GossipRound`). W must be symmetric
        (Metropolis-Hastings is): the node contributes W_ij * x_i to neighbour j's group. The
        row without the self weight must sum to at most 1.
    own: the node's flat float32 delta. secret(peer, b"e2e"): the static pairwise key with a
        peer (two hops away at most). rng(n): n random bytes (default `os.urandom`).
    """

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
        params = params or SecAggParams()
        if secret is None:
            raise ValueError("secure aggregation needs the pairwise secret callable")
        super().__init__(node_id, round_, params, secret, rng)
        self.own = _validate_common(node_id, round_, own)
        if prepared is None or prepared.round != round_:
            prepared = Prepared(round_, {}, None)
        if node_id not in adjacency:
            raise ValueError(f"adjacency lacks node {node_id}")
        nbrs = sorted(set(adjacency[node_id]) - {node_id})
        for j in nbrs:
            if not _is_id(j):
                raise ValueError(f"bad neighbour id {j!r}")
            if j not in weights:
                raise ValueError(f"no mixing weight for neighbour {j}")
        self.weights = {j: float(weights[j]) for j in nbrs}
        if any(not 0.0 <= w <= 1.0 for w in self.weights.values()) or sum(self.weights.values()) > 1.0:
            raise ValueError("mixing weights must lie in [0, 1] and the neighbours' sum be at most 1")
        x, self.clipped = _sanitize(self.own, params.clip)
        encodings = EncodingCache(x)  # every group I am in masks from it (equal encodings: once)
        length = self.own.shape[0]

        def enc(m: int) -> FixedPoint:
            return FixedPoint(params.clip, 1.0, m, params.bits)

        # neighbours believed alive: the share phase waits only for them, and the node does not
        # wait to serve the groups of the others (it still answers them while the round lasts)
        self.expected = set(nbrs) if expected is None else set(expected) & set(nbrs)
        self._groups: dict[int, tuple[int, ...]] = {}  # aggregator -> members, of every group I am in
        self._length, self._enc, self._prepare_next = length, enc, prepare_next
        if len(nbrs) >= params.min_contributors:
            self._groups[node_id] = tuple(nbrs)
            agg = prepared.agg
            if agg is None or agg.spec.members != tuple(nbrs) or agg.spec.length != length:
                agg = _Aggregator(self._spec(round_, node_id), self.expected)
            agg.expected = set(self.expected)
            if prepare_next:
                agg.nxt = _Aggregator(self._spec(round_ + 1, node_id), self.expected)
            self.agg = agg
        else:
            self.failures.append(Failure(node_id, "aggregator", "privacy_floor", f"group of {len(nbrs)} neighbour(s), floor {params.min_contributors}"))
        for j in nbrs:
            if j not in adjacency:
                raise ValueError(f"adjacency lacks neighbour {j}")
            group = set(adjacency[j]) - {j}
            if node_id not in group:
                raise ValueError(f"adjacency is not symmetric: {j} does not list {node_id}")
            if len(group) >= params.min_contributors:
                self._groups[j] = tuple(sorted(group))
                m = prepared.members.get(j)
                if m is None or m.spec.members != self._groups[j] or m.spec.length != length or m.stage != "ready":
                    m = _Member(self._spec(round_, j), node_id, self.weights[j], x, secret, rng)
                m.x, m.weight, m.encodings = x, self.weights[j], encodings
                m.next_shares = functools.partial(self._next_shares, j)
                self.members[j] = m
        self._result: np.ndarray | None = None
        self._linger = 0

    def _spec(self, round_: int, aggregator: int) -> GroupSpec:
        members = self._groups[aggregator]
        return GroupSpec(round_, aggregator, members, self._length, self._enc(len(members)), self.params)

    def _next_shares(self, group: int) -> dict | None:
        if not self._prepare_next:
            return None
        nm = _Member(self._spec(self.round + 1, group), self.node_id, self.weights[group], None, self._secret, self._rng)
        self.next_members[group] = nm
        return nm.share()

    def prepared_next(self) -> Prepared:
        """What this round prepared for the next one: hand it to the next round's constructor."""
        members = {j: m for j, m in self.next_members.items() if m.stage == "ready"}
        nxt = self.agg.nxt if self.agg is not None else None
        return Prepared(self.round + 1, members, nxt if nxt is not None and nxt.prepared else None)

    # RoundProtocol ----------------------------------------------------------
    def start(self) -> list[Outbound]:
        out = [m.start() for _, m in sorted(self.members.items())]
        if self.agg is not None:
            out += self.agg.start()
            self._after_agg(False)
        return out

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.kind != Kind.SECAGG:
            raise Rejected("unexpected_kind", f"{msg.kind.name} in a secure gossip round")
        if msg.round != self.round:
            raise Rejected("wrong_round", f"round {msg.round}, expected {self.round}")
        step, body = _step_of(msg)
        if step in AGGREGATOR_STEPS:
            was_done = self.agg is not None and self.agg.done
            out = self._agg_step(step, msg, body)
            self._after_agg(was_done)
            return out
        return self._member_step(step, msg, body)

    def on_deadline(self) -> list[Outbound]:
        self._tick_members()
        if self.agg is not None and not self.agg.done:
            out = self.agg.on_deadline() + self._cap_aggregator()
            self._after_agg(False)
            return out
        self._linger += 1
        return []

    def _after_agg(self, was_done: bool) -> None:
        agg = self.agg
        if agg is None or was_done or not agg.done:
            return
        if agg.failure is not None:
            self.failures.append(Failure(self.node_id, "aggregator", *agg.failure))

    @property
    def phase(self) -> int:
        """0 shares, 1 masked inputs, 2 confirmations, 3 reveals (own group); then 4, 5, ...
        while member roles in neighbours' groups are still pending (one per deadline)."""
        if self.agg is not None and not self.agg.done:
            return self.agg.stage
        return _Aggregator.DONE + self._linger

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

    def arrived(self) -> int:
        return len(self.agg.u2) if self.agg is not None and self.agg.ok else 0

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


# --------------------------------------------------------------------------- FedAvg star


def fedavg_error_bound(enc: FixedPoint, contributors: int, total_weight: float, magnitude: float) -> float:
    """Bound on |secure FedAvg average - exact weighted average| (before the float32 rounding).

    avg = (w_h own + S_x) / (w_h + S_w) with S_x, S_w each within e = enc.sum_error_bound(m)
    of exact: |error| <= e (1 + |avg|) / (W - e), W = w_h + sum of the contributors' weights.
    """
    e = enc.sum_error_bound(contributors)
    return e * (1.0 + magnitude) / (total_weight - e)


class SecureFedAvgRound(_SecAggBase):
    """Star FedAvg with secure aggregation: the hub learns only sum_u w_u [x_u, 1], w_u = n_u / max_samples.

    Same constructor as `FedAvgRound` plus params, secret, rng and `expected` (leaves the hub's
    share phase waits for; default all). The hub adds its own model
    in plain, divides by the total weight and sends the average to every leaf as
    `Kind.GLOBAL` with tensor "delta"; on failure it sends "abort" and everyone keeps `fallback`
    (default: its own model) this round. The hub never sends a model that is not mixed with
    at least `min_contributors` leaves' sum: with fewer active leaves (none included; everyone
    knows the active set) every party fails the round with "privacy_floor" at once, the hub
    sends nothing and each keeps its `fallback`. A leaf's phase advances on every message from the hub and on every
    deadline; it gives up (keeps `fallback`) after `params.patience` silent deadlines.

    active: the leaves that contribute this round (`protocols.Schedule`; default all): only they
        form the secure-aggregation group; the others just wait for the average (or the abort).
    samples: the hub may pass 0 (its own data sits this round out).
    dp: distributed DP noise every contributing leaf adds to its encoded input (not to the
        weight coordinate); the fixed-point range gets `dp.headroom` more room so the noisy
        sum never wraps. Every party computes the same encoding from public facts.
    """

    def __init__(
        self,
        node_id: int,
        round_: int,
        hub: int,
        leaves: Iterable[int],
        own: np.ndarray,
        samples: int,
        params: SecAggParams | None = None,
        secret: SecretFn | None = None,
        rng: RandomFn = os.urandom,
        expected: Iterable[int] | None = None,
        active: Iterable[int] | None = None,
        fallback: np.ndarray | None = None,
        dp: DistributedNoise | None = None,
    ) -> None:
        params = params or SecAggParams()
        if secret is None:
            raise ValueError("secure aggregation needs the pairwise secret callable")
        super().__init__(node_id, round_, params, secret, rng)
        self.own = _validate_common(node_id, round_, own)
        self.hub = hub
        least = 0 if self.is_hub else 1
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < least:
            raise ValueError(f"samples must be an integer >= {least}, not {samples!r}")
        self.leaves = sorted(set(leaves) - {hub})
        self.active = self.leaves if active is None else sorted(set(active) & set(self.leaves))
        self.fallback = self.own if fallback is None else fallback
        self.samples = samples
        self.weight = min(samples, params.max_samples) / params.max_samples
        self.clipped = 0
        self._result: np.ndarray | None = None
        self._events = 0
        self._idle = 0
        m = len(self.active)
        length = self.own.shape[0] + 1
        self.dp = dp
        room = dp.headroom(m) if dp is not None else 0.0
        self.enc = FixedPoint(max(params.clip, 1.0) + room, float(max(m, 1)), max(m, 1), params.bits)
        if self.is_hub:
            if m < params.min_contributors:
                # The hub's answer would be its own model, or the one leaf's input: send nothing.
                self.failures.append(Failure(hub, "aggregator", "privacy_floor", f"{m} leaf/leaves, floor {params.min_contributors}"))
                self._result = self._hub_alone() if m == 0 else self.fallback
            else:
                self.agg = _Aggregator(GroupSpec(round_, hub, self.active, length, self.enc, params), expected)
        else:
            if node_id not in self.leaves:
                raise ValueError(f"node {node_id} is neither the hub nor a leaf")
            if m < params.min_contributors:  # the hub sends no average this round (none at all when m = 0)
                self._fail_member(hub, "privacy_floor", f"{m} leaf/leaves, floor {params.min_contributors}")
                self._result = self.fallback
            elif node_id in self.active:
                x, self.clipped = _sanitize(self.own, params.clip)
                ext = np.empty(length, dtype=np.float32)
                np.clip(x, -params.clip, params.clip, out=ext[:-1])
                ext[-1] = 1.0
                noise = None
                if dp is not None:
                    sigma_int = dp.std * self.enc.scale

                    def noise() -> np.ndarray:  # the weight coordinate stays exact
                        return np.append(dp.sample(length - 1, sigma_int), np.int64(0))

                spec = GroupSpec(round_, hub, self.active, length, self.enc, params)
                self.members[hub] = _Member(spec, node_id, self.weight, ext, secret, rng, noise)

    def _hub_alone(self) -> np.ndarray:
        """No leaf takes part: what the hub keeps (it is never sent). Its own model, or
        `fallback` if its data sits out too or under DP (its term is protected only by the
        leaves' noise, so the un-noised model must not become its state)."""
        return self.own if self.weight > 0 and self.dp is None else self.fallback

    @property
    def is_hub(self) -> bool:
        return self.node_id == self.hub

    def start(self) -> list[Outbound]:
        if self.agg is not None:
            return self._after_hub(False, self.agg.start())
        # Below the floor the hub sends nothing: every leaf knows the active set and has failed
        # the round already. (It used to send its own model when no leaf took part.)
        return [m.start() for m in self.members.values()]

    def on_message(self, msg: Message) -> list[Outbound]:
        if msg.round != self.round:
            raise Rejected("wrong_round", f"round {msg.round}, expected {self.round}")
        if self.is_hub:
            if msg.kind != Kind.SECAGG:
                raise Rejected("unexpected_kind", f"{msg.kind.name} sent to the secure hub")
            step, body = _step_of(msg)
            if step not in AGGREGATOR_STEPS:
                raise Rejected("out_of_order", f"{step} sent to the hub")
            if self.agg is None:
                raise Rejected("no_group", "the hub aggregates nothing this round")
            was_done = self.agg.done
            out = self._agg_step(step, msg, body)
            return self._after_hub(was_done, out)
        if msg.sender != self.hub:
            raise Rejected("not_neighbour", f"message from {msg.sender} at a leaf")
        if self._result is not None:
            raise Rejected("late", f"{msg.kind.name} after the leaf finished")
        if msg.kind == Kind.GLOBAL:
            self._result = check_vector(msg, DELTA, self.own.shape[0])
            for m in self.members.values():
                if not m.done:
                    m.stage, m.outcome = "done", "global"
            return []
        if msg.kind != Kind.SECAGG:
            raise Rejected("unexpected_kind", f"{msg.kind.name} at a secure leaf")
        step, body = _step_of(msg)
        if step not in MEMBER_STEPS:
            raise Rejected("out_of_order", f"{step} sent to a leaf")
        m = self.members.get(self.hub)
        if m is None and step == STEP_ABORT:  # a leaf that sits out hears the round failed
            d = _unpack(body, {"reason"})
            self._fail_member(self.hub, "aborted", d["reason"][:64] if isinstance(d["reason"], str) else "?")
            self._result = self.fallback
            return []
        if m is None:
            raise Rejected("no_group", "this leaf takes no part this round")
        if step == STEP_ABORT:
            d = _unpack(body, {"reason"})
            reason = d["reason"][:64] if isinstance(d["reason"], str) else "?"
            if m.done and reason == "excluded":
                raise Rejected("duplicate", "second exclusion notice")
            m.stage, m.outcome = "done", f"aborted:{reason}"
            self._fail_member(self.hub, "aborted", reason)
            self._events += 1
            self._idle = 0
            if reason != "excluded":  # excluded: no input from us, but the average still comes
                self._result = self.fallback
            return []
        out = self._member_step(step, msg, body)
        self._events += 1
        self._idle = 0
        return out

    def _after_hub(self, was_done: bool, out: list[Outbound]) -> list[Outbound]:
        agg = self.agg
        if agg is None or was_done or not agg.done:
            return out
        if agg.failure is not None:
            self.failures.append(Failure(self.node_id, "aggregator", *agg.failure))
            self._result = self.fallback
            # every leaf waits for a final word; the aggregator role told only those still in a step
            told = {to for to, m in out if m.meta.get("step") == STEP_ABORT and m.meta.get("body") != _pack({"reason": "excluded"})}
            msg = _secagg_msg(self.node_id, self.round, STEP_ABORT, {"reason": agg.failure[0]})
            return [o for o in out if o[0] in told] + [(j, msg) for j in self.leaves if j not in told]
        assert agg.sum is not None
        s = agg.sum
        w_total = self.weight + s[-1]
        avg = (self.weight * self.own.astype(np.float64) + s[:-1]) / w_total
        self._result = avg.astype(np.float32)
        msg = Message(Kind.GLOBAL, self.node_id, self.round, tensors={DELTA: self._result})
        return out + [(j, msg) for j in self.leaves]

    def on_deadline(self) -> list[Outbound]:
        if self.is_hub:
            if self.agg is None or self.agg.done:
                return []
            self.deadlines += 1
            return self._after_hub(False, self.agg.on_deadline() + self._cap_aggregator())
        if self._result is not None:
            return []
        self.deadlines += 1
        self._events += 1
        self._idle += 1
        if self._idle >= self.params.patience or self.deadlines >= self.params.max_deadlines:
            for m in self.members.values():
                if not m.done:
                    m.give_up()
            self._fail_member(self.hub, "member_timeout", f"no message from the hub for {self._idle} deadlines")
            self._result = self.fallback
        return []

    @property
    def phase(self) -> int:
        if self.is_hub:
            return self.agg.stage if self.agg is not None else _Aggregator.DONE
        return self._events

    def finished(self) -> bool:
        return self._result is not None

    def result(self) -> np.ndarray:
        assert self._result is not None, "result() before the round finished"
        return self._result

    def arrived(self) -> int:
        if self.is_hub:
            return len(self.agg.u2) if self.agg is not None and self.agg.ok else 0
        return 1 if self._result is not None and self._result is not self.fallback else 0

    @property
    def status(self) -> str:
        """"pending", "ok" (hub: unmasked the sum; leaf: got the average) or "failed" (see `failures`)."""
        if self._result is None:
            return "pending"
        if self.is_hub:
            return "ok" if not self.leaves or (self.agg is not None and self.agg.ok) else "failed"
        return "ok" if self.arrived() else "failed"

    @property
    def failure_reason(self) -> str | None:
        return self.failures[0].reason if self.failures else None

    @property
    def contributors(self) -> list[int]:
        return list(self.agg.u2) if self.agg is not None and self.agg.ok else []
