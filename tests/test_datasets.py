"""Loaders of the published formats (p2pfl/datasets): files written byte for byte as their publishers ship
them load to the right shapes, labels and groups; every corrupted variant is refused with one clear error
naming the file and the problem; pickles are never opened."""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import publish as P
from p2pfl import datasets
from p2pfl.datasets import DatasetError

P2PFL = str(Path(sys.executable).parent / "p2pfl")


def _affine(loaded: np.ndarray, raw: np.ndarray) -> None:
    """`loaded` is `raw` up to one scale and shift (what standardisation does), pixel for pixel."""
    a, b = loaded.astype(np.float64).ravel(), raw.astype(np.float64).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99999


# -- loading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_loads_shapes_labels_and_pixels(tmp_path: Path, gz: bool) -> None:
    P.write_idx_dataset(tmp_path, gz=gz, n_train=300, n_test=100)
    ds = datasets.load("mnist", tmp_path)
    x_raw, y_raw = P.images(300, 10, (28, 28), 1)
    assert ds.x_train.shape == (300, 1, 28, 28) and ds.x_test.shape == (100, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.x_train.dtype == np.float32
    assert np.array_equal(ds.y_train, y_raw.astype(np.int64))
    _affine(ds.x_train[:, 0], x_raw)
    assert abs(float(ds.x_train.mean())) < 1e-3 and abs(float(ds.x_train.std()) - 1) < 1e-3


def test_emnist_images_are_transposed_upright_and_letters_start_at_zero(tmp_path: Path) -> None:
    P.write_idx_dataset(tmp_path, prefix="emnist-letters-", test="test", classes=26, label_offset=1, transpose=True,
                        n_train=260, n_test=52, gz=True)
    ds = datasets.load("emnist-letters", tmp_path)
    x_raw, y_raw = P.images(260, 26, (28, 28), 1)
    assert ds.num_classes == 26 and np.array_equal(ds.y_train, y_raw.astype(np.int64))  # 1..26 on disk
    _affine(ds.x_train[:, 0], x_raw)  # the upright image, not the column-major one on disk


def test_fashion_mnist_has_its_class_names(tmp_path: Path) -> None:
    P.write_idx_dataset(tmp_path, n_train=100, n_test=20)
    ds = datasets.load("fashion-mnist", tmp_path)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


@pytest.mark.parametrize("tar", [False, True])
def test_cifar10_binary_records(tmp_path: Path, tar: bool) -> None:
    P.write_cifar10(tmp_path, per_batch=40, n_test=30, tar=tar)
    ds = datasets.load("cifar10", tmp_path)
    assert ds.x_train.shape == (200, 3, 32, 32) and ds.x_test.shape == (30, 3, 32, 32)
    y = np.concatenate([P.images(40, 10, (3, 32, 32), 10 + i)[1] for i in range(1, 6)]).astype(np.int64)
    assert np.array_equal(ds.y_train, y)
    x = np.concatenate([P.images(40, 10, (3, 32, 32), 10 + i)[0] for i in range(1, 6)])
    for channel in range(3):  # red, green, blue planes in that order
        _affine(ds.x_train[:, channel], x[:, channel])
    assert ds.classes[:2] == ("airplane", "automobile")


def test_cifar10_folder_itself_can_be_the_data_dir(tmp_path: Path) -> None:
    P.write_cifar10(tmp_path, per_batch=10, n_test=10)
    assert len(datasets.load("cifar10", tmp_path / "cifar-10-batches-bin").y_train) == 50


def test_cifar100_uses_the_fine_label(tmp_path: Path) -> None:
    P.write_cifar100(tmp_path, n_train=300, n_test=50)
    ds = datasets.load("cifar100", tmp_path)
    _, y = P.images(300, 100, (3, 32, 32), 30)
    assert ds.num_classes == 100 and np.array_equal(ds.y_train, y.astype(np.int64))
    assert ds.classes[3] == "fine3"


def test_leaf_femnist_keeps_writers_across_splits(tmp_path: Path) -> None:
    P.write_femnist(tmp_path, writers=6, per_writer=9)
    ds = datasets.load("femnist", tmp_path)
    assert ds.x_train.shape == (54, 1, 28, 28) and ds.num_classes == 62
    assert ds.groups_train is not None and ds.groups_test is not None
    assert len(ds.group_names) == 6 and set(np.unique(ds.groups_train)) == set(range(6))
    assert set(np.unique(ds.groups_test)) == set(range(6))
    # rows of one writer are that writer's: the labels of group g are the JSON's labels of user g
    doc = {}
    for f in sorted((tmp_path / "train").glob("*.json")):
        doc.update(json.loads(f.read_text())["user_data"])
    for g, name in enumerate(ds.group_names):
        assert ds.y_train[ds.groups_train == g].tolist() == doc[name]["y"]


def test_leaf_shakespeare_characters(tmp_path: Path) -> None:
    P.write_shakespeare(tmp_path, roles=3, per_role=8)
    ds = datasets.load("shakespeare", tmp_path)
    assert ds.x_train.shape == (24, 80) and ds.num_classes == 80 and ds.input_shape == (80,)
    doc = json.loads(next((tmp_path / "train").glob("*.json")).read_text())
    first = doc["user_data"][ds.group_names[0]]
    assert "".join(ds.classes[int(i)] for i in ds.x_train[0]) == first["x"][0]
    assert ds.classes[ds.y_train[0]] == first["y"][0]


def test_npz_csv_and_group_columns(tmp_path: Path) -> None:
    npz = datasets.load("npz", P.write_npz(tmp_path / "npz", 200, 50))
    x, y, g = P.table(200, 60)
    assert npz.x_train.shape == (200, 12) and np.array_equal(npz.y_train, y) and np.array_equal(npz.groups_train, g)
    csv = datasets.load("csv", P.write_csv(tmp_path / "csv", 200, 50), label_column="species", group_column="writer")
    x, y, g = P.table(200, 70)
    assert csv.classes == ("adelie", "chinstrap", "gentoo", "macaroni") and np.array_equal(csv.y_train, y)
    assert csv.groups_train is not None and len(set(csv.groups_train.tolist())) == len(set(g.tolist()))
    for column in range(12):  # each column standardised on its own
        _affine(csv.x_train[:, column], x[:, column])


def test_image_folder(tmp_path: Path) -> None:
    ds = datasets.load("imagefolder", P.write_imagefolder(tmp_path, per_class=6, classes=3, side=8))
    assert ds.x_train.shape == (18, 3, 8, 8) and ds.classes == ("class_0", "class_1", "class_2")
    assert np.bincount(ds.y_train).tolist() == [6, 6, 6]


@pytest.mark.parametrize("parquet", [False, True])
def test_huggingface_save_to_disk_and_parquet(tmp_path: Path, parquet: bool) -> None:
    ds = datasets.load("hf", P.write_hf(tmp_path, 120, 40, parquet=parquet))
    _, y, _ = P.table(120, 90)
    assert ds.x_train.shape == (120, 12) and np.array_equal(ds.y_train, y)
    assert ds.classes == ("a", "b", "c", "d") if not parquet else ds.num_classes == 4


# -- corrupted files: one error naming the file and the problem ------------------------------------


def _err(name: str, d: Path, **kw: object) -> str:
    with pytest.raises(DatasetError) as info:
        datasets.load(name, d, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _idx(tmp_path: Path, gz: bool = False) -> Path:
    return P.write_idx_dataset(tmp_path, gz=gz, n_train=50, n_test=20)


def test_idx_wrong_magic(tmp_path: Path) -> None:
    f = _idx(tmp_path) / "train-images-idx3-ubyte"
    raw = bytearray(f.read_bytes())
    raw[2] = 0x0D  # float instead of unsigned byte
    f.write_bytes(bytes(raw))
    msg = _err("mnist", tmp_path)
    assert str(f) in msg and "wrong magic number 0x00000d03" in msg and "0x00000803" in msg


def test_idx_truncated(tmp_path: Path) -> None:
    f = _idx(tmp_path) / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    msg = _err("mnist", tmp_path)
    assert str(f) in msg and "truncated" in msg and "(20, 28, 28)" in msg


def test_idx_gzip_truncated(tmp_path: Path) -> None:
    f = _idx(tmp_path, gz=True) / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-8])
    msg = _err("mnist", tmp_path)
    assert str(f) in msg and "gzip" in msg


