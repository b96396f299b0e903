"""Secure-aggregation messages: step names, msgpack bodies and their validation.

Every step's body is a frozen dataclass with `to_obj()` (the msgpack map, keys in wire order),
`encode()` (its bytes) and `parse(obj)` / `decode(body)` (strict checks of the form of every
field; anything else raises `protocols.Rejected("bad_body")`). Checks that need a group (who is a
member, who holds whose shares) belong to the roles, not here. The bodies are the protocol on the
wire (docs/secagg.md, section 3): the order of the keys and of every map is part of it.

Owns: step names, size limits, body layout, `secagg_message`, `step_of`. Must not touch: keys,
sealing, protocol state, sockets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import msgpack
import numpy as np

from p2pfl import shamir
from p2pfl.messages import Kind, Message
from p2pfl.protocols import Rejected

MASKED = "masked"  # tensor name of a masked input
STEP_SHARES, STEP_MASKED, STEP_CONFIRM, STEP_REVEAL = "shares", "masked", "confirm", "reveal"  # member -> aggregator
STEP_BUNDLE, STEP_UNMASK, STEP_PROOF, STEP_ABORT = "bundle", "unmask", "proof", "abort"  # aggregator -> member
AGGREGATOR_STEPS = frozenset({STEP_SHARES, STEP_MASKED, STEP_CONFIRM, STEP_REVEAL})
MEMBER_STEPS = frozenset({STEP_BUNDLE, STEP_UNMASK, STEP_PROOF, STEP_ABORT})
MAC_BYTES = 16
KEY_BYTES = 32  # X25519 public keys and BLAKE2b-256 commitments

MAX_BODY = 4 << 20  # bytes of one msgpack body
MAX_ITEMS = 1 << 16  # entries of one list or map in a body (group size bound)
CT_MIN, CT_MAX = 24 + 16 + 1, 1024  # a sealed share bundle: nonce + tag + plaintext
REASON_CHARS = 64  # an abort reason is cut to this many characters
# The abort that asks a member to share anew: its prepared setup for this round is one the group no
# longer holds (the aggregator restarted, or dropped it because another member's process was replaced).
RESHARE = "reshare"


# --------------------------------------------------------------------------- msgpack and field checks


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def decode_map(body: Any, keys: frozenset[str]) -> dict:
    """A msgpack map with exactly `keys`, decoded with size limits (never pickle)."""
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise Rejected("bad_body", "body is not bytes or too large")
    try:
        obj = msgpack.unpackb(
            body, raw=False, strict_map_key=False, use_list=True, max_bin_len=MAX_BODY,
            max_str_len=1024, max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types on malformed input
        raise Rejected("bad_body", f"undecodable body: {type(exc).__name__}") from None
    return check_keys(obj, keys, "body")


def check_keys(obj: Any, keys: frozenset[str], what: str) -> dict:
    if not isinstance(obj, dict) or set(obj) != keys:
        raise Rejected("bad_body", f"{what}: expected a map with keys {sorted(keys)}")
    return obj


def is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def id_list(v: Any, what: str) -> list[int]:
    if not isinstance(v, list) or not all(is_id(x) for x in v) or any(a >= b for a, b in zip(v, v[1:])):
        raise Rejected("bad_body", f"{what}: not a sorted list of distinct node ids")
    return v


def fixed_bytes(v: Any, n: int, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != n:
        raise Rejected("bad_body", f"{what}: expected {n} bytes")
    return v


def id_map(v: Any, what: str, lo: int, hi: int) -> dict[int, bytes]:
    if not isinstance(v, dict) or not all(is_id(k) for k in v):
        raise Rejected("bad_body", f"{what}: not a map of node ids")
    for k, b in v.items():
        if not isinstance(b, bytes) or not lo <= len(b) <= hi:
            raise Rejected("bad_body", f"{what}[{k}]: expected {lo}..{hi} bytes")
    return v


# --------------------------------------------------------------------------- bodies


class Body(ABC):
    """One step's body. `next` fields carry the next round's body as a plain map (or None), left
    unchecked here: the next round's role checks it, and a bad one costs only that setup."""

    STEP: ClassVar[str]
    KEYS: ClassVar[frozenset[str]]

    @abstractmethod
    def to_obj(self) -> dict[str, Any]:
        """The msgpack map, keys in wire order."""

    def encode(self) -> bytes:
        return pack(self.to_obj())

    @classmethod
    @abstractmethod
    def parse(cls, obj: Any) -> Self:
        """Check the form of every field of a map that has exactly `KEYS`."""

    @classmethod
    def decode(cls, body: Any) -> Self:
        return cls.parse(decode_map(body, cls.KEYS))


@dataclass(frozen=True)
class SharePlain(Body):
    """What one sealed share carries to one holder: the owner's mask public key and its shares of
    the self-mask seed b and of the mask key c (sealed end to end, never a step of its own)."""

    pk: bytes
    b: bytes
    c: bytes
    STEP: ClassVar[str] = ""  # not a step of its own: it travels sealed inside `shares` and `bundle`
    KEYS: ClassVar[frozenset[str]] = frozenset({"pk", "b", "c"})

    def to_obj(self) -> dict[str, Any]:
        return {"pk": self.pk, "b": self.b, "c": self.c}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        return cls(fixed_bytes(obj["pk"], KEY_BYTES, "pk"), fixed_bytes(obj["b"], shamir.SHARE_BYTES, "b"),
                   fixed_bytes(obj["c"], shamir.SHARE_BYTES, "c"))


