"""An image folder (torchvision's ImageFolder layout), decoded with Pillow.

Owns: finding the class folders and image files, decoding them (grayscale when every training
image is, else RGB), checking that every image has the same size, and the class order (sorted
folder names, as ImageFolder numbers them). Must not touch: torch, partitions.

Layout:  DIR/train/<class>/*.png|jpg|jpeg|bmp|gif|webp   DIR/test/<class>/...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from p2pfl.datasets.base import DatasetError, PublishedDataset, check_dir, standardise_images

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _files(root: Path, split: str, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    d = root / split
    if not d.is_dir():
        raise DatasetError(root, f"has no {split}/ folder (expected {split}/<class>/<images>)")
    found = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not found:
        raise DatasetError(d, "holds no class folders")
    names = classes if classes is not None else found
    extra = sorted(set(found) - set(names))
    if extra:
        raise DatasetError(d / extra[0], "is a class that the train/ folder does not have")
    files = [(p, names.index(c)) for c in found for p in sorted((d / c).iterdir())
             if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if not files:
        raise DatasetError(d, f"holds no images ({', '.join(EXTENSIONS)})")
    return names, files


def _decode(files: list[tuple[Path, int]], mode: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    arrays, size = [], None
    for path, _ in files:
        try:
            with Image.open(path) as img:
                if mode is None:
                    mode = "L" if img.mode in ("L", "1", "I;16") else "RGB"
                pixels = np.asarray(img.convert(mode), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(path, f"is not a readable image ({exc})") from None
        if size is None:
            size = pixels.shape[:2]
        elif pixels.shape[:2] != size:
            raise DatasetError(path, f"is {pixels.shape[1]}x{pixels.shape[0]} pixels; the images before it are "
                                     f"{size[1]}x{size[0]} (resize them to one size)")
        arrays.append(pixels)
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray([c for _, c in files], dtype=np.int64), mode or "RGB"


def load_imagefolder(data_dir: str | Path, **_: object) -> PublishedDataset:
    """train/<class>/ and test/<class>/ folders of images of one size."""
    root = check_dir(data_dir)
    classes, train = _files(root, "train", None)
    _, test = _files(root, "test", classes)
    if len(classes) < 2:
        raise DatasetError(root / "train", "holds one class folder only: nothing to learn")
    x_tr, y_tr, mode = _decode(train, None)
    x_te, y_te, _ = _decode(test, mode)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(test[0][0], f"test images are {x_te.shape[1:]}, training images {x_tr.shape[1:]}")
    x_train, x_test = standardise_images(x_tr, x_te)
    return PublishedDataset(x_train=x_train, y_train=y_tr, x_test=x_test, y_test=y_te, num_classes=len(classes),
                            input_shape=tuple(x_train.shape[1:]), name="imagefolder", classes=tuple(classes),
                            notes={"source": str(root)})