def test_idx_counts_disagree(tmp_path: Path) -> None:
    d = _idx(tmp_path)
    (d / "train-labels-idx1-ubyte").write_bytes(P.idx_bytes(np.zeros(49, dtype=np.uint8)))
    msg = _err("mnist", d)
    assert "train-labels-idx1-ubyte" in msg and "49 labels but train-images-idx3-ubyte has 50 images" in msg


def test_idx_label_out_of_range_and_missing_file(tmp_path: Path) -> None:
    d = _idx(tmp_path)
    (d / "t10k-labels-idx1-ubyte").write_bytes(P.idx_bytes(np.full(20, 12, dtype=np.uint8)))
    assert "label 12, outside the 10 classes" in _err("mnist", d)
    (d / "t10k-labels-idx1-ubyte").unlink()
    assert "no labels file: expected t10k-labels-idx1-ubyte" in _err("mnist", d)


def test_cifar_wrong_record_size_and_label(tmp_path: Path) -> None:
    P.write_cifar10(tmp_path, per_batch=5, n_test=5)
    f = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    good = f.read_bytes()
    f.write_bytes(good[:-1])
    msg = _err("cifar10", tmp_path)
    assert str(f) in msg and "not a whole number of 3073-byte records" in msg
    f.write_bytes(bytes([10]) + good[1:])
    assert "record 0 has label 10, outside the 10 classes" in _err("cifar10", tmp_path)
    f.unlink()
    assert "data_batch_3.bin: is missing" in _err("cifar10", tmp_path)


