"""The partitions people cite (p2pfl/partitioners.py): what each promises, checked on synthetic labels."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.data import partition as data_partition
from p2pfl.partitioners import PARTITIONERS, label_histogram, partition

LABELS = np.repeat(np.arange(10), 200)  # 2,000 samples, 10 balanced classes
GROUPS = np.arange(len(LABELS)) % 37  # 37 writers


def _disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "a sample is on two nodes"
    assert joined.min() >= 0 and joined.max() < n
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


def _alpha_hat(hist: np.ndarray) -> float:
    """Moment estimate of a symmetric Dirichlet's alpha from per-class shares over n nodes.

    For p ~ Dir(alpha * 1_n): E[sum_k p_k^2] = (1 - 1/n) / (n alpha + 1) + 1/n; solve for alpha.
    """
    n = hist.shape[0]
    shares = hist / hist.sum(axis=0, keepdims=True)
    h = float((shares**2).sum(axis=0).mean())
    return ((1 - 1 / n) / (h - 1 / n) - 1) / n


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_dirichlet_label_shares_match_alpha(alpha: float) -> None:
    """The concentration of each class over the nodes estimates alpha back (100 classes, 10 nodes, 3 seeds).

    data.partition stops giving a class to nodes already above their fair size (NIID-Bench's balancing), which
    concentrates the shares a little: the estimate is allowed to sit up to 35% below alpha, 15% above.
    """
    labels = np.repeat(np.arange(100), 300)
    estimates = [_alpha_hat(label_histogram(labels, partition(labels, 10, "dirichlet", alpha=alpha, seed=s), 100))
                 for s in range(3)]
    assert 0.65 * alpha <= np.mean(estimates) <= 1.15 * alpha, estimates


def test_dirichlet_skew_orders_with_alpha() -> None:
    est = {a: _alpha_hat(label_histogram(LABELS, partition(LABELS, 8, "dirichlet", alpha=a, seed=1), 10))
           for a in (0.1, 1.0, 100.0)}
    assert est[0.1] < est[1.0] < est[100.0]


def test_iid_and_dirichlet_are_data_partition_bit_for_bit() -> None:
    """Runs made before partitioners.py split exactly as they did."""
    for kind in ("iid", "dirichlet"):
        new = partition(LABELS, 8, kind, alpha=0.3, seed=5)
        old = data_partition(LABELS, 8, kind, 0.3, 5)
        assert all(np.array_equal(a, b) for a, b in zip(new, old))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_exactly_k_labels_per_node(k: int) -> None:
    parts = partition(LABELS, 16, "pathological", shards_per_node=k, seed=2)
    _disjoint_cover(parts, len(LABELS))
    hist = label_histogram(LABELS, parts, 10)
    assert all((row > 0).sum() == k for row in hist), hist
    assert (hist.sum(axis=0) > 0).all(), "16 nodes x k labels cover all 10 labels"
    # each label's samples are shared evenly among its holders
    for c in range(10):
        held = hist[:, c][hist[:, c] > 0]
        assert held.max() - held.min() <= 1


def test_pathological_refuses_more_labels_than_the_data_has() -> None:
    with pytest.raises(ValueError, match="shards_per_node = 11 labels per node, but the data has 10"):
        partition(LABELS, 4, "pathological", shards_per_node=11)


def test_shard_partition_is_mcmahans() -> None:
    """Label-sorted shards of equal size, k per node: every node at most k labels (usually k) and equal sizes."""
    parts = partition(LABELS, 20, "shard", shards_per_node=2, seed=3)
    _disjoint_cover(parts, len(LABELS))
    assert {len(p) for p in parts} == {100}
    hist = label_histogram(LABELS, parts, 10)
    assert all(1 <= (row > 0).sum() <= 2 for row in hist)
    assert np.mean([(row > 0).sum() for row in hist]) > 1.5


def test_natural_keeps_every_writer_on_one_node() -> None:
    parts = partition(LABELS, 8, "natural", groups=GROUPS, seed=4)
    _disjoint_cover(parts, len(LABELS))
    assert sum(len(p) for p in parts) == len(LABELS)
    owners = {}
    for node, p in enumerate(parts):
        for g in np.unique(GROUPS[p]):
            assert g not in owners, f"writer {g} is on nodes {owners[g]} and {node}"
            owners[g] = node
    assert len(owners) == 37
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2 * np.bincount(GROUPS).max()  # whole writers, dealt to balance


def test_natural_needs_groups_and_enough_of_them() -> None:
    with pytest.raises(ValueError, match="needs the writer/role of every row"):
        partition(LABELS, 8, "natural")
    with pytest.raises(ValueError, match="3 writers/groups, fewer than the 8 nodes"):
        partition(LABELS, 8, "natural", groups=np.arange(len(LABELS)) % 3)


def test_size_skew_varies_sizes_not_labels() -> None:
    skewed = partition(LABELS, 10, "size-skew", alpha=0.5, seed=6)
    even = partition(LABELS, 10, "size-skew", alpha=100.0, seed=6)
    _disjoint_cover(skewed, len(LABELS))
    cv = lambda parts: np.std([len(p) for p in parts]) / np.mean([len(p) for p in parts])  # noqa: E731
    assert cv(skewed) > 3 * cv(even)
    hist = label_histogram(LABELS, skewed, 10)
    big = hist[hist.sum(axis=1) >= 200]
    shares = big / big.sum(axis=1, keepdims=True)
    assert np.abs(shares - 0.1).max() < 0.08  # labels stay IID on every node big enough to tell


@pytest.mark.parametrize("kind", PARTITIONERS)
def test_same_seed_same_split_other_seed_other_split(kind: str) -> None:
    kwargs = {"alpha": 0.5, "shards_per_node": 2, "groups": GROUPS}
    a = partition(LABELS, 8, kind, seed=11, **kwargs)
    b = partition(LABELS, 8, kind, seed=11, **kwargs)
    c = partition(LABELS, 8, kind, seed=12, **kwargs)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_label_histogram_counts_every_row_once() -> None:
    parts = partition(LABELS, 5, "dirichlet", alpha=0.3, seed=0)
    hist = label_histogram(LABELS, parts, 10)
    assert hist.shape == (5, 10) and hist.dtype == np.int64
    assert np.array_equal(hist.sum(axis=0), np.bincount(LABELS))
    assert [int(h) for h in hist.sum(axis=1)] == [len(p) for p in parts]
