"""Small datasets written byte for byte in their publishers' formats, learnable, for the loader tests.

Every writer takes a directory and writes the files a user would download (IDX with its big-endian
header, CIFAR's binary records, LEAF's JSON, NPZ, CSV, an image folder, a HuggingFace dataset).
The pixels are a class prototype plus noise, so a model can learn them in a few rounds; the
`*_bytes` functions give the raw bytes that the corruption tests cut or alter.
"""

from __future__ import annotations

import gzip
import json
import struct
import tarfile
from pathlib import Path

import numpy as np

SHAKESPEARE_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


def prototypes(classes: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """One random uint8 image per class: the pattern a sample of that class is a noisy copy of."""
    return np.random.default_rng([seed, 99]).integers(0, 256, (classes, *shape), dtype=np.uint8)


def images(n: int, classes: int, shape: tuple[int, ...], seed: int, noise: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images n x shape, uint8 labels): prototype of the label + Gaussian noise, labels cycling 0..classes-1."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % classes).astype(np.uint8)
    rng.shuffle(y)
    x = prototypes(classes, shape)[y].astype(np.float64) + rng.normal(0, noise, (n, *shape))
    return np.clip(x, 0, 255).astype(np.uint8), y


# -- IDX ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0x00 0x00, type 0x08 (unsigned byte), the number of dimensions, each size big-endian, data."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx_dataset(d: Path, prefix: str = "", test: str = "t10k", n_train: int = 600, n_test: int = 200,
                      classes: int = 10, gz: bool = True, label_offset: int = 0, transpose: bool = False) -> Path:
    """MNIST-style files (prefix "" and test "t10k"; EMNIST: prefix "emnist-SPLIT-" and test "test")."""
    d.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), (test, n_test, 2)):
        x, y = images(n, classes, (28, 28), seed)
        if transpose:  # EMNIST stores images column-major
            x = x.transpose(0, 2, 1)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y + label_offset)):
            raw = idx_bytes(arr)
            name = d / f"{prefix}{split}-{kind}-ubyte"
            if gz:
                Path(f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
            else:
                name.write_bytes(raw)
    return d


# -- CIFAR binary ---------------------------------------------------------------------------------


def cifar_records(x: np.ndarray, labels: list[np.ndarray]) -> bytes:
    """CIFAR binary records: the label byte(s), then 1024 red, 1024 green, 1024 blue pixels, row-major."""
    cols = [np.asarray(lab, dtype=np.uint8)[:, None] for lab in labels]
    return np.concatenate([*cols, x.reshape(len(x), -1)], axis=1).astype(np.uint8).tobytes()


def write_cifar10(d: Path, per_batch: int = 100, n_test: int = 200, tar: bool = False) -> Path:
    """cifar-10-batches-bin/ with data_batch_1..5.bin, test_batch.bin, batches.meta.txt (or the .tar.gz of it)."""
    root = d / "cifar-10-batches-bin"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = images(per_batch, 10, (3, 32, 32), 10 + i)
        (root / f"data_batch_{i}.bin").write_bytes(cifar_records(x, [y]))
    x, y = images(n_test, 10, (3, 32, 32), 20)
    (root / "test_batch.bin").write_bytes(cifar_records(x, [y]))
    (root / "batches.meta.txt").write_text("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                      "horse", "ship", "truck"]) + "\n\n")
    if tar:
        with tarfile.open(d / "cifar-10-binary.tar.gz", "w:gz") as t:
            t.add(root, arcname="cifar-10-batches-bin")
        for f in root.iterdir():
            f.unlink()
        root.rmdir()
    return d


def write_cifar100(d: Path, n_train: int = 600, n_test: int = 200, classes: int = 100) -> Path:
    """cifar-100-binary/ with train.bin, test.bin (coarse label, fine label, pixels) and the label-name files."""
    root = d / "cifar-100-binary"
    root.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train.bin", n_train, 30), ("test.bin", n_test, 31)):
        x, y = images(n, classes, (3, 32, 32), seed)
        (root / name).write_bytes(cifar_records(x, [y // 5, y]))
    (root / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    (root / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)) + "\n")
    return d


# -- LEAF JSON ------------------------------------------------------------------------------------


def leaf_doc(users: dict[str, tuple[list, list]]) -> dict:
    """LEAF's JSON: users, num_samples and user_data {user: {x, y}}."""
    return {"users": list(users), "num_samples": [len(v[1]) for v in users.values()],
            "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}


def write_femnist(d: Path, writers: int = 24, per_writer: int = 30, classes: int = 10) -> Path:
    """train/ and test/ JSON of `writers` writers; each writes a few classes (a writer's own style: an offset)."""
    protos = prototypes(classes, (28 * 28,)).astype(np.float64) / 255.0
    for split, frac, seed in (("train", 1.0, 40), ("test", 0.34, 41)):
        rng = np.random.default_rng(seed)
        (d / split).mkdir(parents=True, exist_ok=True)
        users: dict[str, tuple[list, list]] = {}
        for w in range(writers):
            n = max(2, int(per_writer * frac))
            y = rng.integers(0, classes, n)
            x = np.clip(protos[y] + rng.normal(0, 0.25, (n, 784)) + 0.05 * (w % 3), 0, 1)
            users[f"f{w:04d}_{w % 7:02d}"] = (np.round(x, 4).tolist(), y.tolist())
        names = list(users)
        half = len(names) // 2  # two files per split, as LEAF writes several
        for i, part in enumerate((names[:half], names[half:])):
            doc = leaf_doc({u: users[u] for u in part})
            (d / split / f"all_data_{i}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(doc))
    return d


def write_shakespeare(d: Path, roles: int = 16, per_role: int = 40) -> Path:
    """train/ and test/ JSON: each role repeats its own line, so the next character is predictable from the last 80."""
    rng = np.random.default_rng(50)
    lines = ["to be or not to be, that is the question: ", "all the world's a stage, and all the men ",
             "now is the winter of our discontent made ", "friends, romans, countrymen, lend me your "]
    for split in ("train", "test"):
        (d / split).mkdir(parents=True, exist_ok=True)
        users = {}
        for r in range(roles):
            text = lines[r % len(lines)] * 6
            n = per_role if split == "train" else per_role // 4
            starts = rng.integers(0, len(lines[r % len(lines)]), n)
            users[f"THE_PLAY_ROLE{r}"] = ([text[s:s + 80] for s in starts], [text[s + 80] for s in starts])
        (d / split / f"all_data_niid_0_keep_0_{split}_9.json").write_text(json.dumps(leaf_doc(users)))
    return d


# -- tables, image folder, HuggingFace ------------------------------------------------------------


def table(n: int, seed: int, features: int = 12, classes: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float features, int labels, int groups): Gaussian clusters, one per class; 20 groups."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(0, 2.0, (classes, features))
    y = rng.integers(0, classes, n)
    return centres[y] + rng.normal(0, 1.0, (n, features)), y, rng.integers(0, 20, n)


def write_npz(d: Path, n_train: int = 800, n_test: int = 200) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 60), ("test", n_test, 61)):
        x, y, g = table(n, seed)
        np.savez(d / f"{split}.npz", x=x.astype(np.float32), y=y, group=g)
    return d


def write_csv(d: Path, n_train: int = 800, n_test: int = 200) -> Path:
    """train.csv / test.csv: f0..f11, a string label column 'species' and a 'writer' column."""
    d.mkdir(parents=True, exist_ok=True)
    names = ["adelie", "chinstrap", "gentoo", "macaroni"]
    for split, n, seed in (("train", n_train, 70), ("test", n_test, 71)):
        x, y, g = table(n, seed)
        head = ",".join([f"f{i}" for i in range(x.shape[1])] + ["species", "writer"])
        body = [",".join([f"{v:.5f}" for v in row] + [names[lab], f"w{grp}"]) for row, lab, grp in zip(x, y, g)]
        (d / f"{split}.csv").write_text(head + "\n" + "\n".join(body) + "\n")
    return d


def write_imagefolder(d: Path, per_class: int = 60, classes: int = 4, side: int = 16) -> Path:
    from PIL import Image

    for split, n, seed in (("train", per_class, 80), ("test", per_class // 3, 81)):
        x, y = images(n * classes, classes, (side, side, 3), seed)
        for i, (img, lab) in enumerate(zip(x, y)):
            folder = d / split / f"class_{lab}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "RGB").save(folder / f"{i:05d}.png")
    return d


def write_hf(d: Path, n_train: int = 800, n_test: int = 200, parquet: bool = False) -> Path:
    """A DatasetDict of a ClassLabel 'label' and numeric columns, saved with save_to_disk (or as parquet files)."""
    import datasets

    splits = {}
    for split, n, seed in (("train", n_train, 90), ("test", n_test, 91)):
        x, y, _ = table(n, seed)
        cols = {f"f{i}": x[:, i].astype(np.float32) for i in range(x.shape[1])}
        features = datasets.Features({**{k: datasets.Value("float32") for k in cols},
                                      "label": datasets.ClassLabel(names=["a", "b", "c", "d"])})
        splits[split] = datasets.Dataset.from_dict({**cols, "label": y}, features=features)
    dd = datasets.DatasetDict(splits)
    d.mkdir(parents=True, exist_ok=True)
    if parquet:
        for split, ds in dd.items():
            ds.to_parquet(str(d / f"{split}-00000-of-00001.parquet"))
    else:
        dd.save_to_disk(str(d))
    return d


def write_hf_images(d: Path, n_train: int = 40, n_test: int = 12, side: int = 8) -> Path:
    """A DatasetDict with an Image column 'img' (grayscale PNGs) and a ClassLabel 'label', saved with save_to_disk."""
    import datasets
    from PIL import Image

    splits = {}
    for split, n, seed in (("train", n_train, 92), ("test", n_test, 93)):
        x, y = images(n, 3, (side, side), seed)
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["u", "v", "w"])})
        splits[split] = datasets.Dataset.from_dict({"img": [Image.fromarray(a, "L") for a in x], "label": y.tolist()},
                                                   features=features)
    datasets.DatasetDict(splits).save_to_disk(str(d))
    return d
