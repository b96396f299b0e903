"""What co-members say to each other end to end, through an aggregator that relays it.

Sealed share bundles (XChaCha20-Poly1305 under a key derived from the static pairwise secret,
associated data binding round, aggregator, sender and recipient), MACs of member lists and views,
commitments to self-mask seeds, and the X25519 agreement of per-round mask keys
(docs/secagg.md, sections 2.4 and 3).

Owns: key derivation from the static secret, sealing/opening, digests, MACs, commitments.
Must not touch: message bodies' layout, protocol state, sockets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from p2pfl import crypto
from p2pfl.masking import blake2b
from p2pfl.protocols import Rejected
from p2pfl.secagg.codec import MAC_BYTES, SharePlain, decode_map, pack

SecretFn = Callable[[int, bytes], bytes]
RandomFn = Callable[[int], bytes]
_AAD_PREFIX = b"p2pfl-secagg-v1/share"


class PeerKeys:
    """The (AEAD key for sealed shares, MAC key for views) shared with each co-member, derived
    once per peer from the static pairwise secret `secret(peer, b"e2e")`."""

    def __init__(self, secret: SecretFn) -> None:
        self._secret = secret
        self._keys: dict[int, tuple[bytes, bytes]] = {}

    def box(self, peer: int) -> bytes:
        return self._both(peer)[0]

    def mac(self, peer: int) -> bytes:
        return self._both(peer)[1]

    def _both(self, peer: int) -> tuple[bytes, bytes]:
        if peer not in self._keys:
            self._keys[peer] = e2e_keys(self._secret, peer)
        return self._keys[peer]


def e2e_keys(secret: SecretFn, peer: int) -> tuple[bytes, bytes]:
    """(AEAD key for sealed shares, MAC key for view confirmations) shared with `peer`."""
    raw = secret(peer, b"e2e")
    if not isinstance(raw, bytes) or not 16 <= len(raw) <= 64:
        raise ValueError(f"secret({peer}, b'e2e') must return 16..64 bytes")
    return blake2b(b"share-box", person=b"p2pfl-sa-e2e", key=raw), blake2b(b"view-mac", person=b"p2pfl-sa-e2e", key=raw)


def view_digest(round_: int, aggregator: int, survivors: list[int], dropped: list[int]) -> bytes:
    """Hash of one unmasking view (who survived, who dropped) of one group and round."""
    return blake2b(pack([round_, aggregator, survivors, dropped]), person=b"p2pfl-sa-view")


def members_digest(round_: int, aggregator: int, members: list[int]) -> bytes:
    """Hash of the member list U1 a masked input was made for (its masking partners)."""
    return blake2b(pack([round_, aggregator, members]), person=b"p2pfl-sa-u1")


def view_mac(key: bytes, digest: bytes, round_: int, aggregator: int, sender: int, recipient: int) -> bytes:
    """16-byte MAC from `sender` to `recipient` over a digest (a view or a member list)."""
    data = struct.pack("<QQQQ", round_, aggregator, sender, recipient) + digest
    return blake2b(data, person=b"p2pfl-sa-vmac", key=key, size=MAC_BYTES)


def _aad(round_: int, aggregator: int, sender: int, recipient: int) -> bytes:
    return _AAD_PREFIX + struct.pack("<QQQQ", round_, aggregator, sender, recipient)


def seal(key: bytes, aad: bytes, plaintext: bytes, rng: RandomFn) -> bytes:
    nonce = rng(crypto.NONCE_BYTES)  # random 24-byte XChaCha20 nonces: collisions are negligible
    return nonce + bytes(crypto.seal(key, nonce, plaintext, aad, crypto.XCHACHA20POLY1305))


def open_sealed(key: bytes, aad: bytes, blob: bytes) -> bytes:
    n = crypto.NONCE_BYTES
    try:
        return bytes(crypto.unseal(key, blob[:n], blob[n:], aad, cipher=crypto.XCHACHA20POLY1305))
    except crypto.CryptoError:
        raise Rejected("decrypt_failed", "a share bundle failed authentication") from None


def seal_share(key: bytes, share: SharePlain, round_: int, aggregator: int, sender: int, recipient: int,
               rng: RandomFn) -> bytes:
    """`sender`'s shares for `recipient`, sealed so that the aggregator can neither read, forge,
    replay into another round nor redirect them."""
    return seal(key, _aad(round_, aggregator, sender, recipient), share.encode(), rng)


def open_share(key: bytes, blob: bytes, round_: int, aggregator: int, sender: int, recipient: int) -> SharePlain:
    plain = open_sealed(key, _aad(round_, aggregator, sender, recipient), blob)
    return SharePlain.parse(decode_map(plain, SharePlain.KEYS))


def commit(seed: bytes) -> bytes:
    """Commitment to a self-mask seed, checked against the seed the aggregator rebuilds."""
    return blake2b(seed, person=b"p2pfl-sa-commit")


def public_key(sk: bytes) -> bytes:
    """X25519 public key of a per-round mask key."""
    return crypto_scalarmult_base(sk)


def x25519(sk: bytes, pk: bytes) -> bytes:
    try:
        return crypto_scalarmult(sk, pk)
    except Exception:
        raise Rejected("bad_key", "X25519 with a low-order or invalid public key") from None
