"""Masks for secure aggregation: a ChaCha20 PRG read in chunks, fused encode+mask, sparse masking graphs.

PRG. The mask of key k in (round, group) is the keystream of libsodium's
`randombytes_buf_deterministic` (IETF ChaCha20, nonce "LibsodiumDRG", block counter from 0)
under the seed

    BLAKE2b-256(key = k, person = "p2pfl-mask-strm", data = round || group)

(round and group as little-endian u64), read as little-endian uint32 words: word i of the
mask is word i of that one stream, whatever the vector's length. Binding the seed to the round
and the aggregator's group makes a key reused by mistake across rounds or groups still give
unrelated masks. We compute the stream with OpenSSL's ChaCha20 (through `cryptography`),
bit-identical to libsodium's (a test pins it) and about twice as fast here; one cipher context
per mask streams through the whole vector, `CHUNK_WORDS` words at a time, so a 10M-parameter
vector passes through the cache 256 KiB at a time without a 40 MB buffer per mask, and a chunk
costs no key setup. libsodium is the fallback where `cryptography` is missing (its call takes
no offset, so it makes each mask's stream whole, one mask at a time). `CHUNK_WORDS` is a cache
size, not part of the protocol.

Signs. For a pair u < v with shared mask key s_uv, u adds PRG(s_uv) and v subtracts it; with a
self mask PRG(b_u) added by every contributor, the sum over a group of

    y_u = enc_u + PRG(b_u) + sum_{v in M(u)} sign(u, v) * PRG(s_uv)   (mod 2^32)

is sum_u enc_u + sum_u PRG(b_u): the pairwise masks cancel exactly in uint32 wraparound.

Sparse masking (SecAgg+). In a large group each member masks with only `degree` others (M(u)),
the neighbours of u in a circulant graph C_n(1..degree/2) laid over a pseudorandom ordering of
the members derived from a public group seed. The graph is `degree`-regular and
`degree`-connected (it stays connected after any degree-1 removals), and everyone computes it
from public data with no message.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
# Importing nacl.bindings also runs sodium_init(), which picks libsodium's SIMD ChaCha20: the
# direct cffi calls below rely on it (without it they run the reference code, ~4x slower).
from nacl.bindings import randombytes_buf_deterministic as _chacha20

try:  # pynacl's cffi binding: write the keystream straight into our buffer (no allocation, no copy)
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - pynacl without its private module: the public call works too
    _ffi = _lib = None

try:  # OpenSSL's ChaCha20: the same keystream as libsodium's, faster (module docstring)
    from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
    from cryptography.hazmat.primitives.ciphers import algorithms as _algorithms
except ImportError:  # pragma: no cover - optional speed-up; libsodium computes the same stream
    _Cipher = _algorithms = None

from p2pfl.fixedpoint import FixedPoint

CHUNK_WORDS = 1 << 16  # 256 KiB of uint32 per chunk (a cache size; any value gives the same masks)
KEY_BYTES = 32
_LE_U32 = np.dtype("<u4")

Mask = tuple[bytes, int]
"""A mask to apply: (32-byte key, +1 to add its PRG stream or -1 to subtract it)."""


def blake2b(data: bytes, person: bytes, key: bytes = b"", size: int = 32) -> bytes:
    """Keyed, personalised BLAKE2b.

    Python's hashlib: the same function as libsodium's crypto_generichash_blake2b_salt_personal
    (zero salt, person zero-padded to 16 bytes; bit-identical, tested), without pynacl's
    per-call argument checks, which cost about 10x the hash itself on our short inputs.
    """
    return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()


def stream_seed(key: bytes, round_: int, group: int) -> bytes:
    """The ChaCha20 seed of the mask stream of `key` in (round, group)."""
    return blake2b(struct.pack("<QQ", round_, group), b"p2pfl-mask-strm", key)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"a mask key is {KEY_BYTES} bytes")


def prg_words(key: bytes, round_: int, group: int, length: int) -> np.ndarray:
    """The first `length` uint32 words of the mask stream of `key` (a fresh array)."""
    _check_key(key)
    out = np.zeros(length, dtype=np.uint32)
    mask_vector(out, [(key, 1)], round_, group)
    return out


def _check_masks(masks: Sequence[Mask]) -> None:
    for key, sign in masks:
        _check_key(key)
        if sign not in (1, -1):
            raise ValueError(f"mask sign must be +1 or -1, not {sign}")


def mask_vector(vec: np.ndarray, masks: Sequence[Mask], round_: int, group: int) -> None:
    """Add (sign +1) or subtract (sign -1) each mask's PRG stream to the uint32 `vec`, in place."""
    if vec.dtype != np.uint32 or vec.ndim != 1:
        raise ValueError("mask_vector works on a 1-D uint32 vector")
    _check_masks(masks)
    _masked_copy(vec, vec, masks, round_, group)


