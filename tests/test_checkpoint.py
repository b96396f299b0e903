"""Tests for p2pfl.checkpoint: round trips, exact resume, the safetensors file, corruption and lies, the store.

Real files on disk where the store is involved; the attacking tests flip bytes, truncate, forge
files with a valid checksum around bad content, and plant a pickle under a checkpoint's name.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import logging
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import p2pfl.checkpoint as ckpt
from p2pfl.checkpoint import (
    CheckpointError,
    CheckpointStore,
    NodeState,
    decode,
    encode,
    read_checkpoint,
)
from p2pfl.data import partition, shard
from p2pfl.training import LocalTrainer, Task, TrainConfig, init_model, load_task


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("digits-mlp", 0)


def _trainer(task: Task, cfg: TrainConfig, model_seed: int = 0, gen_seed: int = 3) -> LocalTrainer:
    parts = partition(task.dataset.y_train, 4, "iid", seed=0)
    return LocalTrainer(init_model(task, model_seed), shard(task.dataset, parts[1]), cfg, gen_seed)


def _small_state() -> NodeState:
    return NodeState(
        trainer={
            "step": torch.tensor(12345678901, dtype=torch.int64),
            "scalar": torch.tensor(-0.0),
            "w": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
            "mask": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 4),
            "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "fused": None}],
            "state": {0: {"buf": torch.ones(2, dtype=torch.float64)}, 1: {}},
        },
        reference=np.linspace(-1, 1, 5, dtype=np.float32),
        metrics={"round": 3, "acc": [0.5, 0.75], "name": "n0"},
        meta={"node": 2},
    )


def _bits(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.reshape(-1).numpy().tobytes()


def _assert_same(a: object, b: object, path: str = "") -> None:
    """Deep equality: same Python types, tensors bit-exact with same dtype and shape."""
    assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert _bits(a) == _bits(b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), path
    else:
        assert a == b, path


def _header(blob: bytes) -> dict:
    """safetensors' JSON header of a file (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n])


def _open(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """(tensors, metadata, state document) of a checkpoint, read independently of the module."""
    metadata = _header(blob)["__metadata__"]
    return safetensors.torch.load(blob), metadata, json.loads(metadata["state"])


def _seal(tensors: dict[str, torch.Tensor], metadata: dict[str, str], doc: dict | None = None) -> bytes:
    """A file with a valid SHA-256 around arbitrary content (to test the checks behind the checksum).

    The rule, from the format's description: SHA-256 of the whole file with its 64 digits set to "0".
    """
    meta = dict(metadata, sha256="0" * 64)
    if doc is not None:
        meta["state"] = json.dumps(doc)
    blob = bytearray(safetensors.torch.save(tensors, meta))
    at = blob.index(b'"sha256":"') + len(b'"sha256":"')
    blob[at : at + 64] = hashlib.sha256(blob).hexdigest().encode()
    return bytes(blob)


def _root(doc: dict, name: str) -> dict:
    """The tree node of one part of the state (trainer, reference, metrics, meta)."""
    for key, node in doc["tree"]["dict"]:
        if key == name:
            return node
    raise KeyError(name)


def _leaf(doc: dict, name: str) -> dict:
    for key, node in _root(doc, "trainer")["dict"]:
        if key == name:
            return node["tensor"]
    raise KeyError(name)

# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_from_checkpoint_is_exact(task: Task, tmp_path: Path, optimizer: str) -> None:
    cfg = TrainConfig(optimizer=optimizer, local_steps=15)
    a = _trainer(task, cfg)
    a.train()
    ref = a.get_flat()
    store = CheckpointStore(tmp_path)
    store.save(1, NodeState(trainer=a.state_dict(), reference=ref, metrics={"train_loss": [1.5]}))

    # A fresh trainer built with different seeds, restored from disk.
    got = store.load_latest()
    assert got is not None
    rnd, state = got
    assert rnd == 1
    _assert_same(state.trainer, a.state_dict())
    _assert_same(state.reference, ref)
    assert state.metrics == {"train_loss": [1.5]}
    b = _trainer(task, cfg, model_seed=99, gen_seed=42)
    assert not np.array_equal(b.get_flat(), ref)
    b.load_state_dict(state.trainer)
    assert b.rounds == 1
    assert np.array_equal(b.get_flat(), ref)

    loss_a, loss_b = a.train(), b.train()
    assert loss_a == loss_b
    assert a.get_flat().tobytes() == b.get_flat().tobytes()
    _assert_same(a.state_dict(), b.state_dict())


def test_round_trip_values_and_dtypes() -> None:
    trainer = {
        "i64_step": torch.tensor(7, dtype=torch.int64),
        "f32_0d": torch.tensor(3.25),
        "bool": torch.tensor([[True], [False]]),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bf16": torch.tensor([1.5, -2.0, float("nan")], dtype=torch.bfloat16),
        "f16": torch.tensor([65504.0, -0.0], dtype=torch.float16),
        "f64": torch.tensor([math.pi, float("inf"), -float("inf"), 5e-324], dtype=torch.float64),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "i16": torch.tensor([-32768], dtype=torch.int16),
        "i32": torch.tensor([2**31 - 1], dtype=torch.int32),
        "noncontig": torch.arange(12.0).reshape(3, 4).t(),
        "param": torch.nn.Parameter(torch.ones(2)),
        "empty": torch.zeros(3, 0, 2),
        "np_u64": np.array([2**64 - 1], dtype=np.uint64),
        "np_be": np.array([1.0, 2.0], dtype=">f4"),
        "np_0d": np.array(4, dtype=np.int32),
        "plain": [None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.1, -0.0,
                  float("nan"), "héllo", b"\x00\xff", (), [], {}],
        "keys": {1: "int key", "1": "str key", -5: None},
        "nested": ((1, (2, [3, {"x": (4,)}])),),
    }
    state = NodeState(trainer=trainer, reference={"delta": torch.randn(4)}, metrics={"a": 1.0})
    rnd, out = decode(encode(42, state))
    assert rnd == 42
    expected = dict(trainer)
    expected["noncontig"] = trainer["noncontig"].contiguous()
    expected["param"] = trainer["param"].detach().clone()
    expected["np_be"] = trainer["np_be"].astype("<f4")
    _assert_same(out.trainer, expected)
    _assert_same(out.reference, state.reference)
    assert out.metrics == {"a": 1.0} and out.meta == {}
    assert out.trainer["noncontig"].is_contiguous()
    assert not out.trainer["param"].requires_grad


def test_reference_may_be_absent_or_flat_vector() -> None:
    for ref in (None, np.zeros(10, dtype=np.float32)):
        _, out = decode(encode(0, NodeState(trainer={}, reference=ref)))
        _assert_same(out.reference, ref)


@pytest.mark.parametrize(
    "state, exc",
    [
        (NodeState(trainer={"x": {1, 2}}), TypeError),
        (NodeState(trainer={"x": np.float32(1.0)}), TypeError),
        (NodeState(trainer={(1, 2): 3}), TypeError),
        (NodeState(trainer={True: 3}), TypeError),
        (NodeState(trainer={"x": 2**64}), ValueError),
        (NodeState(trainer={"c": torch.zeros(2, dtype=torch.complex64)}), TypeError),
        (NodeState(trainer={"o": np.array(["a"], dtype=object)}), TypeError),
        (NodeState(trainer={}, metrics={"t": torch.zeros(1)}), TypeError),
        (NodeState(trainer={}, metrics=[1]), TypeError),  # type: ignore[arg-type]
    ],
)
def test_unstorable_values_are_refused_on_save(state: NodeState, exc: type, tmp_path: Path) -> None:
    with pytest.raises(exc):
        encode(1, state)
    with pytest.raises(exc):
        CheckpointStore(tmp_path).save(1, state)
    assert list(tmp_path.iterdir()) == []


def test_cycles_are_refused() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="deeper"):
        encode(0, NodeState(trainer=loop))


