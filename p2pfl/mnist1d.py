"""MNIST-1D: ten 1-D digit templates, randomly padded, scaled, shifted, noised and sheared.

Owns: generating the dataset's signals (float32, 40 points) and labels (int64, 0-9) from a seed,
as numpy arrays, in chunks of independent random streams. Must not touch: files and caching
(`datacache`), train/test roles and sizes (`data.load_mnist1d`), torch, sockets.

The dataset is S. Greydanus's MNIST-1D ("Scaling down Deep Learning", 2020, arXiv:2011.14439;
github.com/greydanus/mnist1d, Apache-2.0): the templates and the default transformation
parameters below are the original's, and so is the order of the steps (pad, dilate, scale,
translate, correlated noise in the background, i.i.d. noise, shear, resample to 40 points).

Why not the PyPI package `mnist1d` (0.0.2.post1), which installs offline: its generator draws
from numpy's global random state (`set_seed` seeds it, which no node of a shared process may
do), transforms one sample at a time (1.9 s per 10,000 samples here, so about 75 s for the
400,000 that 10,000 nodes need), imports matplotlib and requests on import, and its
`get_dataset` downloads or unpickles a file. This module does the same steps on whole arrays.

What differs from the original, on purpose:
- Randomness: a `numpy.random.Generator` per chunk of `CHUNK` samples, seeded by (seed, stream,
  chunk). Sample i of a stream is the same whatever the size asked for, so a larger network's
  data starts with a smaller one's, and streams (train, test) never overlap.
- Labels: balanced within each chunk (CHUNK / 10 of each class), shuffled.
- Standardisation: fixed constants (`MEAN`, `STD`: the generator's own, measured on 10^6
  samples) instead of the generated set's statistics, so a sample's bytes do not depend on how
  many others were generated.
- Linear interpolation and the Gaussian filter are written out in numpy; values match the
  original's scipy calls up to float rounding.
"""

from __future__ import annotations

import numpy as np

GENERATOR_VERSION = 1  # bump on any change to what a (seed, stream, index) generates: cache keys use it
CHUNK = 10_000
NUM_CLASSES = 10
LENGTH = 40  # final_seq_length

# The original's get_dataset_args() defaults.
TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
CORR_NOISE_SIGMA = 2.0  # gaussian_filter(noise, 2) in the original
EPS = 1e-8
WIDE = TEMPLATE_LEN + PADDING[1]  # 72: the length every padded signal is dilated to

# Mean and standard deviation of the raw generated signals (before standardisation), measured
# on 10^6 samples of GENERATOR_VERSION 1; the standardised data has mean ~0 and std ~1.
MEAN = -0.00603
STD = 0.15466

_DIGITS = np.asarray([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def templates() -> np.ndarray:
    """The ten digit templates (10, 12): whitened, starting at 0, divided by 6 (as the original)."""
    x = _DIGITS - _DIGITS.mean(axis=1, keepdims=True)
    x = x / x.std(axis=1, keepdims=True)
    x = x - x[:, :1]
    return x / 6.0


def generate(n: int, seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` standardised signals (n, 40) float32 and their labels (n,) int64.

    `stream` picks one of a seed's independent sample streams (`data.load_mnist1d`: 0 for the
    training set, 1 for the test set). The first k samples of a stream are the same for any n >= k.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    xs = np.empty((n, LENGTH), dtype=np.float32)
    ys = np.empty(n, dtype=np.int64)
    padded = np.zeros((NUM_CLASSES, WIDE + 1))
    padded[:, :TEMPLATE_LEN] = templates() + EPS  # eps: the signal stays nonzero where noise must not go
    for start in range(0, n, CHUNK):
        x, y = _chunk(padded, np.random.default_rng([seed, stream, start // CHUNK]))
        count = min(CHUNK, n - start)  # a partial last chunk: the full chunk's first samples
        xs[start : start + count] = ((x[:count] - MEAN) / STD).astype(np.float32)
        ys[start : start + count] = y[:count]
    return xs, ys


def _chunk(padded: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CHUNK raw (unstandardised) signals and their labels, drawn in a fixed order from `rng`."""
    y = rng.permutation(np.arange(CHUNK) % NUM_CLASSES)
    pad = rng.integers(PADDING[0], PADDING[1] + 1, size=CHUNK)
    scale = 1 + SCALE_COEFF * (rng.random(CHUNK) - 0.5)
    shift = rng.integers(0, MAX_TRANSLATION, size=CHUNK)
    corr = CORR_NOISE_SCALE * rng.standard_normal((CHUNK, WIDE))
    iid = IID_NOISE_SCALE * rng.standard_normal((CHUNK, WIDE))
    shear = SHEAR_SCALE * (rng.random(CHUNK) - 0.5)

    # pad with `pad` zeros, then dilate the (12 + pad)-point signal to WIDE points
    x = _resample(padded[y], TEMPLATE_LEN + pad, WIDE)
    x *= scale[:, None]
    x = np.take_along_axis(x, (np.arange(WIDE)[None, :] - shift[:, None]) % WIDE, axis=1)  # roll right by shift
    background = x == 0
    x = np.where(background, _gaussian_filter(corr, CORR_NOISE_SIGMA), x)
    x += iid
    x -= shear[:, None] * np.linspace(-0.5, 0.5, WIDE)[None, :]
    return _resample(x, np.full(CHUNK, WIDE), LENGTH), y


def _resample(x: np.ndarray, lengths: np.ndarray, points: int) -> np.ndarray:
    """Linear interpolation of each row's first `lengths[i]` values onto `points` evenly spaced points.

    Both grids span [0, 1], as `interp1d(linspace(0, 1, L), row)(linspace(0, 1, points))`.
    """
    pos = np.linspace(0.0, 1.0, points)[None, :] * (lengths[:, None] - 1)
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    hi = np.minimum(lo + 1, lengths[:, None] - 1)
    return (np.take_along_axis(x, lo, axis=1) * (1 - frac) + np.take_along_axis(x, hi, axis=1) * frac)


def _gaussian_filter(x: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d along the rows: mode "reflect", truncate 4.0."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    edges = np.pad(x, ((0, 0), (radius, radius)), mode="symmetric")  # scipy's "reflect": d c b a | a b c d
    return np.lib.stride_tricks.sliding_window_view(edges, 2 * radius + 1, axis=1) @ kernel
