"""What every loader of `p2pfl.datasets` returns and how it fails.

Owns: `PublishedDataset` (a `data.Dataset` plus the writer/role of every row, where the publisher
gives one, and the class names), `DatasetError` (one line: the file and what is wrong with it),
reading a file that may be gzipped, and the standardisation every image loader applies.
Must not touch: torch, models, partitions, sockets. Nothing here unpickles anything.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from p2pfl.data import Dataset


class DatasetError(ValueError):
    """A dataset's files are missing or malformed; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass
class PublishedDataset(Dataset):
    """A dataset read from its publisher's files.

    groups_train / groups_test: the natural unit of every row (a LEAF writer or role, a table's
    column), as integers shared between the splits (the same writer has the same id in both), or
    None where the publisher gives none. classes: the label names, index = label.
    """

    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)  # where the files came from (for the run record)

    def __post_init__(self) -> None:
        super().__post_init__()
        for part in ("train", "test"):
            g = getattr(self, f"groups_{part}")
            if g is not None and (g.dtype != np.int64 or len(g) != len(getattr(self, f"y_{part}"))):
                raise ValueError(f"groups_{part} must be int64 with one entry per row")


def read_bytes(path: Path) -> bytes:
    """The bytes of `path`, un-gzipped when it ends in .gz; DatasetError when it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, f"cannot be read ({exc.strerror or exc})") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(path, f"is not a whole gzip file ({exc})") from None


def find_file(directory: Path, names: list[str], what: str) -> Path:
    """The first of `names` (each also tried with .gz) that exists in `directory`; else DatasetError."""
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetError(directory, f"no {what}: expected {names[0]} (or {names[0]}.gz)")


def check_dir(data_dir: str | Path) -> Path:
    """`data_dir` as a Path, DatasetError unless it is an existing directory."""
    if not str(data_dir):
        raise DatasetError("data_dir", "is empty: this dataset is read from files; give --data-dir DIR")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DatasetError(path, "is not a directory (--data-dir)")
    return path


def standardise_images(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) -> float32 in [0, 1], then per-channel mean/std of the *training* set.

    Per-channel standardisation is what the common CIFAR/MNIST baselines do (torchvision Normalize).
    """
    x_train = train.astype(np.float32) / 255.0
    x_test = test.astype(np.float32) / 255.0
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std = x_train.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
    std[std < 1e-6] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def standardise_table(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature columns standardised with the training mean/std (constant columns keep std 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std < 1e-6] = 1.0
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)
