"""Compressed model deltas: per-chunk stochastic quantization to 8 or 16 bits, with error feedback.

Owns: `Quantizer` (float vector -> `QuantizedVector`: uint8/uint16 codes plus a float32 minimum
and step per chunk, and back), the wire-safe tensor form of a `QuantizedVector`, `ErrorFeedback`
(the sender keeps what quantization lost and adds it to the next vector, EF-SGD style) and
`PublicCopy` (CHOCO-Gossip's public replica x_hat that a node and each of its neighbours update
identically from the same messages).

Must not touch: sockets, messages (it returns tensors and meta the caller puts in one), privacy
and secure aggregation. Quantization randomness is a numpy Generator: it needs to be unbiased,
not secret (noise for privacy comes from `privacy.SecureNoise`, before compressing).

Quantization of chunk c (default 4096 values) with L = 2^bits - 1 levels:
    lo_c = min(x_c) rounded down to float32,  s_c = (max(x_c) - lo_c) / L rounded up to float32
    code = floor((x - lo_c) / s_c + u),  u ~ U[0, 1)         (stochastic rounding)
    x_hat = lo_c + code * s_c
so E[x_hat] = x (unbiased) and |x_hat - x| < s_c: at most one step per coordinate (half a step
with `stochastic=False`, which rounds to nearest and is biased). Bytes on the wire per vector:
n * bits/8 (codes) + 8 * ceil(n / chunk) (lo and step, float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

BITS = (8, 16)
DEFAULT_CHUNK = 4096
_CODE_DTYPES = {8: np.dtype("<u1"), 16: np.dtype("<u2")}


@dataclass(frozen=True)
class QuantizedVector:
    """One quantized vector: `codes` (uint8/uint16, length n) and per-chunk float32 `lo`, `scale`."""

    bits: int
    chunk: int
    codes: np.ndarray
    lo: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits}")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {self.chunk!r}")
        if self.codes.ndim != 1 or self.codes.dtype != _CODE_DTYPES[self.bits]:
            raise ValueError(f"codes must be a 1-D {_CODE_DTYPES[self.bits]} array, got {self.codes.dtype}{self.codes.shape}")
        chunks = -(-len(self.codes) // self.chunk)
        for name in ("lo", "scale"):
            a = getattr(self, name)
            if a.dtype != np.float32 or a.shape != (chunks,):
                raise ValueError(f"{name} must be float32 of shape ({chunks},), got {a.dtype}{a.shape}")
        if not (np.isfinite(self.lo).all() and np.isfinite(self.scale).all() and (self.scale >= 0).all()):
            raise ValueError("lo and scale must be finite, scale >= 0")

    @property
    def length(self) -> int:
        return len(self.codes)

    @property
    def payload_bytes(self) -> int:
        return self.codes.nbytes

    @property
    def meta_bytes(self) -> int:
        return self.lo.nbytes + self.scale.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data on the wire: codes + per-chunk meta (the message header aside)."""
        return self.payload_bytes + self.meta_bytes

    def step_sizes(self) -> np.ndarray:
        """Per-coordinate quantization step (float32, length n): the error bound of each value."""
        return np.repeat(self.scale, self.chunk)[: self.length]

    def to_message(self, prefix: str = "q") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, tensors) for a `wire.Message`, using only wire-allowed dtypes.

        The wire allowlist has no uint16, so codes travel as their little-endian bytes (uint8).
        """
        meta = {f"{prefix}_bits": self.bits, f"{prefix}_chunk": self.chunk, f"{prefix}_len": self.length}
        tensors = {
            prefix: np.ascontiguousarray(self.codes).view(np.uint8),
            f"{prefix}_lo": self.lo,
            f"{prefix}_scale": self.scale,
        }
        return meta, tensors

    @classmethod
    def from_message(
        cls, meta: dict[str, Any], tensors: dict[str, np.ndarray], prefix: str = "q", length: int | None = None
    ) -> QuantizedVector:
        """Rebuild from `to_message` parts; ValueError on anything malformed.

        Pass `length` (the model size the receiver expects) so a peer cannot pick it.
        """
        try:
            bits, chunk, n = meta[f"{prefix}_bits"], meta[f"{prefix}_chunk"], meta[f"{prefix}_len"]
            raw, lo, scale = tensors[prefix], tensors[f"{prefix}_lo"], tensors[f"{prefix}_scale"]
        except KeyError as exc:
            raise ValueError(f"quantized vector is missing {exc}") from None
        for name, v in (("bits", bits), ("chunk", chunk), ("len", n)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{prefix}_{name} must be a non-negative integer, got {v!r}")
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits}")
        if length is not None and n != length:
            raise ValueError(f"quantized vector has length {n}, expected {length}")
        dt = _CODE_DTYPES[bits]
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.shape != (n * dt.itemsize,):
            raise ValueError(f"codes must be uint8 of shape ({n * dt.itemsize},)")
        codes = np.ascontiguousarray(raw).view(dt)
        return cls(bits, chunk, codes, np.asarray(lo), np.asarray(scale))


class Quantizer:
    """Per-chunk min/step quantization to `bits` (8 or 16) bits; stochastic rounding by default."""

    def __init__(self, bits: int = 8, chunk: int = DEFAULT_CHUNK, stochastic: bool = True) -> None:
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
        self.bits = bits
        self.chunk = chunk
        self.stochastic = stochastic
        self.levels = 2**bits - 1

    def wire_bytes(self, length: int) -> int:
        """Bytes of tensor data for a vector of `length` values (codes + meta)."""
        return length * self.bits // 8 + 8 * math.ceil(length / self.chunk)

    def quantize(self, vec: np.ndarray, rng: np.random.Generator | None = None) -> QuantizedVector:
        """Quantize a finite 1-D float vector. `rng` drives stochastic rounding (required then)."""
        x = np.asarray(vec)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"quantize expects a 1-D float vector, got {x.dtype}{x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("cannot quantize NaN or Inf")
        if self.stochastic and rng is None:
            raise ValueError("stochastic rounding needs an rng (numpy Generator)")
        n, c = len(x), self.chunk
        chunks = -(-n // c)
        if n == 0:
            empty = np.zeros(0, dtype=np.float32)
            return QuantizedVector(self.bits, c, np.zeros(0, _CODE_DTYPES[self.bits]), empty, empty.copy())
        x64 = x.astype(np.float64)
        padded = np.empty(chunks * c, dtype=np.float64)
        padded[:n] = x64
        padded[n:] = x64[-1]  # the last value: leaves the last chunk's min and max unchanged
        blocks = padded.reshape(chunks, c)
        lo64, hi64 = blocks.min(axis=1), blocks.max(axis=1)
        lo = _float32_down(lo64)
        scale = _float32_up((hi64 - lo.astype(np.float64)) / self.levels)
        s64 = scale.astype(np.float64)[:, None]
        y = np.divide(blocks - lo.astype(np.float64)[:, None], s64, out=np.zeros_like(blocks), where=s64 > 0)
        if self.stochastic:
            y += rng.random(y.shape)
            np.floor(y, out=y)
        else:
            np.rint(y, out=y)
        np.clip(y, 0, self.levels, out=y)
        codes = y.reshape(-1)[:n].astype(_CODE_DTYPES[self.bits])
        return QuantizedVector(self.bits, c, codes, lo, scale)

    @staticmethod
    def dequantize(q: QuantizedVector) -> np.ndarray:
        """float32 lo + code * scale (computed in float64, rounded once)."""
        n, c = q.length, q.chunk
        chunks = len(q.lo)
        padded = np.zeros(chunks * c, dtype=np.float64)
        padded[:n] = q.codes
        out = padded.reshape(chunks, c) * q.scale.astype(np.float64)[:, None] + q.lo.astype(np.float64)[:, None]
        return out.reshape(-1)[:n].astype(np.float32)


def dequantize(q: QuantizedVector) -> np.ndarray:
    """Module-level alias of `Quantizer.dequantize` (needs no quantizer: the vector carries its meta)."""
    return Quantizer.dequantize(q)


def _float32_down(a: np.ndarray) -> np.ndarray:
    f = a.astype(np.float32)
    over = f.astype(np.float64) > a
    f[over] = np.nextafter(f[over], np.float32(-np.inf))
    return f


def _float32_up(a: np.ndarray) -> np.ndarray:
    f = a.astype(np.float32)
    under = f.astype(np.float64) < a
    f[under] = np.nextafter(f[under], np.float32(np.inf))
    return f


class ErrorFeedback:
    """Sender-side error feedback: quantize (vector + residual), keep what the quantizer lost.

    After T calls, sum(dequantize(messages)) = sum(vectors) - residual, and |residual| is below one
    quantization step of the last message per coordinate: the receiver's running sum never drifts.
    Use it on per-round *increments* (x_r - x_{r-1}); that is the same as `PublicCopy`.
    """

    def __init__(self, quantizer: Quantizer, length: int) -> None:
        if length < 0:
            raise ValueError("length must be >= 0")
        self.quantizer = quantizer
        self.residual = np.zeros(length, dtype=np.float64)

    def compress(self, vec: np.ndarray, rng: np.random.Generator | None = None) -> QuantizedVector:
        v = np.asarray(vec)
        if v.shape != self.residual.shape:
            raise ValueError(f"vector has shape {v.shape}, error feedback holds {self.residual.shape}")
        target = v.astype(np.float64) + self.residual
        q = self.quantizer.quantize(target, rng)
        self.residual = target - dequantize(q).astype(np.float64)
        return q

    def reset(self) -> None:
        self.residual[:] = 0.0


class PublicCopy:
    """CHOCO-Gossip's public copy x_hat of one node's vector, held identically by it and its neighbours.

    The owner calls `encode(x)`: it quantizes x - x_hat, updates its x_hat and returns the message;
    every neighbour calls `apply(message)` on its copy of the owner's x_hat. Both sides run the
    same float32 operations on the same inputs, so the copies stay bit-identical (a rejoining
    neighbour needs a full resync). x_hat lags x by at most one quantization step per value.
    """

    def __init__(self, length: int, initial: np.ndarray | None = None) -> None:
        if initial is not None:
            initial = np.asarray(initial, dtype=np.float32)
            if initial.shape != (length,):
                raise ValueError(f"initial must have shape ({length},)")
        self.value = np.zeros(length, dtype=np.float32) if initial is None else initial.copy()

    def encode(self, x: np.ndarray, quantizer: Quantizer, rng: np.random.Generator | None = None) -> QuantizedVector:
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.value.shape:
            raise ValueError(f"vector has shape {x.shape}, public copy holds {self.value.shape}")
        q = quantizer.quantize(x - self.value, rng)
        self.apply(q)
        return q

    def apply(self, q: QuantizedVector) -> np.ndarray:
        if q.length != len(self.value):
            raise ValueError(f"message has length {q.length}, public copy holds {len(self.value)}")
        self.value += dequantize(q)
        return self.value


class SharedVectorCodec:
    """What a node sends each round, quantized with sender-side error feedback (robust to loss).

    The node quantizes the vector it shares itself (its model delta, or the hub's average),
    not an increment against a copy the receivers hold: a receiver that misses a message has
    no state to fall out of step with, and the next message it gets is complete on its own.
    The sender keeps what quantization lost (`ErrorFeedback`) and adds it to the next vector,
    so what its neighbours receive tracks its vectors over time instead of drifting with the
    rounding. `pack` returns the message parts and the dequantized vector the receivers will
    decode (the hub adopts that one, so every node of a star holds the same model).
    """

    PREFIX = "q"

    def __init__(self, bits: int, length: int, seed: int | list[int] = 0, chunk: int = DEFAULT_CHUNK) -> None:
        self.feedback = ErrorFeedback(Quantizer(bits, chunk), length)
        self.rng = np.random.default_rng(seed)

    @property
    def bits(self) -> int:
        return self.feedback.quantizer.bits

    def pack(self, vec: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        """(meta, tensors, decoded float32 vector) of `vec` plus the carried residual."""
        q = self.feedback.compress(vec, self.rng)
        meta, tensors = q.to_message(self.PREFIX)
        return meta, tensors, dequantize(q)


def has_quantized(tensors: dict[str, np.ndarray], prefix: str = SharedVectorCodec.PREFIX) -> bool:
    """True if a message's tensors carry a quantized vector (as `SharedVectorCodec.pack` writes)."""
    return prefix in tensors
