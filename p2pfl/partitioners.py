"""The partitions people cite, by flwr-datasets' names, and the per-node label histogram of a split.

Owns: splitting a training set's indices over nodes, deterministic from the seed:

- `iid` and `dirichlet` (label skew, Dirichlet(alpha) per class): `data.partition`, unchanged, so
  runs made before this module exist bit for bit (flwr-datasets: IidPartitioner, DirichletPartitioner);
- `pathological`: every node holds exactly k = shards_per_node labels, each label's samples shared
  evenly among the nodes that hold it (flwr-datasets: PathologicalPartitioner);
- `shard`: McMahan et al. (2017): the samples sorted by label, cut into nodes x k shards of equal
  size, k random shards per node (flwr-datasets: ShardPartitioner);
- `natural`: whole writers / roles / users (a dataset's groups, LEAF's or a table column's) per node,
  every group on exactly one node, the groups dealt to balance sample counts (flwr-datasets:
  NaturalIdPartitioner, with more groups than nodes allowed);
- `size-skew`: IID labels, node sizes in Dirichlet(alpha) proportions (NIID-Bench's quantity skew;
  flwr-datasets' SizePartitioner family);

and `label_histogram` (nodes x classes counts). Must not touch: torch, files, models, sockets.
"""

from __future__ import annotations

import numpy as np

from p2pfl.data import DEFAULT_MIN_SIZE, DIRICHLET_MAX_TRIES, partition as _label_partition

PARTITIONERS = ("iid", "dirichlet", "pathological", "shard", "natural", "size-skew")


def partition(labels: np.ndarray, n_parts: int, kind: str = "iid", *, alpha: float = 0.5, shards_per_node: int = 2,
              groups: np.ndarray | None = None, seed: int = 0, min_size: int = DEFAULT_MIN_SIZE) -> list[np.ndarray]:
    """Split indices 0..len(labels)-1 into `n_parts` disjoint sorted int64 arrays by `kind` (see the module doc).

    ValueError naming the problem when the data cannot be split that way (too few samples, labels or groups).
    """
    if kind in ("iid", "dirichlet"):
        return _label_partition(labels, n_parts, kind, alpha, seed, min_size)
    if kind not in PARTITIONERS:
        raise ValueError(f"partition must be one of {', '.join(PARTITIONERS)}, got {kind!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a 1-D integer array")
    if isinstance(n_parts, bool) or not isinstance(n_parts, (int, np.integer)) or n_parts < 1:
        raise ValueError(f"n_parts must be a positive integer, got {n_parts!r}")
    rng = np.random.default_rng([seed, PARTITIONERS.index(kind)])
    if kind == "pathological":
        parts = _pathological(labels, n_parts, shards_per_node, rng)
    elif kind == "shard":
        parts = _shards(labels, n_parts, shards_per_node, rng)
    elif kind == "natural":
        parts = _natural(groups, len(labels), n_parts, rng)
    else:
        parts = _size_skew(len(labels), n_parts, alpha, rng, max(min_size, 1))
    smallest = min(len(p) for p in parts)
    if smallest < max(min_size, 1):
        raise ValueError(f"{kind} partition gives a node {smallest} samples, fewer than the minimum {max(min_size, 1)} "
                         f"({len(labels)} samples over {n_parts} nodes); use fewer nodes or another partition")
    return [np.sort(p).astype(np.int64) for p in parts]


def _check_k(k: int, classes: int, kind: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{kind} partition: shards_per_node must be a positive integer, got {k!r}")
    if kind == "pathological" and k > classes:
        raise ValueError(f"pathological partition: shards_per_node = {k} labels per node, but the data has {classes}")


def _pathological(labels: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    present = np.unique(labels)
    _check_k(k, len(present), "pathological")
    order = rng.permutation(present)
    # Node i takes k consecutive labels of a seeded cycle through them: k distinct labels per node, and
    # the labels spread over the nodes as evenly as n * k allows.
    held = [order[(i * k + np.arange(k)) % len(order)] for i in range(n)]
    holders: dict[int, list[int]] = {}
    for i, labs in enumerate(held):
        for c in labs:
            holders.setdefault(int(c), []).append(i)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c, nodes in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < len(nodes):
            raise ValueError(f"pathological partition: label {c} has {len(idx)} samples for {len(nodes)} nodes")
        for node, piece in zip(nodes, np.array_split(idx, len(nodes))):
            parts[node].append(piece)
    return [np.concatenate(p) for p in parts]


def _shards(labels: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    _check_k(k, len(np.unique(labels)), "shard")
    if n * k > len(labels):
        raise ValueError(f"shard partition: {n} nodes x {k} shards need {n * k} samples, the data has {len(labels)}")
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]  # sorted by label, seeded within a label
    shards = np.array_split(by_label, n * k)
    deal = rng.permutation(n * k)
    return [np.concatenate([shards[s] for s in deal[i * k:(i + 1) * k]]) for i in range(n)]


def _natural(groups: np.ndarray | None, size: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    if groups is None:
        raise ValueError("natural partition needs the writer/role of every row: a LEAF dataset (femnist, shakespeare) "
                         "or group_column naming a column of the table")
    groups = np.asarray(groups)
    if groups.shape != (size,):
        raise ValueError(f"natural partition: groups has shape {groups.shape}, the data {size} rows")
    ids, counts = np.unique(groups, return_counts=True)
    if len(ids) < n:
        raise ValueError(f"natural partition: the data has {len(ids)} writers/groups, fewer than the {n} nodes "
                         "(every node needs one of its own)")
    # Deal whole groups, largest first (ties in seeded order), each to the node with the fewest samples so far:
    # every group on exactly one node, sizes as even as whole groups allow.
    order = rng.permutation(len(ids))
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(n, dtype=np.int64)
    owner = np.empty(len(ids), dtype=np.int64)
    for rank, g in enumerate(order):
        node = rank if rank < n else int(np.argmin(load))  # every node gets one group first
        owner[g] = node
        load[node] += counts[g]
    row_owner = owner[np.searchsorted(ids, groups)]
    return [np.flatnonzero(row_owner == i) for i in range(n)]


def _size_skew(size: int, n: int, alpha: float, rng: np.random.Generator, need: int) -> list[np.ndarray]:
    if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
    if n * need > size:
        raise ValueError(f"size-skew partition: {n} nodes with at least {need} samples need {n * need}, the data has {size}")
    perm = rng.permutation(size)
    for _ in range(DIRICHLET_MAX_TRIES):
        q = rng.dirichlet(np.full(n, float(alpha)))
        cuts = (np.cumsum(q) * size).astype(np.int64)[:-1]
        parts = np.split(perm, cuts)
        if min(len(p) for p in parts) >= need:
            return parts
    raise ValueError(f"size-skew partition: no draw in {DIRICHLET_MAX_TRIES} gave each of {n} nodes {need} samples "
                     f"(alpha={alpha}); raise alpha or use fewer nodes")


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Counts of every label on every node: shape (nodes, num_classes), int64."""
    return np.stack([np.bincount(labels[p], minlength=num_classes)[:num_classes] for p in parts]).astype(np.int64)
