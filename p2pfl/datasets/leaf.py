"""LEAF's FEMNIST and Shakespeare JSON, with their natural partition by writer or role.

Owns: reading LEAF's JSON files (`{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}`), checking that every count, row and label agrees, numbering the users (the same
user has the same group id in train and test, which is what `natural` partitions by and what a
node's local test split is made of), and Shakespeare's character alphabet (LEAF's own, 80 letters).
Must not touch: torch, partitions.

Layout: the output of LEAF's preprocess.sh, `data/train/*.json` and `data/test/*.json`:
    DIR/train/*.json   DIR/test/*.json      (DIR may also be LEAF's data/<name>/data)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.datasets.base import DatasetError, PublishedDataset, check_dir, read_bytes

FEMNIST_CLASSES = 62  # 10 digits, 26 upper-case, 26 lower-case letters
FEMNIST_PIXELS = 28 * 28
# LEAF's models/shakespeare/lang_utils ALL_LETTERS: the model's 80 input and output classes
SHAKESPEARE_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SHAKESPEARE_SEQ = 80


def _split_files(root: Path, split: str) -> list[Path]:
    for d in (root / split, root / "data" / split):
        if d.is_dir():
            files = sorted(d.glob("*.json"))
            if not files:
                raise DatasetError(d, "holds no .json files")
            return files
    raise DatasetError(root, f"has no {split}/ folder of LEAF .json files")


def read_leaf_json(path: Path) -> dict[str, tuple[list[Any], list[Any]]]:
    """user -> (x rows, y labels) of one LEAF file, every count checked; DatasetError naming file and user."""
    try:
        doc = json.loads(read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("users", "num_samples", "user_data")):
        raise DatasetError(path, "is not a LEAF file: it needs the keys users, num_samples and user_data")
    users, counts, data = doc["users"], doc["num_samples"], doc["user_data"]
    if not isinstance(users, list) or not isinstance(counts, list) or not isinstance(data, dict):
        raise DatasetError(path, "users and num_samples must be lists and user_data an object")
    if len(users) != len(counts):
        raise DatasetError(path, f"lists {len(users)} users but {len(counts)} num_samples")
    out: dict[str, tuple[list[Any], list[Any]]] = {}
    for user, count in zip(users, counts):
        entry = data.get(user)
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), list) or not isinstance(entry.get("y"), list):
            raise DatasetError(path, f"user {user!r} has no user_data with lists x and y")
        if not len(entry["x"]) == len(entry["y"]) == count:
            raise DatasetError(path, f"user {user!r}: num_samples says {count} but x has {len(entry['x'])} rows "
                                     f"and y {len(entry['y'])}")
        if user in out:
            raise DatasetError(path, f"user {user!r} is listed twice")
        out[str(user)] = (entry["x"], entry["y"])
    return out


def _read_split(files: list[Path]) -> tuple[dict[str, tuple[list[Any], list[Any]]], dict[str, Path]]:
    users: dict[str, tuple[list[Any], list[Any]]] = {}
    where: dict[str, Path] = {}
    for path in files:
        for user, rows in read_leaf_json(path).items():
            if user in users:
                raise DatasetError(path, f"user {user!r} is also in {where[user].name}")
            users[user], where[user] = rows, path
    return users, where


def _femnist_rows(user: str, xs: list[Any], ys: list[Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    for i, row in enumerate(xs):
        if not isinstance(row, list) or len(row) != FEMNIST_PIXELS:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise DatasetError(path, f"user {user!r} row {i}: x rows must have {FEMNIST_PIXELS} pixels (28x28), got {got}")
    try:
        x = np.asarray(xs, dtype=np.float32)
        y = np.asarray(ys, dtype=np.int64)
    except (ValueError, TypeError):
        raise DatasetError(path, f"user {user!r}: x must be rows of {FEMNIST_PIXELS} numbers and y integers") from None
    if x.ndim != 2 or x.shape[1] != FEMNIST_PIXELS:
        raise DatasetError(path, f"user {user!r}: x rows must have {FEMNIST_PIXELS} pixels (28x28), got shape {x.shape}")
    if y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= FEMNIST_CLASSES)):
        raise DatasetError(path, f"user {user!r}: labels must lie in [0, {FEMNIST_CLASSES})")
    return x, y


def _shakespeare_rows(user: str, xs: list[Any], ys: list[Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(SHAKESPEARE_LETTERS)}
    x = np.zeros((len(xs), SHAKESPEARE_SEQ), dtype=np.float32)
    y = np.zeros(len(ys), dtype=np.int64)
    for i, (line, nxt) in enumerate(zip(xs, ys)):
        if not isinstance(line, str) or len(line) != SHAKESPEARE_SEQ or not isinstance(nxt, str) or len(nxt) != 1:
            raise DatasetError(path, f"user {user!r} row {i}: x must be a {SHAKESPEARE_SEQ}-character string and y "
                                     "one character")
        try:
            x[i] = [index[c] for c in line]  # indices as float32: exact below 2**24, cast back by the model
            y[i] = index[nxt]
        except KeyError as exc:
            raise DatasetError(path, f"user {user!r} row {i}: character {exc.args[0]!r} is not in LEAF's "
                                     f"{len(SHAKESPEARE_LETTERS)}-letter alphabet") from None
    return x, y


def _load(data_dir: str | Path, name: str, rows: Any, num_classes: int, classes: tuple[str, ...]) -> PublishedDataset:
    root = check_dir(data_dir)
    train, where_train = _read_split(_split_files(root, "train"))
    test, where_test = _read_split(_split_files(root, "test"))
    names = sorted(set(train) | set(test))
    gid = {u: i for i, u in enumerate(names)}
    parts: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = {"train": ([], [], []),
                                                                                     "test": ([], [], [])}
    for split, users, where in (("train", train, where_train), ("test", test, where_test)):
        for user in sorted(users):
            x, y = rows(user, *users[user], where[user])
            xs, ys, gs = parts[split]
            xs.append(x)
            ys.append(y)
            gs.append(np.full(len(y), gid[user], dtype=np.int64))
    arrays = {}
    for split in ("train", "test"):
        xs, ys, gs = parts[split]
        if not ys or not sum(len(y) for y in ys):
            raise DatasetError(root / split, "holds no samples")
        arrays[split] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(gs))
    x_train, x_test = arrays["train"][0], arrays["test"][0]
    if name == "femnist":  # one channel of 28x28, standardised with the training pixels' mean and std
        mean, std = float(x_train.mean()), float(x_train.std()) or 1.0
        x_train = ((x_train - mean) / std).reshape(-1, 1, 28, 28).astype(np.float32)
        x_test = ((x_test - mean) / std).reshape(-1, 1, 28, 28).astype(np.float32)
    return PublishedDataset(x_train=x_train, y_train=arrays["train"][1], x_test=x_test, y_test=arrays["test"][1],
                            num_classes=num_classes, input_shape=tuple(x_train.shape[1:]), name=name,
                            groups_train=arrays["train"][2], groups_test=arrays["test"][2],
                            group_names=tuple(names), classes=classes, notes={"source": str(root)})


def load_femnist(data_dir: str | Path, **_: object) -> PublishedDataset:
    """LEAF FEMNIST: 28x28 handwritten characters, 62 classes, one group per writer."""
    classes = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    return _load(data_dir, "femnist", _femnist_rows, FEMNIST_CLASSES, classes)


def load_shakespeare(data_dir: str | Path, **_: object) -> PublishedDataset:
    """LEAF Shakespeare: next character after 80, 80 classes, one group per speaking role."""
    return _load(data_dir, "shakespeare", _shakespeare_rows, len(SHAKESPEARE_LETTERS), tuple(SHAKESPEARE_LETTERS))