# ----------------------------------------------------------------------------- the format


def test_file_is_plain_safetensors_with_json_state(tmp_path: Path) -> None:
    """Any safetensors reader sees the tensors by path; the rest is JSON in the metadata."""
    path = tmp_path / "c.p2c"
    ckpt.write_checkpoint(path, 5, _small_state())
    with safetensors.safe_open(path, framework="pt") as f:
        names = set(f.keys())
        metadata = f.metadata()
        w = f.get_tensor("trainer['w']")
    assert names == {"trainer['step']", "trainer['scalar']", "trainer['w']", "trainer['mask']",
                     "trainer['empty']", "trainer['state'][0]['buf']", "reference"}
    assert torch.equal(w, _small_state().trainer["w"])
    assert set(metadata) == {"format", "version", "state", "sha256"}
    assert (metadata["format"], metadata["version"]) == ("p2pfl-checkpoint", "2")
    doc = json.loads(metadata["state"])
    assert doc["round"] == 5 and set(doc) == {"round", "created", "writer", "tree"}
    assert _root(doc, "meta") == {"dict": [["node", 2]]}
    blob = path.read_bytes()
    zeroed = blob.replace(metadata["sha256"].encode(), b"0" * 64)
    assert hashlib.sha256(zeroed).hexdigest() == metadata["sha256"]


def test_node_meta_round_trips_exactly() -> None:
    """The node compares these with itself before resuming (owner, model size): they must come back as written."""
    meta = {"node": 3, "num_params": 2410, "seed": 2**40, "task": "digits-mlp", "secure": True, "mu": 0.01}
    _, out = decode(encode(1, NodeState(trainer={}, meta=meta)))
    _assert_same(out.meta, meta)


def test_shared_and_repeated_tensors_are_stored_as_copies() -> None:
    t = torch.arange(4.0)
    arr = np.ones(3, np.float32)
    _, out = decode(encode(0, NodeState(trainer={"a": t, "b": t, "view": t[1:3], "c": [arr, arr]})))
    _assert_same(out.trainer, {"a": t, "b": t, "view": t[1:3].clone(), "c": [arr, arr]})
    out.trainer["a"].add_(1)  # restored tensors own their memory
    assert torch.equal(out.trainer["b"], t)


# ----------------------------------------------------------------------------- corruption


