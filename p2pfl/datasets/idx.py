"""MNIST, Fashion-MNIST and EMNIST in the IDX format their publishers ship (gzipped or not).

Owns: parsing IDX files (big-endian header: two zero bytes, the type code 0x08 = unsigned byte,
the number of dimensions, one 4-byte size per dimension, then the data), checking magic, sizes
and counts, the file names of each dataset and EMNIST's transposed images and 1-based letters.
Must not touch: torch, partitions.

Layout (files exactly as downloaded; each may end in .gz):
    mnist, fashion-mnist:  train-images-idx3-ubyte  train-labels-idx1-ubyte
                           t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
    emnist-SPLIT:          emnist-SPLIT-train-images-idx3-ubyte  emnist-SPLIT-train-labels-idx1-ubyte
                           emnist-SPLIT-test-images-idx3-ubyte   emnist-SPLIT-test-labels-idx1-ubyte
(EMNIST's gzip.zip unpacks to a folder `gzip/` holding these; point --data-dir at it.)
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from p2pfl.datasets.base import DatasetError, PublishedDataset, check_dir, find_file, read_bytes, standardise_images

UBYTE = 0x08
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
# EMNIST splits: number of classes, and whether labels start at 1 (letters: 1..26)
EMNIST_SPLITS = {"balanced": 47, "byclass": 62, "bymerge": 47, "digits": 10, "letters": 26, "mnist": 10}


def parse_idx(path: Path, dims: int) -> np.ndarray:
    """The array of an IDX file with `dims` dimensions of unsigned bytes; DatasetError naming the problem."""
    raw = read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(path, f"is {len(raw)} bytes: too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    magic = int.from_bytes(raw[:4], "big")
    if zero != 0 or dtype != UBYTE or ndim != dims:
        raise DatasetError(path, f"wrong magic number 0x{magic:08x}: expected 0x{0x800 + dims:08x} "
                                 f"(unsigned bytes, {dims} dimension{'s' if dims > 1 else ''})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(path, f"is truncated: {len(raw)} bytes, the header alone needs {header}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    need = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != need:
        what = "truncated" if len(raw) < need else "longer than its header says"
        raise DatasetError(path, f"is {what}: the header gives shape {tuple(shape)}, {need} bytes, the file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_pair(directory: Path, images: str, labels: str, num_classes: int, label_offset: int = 0
              ) -> tuple[np.ndarray, np.ndarray, Path]:
    """(images N x H x W, int64 labels, the images file) of one split; counts and labels checked."""
    img_path = find_file(directory, [images], "images file")
    lab_path = find_file(directory, [labels], "labels file")
    x = parse_idx(img_path, 3)
    y = parse_idx(lab_path, 1).astype(np.int64) - label_offset
    if len(x) != len(y):
        raise DatasetError(lab_path, f"has {len(y)} labels but {img_path.name} has {len(x)} images")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0]) + label_offset
        raise DatasetError(lab_path, f"has label {bad}, outside the {num_classes} classes of this dataset")
    return x, y, img_path


def _load(directory: Path, name: str, prefix: str, test: str, num_classes: int, transpose: bool = False,
          label_offset: int = 0, classes: tuple[str, ...] = ()) -> PublishedDataset:
    x_tr, y_tr, p_tr = read_pair(directory, f"{prefix}train-images-idx3-ubyte", f"{prefix}train-labels-idx1-ubyte",
                                 num_classes, label_offset)
    x_te, y_te, p_te = read_pair(directory, f"{prefix}{test}-images-idx3-ubyte", f"{prefix}{test}-labels-idx1-ubyte",
                                 num_classes, label_offset)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(p_te, f"holds {x_te.shape[1]}x{x_te.shape[2]} images but {p_tr.name} holds "
                                 f"{x_tr.shape[1]}x{x_tr.shape[2]}")
    if transpose:  # EMNIST stores each image column-major: transposed, it reads upright like MNIST
        x_tr, x_te = x_tr.transpose(0, 2, 1), x_te.transpose(0, 2, 1)
    x_train, x_test = standardise_images(x_tr[:, None], x_te[:, None])
    return PublishedDataset(x_train=x_train, y_train=y_tr, x_test=x_test, y_test=y_te, num_classes=num_classes,
                            input_shape=tuple(x_train.shape[1:]), name=name,
                            classes=classes or tuple(str(c) for c in range(num_classes)),
                            notes={"train": str(p_tr), "test": str(p_te)})


def load_mnist(data_dir: str | Path, **_: object) -> PublishedDataset:
    """MNIST (60,000 + 10,000 28x28 digits)."""
    return _load(check_dir(data_dir), "mnist", "", "t10k", 10)


def load_fashion_mnist(data_dir: str | Path, **_: object) -> PublishedDataset:
    """Fashion-MNIST (60,000 + 10,000 28x28 clothes), the same file names as MNIST."""
    return _load(check_dir(data_dir), "fashion-mnist", "", "t10k", 10, classes=FASHION_CLASSES)


def emnist_loader(split: str):  # -> Loader
    """The loader of EMNIST's `split` (balanced, byclass, bymerge, digits, letters, mnist)."""
    classes = EMNIST_SPLITS[split]

    def load(data_dir: str | Path, **_: object) -> PublishedDataset:
        return _load(check_dir(data_dir), f"emnist-{split}", f"emnist-{split}-", "test", classes, transpose=True,
                     label_offset=1 if split == "letters" else 0)

    load.__doc__ = f"EMNIST {split} ({classes} classes, 28x28, images transposed upright)."
    return load
