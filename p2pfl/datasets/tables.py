"""Tables from disk: NPZ arrays and CSV files, each a train and a test file.

Owns: the two layouts, their checks (shapes, counts, numeric features, one label column) and the
mapping of string labels and group values to integers. Must not touch: torch, partitions.
NPZ files are read with allow_pickle=False: an object array (which only a pickle can hold) is an error.

Layouts:
    npz: DIR/train.npz DIR/test.npz, each with arrays x (N, ...) numbers, y (N,) integer labels >= 0 and,
         optionally, group (N,) integers (the natural unit for partition = natural).
         x of 4 dimensions is images (N, C, H, W); uint8 pixels are scaled to [0, 1].
    csv: DIR/train.csv DIR/test.csv with a header row; the label column (label_column, default "label"),
         an optional group column (group_column), every other column a number.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.datasets.base import (DatasetError, PublishedDataset, check_dir, find_file, read_bytes,
                                 standardise_table)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # allow_pickle=False refusing an object array says so with ValueError
        raise DatasetError(path, f"cannot be read without unpickling, which p2pfl never does ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DatasetError(path, f"is not a readable .npz file ({type(exc).__name__}: {exc})") from None


def _npz_split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    arrays = _read_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise DatasetError(path, f"has no array '{key}' (it has: {', '.join(sorted(arrays)) or 'none'})")
    x, y, g = arrays["x"], arrays["y"], arrays.get("group")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or x.ndim < 2:
        raise DatasetError(path, f"x must be numbers of shape (N, features...), got {x.dtype} {x.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DatasetError(path, f"y must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
    if len(y) != len(x):
        raise DatasetError(path, f"x has {len(x)} rows but y has {len(y)}")
    if len(y) == 0 or y.min() < 0:
        raise DatasetError(path, "y must hold at least one label, all >= 0")
    if g is not None and (not np.issubdtype(g.dtype, np.integer) or g.shape != y.shape):
        raise DatasetError(path, f"group must be one integer per row, got {g.dtype} {g.shape}")
    return x, y.astype(np.int64), None if g is None else g.astype(np.int64)


def load_npz(data_dir: str | Path, **_: object) -> PublishedDataset:
    """train.npz and test.npz with arrays x, y and optionally group."""
    root = check_dir(data_dir)
    p_tr, p_te = find_file(root, ["train.npz"], "training file"), find_file(root, ["test.npz"], "test file")
    x_tr, y_tr, g_tr = _npz_split(p_tr)
    x_te, y_te, g_te = _npz_split(p_te)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DatasetError(p_te, f"x rows have shape {x_te.shape[1:]} but {p_tr.name}'s have {x_tr.shape[1:]}")
    if (g_tr is None) != (g_te is None):
        raise DatasetError(p_te if g_te is None else p_tr, "has no group array but the other file has one")
    if x_tr.ndim == 4:  # images: per-channel standardisation, as the image loaders do
        scale = 255.0 if x_tr.dtype == np.uint8 else 1.0
        a, b = x_tr.astype(np.float32) / scale, x_te.astype(np.float32) / scale
        mean = a.mean(axis=(0, 2, 3), keepdims=True)
        std = a.std(axis=(0, 2, 3), keepdims=True)
        std[std < 1e-6] = 1.0
        x_train, x_test = ((a - mean) / std).astype(np.float32), ((b - mean) / std).astype(np.float32)
    else:
        shape = x_tr.shape[1:]
        flat_tr, flat_te = standardise_table(x_tr.reshape(len(x_tr), -1).astype(np.float64),
                                             x_te.reshape(len(x_te), -1).astype(np.float64))
        x_train, x_test = flat_tr.reshape(-1, *shape), flat_te.reshape(-1, *shape)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    if classes < 2:
        raise DatasetError(p_tr, "y holds one class only: nothing to learn")
    return PublishedDataset(x_train=x_train, y_train=y_tr, x_test=x_test, y_test=y_te, num_classes=classes,
                            input_shape=tuple(x_train.shape[1:]), name="npz", groups_train=g_tr, groups_test=g_te,
                            classes=tuple(str(c) for c in range(classes)), notes={"source": str(root)})


def _read_csv(path: Path, label: str, group: str) -> tuple[list[str], list[list[str]], list[str], list[str] | None]:
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"is not UTF-8 text ({exc})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DatasetError(path, "is empty: expected a header row")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    if label not in header:
        raise DatasetError(path, f"has no label column {label!r} (columns: {', '.join(header)}); set label_column")
    if group and group not in header:
        raise DatasetError(path, f"has no group column {group!r} (columns: {', '.join(header)})")
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise DatasetError(path, f"line {i + 2} has {len(row)} fields, the header {len(header)}")
    li, gi = header.index(label), header.index(group) if group else -1
    features = [h for j, h in enumerate(header) if j not in (li, gi)]
    keep = [j for j in range(len(header)) if j not in (li, gi)]
    labels = [r[li].strip() for r in body]
    groups = [r[gi].strip() for r in body] if group else None
    return features, [[r[j] for j in keep] for r in body], labels, groups


def _numbers(path: Path, rows: list[list[str]], columns: list[str]) -> np.ndarray:
    try:
        return np.asarray([[float(v) for v in r] for r in rows], dtype=np.float64).reshape(len(rows), len(columns))
    except ValueError:
        for i, r in enumerate(rows):
            for name, v in zip(columns, r):
                try:
                    float(v)
                except ValueError:
                    raise DatasetError(path, f"line {i + 2}, column {name!r}: {v!r} is not a number") from None
        raise


def _codes(values: list[str], table: dict[str, int]) -> np.ndarray:
    return np.asarray([table[v] for v in values], dtype=np.int64)


def load_csv(data_dir: str | Path, label_column: str = "label", group_column: str = "", **_: Any) -> PublishedDataset:
    """train.csv and test.csv: numeric feature columns, a label column and optionally a group column."""
    root = check_dir(data_dir)
    p_tr, p_te = find_file(root, ["train.csv"], "training file"), find_file(root, ["test.csv"], "test file")
    f_tr, rows_tr, lab_tr, grp_tr = _read_csv(p_tr, label_column or "label", group_column)
    f_te, rows_te, lab_te, grp_te = _read_csv(p_te, label_column or "label", group_column)
    if f_tr != f_te:
        raise DatasetError(p_te, f"has feature columns {f_te}, {p_tr.name} has {f_tr}")
    if not rows_tr or not rows_te:
        raise DatasetError(p_tr if not rows_tr else p_te, "has a header but no rows")
    if not f_tr:
        raise DatasetError(p_tr, "has no feature columns besides the label")
    x_tr, x_te = standardise_table(_numbers(p_tr, rows_tr, f_tr), _numbers(p_te, rows_te, f_te))
    # Labels: integers stay themselves (0..K-1 as published); anything else is numbered in sorted order.
    names = sorted(set(lab_tr) | set(lab_te))
    if all(v.isdigit() for v in names):
        classes = tuple(str(i) for i in range(max(int(v) for v in names) + 1))
        table = {v: int(v) for v in names}
    else:
        classes, table = tuple(names), {v: i for i, v in enumerate(names)}
    if len(classes) < 2:
        raise DatasetError(p_tr, f"column {label_column!r} holds one class only: nothing to learn")
    g_tr = g_te = None
    group_names: tuple[str, ...] = ()
    if group_column:
        assert grp_tr is not None and grp_te is not None
        group_names = tuple(sorted(set(grp_tr) | set(grp_te)))
        ids = {v: i for i, v in enumerate(group_names)}
        g_tr, g_te = _codes(grp_tr, ids), _codes(grp_te, ids)
    return PublishedDataset(x_train=x_tr, y_train=_codes(lab_tr, table), x_test=x_te, y_test=_codes(lab_te, table),
                            num_classes=len(classes), input_shape=(len(f_tr),), name="csv", groups_train=g_tr,
                            groups_test=g_te, group_names=group_names, classes=classes, notes={"source": str(root)})
