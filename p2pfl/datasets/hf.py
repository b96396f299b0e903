"""HuggingFace datasets from disk: a `save_to_disk` folder or parquet files, through the `datasets` library.

Owns: finding the train and test splits, choosing the label, group and feature columns, turning
an Image column (decoded by `datasets`/Pillow) or numeric columns into arrays. Must not touch:
torch, partitions, the network (everything is read from the folder given; the `datasets`
library is an optional extra: pip install 'p2pfl[hf]').

Layouts:
    DIR/dataset_dict.json + DIR/train/ + DIR/test/     (DatasetDict.save_to_disk(DIR))
    DIR/train-*.parquet + DIR/test-*.parquet            (also DIR/data/..., or train.parquet / test.parquet)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.datasets.base import DatasetError, PublishedDataset, check_dir, standardise_images, standardise_table

TEST_SPLITS = ("test", "validation")


def _library() -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError("datasets", "the HuggingFace datasets library is not installed: "
                                       "pip install 'p2pfl[hf]'") from None
    logging.getLogger("datasets").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    return datasets


def _parquet_files(root: Path, split: str) -> list[str]:
    for d in (root, root / "data"):
        files = sorted({*d.glob(f"{split}-*.parquet"), *d.glob(f"{split}.parquet"), *d.glob(f"{split}/*.parquet")})
        if files:
            return [str(f) for f in files]
    return []


def _splits(root: Path) -> tuple[Any, Any, str]:
    lib = _library()
    if (root / "dataset_dict.json").is_file():
        try:
            dd = lib.load_from_disk(str(root), keep_in_memory=True)
        except Exception as exc:  # noqa: BLE001  # whatever a damaged folder makes the library raise
            raise DatasetError(root, f"is not a readable save_to_disk folder ({type(exc).__name__}: {exc})") from None
        test = next((s for s in TEST_SPLITS if s in dd), None)
        if "train" not in dd or test is None:
            raise DatasetError(root / "dataset_dict.json", f"has splits {', '.join(dd)}; needs train and test")
        return dd["train"], dd[test], str(root)
    train = _parquet_files(root, "train")
    test = next((f for s in TEST_SPLITS if (f := _parquet_files(root, s))), [])
    if not train or not test:
        raise DatasetError(root, "is neither a save_to_disk folder (dataset_dict.json) nor a folder of parquet files "
                                 "(train-*.parquet and test-*.parquet)")
    loaded = []
    for files in (train, test):
        try:
            loaded.append(lib.Dataset.from_parquet(files, keep_in_memory=True))
        except Exception as exc:  # noqa: BLE001
            raise DatasetError(files[0], f"is not a readable parquet file ({type(exc).__name__}: {exc})") from None
    return loaded[0], loaded[1], str(root)


def _features(ds: Any, column: str, where: str) -> np.ndarray:
    lib = _library()
    feature = ds.features[column]
    if isinstance(feature, lib.Image):
        images = [np.asarray(img.convert("L" if img.mode in ("L", "1") else "RGB"), dtype=np.uint8) for img in ds[column]]
        if len({a.shape for a in images}) != 1:
            raise DatasetError(where, f"column {column!r} holds images of different sizes")
        x = np.stack(images)
        return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    try:
        return np.asarray(ds.with_format("numpy")[column], dtype=np.float64)
    except (ValueError, TypeError):
        raise DatasetError(where, f"column {column!r} is neither an Image nor numbers of one shape") from None


def load_hf(data_dir: str | Path, label_column: str = "label", group_column: str = "", **_: Any) -> PublishedDataset:
    """A HuggingFace dataset saved to disk, or parquet files, with a label column and image or numeric features."""
    root = check_dir(data_dir)
    train, test, where = _splits(root)
    label = label_column or "label"
    for ds, split in ((train, "train"), (test, "test")):
        for col in (label, group_column):
            if col and col not in ds.column_names:
                raise DatasetError(f"{where} ({split})", f"has no column {col!r} (columns: {', '.join(ds.column_names)})")
    if train.column_names != test.column_names:
        raise DatasetError(where, f"train has columns {train.column_names}, test {test.column_names}")
    rest = [c for c in train.column_names if c not in (label, group_column)]
    if not rest:
        raise DatasetError(where, "has no feature column besides the label")
    image = len(rest) == 1 and isinstance(train.features[rest[0]], _library().Image)
    if image or len(rest) == 1:
        x_tr, x_te = _features(train, rest[0], f"{where} (train)"), _features(test, rest[0], f"{where} (test)")
    else:
        x_tr = np.stack([_features(train, c, f"{where} (train)") for c in rest], axis=1)
        x_te = np.stack([_features(test, c, f"{where} (test)") for c in rest], axis=1)
    if image:
        x_train, x_test = standardise_images(x_tr, x_te)
    elif x_tr.ndim != 2 or x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(where, f"features of shape {x_tr.shape[1:]} (train) and {x_te.shape[1:]} (test): expected "
                                  "one row of numbers per sample")
    else:
        x_train, x_test = standardise_table(x_tr, x_te)
    names = getattr(train.features[label], "names", None)
    y_tr, y_te = (np.asarray(ds[label]) for ds in (train, test))
    if not np.issubdtype(y_tr.dtype, np.integer) or not np.issubdtype(y_te.dtype, np.integer):
        raise DatasetError(where, f"column {label!r} must hold integer (or ClassLabel) labels")
    if min(y_tr.min(), y_te.min()) < 0:
        raise DatasetError(where, f"column {label!r} holds negative labels")
    classes = tuple(names) if names else tuple(str(i) for i in range(int(max(y_tr.max(), y_te.max())) + 1))
    g_tr = g_te = None
    group_names: tuple[str, ...] = ()
    if group_column:
        vals_tr, vals_te = [str(v) for v in train[group_column]], [str(v) for v in test[group_column]]
        group_names = tuple(sorted(set(vals_tr) | set(vals_te)))
        ids = {v: i for i, v in enumerate(group_names)}
        g_tr = np.asarray([ids[v] for v in vals_tr], dtype=np.int64)
        g_te = np.asarray([ids[v] for v in vals_te], dtype=np.int64)
    return PublishedDataset(x_train=x_train, y_train=y_tr.astype(np.int64), x_test=x_test, y_test=y_te.astype(np.int64),
                            num_classes=len(classes), input_shape=tuple(x_train.shape[1:]), name="hf",
                            groups_train=g_tr, groups_test=g_te, group_names=group_names, classes=classes,
                            notes={"source": where})
