"""Masks: exact cancellation, chunked PRG, sparse graphs, and masked vectors that look uniform."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.fixedpoint import FixedPoint
from p2pfl.masking import (
    CHUNK_WORDS,
    EncodingCache,
    auto_degree,
    blake2b,
    encode_and_mask,
    graph_seed,
    induced_connected,
    mask_graph,
    mask_vector,
    pairwise_sign,
    prg_words,
    stream_seed,
)


KNOWN_STREAM_SEED = "00c4ddecd008fc61"  # libsodium's crypto_generichash_blake2b_salt_personal


def _keys(seed: int):
    r = random.Random(seed)
    return lambda: r.randbytes(32)


# --------------------------------------------------------------------------- hash


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), key=st.binary(max_size=64), person=st.binary(max_size=16),
       size=st.sampled_from([16, 32, 64]))
def test_blake2b_is_libsodiums(data, key, person, size):
    # masking.blake2b uses hashlib for speed; every mask seed depends on it matching libsodium's
    from nacl.bindings import crypto_generichash_blake2b_salt_personal

    assert blake2b(data, person, key, size) == crypto_generichash_blake2b_salt_personal(
        data, digest_size=size, key=key, person=person)


def test_stream_seed_known_answer():
    # pinned output: a change here breaks mask cancellation between versions
    assert stream_seed(bytes(range(32)), 7, 3).hex()[:16] == KNOWN_STREAM_SEED


# --------------------------------------------------------------------------- cancellation


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 9),
    length=st.one_of(st.integers(1, 300), st.just(CHUNK_WORDS + 3)),
    sparse=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    round_=st.integers(0, 2**40),
    group=st.integers(0, 10_000),
)
def test_pairwise_and_self_masks_cancel_exactly(n: int, length: int, sparse: bool, seed: int, round_: int, group: int) -> None:
    rng = np.random.default_rng(seed)
    key = _keys(seed)
    members = sorted(rng.choice(10_000, size=n, replace=False).tolist())
    graph = mask_graph(members, 2 if sparse else None, graph_seed(round_, group, members))
    pair = {}
    for u in members:
        for v in graph[u]:
            pair.setdefault(frozenset((u, v)), key())
    enc = FixedPoint(4.0, 1.0, n)
    weights = rng.dirichlet(np.ones(n + 1))[:n]
    xs = {u: (rng.standard_normal(length) * 3).astype(np.float32) for u in members}
    selfs = {u: key() for u in members}
    total = np.zeros(length, dtype=np.uint32)
    plain = np.zeros(length, dtype=np.uint32)
    for u, w in zip(members, weights):
        masks = [(selfs[u], 1)] + [(pair[frozenset((u, v))], pairwise_sign(u, v)) for v in sorted(graph[u])]
        y = encode_and_mask(xs[u], enc, float(w), masks, round_, group)
        total += y
        plain += enc.encode(xs[u], float(w))[0]
    mask_vector(total, [(selfs[u], -1) for u in members], round_, group)
    assert np.array_equal(total, plain)  # exact, modulo 2^32
    exact = sum(float(w) * np.clip(xs[u].astype(np.float64), -4, 4) for u, w in zip(members, weights))
    assert np.abs(enc.decode(total) - exact).max() <= enc.sum_error_bound(n)


def test_fused_encode_and_mask_equals_encode_then_mask() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(2 * CHUNK_WORDS + 11) * 5).astype(np.float32)
    enc = FixedPoint(4.0, 1.0, 3)
    masks = [(bytes(range(32)), 1), (bytes(32), -1)]
    fused = encode_and_mask(x, enc, 0.3, masks, 7, 2)
    separate, _ = enc.encode(x, 0.3)
    mask_vector(separate, masks, 7, 2)
    assert np.array_equal(fused, separate)


def test_encoding_cache_masks_like_encode_and_mask_and_encodes_once(monkeypatch) -> None:
    import p2pfl.masking as masking

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(CHUNK_WORDS + 5) * 5).astype(np.float32)
    cache = EncodingCache(x)
    encoded: list[float] = []
    real = masking.encode_and_mask

    def counting(x, enc, weight, masks, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not masks:
            encoded.append(weight)
        return real(x, enc, weight, masks, *args, **kwargs)

    monkeypatch.setattr(masking, "encode_and_mask", counting)
    # three groups share (encoder, weight), one has another weight, one another encoder
    cases = [(FixedPoint(4.0, 1.0, 3), 0.25, 1), (FixedPoint(4.0, 1.0, 3), 0.25, 2), (FixedPoint(4.0, 1.0, 3), 0.25, 3),
             (FixedPoint(4.0, 1.0, 3), 0.2, 4), (FixedPoint(4.0, 1.0, 5), 0.25, 5)]
    outs = []
    for enc, weight, group in cases:
        masks = [(bytes([group]) * 32, 1), (bytes([group + 1]) * 32, -1)]
        got = cache.masked(enc, weight, masks, 9, group)
        assert np.array_equal(got, real(x, enc, weight, masks, 9, group))
        outs.append(got)
    assert encoded == [0.25, 0.2, 0.25]  # one encoding per distinct (encoder, weight)
    assert not np.shares_memory(outs[0], outs[1])  # each group gets its own array
    with pytest.raises(ValueError):
        cache.masked(FixedPoint(4.0, 1.0, 3), 0.25, [(bytes(31), 1)], 9, 1)


def test_prg_is_one_deterministic_stream_bound_to_round_and_group() -> None:
    k = bytes(range(32))
    long = prg_words(k, 1, 2, 2 * CHUNK_WORDS + 5)
    assert np.array_equal(long[:CHUNK_WORDS], prg_words(k, 1, 2, CHUNK_WORDS))
    assert np.array_equal(long[:10], prg_words(k, 1, 2, 10))
    assert not np.array_equal(long[:CHUNK_WORDS], long[CHUNK_WORDS : 2 * CHUNK_WORDS])
    assert not np.array_equal(prg_words(k, 1, 2, 64), prg_words(k, 2, 2, 64))
    assert not np.array_equal(prg_words(k, 1, 2, 64), prg_words(k, 1, 3, 64))
    with pytest.raises(ValueError):
        prg_words(b"short", 1, 2, 4)


def test_masks_do_not_depend_on_the_chunk_size(monkeypatch) -> None:
    # CHUNK_WORDS only sizes the pieces a vector is masked in: nodes built with another value
    # (or a future change of it) must produce the same masks word for word
    import p2pfl.masking as masking

    rng = np.random.default_rng(5)
    x = (rng.standard_normal(3 * CHUNK_WORDS + 17) * 3).astype(np.float32)
    enc = FixedPoint(4.0, 1.0, 3)
    masks = [(bytes(range(32)), 1), (bytes(range(1, 33)), -1)]
    before = (prg_words(masks[0][0], 4, 6, x.shape[0]), encode_and_mask(x, enc, 0.4, masks, 4, 6),
              EncodingCache(x).masked(enc, 0.4, masks, 4, 6))
    monkeypatch.setattr(masking, "CHUNK_WORDS", 1000)
    after = (prg_words(masks[0][0], 4, 6, x.shape[0]), encode_and_mask(x, enc, 0.4, masks, 4, 6),
             EncodingCache(x).masked(enc, 0.4, masks, 4, 6))
    for a, b in zip(before, after):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("path", ["openssl", "cffi-into-buffer", "public-binding"])
def test_prg_is_libsodiums_chacha20_keystream(monkeypatch, path: str) -> None:
    # masking computes the keystream with OpenSSL's ChaCha20, else writes libsodium's straight
    # into a buffer through pynacl's cffi module, else takes pynacl's public call: all three must
    # be the documented stream (libsodium's, through its public binding), word for word
    from nacl.bindings import randombytes_buf_deterministic

    import p2pfl.masking as masking

    if path == "openssl" and masking._Cipher is None:
        pytest.fail("the cryptography package is missing: install the project's dependencies")
    if path != "openssl":
        monkeypatch.setattr(masking, "_Cipher", None)
    if path == "public-binding":
        monkeypatch.setattr(masking, "_lib", None)
    elif path == "cffi-into-buffer" and masking._lib is None:
        pytest.fail("pynacl's cffi module (nacl._sodium) is missing: the fast PRG path cannot be tested")
    k, n = bytes(range(32)), CHUNK_WORDS + 7
    expected = np.frombuffer(randombytes_buf_deterministic(4 * n, stream_seed(k, 5, 9)), dtype="<u4")
    assert np.array_equal(prg_words(k, 5, 9, n), expected)
    x = np.linspace(-1, 1, n).astype(np.float32)
    enc = FixedPoint(4.0, 1.0, 3)
    plain, _ = enc.encode(x, 0.5)
    assert np.array_equal(encode_and_mask(x, enc, 0.5, [(k, 1)], 5, 9), plain + expected)
    assert np.array_equal(EncodingCache(x).masked(enc, 0.5, [(k, 1), (k, -1), (k, 1)], 5, 9), plain + expected)


# --------------------------------------------------------------------------- sparse graphs


@pytest.mark.parametrize("n", [13, 20, 50, 200])
def test_sparse_graph_is_regular_symmetric_deterministic_and_robust(n: int) -> None:
    members = list(range(100, 100 + 3 * n, 3))
    k = auto_degree(n)
    assert k % 2 == 0 and k <= 2 * math.ceil((math.log2(n) + 2) / 2)
    seed = graph_seed(5, 1, members)
    g = mask_graph(members, k, seed)
    assert g == mask_graph(list(reversed(members)), k, seed)
    assert g != mask_graph(members, k, graph_seed(6, 1, members))
    for u in members:
        assert len(g[u]) == k and u not in g[u]
        assert all(u in g[v] for v in g[u])
    # k-connected: removing any k-1 members leaves it connected (spot-check random removals)
    r = random.Random(n)
    for _ in range(50):
        gone = set(r.sample(members, k - 1))
        assert induced_connected(g, set(members) - gone)


def test_dense_graph_when_degree_is_large() -> None:
    members = [1, 2, 3, 4]
    for g in (mask_graph(members, None, b""), mask_graph(members, 3, b"s"), mask_graph(members + [5], 4, b"s")):
        assert g == {u: frozenset(g) - {u} for u in g}
    cycle = mask_graph(members, 2, b"s")  # a 4-cycle: sparse even at this size
    assert all(len(vs) == 2 for vs in cycle.values())


def test_leaf_cost_grows_logarithmically() -> None:
    assert auto_degree(20) == 8 and auto_degree(100) == 10 and auto_degree(1000) == 12 and auto_degree(10_000) == 16


# --------------------------------------------------------------------------- statistical uniformity


def _chi2_critical(df: int, z: float = 4.265) -> float:
    """Upper critical value of chi-square (Wilson-Hilferty); z=4.265 is a 1e-5 tail."""
    a = 2.0 / (9.0 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def _looks_uniform(words: np.ndarray) -> bool:
    """Byte frequencies at each of the 4 byte positions and 16-bit half-word frequencies."""
    b = words.astype("<u4").view(np.uint8).reshape(-1, 4)
    for pos in range(4):
        counts = np.bincount(b[:, pos], minlength=256)
        exp = b.shape[0] / 256
        if ((counts - exp) ** 2 / exp).sum() > _chi2_critical(255):
            return False
    halves = words.astype("<u4").view(np.uint16)
    counts = np.bincount(halves, minlength=65536)
    exp = halves.size / 65536
    return ((counts - exp) ** 2 / exp).sum() <= _chi2_critical(65535)


def _masked_sample(structured: bool, mask_filter=None) -> np.ndarray:
    n = 1 << 18
    x = np.zeros(n, np.float32) if not structured else np.tile(np.linspace(-1, 1, 256, dtype=np.float32), n // 256)
    enc = FixedPoint(16.0, 1.0, 4)
    masks = [(bytes(range(32)), 1), (bytes(range(1, 33)), -1), (bytes(range(2, 34)), 1)]
    if mask_filter is None:
        return encode_and_mask(x, enc, 0.25, masks, 9, 4)
    m = np.zeros(n, np.uint32)
    mask_vector(m, masks, 9, 4)
    return enc.encode(x, 0.25)[0] + mask_filter(m)


@pytest.mark.parametrize("structured", [False, True])
def test_masked_vector_is_indistinguishable_from_uniform(structured: bool) -> None:
    assert _looks_uniform(_masked_sample(structured))


@pytest.mark.parametrize(
    "weak",
    [
        lambda m: np.zeros_like(m),  # no mask at all
        lambda m: m & np.uint32(0x00FFFFFF),  # top byte left unmasked
        lambda m: m & np.uint32(0x0000FFFF),  # 16-bit mask
        lambda m: (m >> np.uint32(24)) * np.uint32(0x01010101),  # 8 bits of entropy spread over a word
    ],
    ids=["zero", "24bit", "16bit", "8bit-spread"],
)
@pytest.mark.parametrize("structured", [False, True])
def test_uniformity_check_detects_weak_masks(structured: bool, weak) -> None:
    assert not _looks_uniform(_masked_sample(structured, weak))
