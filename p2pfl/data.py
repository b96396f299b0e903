"""Datasets, train/test splits and per-node partitions.

Owns: loading scikit-learn's bundled digits (offline, no download), the seeded
stratified train/test split and feature scaling, IID and Dirichlet label
partitions of a training set, and cutting one node's shard out of a dataset.

Must not touch: models, torch, sockets, aggregation. Everything here is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARTITION_SCHEMES = ("iid", "dirichlet")
DEFAULT_MIN_SIZE = 2
DIRICHLET_MAX_TRIES = 1000


@dataclass
class Dataset:
    """A train/test split held in memory: float32 features, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.dtype != np.float32:
                raise ValueError(f"x_{part} must be float32, got {x.dtype}")
            if y.dtype != np.int64:
                raise ValueError(f"y_{part} must be int64, got {y.dtype}")
            if len(x) != len(y):
                raise ValueError(f"x_{part} has {len(x)} rows but y_{part} has {len(y)}")


@dataclass
class Shard:
    """One node's slice of the training set."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 digits (1797 samples, bundled), stratified split, standardized.

    Pixels are divided by 16, then standardized with the *training* mean/std
    (constant pixels keep std 1). input_shape is (64,); use `as_images` for 1x8x8.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    raw = _sk_load_digits()
    x = raw.data.astype(np.float32) / 16.0
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-6] = 1.0
    return Dataset(
        x_train=((x_train - mean) / std).astype(np.float32),
        y_train=y_train,
        x_test=((x_test - mean) / std).astype(np.float32),
        y_test=y_test,
        num_classes=10,
        input_shape=(64,),
        name="digits",
    )


def as_images(x: np.ndarray, channels: int = 1, side: int = 8) -> np.ndarray:
    """View flat rows (N, channels*side*side) as images (N, channels, side, side)."""
    if x.ndim != 2 or x.shape[1] != channels * side * side:
        raise ValueError(f"x must have shape (N, {channels * side * side}), got {x.shape}")
    return x.reshape(-1, channels, side, side)


def _validate_partition_args(
    labels: np.ndarray, n_parts: int, scheme: str, alpha: float, min_size: int
) -> None:
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        raise ValueError("labels must be a 1-D numpy array")
    if isinstance(n_parts, bool) or not isinstance(n_parts, (int, np.integer)) or n_parts < 1:
        raise ValueError(f"n_parts must be a positive integer, got {n_parts!r}")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"scheme must be one of {PARTITION_SCHEMES}, got {scheme!r}")
    if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size must be a non-negative integer, got {min_size!r}")
    if n_parts * max(min_size, 1) > len(labels):
        raise ValueError(
            f"n_parts={n_parts} with min_size={min_size} needs at least "
            f"{n_parts * max(min_size, 1)} samples, labels has {len(labels)}"
        )


def _iid(n: int, n_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(n), n_parts)]


def _dirichlet_once(
    labels: np.ndarray, n_parts: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """One draw: each class is split among parts by Dirichlet(alpha) proportions.

    Parts already holding more than their fair share get no more of later
    classes (the usual NIID-Bench balancing), which keeps sizes sane.
    """
    parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    sizes = np.zeros(n_parts, dtype=np.int64)
    fair = len(labels) / n_parts
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(n_parts, alpha))
        p = p * (sizes < fair)
        if p.sum() <= 0:
            p = np.full(n_parts, 1.0 / n_parts)
        p = p / p.sum()
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
        for i, piece in enumerate(np.split(idx, cuts)):
            parts[i].append(piece)
            sizes[i] += len(piece)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def partition(
    labels: np.ndarray,
    n_parts: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = DEFAULT_MIN_SIZE,
) -> list[np.ndarray]:
    """Split indices 0..len(labels)-1 into `n_parts` disjoint sorted int64 arrays.

    iid: seeded shuffle, sizes differ by at most one.
    dirichlet: per-class Dirichlet(alpha) proportions (smaller alpha = more skew);
    redrawn until every part has at least `min_size` samples (at least 1), at most
    DIRICHLET_MAX_TRIES draws, then ValueError.
    """
    _validate_partition_args(labels, n_parts, scheme, alpha, min_size)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return _iid(len(labels), n_parts, rng)
    need = max(min_size, 1)
    for _ in range(DIRICHLET_MAX_TRIES):
        parts = _dirichlet_once(labels, n_parts, float(alpha), rng)
        if min(len(p) for p in parts) >= need:
            return parts
    raise ValueError(
        f"dirichlet partition: no draw in {DIRICHLET_MAX_TRIES} tries gave every one of "
        f"n_parts={n_parts} parts at least min_size={need} samples (alpha={alpha}, "
        f"{len(labels)} samples); raise alpha, lower min_size or use fewer parts"
    )


def shard(dataset: Dataset, indices: np.ndarray) -> Shard:
    """The training rows of `dataset` at `indices`, copied."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError("indices must be a 1-D integer array")
    n = len(dataset.y_train)
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"indices must lie in [0, {n}), got range [{indices.min()}, {indices.max()}]")
    return Shard(x=dataset.x_train[indices].copy(), y=dataset.y_train[indices].copy())
