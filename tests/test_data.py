"""Tests for p2pfl.data: digits loading, IID/Dirichlet partitions, shards."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.data import Dataset, as_images, load_digits, partition, shard


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits(seed=0)


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n, "parts overlap or miss indices"
    assert np.array_equal(np.sort(allidx), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64


def _label_tv(labels: np.ndarray, parts: list[np.ndarray], k: int) -> float:
    """Mean total-variation distance between each part's label histogram and the global one."""
    glob = np.bincount(labels, minlength=k) / len(labels)
    return float(
        np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - glob).sum() for p in parts])
    )


def test_load_digits_shapes_and_scaling(digits: Dataset) -> None:
    assert digits.x_train.shape == (1437, 64) and digits.x_test.shape == (360, 64)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.input_shape == (64,) and digits.num_classes == 10
    assert np.abs(digits.x_train.mean(axis=0)).max() < 1e-4
    stds = digits.x_train.std(axis=0)
    assert np.all((np.abs(stds - 1) < 1e-3) | (stds < 1e-6))
    assert np.all(np.isfinite(digits.x_test))
    # stratified: every class in the test set at close to its overall share
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38


def test_load_digits_seeded() -> None:
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


def test_as_images(digits: Dataset) -> None:
    imgs = as_images(digits.x_train[:5])
    assert imgs.shape == (5, 1, 8, 8)
    assert np.array_equal(imgs[2].ravel(), digits.x_train[2])
    with pytest.raises(ValueError):
        as_images(np.zeros((3, 10), np.float32))


def test_iid_partition(digits: Dataset) -> None:
    y = digits.y_train
    parts = partition(y, 8, "iid", seed=1)
    _check_cover(parts, len(y))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = partition(y, 8, "iid", seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(y, 8, "iid", seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("n_parts,alpha", [(8, 0.1), (8, 0.5), (16, 1.0), (64, 0.1)])
def test_dirichlet_partition_covers_and_nonempty(digits: Dataset, n_parts: int, alpha: float) -> None:
    y = digits.y_train
    parts = partition(y, n_parts, "dirichlet", alpha=alpha, seed=0)
    _check_cover(parts, len(y))
    assert len(parts) == n_parts
    assert min(len(p) for p in parts) >= 2
    again = partition(y, n_parts, "dirichlet", alpha=alpha, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_small_alpha_is_skewed(digits: Dataset) -> None:
    y = digits.y_train
    iid = _label_tv(y, partition(y, 8, "iid", seed=0), 10)
    skew = _label_tv(y, partition(y, 8, "dirichlet", alpha=0.1, seed=0), 10)
    mild = _label_tv(y, partition(y, 8, "dirichlet", alpha=100.0, seed=0), 10)
    assert iid < 0.1
    assert skew > 0.5 > 3 * iid
    assert mild < 0.2


def test_dirichlet_min_size_respected(digits: Dataset) -> None:
    parts = partition(digits.y_train, 8, "dirichlet", alpha=0.3, seed=5, min_size=40)
    assert min(len(p) for p in parts) >= 40


def test_dirichlet_impossible_raises() -> None:
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="min_size"):
        partition(labels, 20, "dirichlet", alpha=0.01, seed=0, min_size=5)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"n_parts": 0}, "n_parts"),
        ({"n_parts": 2.5}, "n_parts"),
        ({"n_parts": 4, "scheme": "shards"}, "scheme"),
        ({"n_parts": 4, "scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"n_parts": 4, "alpha": float("nan")}, "alpha"),
        ({"n_parts": 4, "min_size": -1}, "min_size"),
        ({"n_parts": 200}, "n_parts"),
    ],
)
def test_partition_validation(kwargs: dict, word: str) -> None:
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match=word):
        partition(labels, **kwargs)


def test_partition_labels_must_be_1d() -> None:
    with pytest.raises(ValueError, match="labels"):
        partition(np.zeros((4, 4), np.int64), 2)


def test_shard(digits: Dataset) -> None:
    idx = np.array([5, 0, 7])
    s = shard(digits, idx)
    assert len(s) == 3
    assert np.array_equal(s.x, digits.x_train[idx]) and np.array_equal(s.y, digits.y_train[idx])
    s.x[0, 0] = 123.0
    assert digits.x_train[5, 0] != 123.0  # a copy, not a view
    with pytest.raises(ValueError, match="indices"):
        shard(digits, np.array([len(digits.y_train)]))
    with pytest.raises(ValueError, match="indices"):
        shard(digits, np.array([0.5]))
