"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

Why this field: a 32-byte secret is one field element (2^256 < p), so a share is one element
(66 bytes) and sharing is a single polynomial evaluation per holder; Python integers make the
arithmetic short and obviously correct; the number of holders is not limited (GF(256) byte-wise
sharing caps a group at 255 members and needs table arithmetic on 32 lanes). The Mersenne prime
2^521 - 1 is a standard choice with a trivially checkable primality claim.

Share indices are the holders' 1-based positions in their group (never 0: f(0) is the secret).
`combine` needs at least `threshold` shares and says so clearly when it has fewer; with fewer
points the interpolation at 0 is unrelated to the secret (any value is equally likely), which
`interpolate_at_zero` lets tests demonstrate.

Python integers are not constant-time; the shares are computed locally and only revealed
shares are combined, so there is no secret-dependent timing an adversary can observe remotely
beyond what it is already given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

P = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)
_MASK521 = (1 << 521) - 1


class ShamirError(ValueError):
    """Bad parameters, malformed shares, or too few shares to reconstruct."""


def _random_element(rng: Callable[[int], bytes]) -> int:
    """Uniform element of [0, p) by rejection (the only rejected value is p itself)."""
    while True:
        v = int.from_bytes(rng(SHARE_BYTES), "big") & _MASK521
        if v < P:
            return v


def _check_index(x: int) -> None:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 < x < P:
        raise ShamirError(f"share index must be an integer in [1, p), not {x!r}")


def split(secret: bytes, threshold: int, indices: list[int], rng: Callable[[int], bytes] = os.urandom) -> dict[int, bytes]:
    """Shares of `secret` (32 bytes) at `indices` (distinct, >= 1); any `threshold` of them reconstruct it."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_BYTES:
        raise ShamirError(f"secret must be {SECRET_BYTES} bytes")
    if len(set(indices)) != len(indices):
        raise ShamirError("share indices must be distinct")
    for x in indices:
        _check_index(x)
    if not 1 <= threshold <= len(indices):
        raise ShamirError(f"threshold {threshold} must be between 1 and the number of holders {len(indices)}")
    coeffs = [int.from_bytes(secret, "big")] + [_random_element(rng) for _ in range(threshold - 1)]
    shares = {}
    for x in indices:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % P
        shares[x] = acc.to_bytes(SHARE_BYTES, "big")
    return shares


def decode_share(share: bytes) -> int:
    """The field element of a share, or `ShamirError` if it is not a well-formed share."""
    if not isinstance(share, bytes) or len(share) != SHARE_BYTES:
        raise ShamirError(f"a share is {SHARE_BYTES} bytes")
    y = int.from_bytes(share, "big")
    if y >= P:
        raise ShamirError("share value outside the field")
    return y


def interpolate_at_zero(points: Mapping[int, int]) -> int:
    """Value at 0 of the lowest-degree polynomial through `points` (x -> y), in GF(p).

    Lagrange: f(0) = sum_j y_j * prod_{k != j} x_k / (x_k - x_j).
    """
    xs = list(points)
    total = 0
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for k, xk in enumerate(xs):
            if k != j:
                num = num * xk % P
                den = den * (xk - xj) % P
        total = (total + points[xj] * num * pow(den, -1, P)) % P
    return total


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least `threshold` shares (index -> share); uses the `threshold` lowest indices.

    Raises `ShamirError` with fewer than `threshold` shares, on malformed shares, or when the
    interpolated value is not a 32-byte secret (a sign of wrong or mixed-up shares).
    """
    if threshold < 1:
        raise ShamirError(f"threshold must be >= 1, not {threshold}")
    if len(shares) < threshold:
        raise ShamirError(f"need {threshold} shares to reconstruct, have {len(shares)}")
    chosen = sorted(shares)[:threshold]
    points = {}
    for x in chosen:
        _check_index(x)
        points[x] = decode_share(shares[x])
    value = interpolate_at_zero(points)
    if value >= 1 << (8 * SECRET_BYTES):
        raise ShamirError("shares do not interpolate to a 32-byte secret (wrong or inconsistent shares)")
    return value.to_bytes(SECRET_BYTES, "big")