def test_cifar100_record_size_is_two_label_bytes(tmp_path: Path) -> None:
    P.write_cifar100(tmp_path, n_train=4, n_test=4)
    f = tmp_path / "cifar-100-binary" / "test.bin"
    f.write_bytes(f.read_bytes() + b"\0" * 3073)  # one CIFAR-10-sized record more
    assert "not a whole number of 3074-byte records (2 label bytes" in _err("cifar100", tmp_path)


class _Payload:
    """A pickle that, if ever unpickled, creates a marker file: the attack the loaders must not fall for."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name,folder,file", [("cifar10", "cifar-10-batches-py", "data_batch_1"),
                                              ("cifar100", "cifar-100-python", "train")])
def test_cifar_python_versions_are_refused_unopened(tmp_path: Path, name: str, folder: str, file: str) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / folder).mkdir()
    (tmp_path / folder / file).write_bytes(pickle.dumps(_Payload(marker)))
    msg = _err(name, tmp_path)
    assert folder in msg and "python version" in msg and "pickles" in msg and "binary version" in msg
    assert not marker.exists()


def test_npz_object_arrays_are_refused_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    d = P.write_npz(tmp_path / "npz", 20, 10)
    np.savez(d / "train.npz", x=np.array([_Payload(marker)] * 20, dtype=object), y=np.zeros(20, dtype=np.int64))
    msg = _err("npz", d)
    assert "train.npz" in msg and "unpickling" in msg
    assert not marker.exists()


def test_leaf_corruptions(tmp_path: Path) -> None:
    P.write_femnist(tmp_path, writers=4, per_writer=4)
    f = sorted((tmp_path / "train").glob("*.json"))[0]
    doc = json.loads(f.read_text())
    user = doc["users"][0]

    def variant(change) -> str:  # noqa: ANN001
        bad = json.loads(json.dumps(doc))
        change(bad)
        f.write_text(json.dumps(bad))
        return _err("femnist", tmp_path)

    assert f"num_samples says 5 but x has 4 rows" in variant(lambda d: d["num_samples"].__setitem__(0, 5))
    assert "lists 2 users but 1 num_samples" in variant(lambda d: d["num_samples"].pop())
    assert f"user {user!r} has no user_data" in variant(lambda d: d["user_data"].pop(user))
    assert "x rows must have 784 pixels" in variant(lambda d: d["user_data"][user]["x"][0].pop())
    assert "labels must lie in [0, 62)" in variant(lambda d: d["user_data"][user]["y"].__setitem__(0, 62))
    assert "needs the keys users, num_samples and user_data" in variant(lambda d: d.pop("users"))
    f.write_text(json.dumps(doc)[:-10])
    msg = _err("femnist", tmp_path)
    assert str(f) in msg and "not valid JSON" in msg


def test_shakespeare_unknown_character(tmp_path: Path) -> None:
    P.write_shakespeare(tmp_path, roles=2, per_role=4)
    f = next((tmp_path / "test").glob("*.json"))
    doc = json.loads(f.read_text())
    role = doc["users"][1]
    doc["user_data"][role]["y"][0] = "~"
    f.write_text(json.dumps(doc))
    msg = _err("shakespeare", tmp_path)
    assert str(f) in msg and f"user {role!r} row 0: character '~' is not in LEAF's 80-letter alphabet" in msg


def test_table_corruptions(tmp_path: Path) -> None:
    d = P.write_csv(tmp_path / "csv", 20, 10)
    assert "has no label column 'label'" in _err("csv", d)
    lines = (d / "train.csv").read_text().splitlines()
    lines[3] = lines[3].replace(lines[3].split(",")[2], "n/a", 1)
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    assert "line 4, column 'f2': 'n/a' is not a number" in _err("csv", d, label_column="species", group_column="writer")
    lines[3] = "1,2,3"
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    assert "line 4 has 3 fields, the header 14" in _err("csv", d, label_column="species", group_column="writer")
    n = P.write_npz(tmp_path / "npz", 20, 10)
    np.savez(n / "test.npz", x=np.zeros((10, 12), np.float32), y=np.zeros(9, np.int64))
    assert "x has 10 rows but y has 9" in _err("npz", n)
    np.savez(n / "test.npz", x=np.zeros((10, 12), np.float32))
    assert "has no array 'y'" in _err("npz", n)


def test_image_folder_corruptions(tmp_path: Path) -> None:
    from PIL import Image

    d = P.write_imagefolder(tmp_path, per_class=3, classes=2, side=8)
    odd = d / "train" / "class_1" / "zz.png"
    Image.new("RGB", (9, 8)).save(odd)
    assert "zz.png: is 9x8 pixels; the images before it are 8x8" in _err("imagefolder", d)
    odd.write_bytes(b"not an image")
    assert "zz.png: is not a readable image" in _err("imagefolder", d)


def test_huggingface_missing_label_column(tmp_path: Path) -> None:
    d = P.write_hf(tmp_path, 20, 10)
    assert "has no column 'target'" in _err("hf", d, label_column="target")


def test_missing_data_dir_and_unknown_dataset(tmp_path: Path) -> None:
    assert "is not a directory" in _err("mnist", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        datasets.load("imagenet", tmp_path)


def test_cli_reports_a_corrupt_file_in_one_line(tmp_path: Path) -> None:
    """Through the real CLI: exit non-zero, one line naming the file and the problem, no traceback."""
    f = _idx(tmp_path / "mnist") / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:1000])
    proc = subprocess.run([P2PFL, "simulate", "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"), "-n", "3",
                           "-r", "1", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"dataset: {f}: is truncated" in proc.stderr, proc.stderr


@pytest.mark.parametrize("settings,field,words", [
    ({"dataset": "mnist"}, "data_dir", "is read from files"),
    ({"model": "cnn32"}, "model", "set dataset too"),
    ({"augment": True}, "augment", "set dataset too"),
    ({"dataset": "mnist", "data_dir": "/d", "task": "apps"}, "dataset", "not both"),
    ({"dataset": "mnist", "data_dir": "/d", "partition": "natural"}, "partition", "mnist has none"),
    ({"dataset": "cifar10", "data_dir": "/d", "group_column": "w"}, "group_column", "names a column of a table"),
    ({"dataset": "mnist", "data_dir": "/d", "partition": "personas"}, "partition", "personas"),
    ({"partition": "natural"}, "partition", "not digits-mlp"),
    ({"dataset": "mnist", "data_dir": "/d", "eval_sample": -1}, "eval_sample", ">= 0"),
    ({"dataset": "imagenet", "data_dir": "/d"}, "dataset", "must be one of"),
])
def test_config_refuses_what_a_dataset_run_cannot_do(settings: dict, field: str, words: str) -> None:
    from p2pfl.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError) as info:
        ExperimentConfig(**settings).validate()
    assert info.value.field == field and words in str(info.value)


def test_config_accepts_a_dataset_run() -> None:
    from p2pfl.config import ExperimentConfig

    cfg = ExperimentConfig(dataset="csv", data_dir="/d", group_column="user", partition="natural", model="mlp",
                           eval_sample=0).validate()
    assert cfg.dataset == "csv"


def test_huggingface_image_column(tmp_path: Path) -> None:
    ds = datasets.load("hf", P.write_hf_images(tmp_path))
    x, y = P.images(40, 3, (8, 8), 92)
    assert ds.x_train.shape == (40, 1, 8, 8) and ds.classes == ("u", "v", "w")
    assert np.array_equal(ds.y_train, y.astype(np.int64))
    _affine(ds.x_train[:, 0], x)