# libsodium's randombytes_buf_deterministic as an OpenSSL ChaCha20 nonce: 32-bit block counter
# 0, then libsodium's fixed 12-byte IETF nonce
_DRG_NONCE = b"\0\0\0\0LibsodiumDRG"
_ZEROS = bytes(CHUNK_WORDS * 4)  # the plaintext whose encryption is the keystream


class _Keystream:
    """The mask stream of one seed, read front to back a chunk at a time (OpenSSL's ChaCha20)."""

    def __init__(self, seed: bytes) -> None:
        self._enc = _Cipher(_algorithms.ChaCha20(seed, _DRG_NONCE), None).encryptor()

    def read_into(self, out: np.ndarray) -> None:
        """Write the next `len(out)` words of the stream into the little-endian uint32 `out`."""
        self._enc.update_into(memoryview(_ZEROS)[: out.nbytes], memoryview(out).cast("B"))


def _keystreams(masks: Sequence[Mask], round_: int, group: int) -> list[tuple[_Keystream, int]]:
    """(stream, sign) of every mask in (round, group), each at its start."""
    return [(_Keystream(stream_seed(key, round_, group)), sign) for key, sign in masks]


def _whole_stream(seed: bytes, words: int) -> np.ndarray:
    """The first `words` words of the stream of `seed` from libsodium (the fallback: no offsets)."""
    out = np.empty(words, dtype=_LE_U32)
    if _lib is not None:
        _lib.randombytes_buf_deterministic(_ffi.from_buffer(out, require_writable=True), out.nbytes, seed)
    else:
        out[:] = np.frombuffer(_chacha20(out.nbytes, seed), dtype=_LE_U32)
    return out


def _add_streams(src: np.ndarray, dst: np.ndarray, streams: Sequence[tuple[_Keystream, int]],
                 scratch: np.ndarray) -> None:
    """dst = src plus or minus the next len(dst) words of every stream (src may be dst)."""
    stream = scratch[: dst.shape[0]]
    for ks, sign in streams:
        ks.read_into(stream)
        (np.add if sign > 0 else np.subtract)(src, stream, out=dst)
        src = dst


def _masked_copy(src: np.ndarray, dst: np.ndarray, masks: Sequence[Mask], round_: int, group: int) -> None:
    """dst = src plus or minus every mask's stream (uint32, same length; src may be dst)."""
    if not masks:
        if dst is not src:  # the libsodium path of encode_and_mask passes the same array
            np.copyto(dst, src)
        return
    n = dst.shape[0]
    if _Cipher is None:  # libsodium: each stream whole, one at a time (memory: one stream)
        for key, sign in masks:
            (np.add if sign > 0 else np.subtract)(src, _whole_stream(stream_seed(key, round_, group), n), out=dst)
            src = dst
        return
    streams = _keystreams(masks, round_, group)
    scratch = np.empty(min(n, CHUNK_WORDS), dtype=_LE_U32)
    for start in range(0, n, CHUNK_WORDS):
        _add_streams(src[start : start + CHUNK_WORDS], dst[start : start + CHUNK_WORDS], streams, scratch)


