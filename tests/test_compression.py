"""Tests for p2pfl.compression: quantization error bounds, unbiasedness, error feedback, wire form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pfl import wire
from p2pfl.compression import (
    DEFAULT_CHUNK,
    ErrorFeedback,
    PublicCopy,
    QuantizedVector,
    Quantizer,
    dequantize,
)
from p2pfl.messages import Kind, Message


def _vec(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale + rng.uniform(-1, 1)).astype(np.float32)


def _f32_slack(x: np.ndarray) -> np.ndarray:
    """One float32 rounding of the dequantized value."""
    return np.abs(x).astype(np.float64) * 2.0**-23 + 1e-45


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("n", [1, 17, 4096, 10_000])
@pytest.mark.parametrize("stochastic", [True, False])
def test_error_bound_per_bits(bits: int, n: int, stochastic: bool) -> None:
    x = _vec(n, seed=n + bits, scale=3.0)
    quant = Quantizer(bits, stochastic=stochastic)
    q = quant.quantize(x, np.random.default_rng(1))
    assert q.codes.dtype == (np.uint8 if bits == 8 else np.uint16)
    d = dequantize(q)
    assert d.dtype == np.float32 and d.shape == x.shape
    steps = q.step_sizes().astype(np.float64)
    err = np.abs(d.astype(np.float64) - x)
    bound = steps * (1.0 if stochastic else 0.5) + _f32_slack(x)
    assert (err <= bound).all()
    # the step is the chunk's range over 2^bits - 1 levels (up to float32 rounding of the meta)
    for c in range(len(q.lo)):
        block = x[c * DEFAULT_CHUNK : (c + 1) * DEFAULT_CHUNK].astype(np.float64)
        rng_c = block.max() - block.min()
        assert q.scale[c] <= rng_c / (2**bits - 1) * (1 + 2**-20) + 1e-38
        assert q.lo[c] <= block.min()


def test_sixteen_bits_is_256x_finer() -> None:
    x = _vec(8192, seed=3)
    e8 = np.abs(dequantize(Quantizer(8).quantize(x, np.random.default_rng(0))) - x).max()
    e16 = np.abs(dequantize(Quantizer(16).quantize(x, np.random.default_rng(0))) - x).max()
    assert e16 < e8 / 100


def test_per_chunk_scaling_beats_one_global_scale() -> None:
    x = np.concatenate([_vec(4096, 1, 1e-3), _vec(4096, 2, 10.0)])
    rng = np.random.default_rng(0)
    small = slice(0, 4096)
    chunked = np.abs(dequantize(Quantizer(8).quantize(x, rng)) - x)[small].max()
    glob = np.abs(dequantize(Quantizer(8, chunk=len(x)).quantize(x, rng)) - x)[small].max()
    assert chunked < glob / 100


@pytest.mark.parametrize("bits", [8, 16])
def test_stochastic_rounding_unbiased(bits: int) -> None:
    n, draws = 600, 4000
    x = _vec(n, seed=bits)
    x[:8] = [-1.0, 0.0, 1e-7, 0.5, 0.25, 0.33, 2.0, -0.999]
    quant = Quantizer(bits, chunk=256)
    rng = np.random.default_rng(42)
    total = np.zeros(n)
    for _ in range(draws):
        total += dequantize(quant.quantize(x, rng))
    mean = total / draws
    step = quant.quantize(x, rng).step_sizes().astype(np.float64)
    # each draw is off by at most one step, variance <= step^2/4: the mean's std <= step / (2 sqrt(draws))
    tol = 6 * step / (2 * math.sqrt(draws)) + _f32_slack(x)
    assert (np.abs(mean - x) <= tol).all()
    # nearest rounding is biased by up to half a step; stochastic averaging does far better
    nearest = dequantize(Quantizer(bits, chunk=256, stochastic=False).quantize(x)).astype(np.float64)
    assert np.abs(mean - x).mean() < np.abs(nearest - x).mean() / 5


def test_constant_empty_and_edge_vectors() -> None:
    quant = Quantizer(8)
    rng = np.random.default_rng(0)
    for x in (np.full(5000, 0.37, np.float32), np.zeros(3, np.float32), np.array([-2.5], np.float32)):
        np.testing.assert_array_equal(dequantize(quant.quantize(x, rng)), x)
    empty = quant.quantize(np.zeros(0, np.float32), rng)
    assert empty.length == 0 and dequantize(empty).shape == (0,)
    big = np.array([-3e38, 3e38, 0.0], dtype=np.float32)
    d = dequantize(quant.quantize(big, rng))
    assert np.isfinite(d).all() and np.abs(d - big).max() <= 6e38 / 255 * 1.01
    with pytest.raises(ValueError):
        quant.quantize(np.array([1.0, np.inf], np.float32), rng)
    with pytest.raises(ValueError):
        quant.quantize(np.ones((2, 2), np.float32), rng)
    with pytest.raises(ValueError):
        quant.quantize(np.ones(3, np.float32))  # stochastic needs an rng
    with pytest.raises(ValueError):
        Quantizer(4)


@pytest.mark.parametrize("bits", [8, 16])
def test_error_feedback_tracks_accumulated_sum(bits: int) -> None:
    """sum of dequantized messages = sum of true vectors - residual, |residual| < one step."""
    n, rounds = 5000, 60
    quant = Quantizer(bits, chunk=1024)
    ef = ErrorFeedback(quant, n)
    rng = np.random.default_rng(7)
    true_sum = np.zeros(n)
    sent_sum = np.zeros(n)
    plain_sum = np.zeros(n)
    for r in range(rounds):
        v = _vec(n, seed=100 + r, scale=0.1)
        q = ef.compress(v, rng)
        true_sum += v
        sent_sum += dequantize(q)
        plain_sum += dequantize(quant.quantize(v, rng))
        step = q.step_sizes().astype(np.float64)
        np.testing.assert_allclose(true_sum - sent_sum, ef.residual, rtol=0, atol=1e-9)
        assert (np.abs(true_sum - sent_sum) <= step * (1 + 1e-6) + 1e-9).all(), r
    # without feedback the per-round rounding errors add up (a random walk of ~sqrt(rounds) steps)
    assert np.abs(true_sum - plain_sum).max() > 2 * np.abs(true_sum - sent_sum).max()
    ef.reset()
    assert not ef.residual.any()
    with pytest.raises(ValueError):
        ef.compress(np.zeros(3, np.float32), rng)


def test_public_copy_stays_identical_and_close() -> None:
    n = 3000
    quant = Quantizer(8, chunk=512)
    sender, receiver = PublicCopy(n), PublicCopy(n)
    rng = np.random.default_rng(0)
    x = np.zeros(n, dtype=np.float32)
    for r in range(30):
        x = x + _vec(n, seed=r, scale=0.05)  # a model drifting by training
        q = sender.encode(x, quant, rng)
        receiver.apply(q)
        np.testing.assert_array_equal(sender.value, receiver.value)
        assert (np.abs(sender.value.astype(np.float64) - x) <= q.step_sizes() * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("bits", [8, 16])
def test_bytes_on_the_wire(bits: int) -> None:
    n = 100_003
    quant = Quantizer(bits)
    q = quant.quantize(_vec(n), np.random.default_rng(0))
    chunks = math.ceil(n / DEFAULT_CHUNK)
    assert q.payload_bytes == n * bits // 8
    assert q.meta_bytes == 8 * chunks
    assert q.nbytes == quant.wire_bytes(n) == n * bits // 8 + 8 * chunks
    assert q.nbytes < 4 * n * (bits / 32) * 1.01  # ~4x (8 bit) / ~2x (16 bit) smaller than float32


@pytest.mark.parametrize("bits", [8, 16])
def test_message_round_trip_through_wire(bits: int) -> None:
    n = 9000
    q = Quantizer(bits).quantize(_vec(n), np.random.default_rng(0))
    meta, tensors = q.to_message()
    msg = Message(Kind.MODEL, 3, 5, meta=meta, tensors=tensors)
    limits = wire.Limits.for_model(n)
    _, got = wire.decode(wire.encode(msg, 4, 1, limits), limits)
    back = QuantizedVector.from_message(got.meta, got.tensors, length=n)
    np.testing.assert_array_equal(back.codes, q.codes)
    np.testing.assert_array_equal(dequantize(back), dequantize(q))
    assert sum(t.nbytes for t in tensors.values()) == q.nbytes


def test_from_message_rejects_malformed() -> None:
    q = Quantizer(16).quantize(_vec(100), np.random.default_rng(0))
    meta, tensors = q.to_message()
    with pytest.raises(ValueError, match="length"):
        QuantizedVector.from_message(meta, tensors, length=99)
    bad = [
        ({**meta, "q_bits": 12}, tensors),
        ({**meta, "q_len": 101}, tensors),
        ({**meta, "q_chunk": 0}, tensors),
        ({**meta, "q_bits": True}, tensors),
        (meta, {**tensors, "q": tensors["q"][:-1]}),
        (meta, {**tensors, "q_lo": tensors["q_lo"].astype(np.float64)}),
        (meta, {**tensors, "q_scale": -tensors["q_scale"] - 1}),
        (meta, {**tensors, "q_scale": np.full_like(tensors["q_scale"], np.nan)}),
        ({k: v for k, v in meta.items() if k != "q_len"}, tensors),
        (meta, {k: v for k, v in tensors.items() if k != "q_lo"}),
    ]
    for m, t in bad:
        with pytest.raises(ValueError):
            QuantizedVector.from_message(m, t)
