"""Fixed-point encoding of float vectors into integers mod 2^k, sized so a group sum never wraps.

Secure aggregation adds masked integers modulo 2^k; the masks cancel exactly only in integer
arithmetic, so every contributor first encodes its (weighted) float vector as integers. This
module owns that encoding and its error bound; it knows nothing about masks or messages.

Encoding of one contribution with weight `w` (0 <= w <= 1 in gossip: a Metropolis-Hastings
weight; w = n_u / max_samples in FedAvg):

    q = rint(w * clip(x, -B, B) * 2^f)   as a signed integer, stored mod 2^k (uint32 for k = 32)

`f` (the number of fraction bits) is the largest integer such that the worst-case group sum
fits in a signed k-bit integer:

    B * W * 2^f + m / 2  <=  2^(k-1) - 1

where `B` is the clip bound, `W` an upper bound on the sum of the contributors' weights (1 for
a stochastic mixing row) and `m` the number of summands (the group size). Each summand is at
most |w B 2^f| + 1/2 in magnitude, so the sum of m of them is at most B W 2^f + m/2 and its
two's-complement reading mod 2^k is exact: no overflow, whatever the inputs, once they are
clipped. The scale is a power of two so multiplying by it is exact in floating point.

Error bound (see `sum_error_bound`): the product w * x * 2^f is computed in float64 (x is
float32, exact in float64; one rounding of the weight and one of the product, each a relative
error of at most 2^-53, so at most 2^-52 * 2^(k-1) <= 2^-20 units for k <= 32), then rounded to
the nearest integer (0.5 units). So each summand decodes to its exact value w * clip(x) within
(0.5 + 2^-20) / 2^f, and a sum of m summands within m * (0.5 + 2^-20) / 2^f.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

_DTYPES = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16), 32: (np.uint32, np.int32), 64: (np.uint64, np.int64)}
_PRODUCT_SLACK = 2.0**-20  # float64 rounding of w * x * 2^f, in units of 2^-f (k <= 32)


class FixedPointError(ValueError):
    """Parameters for which no safe encoding exists (e.g. the clip bound needs more bits)."""


@dataclass(frozen=True)
class FixedPoint:
    """Encoding for one group: `summands` contributions whose weights sum to at most `total_weight`.

    All parties of a group construct it from public data (the group size and the protocol
    parameters), so they agree on the scale without talking.
    """

    clip: float
    total_weight: float
    summands: int
    bits: int = 32

    def __post_init__(self) -> None:
        if self.bits not in (8, 16, 32):
            raise FixedPointError(f"bits must be 8, 16 or 32, not {self.bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise FixedPointError(f"clip bound must be finite and > 0, not {self.clip}")
        if not (math.isfinite(self.total_weight) and self.total_weight > 0):
            raise FixedPointError(f"total weight bound must be finite and > 0, not {self.total_weight}")
        if self.summands < 1:
            raise FixedPointError(f"need at least one summand, not {self.summands}")
        if self.fraction_bits < 0:
            raise FixedPointError(
                f"{self.bits} bits cannot hold a sum of {self.summands} values of magnitude "
                f"{self.clip} x weight {self.total_weight}: lower the clip bound or raise bits"
            )

    @functools.cached_property  # every encode and decode reads it; the fields are frozen
    def fraction_bits(self) -> int:
        """The largest f with clip * total_weight * 2^f + summands/2 <= 2^(bits-1) - 1."""
        room = (2 ** (self.bits - 1) - 1) - self.summands / 2
        if room <= 0:
            return -1
        f = math.floor(math.log2(room / (self.clip * self.total_weight)))
        # guard floating log2 at exact powers of two
        while self.clip * self.total_weight * 2.0 ** (f + 1) <= room:
            f += 1
        while f >= -1074 and self.clip * self.total_weight * 2.0**f > room:
            f -= 1
        return min(f, 1000) if f >= 0 else -1

    @property
    def scale(self) -> float:
        return 2.0**self.fraction_bits

    @property
    def step(self) -> float:
        """Value of one integer unit (the quantization step)."""
        return 2.0**-self.fraction_bits

    @property
    def utype(self) -> type:
        return _DTYPES[self.bits][0]

    @property
    def stype(self) -> type:
        return _DTYPES[self.bits][1]

    def summand_error_bound(self) -> float:
        """Largest |decode(encode(w, x)) - w * clip(x)| for one summand."""
        return (0.5 + _PRODUCT_SLACK) * self.step

    def sum_error_bound(self, contributors: int | None = None) -> float:
        """Largest |decoded group sum - exact sum of w_u * clip(x_u)| over `contributors` summands."""
        m = self.summands if contributors is None else contributors
        return m * self.summand_error_bound()

    def encode(self, x: np.ndarray, weight: float = 1.0, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """(integers mod 2^bits of weight * clip(x), number of clipped or non-finite values).

        Non-finite values count as clipped: NaN encodes as 0, +-Inf as +-clip.
        """
        if not (0.0 <= weight <= self.total_weight):
            raise FixedPointError(f"weight {weight} outside [0, {self.total_weight}]")
        x = np.asarray(x)
        if out is None:
            out = np.empty(x.shape, dtype=self.utype)
        clipped = int(np.count_nonzero(~(np.abs(x) <= self.clip)))  # NaN compares False: counted
        v = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=self.clip, neginf=-self.clip)
        np.clip(v, -self.clip, self.clip, out=v)
        v *= weight * self.scale
        np.rint(v, out=v)
        np.copyto(out.view(self.stype), v, casting="unsafe")
        return out, clipped

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Float64 value of a (sum of) encoded vector(s), read as signed two's complement."""
        total = np.asarray(total, dtype=self.utype)
        # one pass, no float64 temporary: int -> float64 is exact and step a power of two
        return np.multiply(total.view(self.stype), self.step, dtype=np.float64)