def encode_and_mask(
    x: np.ndarray,
    enc: FixedPoint,
    weight: float,
    masks: Sequence[Mask],
    round_: int,
    group: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """`enc.encode(x, weight)` plus all `masks`, fused chunk by chunk (uint32, fresh unless `out`).

    `x` must be finite (the protocols sanitise their input once); values beyond the clip bound
    are clipped exactly as `FixedPoint.encode` does. Encoding runs in float64 on one cache-sized
    chunk at a time, so the error bound of `FixedPoint` holds.
    """
    if enc.bits != 32:
        raise ValueError("the masked wire format is uint32 (bits=32)")
    if not (0.0 <= weight <= enc.total_weight):
        raise ValueError(f"weight {weight} outside [0, {enc.total_weight}]")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError("encode_and_mask takes a flat vector")
    _check_masks(masks)
    n = x.shape[0]
    if out is None:
        out = np.empty(n, dtype=np.uint32)
    factor = np.float64(weight * enc.scale)  # exact: weight times a power of two
    limit = np.float64(weight * enc.clip * enc.scale)
    scratch = np.empty(min(n, CHUNK_WORDS), dtype=np.float64)
    # masks applied to each chunk while it is in cache (OpenSSL); libsodium's after encoding
    streams = _keystreams(masks, round_, group) if _Cipher is not None else []
    stream = np.empty(min(n, CHUNK_WORDS), dtype=_LE_U32)
    for start in range(0, n, CHUNK_WORDS):
        xs = x[start : start + CHUNK_WORDS]
        k = xs.shape[0]
        buf = scratch[:k]
        part = out[start : start + k]
        np.multiply(xs, factor, out=buf)  # float64 loop (factor is a float64 scalar)
        np.clip(buf, -limit, limit, out=buf)
        np.rint(buf, out=buf)
        np.copyto(part.view(np.int32), buf, casting="unsafe")
        _add_streams(part, part, streams, stream)
    if _Cipher is None:
        _masked_copy(out, out, masks, round_, group)
    return out


class EncodingCache:
    """One input's fixed-point encodings, each computed once per round.

    A node masks the same input for every group it is a member of, and where two groups share
    the encoder and the weight (every group of a node in a regular graph, under
    Metropolis-Hastings weights) the encodings are equal integers: encode once, then mask a copy
    per group. Encoding is the float64 part of masking (multiply, clip, round), about as costly
    as three keystreams here, so at degree 4 this removes three of the four encodings a round.
    """

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self._memo: dict[tuple[FixedPoint, float], np.ndarray] = {}

    def masked(self, enc: FixedPoint, weight: float, masks: Sequence[Mask], round_: int, group: int) -> np.ndarray:
        """`encode_and_mask(x, enc, weight, masks, round_, group)`, from the cached encoding (a fresh array)."""
        _check_masks(masks)
        key = (enc, float(weight))
        encoded = self._memo.get(key)
        if encoded is None:  # round and group do not enter an encoding without masks
            encoded = self._memo[key] = encode_and_mask(self.x, enc, weight, [], round_, group)
        out = np.empty_like(encoded)
        _masked_copy(encoded, out, masks, round_, group)  # the first mask writes the copy
        return out


def pair_seed(shared: bytes, round_: int, group: int, a: int, b: int) -> bytes:
    """Mask key of the pair {a, b} in (round, group) from their X25519 shared secret."""
    lo, hi = min(a, b), max(a, b)
    return blake2b(shared + struct.pack("<QQQQ", round_, group, lo, hi), person=b"p2pfl-mask-pair")


def pairwise_sign(me: int, peer: int) -> int:
    """+1 for the lower id of a pair, -1 for the higher."""
    if me == peer:
        raise ValueError("no pairwise mask with oneself")
    return 1 if me < peer else -1


def auto_degree(n: int) -> int:
    """Sparse masking degree for a group of n: the even number 2*ceil((log2 n + 2) / 2) (O(log n))."""
    return 2 * math.ceil((math.log2(max(n, 2)) + 2) / 2)


def graph_seed(round_: int, group: int, members: Sequence[int]) -> bytes:
    """Public seed of the sparse masking graph: a hash of the round, the aggregator and the members."""
    data = struct.pack(f"<QQ{len(members)}Q", round_, group, *members)
    return blake2b(data, person=b"p2pfl-mask-grph")


def mask_graph(members: Sequence[int], degree: int | None, seed: bytes) -> dict[int, frozenset[int]]:
    """Each member's masking partners: everyone (dense) or a circulant of `degree` over a seeded order.

    `degree=None` or `degree >= len(members) - 1` gives the complete graph. An odd degree is
    rounded up to the next even number.
    """
    members = sorted(members)
    n = len(members)
    if degree is None or degree >= n - 1:
        full = frozenset(members)
        return {u: full - {u} for u in members}
    if degree < 2:
        raise ValueError(f"sparse masking degree must be >= 2, not {degree}")
    half = (degree + 1) // 2
    if 2 * half >= n - 1:
        full = frozenset(members)
        return {u: full - {u} for u in members}
    order = sorted(members, key=lambda u: blake2b(struct.pack("<Q", u), person=b"p2pfl-mask-perm", key=seed))
    out: dict[int, set[int]] = {u: set() for u in members}
    for i, u in enumerate(order):
        for off in range(1, half + 1):
            v = order[(i + off) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: frozenset(vs) for u, vs in out.items()}


def induced_connected(graph: Mapping[int, Iterable[int]], nodes: Iterable[int]) -> bool:
    """Whether the subgraph of `graph` induced on `nodes` is connected (True for 0 or 1 node)."""
    nodes = set(nodes)
    if len(nodes) <= 1:
        return True
    start = next(iter(nodes))
    seen = {start}
    stack = [start]
    while stack:
        u = stack.pop()
        for v in graph[u]:
            if v in nodes and v not in seen:
                seen.add(v)
                stack.append(v)
    return seen == nodes
