"""Shamir sharing over GF(2^521 - 1): t of n reconstruct, t-1 fail, malformed input is refused."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import shamir
from p2pfl.shamir import ShamirError, combine, decode_share, interpolate_at_zero, split


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), data=st.data())
def test_any_t_of_n_reconstruct(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    secret = data.draw(st.binary(min_size=32, max_size=32))
    positions = list(range(1, n + 1))
    shares = split(secret, t, positions)
    assert set(shares) == set(positions) and all(len(s) == shamir.SHARE_BYTES for s in shares.values())
    subset = data.draw(st.lists(st.sampled_from(positions), min_size=t, max_size=n, unique=True))
    assert combine({x: shares[x] for x in subset}, t) == secret


def test_every_subset_of_size_t_works() -> None:
    secret = os.urandom(32)
    shares = split(secret, 3, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares, 3):
        assert combine({x: shares[x] for x in subset}, 3) == secret


def test_fewer_than_t_shares_fail_clearly_and_interpolate_to_garbage() -> None:
    secret = os.urandom(32)
    shares = split(secret, 4, [1, 2, 3, 4, 5, 6])
    few = {x: shares[x] for x in (2, 4, 6)}
    with pytest.raises(ShamirError, match="need 4 shares"):
        combine(few, 4)
    # forcing the interpolation anyway gives a value unrelated to the secret
    garbage = interpolate_at_zero({x: decode_share(s) for x, s in few.items()})
    assert garbage != int.from_bytes(secret, "big")
    assert garbage >= 2**256  # (overwhelmingly likely: uniform in a 521-bit field)
    # and lying about the threshold does not help either
    with pytest.raises(ShamirError):
        combine(few, 3)


def test_t_minus_1_shares_are_consistent_with_any_secret() -> None:
    # perfect secrecy in miniature: t-1 shares plus any claimed secret define a valid polynomial
    shares = split(os.urandom(32), 2, [1, 2, 3])
    one = {1: decode_share(shares[1])}
    for claimed in (0, 1, 12345):
        pts = {0: claimed, **one}
        # the line through (0, claimed) and (1, y1) exists for every claimed secret
        assert interpolate_at_zero(pts) == claimed


def test_indices_are_positions_never_zero() -> None:
    with pytest.raises(ShamirError):
        split(os.urandom(32), 2, [0, 1, 2])
    with pytest.raises(ShamirError):
        split(os.urandom(32), 2, [1, 1, 2])
    with pytest.raises(ShamirError):
        split(os.urandom(32), 4, [1, 2, 3])
    with pytest.raises(ShamirError):
        split(os.urandom(31), 1, [1])
    shares = split(os.urandom(32), 2, [3, 7, 9])
    assert sorted(shares) == [3, 7, 9]
    with pytest.raises(ShamirError):
        combine({0: shares[3], 7: shares[7]}, 2)


def test_malformed_shares_are_refused() -> None:
    shares = split(os.urandom(32), 2, [1, 2])
    with pytest.raises(ShamirError):
        combine({1: shares[1][:-1], 2: shares[2]}, 2)
    with pytest.raises(ShamirError):
        combine({1: b"\xff" * shamir.SHARE_BYTES, 2: shares[2]}, 2)  # >= p


def test_tampered_share_is_detected_or_wrong() -> None:
    secret = os.urandom(32)
    shares = split(secret, 3, [1, 2, 3, 4])
    # a small change moves the secret by a small multiple: wrong, not detectable by range alone
    bad = dict(shares)
    bad[1] = ((decode_share(bad[1]) + 1) % shamir.P).to_bytes(shamir.SHARE_BYTES, "big")
    assert combine({x: bad[x] for x in (1, 2, 3)}, 3) != secret
    # a random share interpolates to a random field element: outside the 32-byte range
    bad[1] = (int.from_bytes(os.urandom(64), "big") % shamir.P).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ShamirError, match="32-byte secret"):
        combine({x: bad[x] for x in (1, 2, 3)}, 3)


def test_seeded_randomness_is_reproducible() -> None:
    def rng_from(seed: int):
        r = random.Random(seed)
        return lambda n: r.randbytes(n)

    secret = bytes(range(32))
    assert split(secret, 3, [1, 2, 3, 4], rng_from(5)) == split(secret, 3, [1, 2, 3, 4], rng_from(5))
    assert split(secret, 3, [1, 2, 3, 4], rng_from(5)) != split(secret, 3, [1, 2, 3, 4], rng_from(6))
