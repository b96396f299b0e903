"""Fixed-point encoding: overflow safety at the worst case, the stated error bound, clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl.fixedpoint import FixedPoint, FixedPointError


def _sum_mod(encs: list[np.ndarray], enc: FixedPoint) -> np.ndarray:
    total = np.zeros_like(encs[0])
    for e in encs:
        total += e  # wraps mod 2^bits
    return total


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("summands", [1, 2, 3, 7, 20])
@pytest.mark.parametrize("clip", [0.75, 1.0, 16.0, 1000.0])
def test_worst_case_sum_does_not_overflow(bits: int, summands: int, clip: float) -> None:
    try:
        enc = FixedPoint(clip, 1.0, summands, bits)
    except FixedPointError:
        assert bits == 8  # only the narrowest width can be impossible here
        return
    assert clip * 1.0 * enc.scale + summands / 2 <= 2 ** (bits - 1) - 1
    assert clip * 1.0 * enc.scale * 2 + summands / 2 > 2 ** (bits - 1) - 1  # the largest such scale
    weights = [1.0 / summands] * summands
    for sign in (1.0, -1.0):
        # every contributor at the clip bound (and beyond: clipped), weights summing to the bound
        x = np.full(5, sign * clip * 3, dtype=np.float32)
        encs = [enc.encode(x, w)[0] for w in weights]
        got = enc.decode(_sum_mod(encs, enc))
        assert np.all(np.sign(got) == sign), "the worst-case sum wrapped around"
        assert np.abs(got - sign * clip).max() <= enc.sum_error_bound()


def test_worst_case_many_summands_with_weight_total() -> None:
    # FedAvg form: m summands each of weight up to 1, total weight bound m
    m = 20
    enc = FixedPoint(16.0, float(m), m)
    x = np.full(3, 16.0, dtype=np.float32)
    total = _sum_mod([enc.encode(x, 1.0)[0] for _ in range(m)], enc)
    assert np.allclose(enc.decode(total), 16.0 * m, atol=enc.sum_error_bound())
    neg = _sum_mod([enc.encode(-x, 1.0)[0] for _ in range(m)], enc)
    assert np.allclose(enc.decode(neg), -16.0 * m, atol=enc.sum_error_bound())


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 12),
    clip=st.sampled_from([0.5, 1.0, 4.0, 16.0, 100.0]),
    seed=st.integers(0, 2**32 - 1),
    length=st.integers(1, 300),
)
def test_sum_error_within_stated_bound(m: int, clip: float, seed: int, length: int) -> None:
    rng = np.random.default_rng(seed)
    enc = FixedPoint(clip, 1.0, m)
    raw = rng.dirichlet(np.ones(m + 1))[:m]  # weights of a stochastic row, summing below 1
    xs = [(rng.standard_normal(length) * clip).astype(np.float32) for _ in range(m)]
    encs = [enc.encode(x, float(w))[0] for x, w in zip(xs, raw)]
    got = enc.decode(_sum_mod(encs, enc))
    exact = sum(float(w) * np.clip(x.astype(np.float64), -clip, clip) for x, w in zip(xs, raw))
    assert np.abs(got - exact).max() <= enc.sum_error_bound(m)


def test_error_bound_is_attained_up_to_slack() -> None:
    enc = FixedPoint(1.0, 1.0, 1)
    # a value exactly half a step above a grid point rounds by half a step
    x = np.array([2.5 * enc.step], dtype=np.float64).astype(np.float32)
    err = abs(enc.decode(enc.encode(x, 1.0)[0])[0] - float(x[0]))
    assert err == pytest.approx(0.5 * enc.step, rel=1e-6)
    assert err <= enc.summand_error_bound()
    assert enc.summand_error_bound() < 0.5001 * enc.step


def test_clipping_is_counted_and_non_finite_values_are_safe() -> None:
    enc = FixedPoint(2.0, 1.0, 2)
    x = np.array([0.5, -3.0, 2.0, 7.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    q, clipped = enc.encode(x, 0.5)
    assert clipped == 5  # -3, 7, nan, +inf, -inf
    got = enc.decode(q)
    assert np.allclose(got, 0.5 * np.array([0.5, -2.0, 2.0, 2.0, 0.0, 2.0, -2.0]), atol=enc.summand_error_bound())


def test_encode_is_deterministic_and_uint32() -> None:
    enc = FixedPoint(16.0, 1.0, 4)
    x = np.linspace(-20, 20, 101, dtype=np.float32)
    a, _ = enc.encode(x, 0.25)
    b, _ = enc.encode(x, 0.25)
    assert a.dtype == np.uint32 and np.array_equal(a, b)


def test_precision_of_default_gossip_parameters() -> None:
    enc = FixedPoint(16.0, 1.0, 2)  # ring neighbourhood with the default clip
    assert enc.fraction_bits == 26
    assert enc.sum_error_bound() < 2e-8


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(clip=0.0, total_weight=1.0, summands=2),
        dict(clip=math.inf, total_weight=1.0, summands=2),
        dict(clip=1.0, total_weight=0.0, summands=2),
        dict(clip=1.0, total_weight=1.0, summands=0),
        dict(clip=1.0, total_weight=1.0, summands=2, bits=12),
        dict(clip=1.0, total_weight=1.0, summands=300, bits=8),  # 300/2 > 127: cannot fit
        dict(clip=1e9, total_weight=1.0, summands=2, bits=16),
    ],
)
def test_impossible_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(FixedPointError):
        FixedPoint(**kwargs)


def test_weight_outside_bound_is_refused() -> None:
    enc = FixedPoint(1.0, 1.0, 2)
    with pytest.raises(FixedPointError):
        enc.encode(np.zeros(3, np.float32), 1.5)
