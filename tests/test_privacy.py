"""Tests for p2pfl.privacy: clipping, secure noise, placements, accounting.

Statistical tests use the deterministic switch with fixed seeds (no flakiness) and tolerances of
about five standard errors for the sample size.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import stats

from p2pfl.fixedpoint import FixedPoint
from p2pfl.privacy import (
    Placement,
    PrivacyAccountant,
    SecureNoise,
    Unit,
    add_wrapped,
    clip,
    distributed_dg_tau,
    noise_std,
    privatize,
    releases_per_round,
    validate_placement,
)

# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-3, 0.5, 3.0, 1e4])
def test_clip_bound_holds(dtype: type, scale: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = (rng.standard_normal(1000) * scale).astype(dtype)
        out, norm = clip(x, 1.0)
        assert out.dtype == dtype
        assert norm == pytest.approx(float(np.linalg.norm(x.astype(np.float64))))
        assert float(np.linalg.norm(out.astype(np.float64))) <= 1.0
        if norm <= 1.0:
            np.testing.assert_array_equal(out, x)
        else:  # same direction, on the sphere
            assert float(np.linalg.norm(out.astype(np.float64))) == pytest.approx(1.0, rel=1e-5)
            cos = np.dot(out.astype(np.float64), x.astype(np.float64)) / (norm * np.linalg.norm(out))
            assert cos == pytest.approx(1.0, abs=1e-6)


def test_clip_copies_and_rejects_bad_input() -> None:
    x = np.ones(4, dtype=np.float32)
    out, _ = clip(x, 10.0)
    out[0] = 5
    assert x[0] == 1
    with pytest.raises(ValueError):
        clip(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(ValueError):
        clip(x, 0.0)
    with pytest.raises(ValueError):
        clip(x, float("inf"))


# ----------------------------------------------------------------------------- noise source


def test_secure_noise_not_deterministic_by_default() -> None:
    a, b = SecureNoise(), SecureNoise()
    assert not a.deterministic
    assert not np.array_equal(a.gaussian(64, 1.0), b.gaussian(64, 1.0))
    assert not np.array_equal(a.gaussian(64, 1.0), a.gaussian(64, 1.0))
    assert not np.array_equal(a.discrete_gaussian(64, 100.0), b.discrete_gaussian(64, 100.0))


def test_secure_noise_deterministic_switch() -> None:
    a, b, c = SecureNoise(deterministic_seed=7), SecureNoise(deterministic_seed=7), SecureNoise(deterministic_seed=8)
    assert a.deterministic
    seq_a = [a.gaussian(100, 2.0), a.discrete_gaussian(100, 5.0), a.uniform(10)]
    seq_b = [b.gaussian(100, 2.0), b.discrete_gaussian(100, 5.0), b.uniform(10)]
    for x, y in zip(seq_a, seq_b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(seq_a[0], c.gaussian(100, 2.0))
    assert not np.array_equal(seq_a[0], seq_a[2])  # successive calls use fresh streams
    assert SecureNoise(deterministic_seed=b"bytes-seed").random_bytes(16) == SecureNoise(deterministic_seed=b"bytes-seed").random_bytes(16)


def test_uniform_open_interval_and_shapes() -> None:
    n = SecureNoise(deterministic_seed=0)
    u = n.uniform(100_000)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / len(u))
    assert n.gaussian((3, 4), 1.0).shape == (3, 4)
    assert n.discrete_gaussian((2, 5), 3.0).shape == (2, 5)
    assert n.discrete_gaussian((2, 5), 3.0).dtype == np.int64
    assert not n.gaussian(5, 0.0).any() and not n.discrete_gaussian(5, 0).any()
    with pytest.raises(ValueError):
        n.gaussian(5, -1.0)
    with pytest.raises(ValueError):
        n.discrete_gaussian(5, float("nan"))


def _std_tolerance(n: int) -> float:
    """Five standard errors of a sample std relative to the true std (normal data)."""
    return 5.0 / math.sqrt(2 * n)


@pytest.mark.parametrize("sigma,c", [(1.0, 1.0), (0.7, 5.0), (3.0, 0.01)])
def test_local_gaussian_std_matches_sigma_c(sigma: float, c: float) -> None:
    n = 200_000
    std = noise_std(Placement.LOCAL, sigma, c)
    assert std == pytest.approx(sigma * c)
    z = SecureNoise(deterministic_seed=11).gaussian(n, std)
    assert abs(z.std() / std - 1) < _std_tolerance(n)
    assert abs(z.mean()) < 5 * std / math.sqrt(n)
    # and it is normal, not just of the right variance
    assert stats.kstest(z / std, "norm").pvalue > 1e-4


def test_privatize_is_clip_plus_noise() -> None:
    noise = SecureNoise(deterministic_seed=3)
    x = np.full(50_000, 0.1, dtype=np.float32)  # norm ~22, clipped to 2
    out, norm = privatize(x, 2.0, 0.5, noise)
    assert out.dtype == np.float32 and norm == pytest.approx(math.sqrt(50_000) * 0.1, rel=1e-6)
    clipped = x * (2.0 / norm)
    resid = out.astype(np.float64) - clipped
    assert abs(resid.std() / 0.5 - 1) < _std_tolerance(len(x))


def test_privatize_on_a_grid() -> None:
    grid = 2.0**-16
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 1e-3  # norm ~0.32: no clipping
    out, norm = privatize(x, 1.0, 0.01, SecureNoise(deterministic_seed=4), grid=grid)
    assert norm < 1.0 and out.dtype == np.float32
    units = out.astype(np.float64) / grid
    np.testing.assert_array_equal(units, np.rint(units))  # exactly on the grid
    resid = out.astype(np.float64) - np.rint(x.astype(np.float64) / grid) * grid
    assert abs(resid.std() / 0.01 - 1) < _std_tolerance(len(x))
    with pytest.raises(ValueError):
        privatize(x, 1.0, 0.01, SecureNoise(), grid=0.0)


@pytest.mark.parametrize("m", [2, 8, 31])
def test_distributed_noise_sums_to_sigma_c(m: int) -> None:
    sigma, c, n = 1.3, 2.0, 50_000
    each = noise_std(Placement.DISTRIBUTED, sigma, c, contributors=m)
    assert each == pytest.approx(sigma * c / math.sqrt(m))
    src = SecureNoise(deterministic_seed=m)
    total = sum(src.gaussian(n, each) for _ in range(m))
    assert abs(total.std() / (sigma * c) - 1) < _std_tolerance(n)


def test_distributed_discrete_noise_sums_to_sigma_c_in_fixed_point() -> None:
    """m contributors add N_Z(0, (sigma C 2^f)^2 / m) to their encodings: the decoded sum carries sigma*C."""
    sigma, c, m, n = 1.0, 0.5, 6, 40_000
    enc = FixedPoint(clip=c + 12 * sigma * c, total_weight=m, summands=m)
    sigma_int = noise_std(Placement.DISTRIBUTED, sigma, c, contributors=m) * enc.scale
    src = SecureNoise(deterministic_seed=5)
    total = sum(src.discrete_gaussian(n, sigma_int) for _ in range(m)).astype(np.float64) * enc.step
    assert abs(total.std() / (sigma * c) - 1) < _std_tolerance(n)
    assert distributed_dg_tau(sigma_int, m) < 1e-15


def _exact_dg(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    w = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma * sigma))
    return k, w / w.sum()


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_discrete_gaussian_matches_pmf(sigma: float) -> None:
    n = 200_000
    x = SecureNoise(deterministic_seed=int(sigma * 10)).discrete_gaussian(n, sigma)
    k, p = _exact_dg(sigma)
    keep = p * n >= 5  # chi-square cells with enough expected counts
    obs = np.array([np.sum(x == v) for v in k[keep]], dtype=np.float64)
    exp = p[keep] * n
    if n - exp.sum() >= 5:  # pool the tails into one more cell
        obs, exp = np.append(obs, n - obs.sum()), np.append(exp, n - exp.sum())
    else:  # tails too thin to test: compare the distribution conditioned on the kept cells
        exp = exp * (obs.sum() / exp.sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-4


@pytest.mark.parametrize("sigma", [0.8, 3.0, 50.0, 1e6, 2.5e9])
def test_discrete_gaussian_variance(sigma: float) -> None:
    n = 300_000
    x = SecureNoise(deterministic_seed=1).discrete_gaussian(n, sigma).astype(np.float64)
    if sigma < 10:
        k, p = _exact_dg(sigma)
        var = float(np.sum(p * k.astype(np.float64) ** 2))
    else:
        var = sigma * sigma  # the discrete and continuous variances agree to ~exp(-2 pi^2 sigma^2)
    kurt_tol = 5 * math.sqrt(2.0 / n)  # std of a sample variance ~ var * sqrt(2/n)
    assert abs(x.var() / var - 1) < kurt_tol * (1.5 if sigma < 1 else 1.0)
    assert abs(x.mean()) < 5 * math.sqrt(var / n)


def test_discrete_gaussian_is_fast_enough() -> None:
    import time

    t = time.perf_counter()
    SecureNoise().discrete_gaussian(1_000_000, 3e7)
    assert time.perf_counter() - t < 5.0


# ----------------------------------------------------------------------------- composing with masking


def test_discrete_noise_and_masks_compose_exactly() -> None:
    """Noise added to fixed-point encodings survives pairwise masking bit-exactly: sum decodes to
    sum(encoded x) + sum(noise)."""
    m, d = 5, 1000
    rng = np.random.default_rng(0)
    enc = FixedPoint(clip=4.0, total_weight=m, summands=m)
    src = SecureNoise(deterministic_seed=9)
    xs = [np.clip(rng.standard_normal(d) * 0.2, -0.5, 0.5).astype(np.float32) for _ in range(m)]
    noises = [src.discrete_gaussian(d, 0.3 * enc.scale / math.sqrt(m)) for _ in range(m)]
    masks = {(i, j): rng.integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32) for i in range(m) for j in range(i + 1, m)}
    total = np.zeros(d, dtype=np.uint32)
    for i in range(m):
        e, clipped = enc.encode(xs[i])
        assert clipped == 0
        v = add_wrapped(e, noises[i])
        for (a, b), r in masks.items():  # +r for the lower id, -r for the higher: cancel in the sum
            if a == i:
                v = v + r
            elif b == i:
                v = v - r
        total += v
    plain = sum(enc.encode(x)[0].view(np.int32).astype(np.int64) for x in xs)
    np.testing.assert_array_equal(total.view(np.int32).astype(np.int64), plain + sum(noises))


def test_add_wrapped_validates() -> None:
    with pytest.raises(ValueError):
        add_wrapped(np.zeros(3, dtype=np.int32), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        add_wrapped(np.zeros(3, dtype=np.uint32), np.zeros(4, dtype=np.int64))
    out = add_wrapped(np.array([0, 5], dtype=np.uint32), np.array([-1, 2]))
    assert out.dtype == np.uint32 and out.view(np.int32).tolist() == [-1, 7]


# ----------------------------------------------------------------------------- placements


def test_placement_formulas_and_validation() -> None:
    assert noise_std("central", 2.0, 1.5, max_weight=0.25) == pytest.approx(0.75)
    assert noise_std("distributed", 2.0, 1.5, contributors=4, max_weight=0.5) == pytest.approx(0.75)
    assert noise_std("local", 2.0, 1.5, contributors=99) == pytest.approx(3.0)
    assert validate_placement("local", False, False) is Placement.LOCAL
    assert validate_placement("distributed", False, True) is Placement.DISTRIBUTED
    assert validate_placement("central", True, False) is Placement.CENTRAL
    with pytest.raises(ValueError, match="secure aggregation"):
        validate_placement("distributed", False, False)
    with pytest.raises(ValueError, match="FedAvg"):
        validate_placement("central", False, True)
    with pytest.raises(ValueError):
        validate_placement("everywhere", False, True)
    with pytest.raises(ValueError):
        noise_std("distributed", 1.0, 1.0, contributors=0)
    assert releases_per_round("distributed", True, 4) == 5
    assert releases_per_round("distributed", False, 4) == 1
    assert releases_per_round("local", True, 4) == 1


# ----------------------------------------------------------------------------- accountant


def _direct(sigma_eff: float, q: float, steps: int, delta: float) -> float:
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(sigma_eff)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sigma,q,steps", [(1.1, 0.01, 1000), (2.0, 1.0, 50), (0.8, 0.25, 20)])
def test_epsilon_equals_direct_dp_accounting(sigma: float, q: float, steps: int) -> None:
    node = PrivacyAccountant(sigma, sample_rate=q, delta=1e-5, unit=Unit.NODE)
    node.step(steps)
    assert node.epsilon() == pytest.approx(_direct(sigma, q, steps, 1e-5), rel=1e-12)
    record = PrivacyAccountant(sigma, sample_rate=q, delta=1e-5)  # default: record, sensitivity 2C
    assert record.unit is Unit.RECORD
    assert record.epsilon_after(steps) == pytest.approx(_direct(sigma / 2, q, steps, 1e-5), rel=1e-12)
    multi = PrivacyAccountant(sigma, sample_rate=q, delta=1e-5, unit="node", releases_per_round=4)
    assert multi.epsilon_after(steps) == pytest.approx(_direct(sigma / 2, q, steps, 1e-5), rel=1e-12)


def test_pld_method_matches_direct_and_is_tighter() -> None:
    acc = PrivacyAccountant(1.0, sample_rate=1.0, delta=1e-5, unit="node", method="pld")
    direct = pld_privacy_accountant.PLDAccountant()
    direct.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 30))
    assert acc.epsilon_after(30) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    rdp = PrivacyAccountant(1.0, sample_rate=1.0, delta=1e-5, unit="node")
    assert acc.epsilon_after(30) < rdp.epsilon_after(30)


def test_accountant_monotone_and_budget() -> None:
    acc = PrivacyAccountant(1.0, sample_rate=0.1, delta=1e-5)
    assert acc.epsilon() == 0.0
    eps = [acc.epsilon_after(s) for s in (1, 2, 5, 10, 50, 100, 500)]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    prev = 0.0
    for _ in range(5):
        now = acc.step()
        assert now > prev
        prev = now
    assert acc.steps == 5 and acc.epsilon() == acc.epsilon_after(5)
    budget = acc.epsilon_after(40)
    assert not acc.would_exceed(budget, 35)
    assert acc.would_exceed(budget, 36)
    assert acc.max_steps(budget) == 40
    assert acc.max_steps(acc.epsilon_after(1) / 2) == 0
    # more noise or less sampling: less privacy spent
    assert PrivacyAccountant(2.0, sample_rate=0.1).epsilon_after(100) < acc.epsilon_after(100)
    assert PrivacyAccountant(1.0, sample_rate=0.05).epsilon_after(100) < acc.epsilon_after(100)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": 1.0, "sample_rate": 0.0},
        {"noise_multiplier": 1.0, "sample_rate": 1.5},
        {"noise_multiplier": 1.0, "delta": 0.0},
        {"noise_multiplier": 1.0, "unit": "user"},
        {"noise_multiplier": 1.0, "releases_per_round": 0},
        {"noise_multiplier": 1.0, "method": "gdp"},
    ],
)
def test_accountant_rejects_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PrivacyAccountant(**kwargs)


def test_accountant_rejects_bad_steps() -> None:
    acc = PrivacyAccountant(1.0)
    with pytest.raises(ValueError):
        acc.step(-1)
    with pytest.raises(ValueError):
        acc.epsilon_after(1.5)  # type: ignore[arg-type]
