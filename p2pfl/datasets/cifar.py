"""CIFAR-10 and CIFAR-100 in their binary versions, extracted or still in the publisher's .tar.gz.

Owns: the record layouts (CIFAR-10: 1 label byte + 3072 pixel bytes; CIFAR-100: coarse and fine
label bytes + 3072; pixels are the 1024 red, then green, then blue values of a 32x32 image,
row-major), the file names, the label-name files, and refusing the python versions.
Must not touch: torch, partitions. The python versions are pickles, and a pickle runs code when
it is loaded: they are refused with the reason, never opened.

Layout (--data-dir is the extracted folder, its parent, or a folder holding the .tar.gz):
    cifar-10-batches-bin/  data_batch_1.bin .. data_batch_5.bin  test_batch.bin  batches.meta.txt
    cifar-100-binary/      train.bin  test.bin  fine_label_names.txt  coarse_label_names.txt
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from p2pfl.datasets.base import DatasetError, PublishedDataset, check_dir, read_bytes, standardise_images

PIXELS = 3 * 32 * 32
PICKLE_REFUSAL = ("is the python version of {name}: its batches are pickles, and unpickling a file can run any "
                  "code in it, so p2pfl never opens them; download the binary version ({tarball}) instead")


class _Source:
    """The files of one CIFAR folder: on disk, or members of the publisher's .tar.gz."""

    def __init__(self, data_dir: Path, folder: str, tarball: str, python: tuple[str, str, tuple[str, ...]],
                 name: str) -> None:
        self.tar: tarfile.TarFile | None = None
        if (data_dir / folder).is_dir():
            self.root: Path = data_dir / folder
        elif data_dir.name == folder or any(data_dir.glob("*.bin")):
            self.root = data_dir
        elif (data_dir / tarball).is_file():
            self.root = data_dir / tarball
            try:
                self.tar = tarfile.open(self.root, "r:gz")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DatasetError(self.root, f"is not a readable .tar.gz ({exc})") from None
        else:
            _refuse_pickles(data_dir, python, name, tarball)
            raise DatasetError(data_dir, f"holds no {name} binary files: expected {folder}/ or {tarball}")

    def read(self, name: str, required: bool = True) -> bytes | None:
        if self.tar is None:
            path = self.root / name
            if not path.is_file():
                if required:
                    raise DatasetError(path, "is missing")
                return None
            return read_bytes(path)
        member = next((m for m in self.tar.getmembers() if m.isfile() and m.name.split("/")[-1] == name), None)
        if member is None:
            if required:
                raise DatasetError(self.root, f"has no member {name}")
            return None
        try:
            f = self.tar.extractfile(member)
            assert f is not None
            return f.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"{self.root}:{member.name}", f"cannot be read ({exc})") from None

    def where(self, name: str) -> str:
        return str(self.root / name) if self.tar is None else f"{self.root}:{name}"


def _refuse_pickles(data_dir: Path, python: tuple[str, str, tuple[str, ...]], name: str, tarball: str) -> None:
    """DatasetError with the reason when `data_dir` holds the python (pickle) version instead of the binary one."""
    folder, python_tarball, files = python
    for d in (data_dir / folder, data_dir):
        if d.is_dir() and any((d / f).is_file() for f in files):
            raise DatasetError(d, PICKLE_REFUSAL.format(name=name, tarball=tarball))
    if (data_dir / python_tarball).is_file():
        raise DatasetError(data_dir / python_tarball, PICKLE_REFUSAL.format(name=name, tarball=tarball))


def parse_records(raw: bytes, where: str, label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 3 x 32 x 32, int64 labels) of a binary batch; DatasetError on a bad size or label.

    With two label bytes (CIFAR-100) the second, the fine label, is the label.
    """
    record = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise DatasetError(where, f"is {len(raw)} bytes, not a whole number of {record}-byte records "
                                  f"({label_bytes} label byte{'s' if label_bytes > 1 else ''} + {PIXELS} pixels)")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    y = rows[:, label_bytes - 1].astype(np.int64)
    if y.max() >= num_classes:
        i = int(np.argmax(y >= num_classes))
        raise DatasetError(where, f"record {i} has label {int(y[i])}, outside the {num_classes} classes")
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), y


def _names(src: _Source, file: str, count: int) -> tuple[str, ...]:
    raw = src.read(file, required=False)
    names = tuple(line.strip() for line in (raw or b"").decode("utf-8", "replace").splitlines() if line.strip())
    return names if len(names) == count else tuple(str(i) for i in range(count))


def _dataset(name: str, src: _Source, train: list[str], test: str, label_bytes: int, classes: int,
             names_file: str) -> PublishedDataset:
    parts = [parse_records(src.read(f) or b"", src.where(f), label_bytes, classes) for f in train]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = parse_records(src.read(test) or b"", src.where(test), label_bytes, classes)
    x_train, x_test = standardise_images(x_tr, x_te)
    return PublishedDataset(x_train=x_train, y_train=y_tr, x_test=x_test, y_test=y_te, num_classes=classes,
                            input_shape=(3, 32, 32), name=name, classes=_names(src, names_file, classes),
                            notes={"source": str(src.root)})


def load_cifar10(data_dir: str | Path, **_: object) -> PublishedDataset:
    """CIFAR-10, binary version (50,000 + 10,000 32x32 colour images, 10 classes)."""
    src = _Source(check_dir(data_dir), "cifar-10-batches-bin", "cifar-10-binary.tar.gz", ("cifar-10-batches-py",
                  "cifar-10-python.tar.gz", ("data_batch_1", "test_batch", "batches.meta")), "CIFAR-10")
    return _dataset("cifar10", src, [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin", 1, 10,
                    "batches.meta.txt")


def load_cifar100(data_dir: str | Path, **_: object) -> PublishedDataset:
    """CIFAR-100, binary version (50,000 + 10,000 32x32 colour images, 100 fine classes)."""
    src = _Source(check_dir(data_dir), "cifar-100-binary", "cifar-100-binary.tar.gz", ("cifar-100-python",
                  "cifar-100-python.tar.gz", ("train", "test", "meta")), "CIFAR-100")
    return _dataset("cifar100", src, ["train.bin"], "test.bin", 2, 100, "fine_label_names.txt")