def test_every_single_byte_flip_is_detected_small() -> None:
    blob = encode(5, _small_state())
    assert decode(blob)[0] == 5
    for i in range(len(blob)):
        for mask in (0x01, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            with pytest.raises(CheckpointError):
                decode(bytes(bad))


def test_byte_flips_detected_in_trainer_checkpoint(task: Task) -> None:
    tr = _trainer(task, TrainConfig(local_steps=3))
    tr.train()
    blob = encode(1, NodeState(trainer=tr.state_dict(), reference=tr.get_flat()))
    header_end = 8 + int.from_bytes(blob[:8], "little")
    positions = sorted({*range(header_end), *range(header_end, len(blob), 101), len(blob) - 1})
    assert len(positions) > 500
    for i in positions:
        bad = bytearray(blob)
        bad[i] ^= 0x80
        with pytest.raises(CheckpointError, match="checksum|corrupted|truncated"):
            decode(bytes(bad))


def test_a_flipped_data_byte_is_a_checksum_mismatch() -> None:
    blob = bytearray(encode(5, _small_state()))
    blob[-3] ^= 0x04  # in the tensor data, which safetensors itself would accept
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        decode(bytes(blob))


def test_truncation_is_detected() -> None:
    blob = encode(5, _small_state())
    header_end = 8 + int.from_bytes(blob[:8], "little")
    n = len(blob)
    for length in {0, 1, 7, 8, 9, header_end // 2, header_end - 1, header_end, header_end + 1, n // 2, n - 1}:
        with pytest.raises(CheckpointError, match="truncated|corrupted|checksum"):
            decode(blob[:length])
    with pytest.raises(CheckpointError, match="checksum"):
        decode(blob + b"\x00")


class _Planted:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_under_the_checkpoint_name_is_refused_not_loaded(
    tmp_path: Path, writer: str
) -> None:
    marker = tmp_path / "unpickled"
    store = CheckpointStore(tmp_path / "store")
    store.save(1, _state(1))
    planted = store.path_for(2)
    payload = {"trainer": _Planted(marker), "w": torch.ones(3)}
    if writer == "pickle":
        planted.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, planted)
    with pytest.raises(CheckpointError, match="not a p2pfl checkpoint") as err:
        read_checkpoint(planted)
    assert str(planted) in str(err.value)
    got = store.load_latest()
    assert got is not None and got[0] == 1  # fell back to the good one
    assert not marker.exists()  # never unpickled
    assert store.quarantined() == [tmp_path / "store" / "ckpt-00000002.p2c.corrupt"]


def test_other_safetensors_files_and_old_versions_are_refused() -> None:
    plain = safetensors.torch.save({"w": torch.ones(2)})
    with pytest.raises(CheckpointError, match="no single sha256 field"):
        decode(plain)
    tensors, metadata, doc = _open(encode(1, _small_state()))
    with pytest.raises(CheckpointError, match="not a p2pfl checkpoint"):
        decode(_seal(tensors, dict(metadata, format="something-else")))
    with pytest.raises(CheckpointError, match="version 3"):
        decode(_seal(tensors, dict(metadata, version="3")))
    with pytest.raises(CheckpointError, match="metadata must be"):
        decode(_seal(tensors, dict(metadata, extra="1")))
    version1 = b"P2PFLCKP" + struct.pack("<II", 1, 10) + bytes(100)
    with pytest.raises(CheckpointError, match="format version 1.*--fresh"):
        decode(version1)


def test_a_state_that_lies_is_caught_by_the_checksum(tmp_path: Path) -> None:
    """Editing the node id or the model size in a file, in place, without the digest: refused, previous used."""
    store = CheckpointStore(tmp_path, keep=3)
    for r in (1, 2):
        store.save(r, NodeState(trainer={"w": torch.ones(3)}, meta={"node": 0, "num_params": 3}))
    newest = store.path_for(2)
    for old, new in ((b'\\"node\\",0]', b'\\"node\\",7]'), (b'\\"num_params\\",3]', b'\\"num_params\\",9]')):
        blob = newest.read_bytes()
        assert blob.count(old) == 1
        lie = blob.replace(old, new)
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            decode(lie)
    newest.write_bytes(lie)
    rnd, state = store.load_latest()
    assert rnd == 1 and state.meta == {"node": 0, "num_params": 3}
    assert "checksum mismatch" in store.unusable[0] and str(newest) in store.unusable[0]


def _valid_parts() -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    state = NodeState(trainer={"w": torch.arange(4, dtype=torch.float32), "b": torch.ones(2)}, metrics={"m": 1})
    return _open(encode(3, state))


def _set_root(doc: dict, index: int, node: object) -> None:
    doc["tree"]["dict"][index][1] = node


@pytest.mark.parametrize(
    "mutate, reason",
    [
        # The tree says one thing about a tensor, the tensor table another: a lie about the size.
        (lambda t, d: _leaf(d, "w").update(shape=[5]), r"float32\[5\] in the state"),
        (lambda t, d: _leaf(d, "w").update(dtype="float64"), "in the tensor table"),
        (lambda t, d: t.__setitem__("trainer['w']", torch.arange(6.0)), "in the tensor table"),
        (lambda t, d: _leaf(d, "w").update(dtype="object"), "disallowed dtype"),
        (lambda t, d: _leaf(d, "w").update(dtype="complex64"), "disallowed dtype"),
        (lambda t, d: _leaf(d, "w").update(shape=[-4]), "invalid shape"),
        (lambda t, d: _leaf(d, "w").update(key="nope"), "does not hold"),
        (lambda t, d: _leaf(d, "b").update(key="trainer['w']", shape=[4]), "used twice"),
        (lambda t, d: t.__setitem__("stowaway", torch.zeros(1)), "does not name"),
        (lambda t, d: _leaf(d, "w").pop("shape"), "leaf must have exactly"),
        (lambda t, d: _set_root(d, 0, {"pickle": "gASVAAAAAAAAAAB9lC4="}), "unknown tag"),
        (lambda t, d: _set_root(d, 0, [1, 2]), "not a tagged node"),
        (lambda t, d: _set_root(d, 2, {"dict": [["m", {"float": "1.5"}]]}), "bad float body"),
        (lambda t, d: _set_root(d, 2, {"dict": [["m", {"bytes": "0g"}]]}), "bad bytes body"),
        (lambda t, d: _set_root(d, 2, {"dict": [["m", {"bytes": "00 ff"}]]}), "bad bytes body"),
        (lambda t, d: _root(d, "trainer")["dict"].append(["w", 1]), "duplicate key"),
        (lambda t, d: _root(d, "trainer")["dict"].append([1.5, 1]), "dict key"),
        (lambda t, d: d["tree"]["dict"].pop(), "tree root"),
        (lambda t, d: _set_root(d, 2, {"dict": [["t", {"tensor": _leaf(d, "w")}]]}), "plain values"),
        (lambda t, d: _set_root(d, 3, {"list": []}), "meta is a list"),
        (lambda t, d: d.__setitem__("round", -1), "round"),
        (lambda t, d: d.__setitem__("round", True), "round"),
        (lambda t, d: d.__setitem__("extra", 1), "expected keys"),
        (lambda t, d: d.pop("writer"), "expected keys"),
        (lambda t, d: d.__setitem__("writer", {"p2pfl": 1}), "writer"),
    ],
)
def test_bad_structure_with_valid_checksum(mutate, reason: str) -> None:
    tensors, metadata, doc = _valid_parts()
    assert decode(_seal(tensors, metadata, doc))[0] == 3  # the helper itself makes valid files
    mutate(tensors, doc)
    with pytest.raises(CheckpointError, match=reason):
        decode(_seal(tensors, metadata, doc))


@pytest.mark.parametrize(
    "state_text, reason",
    [
        ('{"round": NaN}', "NaN is not JSON"),
        ('{"round": 1, "round": 2}', "duplicate key"),
        ('{"round": 1', "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_state_json_is_strict(state_text: str, reason: str) -> None:
    tensors, metadata, _ = _valid_parts()
    with pytest.raises(CheckpointError, match=reason):
        decode(_seal(tensors, dict(metadata, state=state_text)))


def test_bad_bool_bytes() -> None:
    tensors, metadata, doc = _open(encode(0, NodeState(trainer={"m": torch.tensor([True, False])})))
    tensors["trainer['m']"] = torch.tensor([2, 0], dtype=torch.uint8).view(torch.bool)
    with pytest.raises(CheckpointError, match="0/1"):
        decode(_seal(tensors, metadata, doc))

# ----------------------------------------------------------------------------- the store


def _state(i: int) -> NodeState:
    return NodeState(trainer={"w": torch.full((3,), float(i))}, metrics={"round": i})


def test_store_save_names_and_load_latest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck", keep=3)
    assert store.load_latest() is None  # directory does not even exist yet
    p = store.save(7, _state(7))
    assert p == tmp_path / "ck" / "ckpt-00000007.p2c" and p.is_file()
    store.save(8, _state(8))
    rnd, st = store.load_latest()
    assert rnd == 8 and st.metrics == {"round": 8}
    assert read_checkpoint(p)[0] == 7


def test_load_latest_empty_dir(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path).load_latest() is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_load_latest_falls_back_to_previous_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for r in (1, 2, 3):
        store.save(r, _state(r))
    newest = store.path_for(3)
    blob = newest.read_bytes()
    if damage == "flip":
        bad = bytearray(blob)
        bad[len(bad) // 2] ^= 0xFF
        newest.write_bytes(bytes(bad))
    elif damage == "truncate":
        newest.write_bytes(blob[: len(blob) - 100])
    else:
        newest.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="p2pfl.checkpoint"):
        rnd, st = store.load_latest()
    assert rnd == 2 and st.metrics == {"round": 2}
    assert any("ckpt-00000003" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert not newest.exists()
    assert (tmp_path / "ckpt-00000003.p2c.corrupt").exists()
    assert store.load_latest()[0] == 2


def test_load_latest_none_when_all_corrupted(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1))
    store.path_for(1).write_bytes(b"garbage")
    assert store.load_latest() is None


def test_file_name_must_match_header_round(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    store.save(1, _state(1))
    os.replace(store.path_for(1), store.path_for(9))  # wrongly named copy
    assert store.load_latest() is None


def test_keep_pruning(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for r in range(1, 6):
        store.save(r, _state(r))
    assert [r for r, _ in store.checkpoints()] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004.p2c", "ckpt-00000005.p2c"]
    one = CheckpointStore(tmp_path / "one", keep=1)
    for r in (10, 11, 100_000_000):  # rounds beyond 8 digits still sort numerically
        one.save(r, _state(r))
    assert [r for r, _ in one.checkpoints()] == [100_000_000]
    one.save(3, _state(3))  # an older round: the file just written is never pruned
    assert [r for r, _ in one.checkpoints()] == [3, 100_000_000]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            CheckpointStore(tmp_path, keep=bad)  # type: ignore[arg-type]


def test_saving_same_round_replaces(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(4, _state(1))
    store.save(4, _state(2))
    assert store.load_latest()[1].metrics == {"round": 2}
    assert len(list(tmp_path.iterdir())) == 1


def test_leftover_temp_file_is_ignored_and_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1))
    blob = encode(2, _state(2))
    leftover = tmp_path / ".ckpt-00000002.p2c.tmp-0123456789ab"
    leftover.write_bytes(blob[: len(blob) // 2])  # a crash mid-write
    assert store.load_latest()[0] == 1
    assert not leftover.exists()
    leftover.write_bytes(b"partial")
    store.save(3, _state(3))
    assert not leftover.exists()
    assert [r for r, _ in store.checkpoints()] == [1, 3]


def test_save_is_atomic_when_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1))
    before = store.path_for(1).read_bytes()

    def boom(src, dst):  # noqa: ANN001
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        store.save(1, _state(99))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001.p2c"]  # no temp left behind
    assert store.path_for(1).read_bytes() == before


def test_save_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    CheckpointStore(tmp_path).save(1, _state(1))
    assert len(calls) == 2  # the temp file, then the directory


def test_module_never_uses_pickle() -> None:
    source = Path(ckpt.__file__).read_text()
    tree = ast.parse(source)
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned
        elif isinstance(node, ast.Attribute):
            assert node.attr not in {"load", "loads", "Unpickler"} or not (
                isinstance(node.value, ast.Name) and node.value.id in {"torch", *banned}
            )
    assert "import pickle" not in source
    assert not re.search(r"(?<!safetensors\.)torch\.load\(", source)  # safetensors.torch.load reads no pickle


# ----------------------------------------------------------------------------- compatibility and limits


def _pinned_state() -> NodeState:
    """The state in `_PINNED_V2` (every storable dtype, the int extremes, NaN, bytes, non-ASCII)."""
    return NodeState(
        trainer={
            "w": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
            "h": torch.tensor([1.5, -2.0], dtype=torch.float16),
            "bf": torch.tensor([0.5, 3.0], dtype=torch.bfloat16),
            "d": torch.tensor(2.25, dtype=torch.float64),
            "i8": torch.tensor([-3, 4], dtype=torch.int8),
            "u8": torch.tensor([250], dtype=torch.uint8),
            "i16": torch.tensor([-300], dtype=torch.int16),
            "i32": torch.tensor([70000], dtype=torch.int32),
            "step": torch.tensor(12345678901),
            "mask": torch.tensor([True, False]),
            "empty": torch.zeros(0, 3),
            "groups": [{"lr": 0.1, "betas": (0.9, 0.999), "fused": None, "nan": math.nan, "inf": -math.inf}],
            "state": {0: {"n": 2**64 - 1}, -1: {"m": -(2**63)}},
        },
        reference={
            "u16": np.array([65535, 1], np.uint16),
            "u32": np.array([[4294967295]], np.uint32),
            "u64": np.array([2**64 - 1], np.uint64),
            "i64": np.array([-5], np.int64),
            "f32": np.linspace(-1, 1, 3, dtype=np.float32),
            "b": np.array([True]),
            "h": np.array([0.25], np.float16),
        },
        metrics={"acc": [0.5], "raw": b"\x00\xff", "name": "n\u00e9"},
        meta={"node": 2},
    )


# `encode(7, _pinned_state())` as written by the first safetensors writer (safetensors.torch.save,
# safetensors 0.8.0, torch 2.13): files written before the writer moved here must still load.
_PINNED_V2 = base64.b64decode(
    "AA4AAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJmb3JtYXQiOiJwMnBmbC1jaGVja3BvaW50Iiwic2hhMjU2IjoiNGYzZWNkY2Nj"
    "YTU1NjNhNjYzNjFiYWQ0ZDY0NTBiYTNkMjI2MzA1ZDFjMDg5ODU5NGE3MTE3M2FkNTcwZGFmNSIsInZlcnNpb24iOiIyIiwi"
    "c3RhdGUiOiJ7XCJyb3VuZFwiOjcsXCJjcmVhdGVkXCI6MTc5NjUzNzYxNi43MzYzNDA4LFwid3JpdGVyXCI6e1wicDJwZmxc"
    "IjpcIjAuMS4wXCIsXCJ0b3JjaFwiOlwiMi4xMy4wK2NwdVwiLFwic2FmZXRlbnNvcnNcIjpcIjAuOC4wXCJ9LFwidHJlZVwi"
    "OntcImRpY3RcIjpbW1widHJhaW5lclwiLHtcImRpY3RcIjpbW1wid1wiLHtcInRlbnNvclwiOntcImtleVwiOlwidHJhaW5l"
    "clsndyddXCIsXCJkdHlwZVwiOlwiZmxvYXQzMlwiLFwic2hhcGVcIjpbMiwzXX19XSxbXCJoXCIse1widGVuc29yXCI6e1wi"
    "a2V5XCI6XCJ0cmFpbmVyWydoJ11cIixcImR0eXBlXCI6XCJmbG9hdDE2XCIsXCJzaGFwZVwiOlsyXX19XSxbXCJiZlwiLHtc"
    "InRlbnNvclwiOntcImtleVwiOlwidHJhaW5lclsnYmYnXVwiLFwiZHR5cGVcIjpcImJmbG9hdDE2XCIsXCJzaGFwZVwiOlsy"
    "XX19XSxbXCJkXCIse1widGVuc29yXCI6e1wia2V5XCI6XCJ0cmFpbmVyWydkJ11cIixcImR0eXBlXCI6XCJmbG9hdDY0XCIs"
    "XCJzaGFwZVwiOltdfX1dLFtcImk4XCIse1widGVuc29yXCI6e1wia2V5XCI6XCJ0cmFpbmVyWydpOCddXCIsXCJkdHlwZVwi"
    "OlwiaW50OFwiLFwic2hhcGVcIjpbMl19fV0sW1widThcIix7XCJ0ZW5zb3JcIjp7XCJrZXlcIjpcInRyYWluZXJbJ3U4J11c"
    "IixcImR0eXBlXCI6XCJ1aW50OFwiLFwic2hhcGVcIjpbMV19fV0sW1wiaTE2XCIse1widGVuc29yXCI6e1wia2V5XCI6XCJ0"
    "cmFpbmVyWydpMTYnXVwiLFwiZHR5cGVcIjpcImludDE2XCIsXCJzaGFwZVwiOlsxXX19XSxbXCJpMzJcIix7XCJ0ZW5zb3Jc"
    "Ijp7XCJrZXlcIjpcInRyYWluZXJbJ2kzMiddXCIsXCJkdHlwZVwiOlwiaW50MzJcIixcInNoYXBlXCI6WzFdfX1dLFtcInN0"
    "ZXBcIix7XCJ0ZW5zb3JcIjp7XCJrZXlcIjpcInRyYWluZXJbJ3N0ZXAnXVwiLFwiZHR5cGVcIjpcImludDY0XCIsXCJzaGFw"
    "ZVwiOltdfX1dLFtcIm1hc2tcIix7XCJ0ZW5zb3JcIjp7XCJrZXlcIjpcInRyYWluZXJbJ21hc2snXVwiLFwiZHR5cGVcIjpc"
    "ImJvb2xcIixcInNoYXBlXCI6WzJdfX1dLFtcImVtcHR5XCIse1widGVuc29yXCI6e1wia2V5XCI6XCJ0cmFpbmVyWydlbXB0"
    "eSddXCIsXCJkdHlwZVwiOlwiZmxvYXQzMlwiLFwic2hhcGVcIjpbMCwzXX19XSxbXCJncm91cHNcIix7XCJsaXN0XCI6W3tc"
    "ImRpY3RcIjpbW1wibHJcIiwwLjFdLFtcImJldGFzXCIse1widHVwbGVcIjpbMC45LDAuOTk5XX1dLFtcImZ1c2VkXCIsbnVs"
    "bF0sW1wibmFuXCIse1wiZmxvYXRcIjpcIm5hblwifV0sW1wiaW5mXCIse1wiZmxvYXRcIjpcIi1pbmZcIn1dXX1dfV0sW1wi"
    "c3RhdGVcIix7XCJkaWN0XCI6W1swLHtcImRpY3RcIjpbW1wiblwiLDE4NDQ2NzQ0MDczNzA5NTUxNjE1XV19XSxbLTEse1wi"
    "ZGljdFwiOltbXCJtXCIsLTkyMjMzNzIwMzY4NTQ3NzU4MDhdXX1dXX1dXX1dLFtcInJlZmVyZW5jZVwiLHtcImRpY3RcIjpb"
    "W1widTE2XCIse1wibmRhcnJheVwiOntcImtleVwiOlwicmVmZXJlbmNlWyd1MTYnXVwiLFwiZHR5cGVcIjpcInVpbnQxNlwi"
    "LFwic2hhcGVcIjpbMl19fV0sW1widTMyXCIse1wibmRhcnJheVwiOntcImtleVwiOlwicmVmZXJlbmNlWyd1MzInXVwiLFwi"
    "ZHR5cGVcIjpcInVpbnQzMlwiLFwic2hhcGVcIjpbMSwxXX19XSxbXCJ1NjRcIix7XCJuZGFycmF5XCI6e1wia2V5XCI6XCJy"
    "ZWZlcmVuY2VbJ3U2NCddXCIsXCJkdHlwZVwiOlwidWludDY0XCIsXCJzaGFwZVwiOlsxXX19XSxbXCJpNjRcIix7XCJuZGFy"
    "cmF5XCI6e1wia2V5XCI6XCJyZWZlcmVuY2VbJ2k2NCddXCIsXCJkdHlwZVwiOlwiaW50NjRcIixcInNoYXBlXCI6WzFdfX1d"
    "LFtcImYzMlwiLHtcIm5kYXJyYXlcIjp7XCJrZXlcIjpcInJlZmVyZW5jZVsnZjMyJ11cIixcImR0eXBlXCI6XCJmbG9hdDMy"
    "XCIsXCJzaGFwZVwiOlszXX19XSxbXCJiXCIse1wibmRhcnJheVwiOntcImtleVwiOlwicmVmZXJlbmNlWydiJ11cIixcImR0"
    "eXBlXCI6XCJib29sXCIsXCJzaGFwZVwiOlsxXX19XSxbXCJoXCIse1wibmRhcnJheVwiOntcImtleVwiOlwicmVmZXJlbmNl"
    "WydoJ11cIixcImR0eXBlXCI6XCJmbG9hdDE2XCIsXCJzaGFwZVwiOlsxXX19XV19XSxbXCJtZXRyaWNzXCIse1wiZGljdFwi"
    "OltbXCJhY2NcIix7XCJsaXN0XCI6WzAuNV19XSxbXCJyYXdcIix7XCJieXRlc1wiOlwiMDBmZlwifV0sW1wibmFtZVwiLFwi"
    "blxcdTAwZTlcIl1dfV0sW1wibWV0YVwiLHtcImRpY3RcIjpbW1wibm9kZVwiLDJdXX1dXX19In0sInJlZmVyZW5jZVsndTY0"
    "J10iOnsiZHR5cGUiOiJVNjQiLCJzaGFwZSI6WzFdLCJkYXRhX29mZnNldHMiOlswLDhdfSwicmVmZXJlbmNlWydpNjQnXSI6"
    "eyJkdHlwZSI6Ikk2NCIsInNoYXBlIjpbMV0sImRhdGFfb2Zmc2V0cyI6WzgsMTZdfSwidHJhaW5lclsnc3RlcCddIjp7ImR0"
    "eXBlIjoiSTY0Iiwic2hhcGUiOltdLCJkYXRhX29mZnNldHMiOlsxNiwyNF19LCJ0cmFpbmVyWydkJ10iOnsiZHR5cGUiOiJG"
    "NjQiLCJzaGFwZSI6W10sImRhdGFfb2Zmc2V0cyI6WzI0LDMyXX0sInJlZmVyZW5jZVsnZjMyJ10iOnsiZHR5cGUiOiJGMzIi"
    "LCJzaGFwZSI6WzNdLCJkYXRhX29mZnNldHMiOlszMiw0NF19LCJ0cmFpbmVyWydlbXB0eSddIjp7ImR0eXBlIjoiRjMyIiwi"
    "c2hhcGUiOlswLDNdLCJkYXRhX29mZnNldHMiOls0NCw0NF19LCJ0cmFpbmVyWyd3J10iOnsiZHR5cGUiOiJGMzIiLCJzaGFw"
    "ZSI6WzIsM10sImRhdGFfb2Zmc2V0cyI6WzQ0LDY4XX0sInJlZmVyZW5jZVsndTMyJ10iOnsiZHR5cGUiOiJVMzIiLCJzaGFw"
    "ZSI6WzEsMV0sImRhdGFfb2Zmc2V0cyI6WzY4LDcyXX0sInRyYWluZXJbJ2kzMiddIjp7ImR0eXBlIjoiSTMyIiwic2hhcGUi"
    "OlsxXSwiZGF0YV9vZmZzZXRzIjpbNzIsNzZdfSwidHJhaW5lclsnYmYnXSI6eyJkdHlwZSI6IkJGMTYiLCJzaGFwZSI6WzJd"
    "LCJkYXRhX29mZnNldHMiOls3Niw4MF19LCJyZWZlcmVuY2VbJ2gnXSI6eyJkdHlwZSI6IkYxNiIsInNoYXBlIjpbMV0sImRh"
    "dGFfb2Zmc2V0cyI6WzgwLDgyXX0sInRyYWluZXJbJ2gnXSI6eyJkdHlwZSI6IkYxNiIsInNoYXBlIjpbMl0sImRhdGFfb2Zm"
    "c2V0cyI6WzgyLDg2XX0sInJlZmVyZW5jZVsndTE2J10iOnsiZHR5cGUiOiJVMTYiLCJzaGFwZSI6WzJdLCJkYXRhX29mZnNl"
    "dHMiOls4Niw5MF19LCJ0cmFpbmVyWydpMTYnXSI6eyJkdHlwZSI6IkkxNiIsInNoYXBlIjpbMV0sImRhdGFfb2Zmc2V0cyI6"
    "WzkwLDkyXX0sInRyYWluZXJbJ2k4J10iOnsiZHR5cGUiOiJJOCIsInNoYXBlIjpbMl0sImRhdGFfb2Zmc2V0cyI6WzkyLDk0"
    "XX0sInRyYWluZXJbJ3U4J10iOnsiZHR5cGUiOiJVOCIsInNoYXBlIjpbMV0sImRhdGFfb2Zmc2V0cyI6Wzk0LDk1XX0sInJl"
    "ZmVyZW5jZVsnYiddIjp7ImR0eXBlIjoiQk9PTCIsInNoYXBlIjpbMV0sImRhdGFfb2Zmc2V0cyI6Wzk1LDk2XX0sInRyYWlu"
    "ZXJbJ21hc2snXSI6eyJkdHlwZSI6IkJPT0wiLCJzaGFwZSI6WzJdLCJkYXRhX29mZnNldHMiOls5Niw5OF19ff//////////"
    "+/////////81HNzfAgAAAAAAAAAAAAJAAACAvwAAAAAAAIA/AAAAACVJEj4lSZI+t23bPiVJEj9u2zY//////3ARAQAAP0BA"
    "ADQAPgDA//8BANT+/QT6AQEA"
)


def _table(blob: bytes) -> tuple[int, dict, bytes]:
    """(header length, tensor table, data) of a safetensors file."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__")
    return n, header, blob[8 + n :]


def test_a_file_written_by_the_earlier_writer_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "ckpt-00000007.p2c"
    path.write_bytes(_PINNED_V2)
    round_, state = read_checkpoint(path)
    assert round_ == 7
    _assert_same(state.trainer, _pinned_state().trainer)
    _assert_same(state.reference, _pinned_state().reference)
    _assert_same(state.metrics, _pinned_state().metrics)
    assert state.meta == {"node": 2}
    state.reference["u16"][0] = 7  # arrays come back writable, as before
    state.trainer["w"].add_(1)


def test_the_file_layout_is_the_one_safetensors_writes() -> None:
    """Same header size, tensor table (dtype codes U16/U32/U64 included, order, offsets) and data bytes as
    the pinned file from safetensors' own writer, and as safetensors.torch.save writes today."""
    blob = encode(7, _pinned_state())
    assert _table(blob) == _table(_PINNED_V2)
    metadata = _header(blob)["__metadata__"]
    assert json.loads(metadata["state"])["tree"] == json.loads(_header(_PINNED_V2)["__metadata__"]["state"])["tree"]
    if getattr(torch, "uint64", None) is None:
        return  # torch < 2.3 cannot hold the U16/U32/U64 tensors that safetensors.torch would need below
    tensors = safetensors.torch.load(blob)
    assert _table(blob) == _table(safetensors.torch.save(tensors, metadata))


def test_unsigned_arrays_never_need_torch_unsigned_dtypes(tmp_path: Path) -> None:
    """torch < 2.3 (allowed by pyproject) has no uint16/32/64: importing, saving and loading must not ask for them."""
    script = f"""
import numpy as np, torch
real = torch.from_numpy
def from_numpy(a):
    if a.dtype in (np.uint16, np.uint32, np.uint64):
        raise TypeError("can't convert np.ndarray of type numpy.{{}}".format(a.dtype))
    return real(a)
torch.from_numpy = from_numpy
import p2pfl.checkpoint as ckpt
state = ckpt.NodeState(trainer={{"w": torch.ones(2)}}, reference=[np.arange(3, dtype=d) for d in ("uint16", "uint32", "uint64")])
ckpt.write_checkpoint({str(tmp_path / "c.p2c")!r}, 1, state)
_, back = ckpt.read_checkpoint({str(tmp_path / "c.p2c")!r})
assert [a.dtype.name for a in back.reference] == ["uint16", "uint32", "uint64"], back.reference
assert all((a == np.arange(3)).all() for a in back.reference)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 2**100, -(2**200)])
@pytest.mark.parametrize("where", ["value", "key", "nested"])
def test_ints_outside_64_bits_are_refused_on_read(tmp_path: Path, value: int, where: str) -> None:
    with pytest.raises(ValueError, match="64 bits"):  # what saving does with them
        encode(0, NodeState(trainer={}, metrics={"x": value}))
    tensors, metadata, doc = _valid_parts()
    node = {"value": {"dict": [["x", value]]}, "key": {"dict": [[value, 1]]},
            "nested": {"dict": [["x", {"list": [1, {"tuple": [value]}]}]]}}[where]
    _set_root(doc, 2, node)
    path = tmp_path / "ckpt-00000003.p2c"
    path.write_bytes(_seal(tensors, metadata, doc))
    field = {"value": "metrics['x']", "key": "a dict key of metrics", "nested": "metrics['x'][1][0]"}[where]
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: bad structure: {field} is an int of")) as err:
        read_checkpoint(path)
    assert "outside -2**63..2**64-1" in str(err.value)


def test_ints_at_the_64_bit_limits_load() -> None:
    for value in (2**64 - 1, -(2**63)):
        state = NodeState(trainer={value: value}, metrics={"x": [value]})
        assert decode(encode(0, state))[1] == state


def test_save_streams_the_tensors_instead_of_copying_them(tmp_path: Path) -> None:
    """Saving a 32 MB model allocates a few MB (one chunk), not copies of the model (it was ~3 copies)."""
    state = NodeState(trainer={"w": np.ones(8_000_000, np.float32)}, reference=np.zeros(10, np.float32))
    # (numpy arrays under trainer are stored like tensors; numpy's memory is what tracemalloc sees)
    tracemalloc.start()
    try:
        ckpt.write_checkpoint(tmp_path / "big.p2c", 1, state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12_000_000, peak
    _, back = read_checkpoint(tmp_path / "big.p2c")
    _assert_same(back.trainer, state.trainer)


def test_tensors_that_are_not_dense_on_the_cpu_are_written_as_their_values() -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    state = NodeState(trainer={"cl": x.reshape(1, 2, 3, 4).to(memory_format=torch.channels_last),
                               "sliced": x[:, 1:, ::2], "param": torch.nn.Parameter(torch.ones(2)),
                               "big_endian": np.arange(3, dtype=">i4"), "fortran": np.asfortranarray(np.eye(3))})
    back = decode(encode(0, state))[1].trainer
    assert torch.equal(back["cl"], state.trainer["cl"]) and torch.equal(back["sliced"], x[:, 1:, ::2])
    assert type(back["param"]) is torch.Tensor and not back["param"].requires_grad
    assert back["big_endian"].dtype == np.dtype("int32") and list(back["big_endian"]) == [0, 1, 2]
    assert (back["fortran"] == np.eye(3)).all()


def test_write_private_takes_any_buffers(tmp_path: Path) -> None:
    data = bytearray(b"abcdef")
    path = ckpt.write_private(tmp_path / "f", [memoryview(data)[:2], data[2:4], b"ef", memoryview(b"")])
    assert path.read_bytes() == b"abcdef"
    assert (path.stat().st_mode & 0o777) == 0o600
