"""Differential privacy building blocks: clipping, secure noise, placements and accounting.

Owns: L2 clipping of a flat update, Gaussian and discrete-Gaussian noise drawn from the
operating system's cryptographic random source, where noise goes (`Placement`) and how large it
is there (`noise_std`), and the privacy accountant (`PrivacyAccountant`, on Google's
`dp-accounting`). See docs/privacy.md for the unit of privacy, what a step is and the caveats.

Must not touch: sockets, messages, torch, the round protocols, and the decision of *where* a
node applies noise: the node picks a placement from its config and calls these functions. What
a placement needs of the aggregation (a trusted aggregator; how many sums an input enters) it
asks the aggregation's strategy (`p2pfl.strategies`), never its name.

Conventions: `noise_multiplier` (sigma) is the noise standard deviation divided by the clip norm
C, i.e. the total noise protecting one contribution has std sigma * C in the domain where that
contribution has norm at most C. The accountant converts sigma into the sensitivity-normalised
multiplier dp-accounting expects, for the unit of privacy chosen (`Unit`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

__all__ = [
    "Placement",
    "Unit",
    "SecureNoise",
    "PrivacyAccountant",
    "clip",
    "privatize",
    "add_noise",
    "grid_for",
    "noise_std",
    "releases_per_round",
    "validate_placement",
    "add_wrapped",
    "distributed_dg_tau",
]

_MAX_SIGMA_INT = float(2**40)  # discrete Gaussian: keeps every integer step exact in int64/float64
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- clipping


def clip(update: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """(update scaled down to L2 norm <= max_norm, the original L2 norm).

    Returns a new array of the input's float dtype; an update already inside the ball is copied
    unchanged. The norm is computed in float64. Non-finite input raises ValueError (a NaN norm
    would silently pass any bound).
    """
    if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
    x = np.asarray(update)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("cannot clip an update holding NaN or Inf")
    norm = float(np.linalg.norm(x.astype(np.float64, copy=False).ravel()))
    if norm <= max_norm:
        return x.copy(), norm
    factor = max_norm / norm
    out = (x.astype(np.float64) * factor).astype(x.dtype)
    # float rounding of the product can leave the norm a hair above the bound: shave it
    while float(np.linalg.norm(out.astype(np.float64).ravel())) > max_norm:
        factor *= 1.0 - 2.0**-20
        out = (x.astype(np.float64) * factor).astype(x.dtype)
    return out, norm


# --------------------------------------------------------------------------- noise source


def _u64_to_open_unit(words: np.ndarray) -> np.ndarray:
    """53-bit fractions (k + 0.5) / 2^53 in the open interval (0, 1), as float64."""
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


class SecureNoise:
    """Noise from the OS CSPRNG (`os.urandom`, i.e. getrandom(2)); a deterministic switch for tests.

    `SecureNoise()` is the production source: every call reads fresh bytes from the kernel, so
    two instances (or two calls) never repeat. `SecureNoise(deterministic_seed=s)` is for tests
    and reproducible experiments only: bytes come from libsodium's ChaCha20 stream
    (`randombytes_buf_deterministic`) keyed per call with BLAKE2b(seed || call counter), so the
    same seed gives the same sequence of draws. It must never be used to protect real data: the
    seed is the whole secret.

    All samplers are vectorised (numpy on bulk random bytes); see docs/privacy.md for the
    algorithms and their exactness.
    """

    def __init__(self, deterministic_seed: int | bytes | None = None) -> None:
        self._counter = 0
        self._key: bytes | None = None
        if deterministic_seed is not None:
            if isinstance(deterministic_seed, bool) or not isinstance(deterministic_seed, (int, bytes)):
                raise ValueError("deterministic_seed must be an int, bytes or None")
            raw = (
                deterministic_seed
                if isinstance(deterministic_seed, bytes)
                else int(deterministic_seed).to_bytes(32, "little", signed=True)
            )
            self._key = hashlib.blake2b(raw, digest_size=32, person=b"p2pfl-dp-seed").digest()

    @property
    def deterministic(self) -> bool:
        return self._key is not None

    def random_bytes(self, n: int) -> bytes:
        """n random bytes: kernel CSPRNG, or the seeded ChaCha20 stream in deterministic mode."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if self._key is None:
            return os.urandom(n)
        from nacl.bindings import randombytes_buf_deterministic

        sub = hashlib.blake2b(
            self._counter.to_bytes(8, "little"), key=self._key, digest_size=32, person=b"p2pfl-dp-call"
        ).digest()
        self._counter += 1
        return randombytes_buf_deterministic(n, sub)

    def _words(self, n: int) -> np.ndarray:
        return np.frombuffer(self.random_bytes(8 * n), dtype="<u8").astype(np.uint64)

    def uniform(self, n: int) -> np.ndarray:
        """n float64 uniforms in the open interval (0, 1), 53 bits each."""
        return _u64_to_open_unit(self._words(n))

    def _uniform_int(self, n: int, bound: int) -> np.ndarray:
        """n exactly uniform integers in [0, bound) (rejection on 64-bit words), as int64."""
        if not 1 <= bound <= 2**62:
            raise ValueError(f"bound must be in [1, 2^62], got {bound}")
        limit = (2**64 // bound) * bound  # accept words below limit: each residue equally often
        out = np.empty(0, dtype=np.int64)
        while len(out) < n:
            w = self._words(int((n - len(out)) * 1.01) + 8)
            if limit < 2**64:
                w = w[w < np.uint64(limit)]
            out = np.concatenate([out, (w % np.uint64(bound)).astype(np.int64)])
        return out[:n]

    def gaussian(self, shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
        """float64 array of N(0, sigma^2) samples (Box-Muller on 53-bit uniforms from the CSPRNG)."""
        sigma = _check_sigma(sigma, "sigma")
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = math.prod(shape)
        if n == 0 or sigma == 0:
            return np.zeros(shape, dtype=np.float64)
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        r = np.sqrt(-2.0 * np.log(u[:pairs]))
        theta = _TWO_PI * u[pairs:]
        z = np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]
        z *= sigma
        return z.reshape(shape)

    def discrete_gaussian(self, shape: int | tuple[int, ...], sigma_int: float) -> np.ndarray:
        """int64 array of discrete Gaussian samples N_Z(0, sigma_int^2): P(x) ∝ exp(-x^2 / (2 sigma^2)).

        Canonne-Kamath-Steinke 2020, Algorithm 3: propose Y from the discrete Laplace with scale
        t = floor(sigma) + 1, accept with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)).
        The discrete Laplace is CKS's Algorithm 2 (U uniform in {0..t-1} accepted w.p. exp(-U/t),
        plus t * V with V geometric, a random sign, reject "-0"). Integer steps are exact; the
        Bernoulli(exp(-gamma)) trials compare a 53-bit uniform with float64 exp(-gamma) instead
        of CKS's exact rational sampler, which moves each probability by a relative ~2^-52
        (see docs/privacy.md). Vectorised: batches of proposals until `n` are accepted.
        """
        sigma = _check_sigma(sigma_int, "sigma_int")
        if sigma > _MAX_SIGMA_INT:
            raise ValueError(f"sigma_int must be <= 2^40, got {sigma}")
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        n = math.prod(shape)
        if n == 0 or sigma == 0:
            return np.zeros(shape, dtype=np.int64)
        t = math.floor(sigma) + 1
        var = sigma * sigma
        shift = var / t
        parts: list[np.ndarray] = []
        have = 0
        while have < n:
            m = int((n - have) * 2.2) + 64  # overall acceptance is about 0.5-0.6
            # discrete Laplace(t), CKS Algorithm 2, one proposal per slot (rejected slots dropped)
            u = self._uniform_int(m, t)
            keep = self.uniform(m) < np.exp(-u / t)
            v = np.floor(-np.log(self.uniform(m)))  # geometric: P(v) = (1 - e^-1) e^-v
            sign = self._words(m) & np.uint64(1)
            x = u + t * v.astype(np.int64)
            keep &= ~((sign == 1) & (x == 0))
            y = np.where(sign == 1, -x, x)[keep]
            # CKS Algorithm 3 acceptance
            ay = np.abs(y).astype(np.float64)
            accept = self.uniform(len(y)) < np.exp(-((ay - shift) ** 2) / (2.0 * var))
            y = y[accept]
            parts.append(y)
            have += len(y)
        return np.concatenate(parts)[:n].reshape(shape)


def _check_sigma(sigma: float, name: str) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number, got {sigma!r}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {sigma}")
    return sigma


def add_wrapped(encoded: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """encoded + noise modulo 2^bits, for fixed-point integers (uint8/16/32/64, two's complement).

    Use it to add discrete-Gaussian noise to a `fixedpoint.FixedPoint.encode` output before
    masking: the masked sum then decodes to sum(x) + sum(noise) exactly (size the FixedPoint
    with headroom for the noise so the noisy sum does not wrap, see docs/privacy.md).
    """
    encoded = np.asarray(encoded)
    if encoded.dtype not in (np.uint8, np.uint16, np.uint32, np.uint64):
        raise ValueError(f"encoded must be an unsigned integer array, got {encoded.dtype}")
    noise = np.asarray(noise)
    if noise.shape != encoded.shape or not np.issubdtype(noise.dtype, np.integer):
        raise ValueError(f"noise must be an integer array of shape {encoded.shape}")
    # two's complement: reinterpret the noise as the same unsigned width; uint addition wraps
    return encoded + noise.astype(np.int64).astype(encoded.dtype)


def distributed_dg_tau(sigma_int_each: float, contributors: int) -> float:
    """Kairouz-Liu-Steinke 2021 tau: how far a sum of m discrete Gaussians is from one.

    The sum of `contributors` independent N_Z(0, s^2) is not exactly N_Z(0, m s^2); KLS21
    (Thm. 1) bound the privacy loss of the sum with tau = 10 * sum_{k=1}^{m-1} exp(-2 pi^2 s^2 k/(k+1)),
    which enters as an additive tau * sqrt(d) (d = dimension) in the concentrated-DP epsilon.
    For s >= 2 integer units tau < 1e-15: negligible in the fixed-point domain, where s is
    millions of units.
    """
    s = _check_sigma(sigma_int_each, "sigma_int_each")
    if contributors < 1:
        raise ValueError("contributors must be >= 1")
    return 10.0 * sum(math.exp(-2 * math.pi**2 * s * s * k / (k + 1)) for k in range(1, contributors))


# --------------------------------------------------------------------------- placement


class Placement(str, Enum):
    """Where the noise is added.

    local:       every node noises its own clipped update (std sigma*C) before it leaves the
                 node; everything after is post-processing. Works with any aggregation.
    distributed: each of m contributors to a secure sum adds std sigma*C/sqrt(m) (times the
                 largest weight, see `noise_std`), so the sum carries sigma*C. Needs secure
                 aggregation: without it every message carries only 1/sqrt(m) of the noise.
                 Made for the FedAvg star; in gossip it is valid but costs degree+1 releases
                 per round (`releases_per_round`), so local noise is the better choice there.
    central:     the star hub noises the weighted average once (std sigma*C*max_weight). Trusts
                 the hub with the un-noised updates; FedAvg only.
    """

    LOCAL = "local"
    DISTRIBUTED = "distributed"
    CENTRAL = "central"


def validate_placement(placement: Placement | str, trusted_aggregator: bool, secure_agg: bool) -> Placement:
    """The placement as an enum, or ValueError where it would not give the guarantee it claims.

    `trusted_aggregator`: the strategy has one (a hub, `Strategy.needs_hub`); central noise needs it.
    Whether the strategy *implements* the placement is config's question (`Strategy.dp_problem`).
    """
    try:
        p = Placement(placement)
    except ValueError:
        raise ValueError(f"placement must be one of {[x.value for x in Placement]}, got {placement!r}") from None
    if p is Placement.DISTRIBUTED and not secure_agg:
        raise ValueError("distributed DP needs secure aggregation: each plain message would carry only 1/sqrt(m) of the noise")
    if p is Placement.CENTRAL and not trusted_aggregator:
        raise ValueError("central DP needs a trusted aggregator: this aggregation has none (the FedAvg star's hub is one)")
    return p


def noise_std(
    placement: Placement | str,
    noise_multiplier: float,
    clip_norm: float,
    contributors: int = 1,
    max_weight: float = 1.0,
) -> float:
    """Standard deviation of the noise one party adds, per coordinate, in its own domain.

    local:       sigma * C, added to the node's clipped, *unweighted* update before sending.
    distributed: sigma * C * max_weight / sqrt(contributors), added by each contributor to its
                 *weighted* contribution (the thing that is summed), where `contributors` is the
                 number of honest contributors guaranteed to be in the sum (use the privacy
                 floor: survivors after dropouts, minus any you assume collude with the
                 aggregator) and `max_weight` bounds the weight any one contribution carries in
                 the sum (MH weights in gossip; 1 for a plain sum).
    central:     sigma * C * max_weight, added once by the aggregator to the weighted sum
                 (max_weight = 1/m for an equal-weight mean of m updates).
    """
    p = Placement(placement)
    sigma = _check_sigma(noise_multiplier, "noise_multiplier")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be positive and finite, got {clip_norm}")
    if not (0 < max_weight <= 1):
        raise ValueError(f"max_weight must be in (0, 1], got {max_weight}")
    if p is Placement.LOCAL:
        return sigma * clip_norm
    if p is Placement.CENTRAL:
        return sigma * clip_norm * max_weight
    if isinstance(contributors, bool) or not isinstance(contributors, (int, np.integer)) or contributors < 1:
        raise ValueError(f"contributors must be a positive integer, got {contributors!r}")
    return sigma * clip_norm * max_weight / math.sqrt(contributors)


def releases_per_round(placement: Placement | str, overlapping_groups: bool, degree: int) -> int:
    """How many Gaussian releases of one node's round update the accountant must compose (its k).

    `overlapping_groups`: one node's input enters a secure sum per neighbour (the strategy says so).
    One for local noise (the same noisy message goes to every neighbour and the node mixes that
    same message into its own model) and for the FedAvg star (one sum; every node adopts it).
    Distributed noise in secure *gossip*: `degree` group sums (fresh noise in each), plus one
    for the node's own term, which it mixes into its own model with local-size noise sigma*C so
    that its state never holds an un-noised update (see docs/privacy.md): degree + 1.
    """
    p = Placement(placement)
    if p is Placement.DISTRIBUTED and overlapping_groups:
        return max(1, int(degree)) + 1
    return 1


def privatize(
    update: np.ndarray, clip_norm: float, std: float, noise: SecureNoise, grid: float | None = None
) -> tuple[np.ndarray, float]:
    """(clip(update) + noise of std `std`, as float32; the original norm): local placement in one call.

    grid=None: continuous Gaussian in float64 (Box-Muller), rounded once to float32.
    grid=g: the clipped update is rounded to multiples of g and g * N_Z(0, (std/g)^2) is added,
    so the output lies exactly on the grid and carries no floating-point artefacts of the noise
    (Mironov 2012); the rounding adds at most sqrt(d) * g / 2 to the L2 sensitivity. Pick g a
    power of two well below std (e.g. 2^-20 for std around 1, or `grid_for(std)`): the result
    is exact in float32 while |values| < 2^24 * g.
    """
    clipped, norm = clip(update, clip_norm)
    return add_noise(clipped, std, noise, grid), norm


def add_noise(x: np.ndarray, std: float, noise: SecureNoise, grid: float | None = None) -> np.ndarray:
    """x + Gaussian noise of std `std`, as float32; on a grid of step `grid` if given (see `privatize`)."""
    x = np.asarray(x)
    if grid is None:
        return (x.astype(np.float64) + noise.gaussian(x.shape, std)).astype(np.float32)
    if not (isinstance(grid, (int, float)) and math.isfinite(grid) and grid > 0):
        raise ValueError(f"grid must be a positive finite number, got {grid!r}")
    units = np.rint(x.astype(np.float64) / grid).astype(np.int64)
    units += noise.discrete_gaussian(x.shape, std / grid)
    return (units.astype(np.float64) * grid).astype(np.float32)


def grid_for(std: float, bits: int = 20) -> float:
    """A power-of-two grid about 2^-bits times `std`: std/grid is 2^bits to 2^(bits+1) integer
    units, so the discrete Gaussian is a fine stand-in for the continuous one, and values below
    2^24 grid steps (at least 2^(24 - bits - 1) std: 8 std for bits = 20) stay exact in float32."""
    std = _check_sigma(std, "std")
    if std == 0:
        raise ValueError("std must be > 0")
    return 2.0 ** (math.floor(math.log2(std)) - bits)


# --------------------------------------------------------------------------- accounting


class Unit(str, Enum):
    """Unit of privacy: what two neighbouring datasets differ in.

    record: one record of one node's local data (add/remove). The update is clipped as a whole
            (not per example), so one record can move it anywhere in the C-ball: sensitivity 2C.
    node:   one node's entire data set (its update replaced by zero): sensitivity C.
    """

    RECORD = "record"
    NODE = "node"

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity in units of the clip norm C."""
        return 2.0 if self is Unit.RECORD else 1.0


@dataclass
class PrivacyAccountant:
    """Privacy spent by one node over rounds, via dp-accounting (RDP by default, or PLD).

    noise_multiplier: sigma, where the noise protecting one update has std sigma * C.
    sample_rate: Poisson probability that a given record takes part in a round (q); 1.0 for
        rounds that use the whole local data set (the default trainer: epochs over a shuffled
        shard, so no amplification may be claimed).
    delta: the target delta.
    unit: `Unit.RECORD` (default) or `Unit.NODE`; sets the sensitivity (2C or C).
    releases_per_round: k noisy releases of the same update per round (see `releases_per_round`).

    One step = one round. Each step is the DP event
        PoissonSampled(q, Gaussian(sigma / (sensitivity * sqrt(k))))
    (just the Gaussian when q = 1), self-composed over the steps taken.
    """

    noise_multiplier: float
    sample_rate: float = 1.0
    delta: float = 1e-5
    unit: Unit | str = Unit.RECORD
    releases_per_round: int = 1
    method: str = "rdp"
    steps: int = 0
    _cache: dict[int, float] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.unit = Unit(self.unit)
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be > 0 and finite, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.releases_per_round < 1:
            raise ValueError(f"releases_per_round must be >= 1, got {self.releases_per_round}")
        if self.method not in ("rdp", "pld"):
            raise ValueError(f"method must be 'rdp' or 'pld', got {self.method!r}")
        if self.steps < 0:
            raise ValueError("steps must be >= 0")

    @property
    def effective_noise_multiplier(self) -> float:
        """std / L2-sensitivity of one round's releases taken together (what dp-accounting sees)."""
        return self.noise_multiplier / (Unit(self.unit).sensitivity * math.sqrt(self.releases_per_round))

    def event(self, steps: int):  # -> dp_accounting.DpEvent
        """The dp-accounting event of `steps` rounds."""
        import dp_accounting

        step_event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(self.effective_noise_multiplier)
        if self.sample_rate < 1:
            step_event = dp_accounting.PoissonSampledDpEvent(self.sample_rate, step_event)
        return dp_accounting.SelfComposedDpEvent(step_event, steps)

    def _new_accountant(self):
        if self.method == "pld":
            from dp_accounting.pld import pld_privacy_accountant

            return pld_privacy_accountant.PLDAccountant()
        from dp_accounting.rdp import rdp_privacy_accountant

        return rdp_privacy_accountant.RdpAccountant()

    def step(self, n: int = 1) -> float:
        """Record `n` more rounds; return the epsilon spent so far."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        self.steps += int(n)
        return self.epsilon()

    def epsilon(self) -> float:
        """Epsilon (at `delta`) spent by the steps taken so far; 0.0 before the first step."""
        return self.epsilon_after(self.steps)

    def epsilon_after(self, steps: int) -> float:
        """Epsilon after `steps` rounds in total (not counting from now)."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        steps = int(steps)
        if steps == 0:
            return 0.0
        if steps not in self._cache:
            acc = self._new_accountant()
            acc.compose(self.event(steps))
            self._cache[steps] = float(acc.get_epsilon(self.delta))
        return self._cache[steps]

    def would_exceed(self, budget: float, extra_steps: int = 1) -> bool:
        """True if taking `extra_steps` more rounds would spend more than `budget` epsilon."""
        return self.epsilon_after(self.steps + extra_steps) > budget

    def max_steps(self, budget: float, limit: int = 1_000_000) -> int:
        """The most rounds in total whose epsilon stays within `budget` (binary search, <= limit)."""
        if self.epsilon_after(1) > budget:
            return 0
        lo, hi = 1, 2
        while hi <= limit and self.epsilon_after(hi) <= budget:
            lo, hi = hi, hi * 2
        hi = min(hi, limit + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.epsilon_after(mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo


