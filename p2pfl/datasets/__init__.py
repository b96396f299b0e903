"""Datasets read from the user's disk in the formats their publishers ship, chosen by name.

Owns: the registry (`register`, `get`, `names`, `load`): each name maps to a loader
`load(data_dir, label_column=..., group_column=...) -> PublishedDataset`, the model that fits it
by default and whether its files come with a natural partition. The loaders live one format per
module: `idx` (MNIST, Fashion-MNIST, EMNIST), `cifar` (CIFAR-10/100 binary), `leaf` (FEMNIST,
Shakespeare), `tables` (NPZ, CSV), `images` (an image folder), `hf` (HuggingFace save_to_disk or
parquet). Must not touch: torch, models, partitions, sockets; nothing is ever downloaded or
unpickled. A missing or malformed file raises `DatasetError` naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pfl.datasets import cifar, hf, idx, images, leaf, tables
from p2pfl.datasets.base import DatasetError, PublishedDataset

Loader = Callable[..., PublishedDataset]

__all__ = ["DatasetError", "DatasetInfo", "PublishedDataset", "get", "load", "names", "register"]


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: how to load it, the model that fits it, what its files give."""

    name: str
    loader: Loader
    model: str  # the default model (p2pfl.models.MODELS); "auto": chosen from the loaded input shape
    natural: bool = False  # its rows may carry a writer/role (partition = natural works without a column)
    summary: str = ""


_REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> None:
    """Add a dataset under `info.name` (a plug-in may add its own); a name is registered once."""
    if info.name in _REGISTRY:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info


def names() -> tuple[str, ...]:
    """Every registered dataset name, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> DatasetInfo:
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def load(name: str, data_dir: str | Path, **options: Any) -> PublishedDataset:
    """The dataset `name` read from `data_dir`; DatasetError naming the file when something is wrong.

    options: label_column and group_column (tables and HuggingFace datasets). Loading is
    deterministic: the same files give the same arrays (no shuffling here; partitions are seeded).
    """
    return get(name).loader(data_dir, **options)


for _info in (
    DatasetInfo("mnist", idx.load_mnist, "cnn28", summary="MNIST, IDX files"),
    DatasetInfo("fashion-mnist", idx.load_fashion_mnist, "cnn28", summary="Fashion-MNIST, IDX files"),
    *(DatasetInfo(f"emnist-{s}", idx.emnist_loader(s), "cnn28", summary=f"EMNIST {s}, IDX files")
      for s in idx.EMNIST_SPLITS),
    DatasetInfo("cifar10", cifar.load_cifar10, "cnn32", summary="CIFAR-10, binary version"),
    DatasetInfo("cifar100", cifar.load_cifar100, "cnn32", summary="CIFAR-100, binary version"),
    DatasetInfo("femnist", leaf.load_femnist, "cnn28", natural=True, summary="LEAF FEMNIST JSON (by writer)"),
    DatasetInfo("shakespeare", leaf.load_shakespeare, "char-lstm", natural=True,
                summary="LEAF Shakespeare JSON (by role)"),
    DatasetInfo("npz", tables.load_npz, "auto", natural=True, summary="train.npz / test.npz arrays x, y[, group]"),
    DatasetInfo("csv", tables.load_csv, "auto", summary="train.csv / test.csv with a label column"),
    DatasetInfo("imagefolder", images.load_imagefolder, "auto", summary="train/<class>/*.png, test/<class>/*.png"),
    DatasetInfo("hf", hf.load_hf, "auto", summary="HuggingFace save_to_disk folder or parquet files"),
):
    register(_info)