@dataclass(frozen=True)
class Shares(Body):
    """member -> aggregator: mask public key, commitment to b, a sealed share per holder."""

    pk: bytes
    commit: bytes
    ct: Mapping[int, bytes]  # holder -> sealed SharePlain, in the order of the holders
    STEP: ClassVar[str] = STEP_SHARES
    KEYS: ClassVar[frozenset[str]] = frozenset({"pk", "commit", "ct"})

    def to_obj(self) -> dict[str, Any]:
        return {"pk": self.pk, "commit": self.commit, "ct": self.ct}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        check_keys(obj, cls.KEYS, "shares")
        return cls(fixed_bytes(obj["pk"], KEY_BYTES, "pk"), fixed_bytes(obj["commit"], KEY_BYTES, "commit"),
                   id_map(obj["ct"], "ct", CT_MIN, CT_MAX))


@dataclass(frozen=True)
class Bundle(Body):
    """aggregator -> member: the member list U1 and the sealed shares its partners made for it."""

    members: list[int]
    ct: Mapping[int, bytes]  # partner -> sealed SharePlain for this member
    STEP: ClassVar[str] = STEP_BUNDLE
    KEYS: ClassVar[frozenset[str]] = frozenset({"members", "ct"})

    def to_obj(self) -> dict[str, Any]:
        return {"members": self.members, "ct": self.ct}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        check_keys(obj, cls.KEYS, "bundle")
        return cls(id_list(obj["members"], "members"), id_map(obj["ct"], "ct", CT_MIN, CT_MAX))


@dataclass(frozen=True)
class Masked(Body):
    """member -> aggregator, with the tensor MASKED: MACs of U1 to every co-member, and the
    member's `shares` map for the next round (pipelined setup) or None."""

    attest: Mapping[int, bytes]
    next: dict | None
    STEP: ClassVar[str] = STEP_MASKED
    KEYS: ClassVar[frozenset[str]] = frozenset({"attest", "next"})

    def to_obj(self) -> dict[str, Any]:
        return {"attest": self.attest, "next": self.next}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        return cls(id_map(obj["attest"], "attest", MAC_BYTES, MAC_BYTES), obj["next"])


@dataclass(frozen=True)
class Unmask(Body):
    """aggregator -> member: the view (survivors, dropped), the survivors' attestations of U1 to
    this member, and its `bundle` map for the next round or None."""

    survivors: list[int]
    dropped: list[int]
    attest: Mapping[int, bytes]
    next: dict | None
    STEP: ClassVar[str] = STEP_UNMASK
    KEYS: ClassVar[frozenset[str]] = frozenset({"survivors", "dropped", "attest", "next"})

    def to_obj(self) -> dict[str, Any]:
        return {"survivors": self.survivors, "dropped": self.dropped, "attest": self.attest, "next": self.next}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        return cls(id_list(obj["survivors"], "survivors"), id_list(obj["dropped"], "dropped"),
                   id_map(obj["attest"], "attest", MAC_BYTES, MAC_BYTES), obj["next"])


@dataclass(frozen=True)
class Confirm(Body):
    """member -> aggregator: MACs of the view to every co-member."""

    macs: Mapping[int, bytes]
    STEP: ClassVar[str] = STEP_CONFIRM
    KEYS: ClassVar[frozenset[str]] = frozenset({"macs"})

    def to_obj(self) -> dict[str, Any]:
        return {"macs": self.macs}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        return cls(id_map(obj["macs"], "macs", MAC_BYTES, MAC_BYTES))


@dataclass(frozen=True)
class Proof(Body):
    """aggregator -> confirmer: the other confirmers' MACs to it, and its next-round bundle or None."""

    macs: Mapping[int, bytes]
    next: dict | None
    STEP: ClassVar[str] = STEP_PROOF
    KEYS: ClassVar[frozenset[str]] = frozenset({"macs", "next"})

    def to_obj(self) -> dict[str, Any]:
        return {"macs": self.macs, "next": self.next}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        return cls(id_map(obj["macs"], "macs", MAC_BYTES, MAC_BYTES), obj["next"])


@dataclass(frozen=True)
class Reveal(Body):
    """member -> aggregator: shares of the survivors' self-mask seeds and of the dropped' mask keys."""

    self_shares: Mapping[int, bytes]
    mask_shares: Mapping[int, bytes]
    STEP: ClassVar[str] = STEP_REVEAL
    KEYS: ClassVar[frozenset[str]] = frozenset({"self", "mask"})

    def to_obj(self) -> dict[str, Any]:
        return {"self": self.self_shares, "mask": self.mask_shares}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        n = shamir.SHARE_BYTES
        return cls(id_map(obj["self"], "self", n, n), id_map(obj["mask"], "mask", n, n))


@dataclass(frozen=True)
class Abort(Body):
    """aggregator -> member: stop; `reason` is "excluded", "resync", `RESHARE` or a failure code."""

    reason: str
    STEP: ClassVar[str] = STEP_ABORT
    KEYS: ClassVar[frozenset[str]] = frozenset({"reason"})

    def to_obj(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def parse(cls, obj: Any) -> Self:
        reason = obj["reason"]
        return cls(reason[:REASON_CHARS] if isinstance(reason, str) else "?")


# --------------------------------------------------------------------------- messages


def secagg_message(sender: int, round_: int, body: Body, masked: np.ndarray | None = None) -> Message:
    tensors = {MASKED: masked} if masked is not None else {}
    return Message(Kind.SECAGG, sender, round_, meta={"step": body.STEP, "body": body.encode()}, tensors=tensors)


def step_of(msg: Message) -> tuple[str, bytes]:
    """(step, body bytes) of a SECAGG message whose meta and tensors have the step's form."""
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
