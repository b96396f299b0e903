"""Start-up costs that are per node or per process but need not be (issue 19), without changing a result.

- `data.load_digits` keeps the finished split in `datacache`: a hit gives the bytes the uncached
  split gives, and a process that hits does not import scikit-learn at all.
- `training.init_model` seeds only the CPU generator where torch has no other (a CPU-only build):
  the models are the ones `torch.manual_seed` gives, bit for bit.
- `training.initial_flat(task, seed)` / `Task.initial_flat(seed)`: the initial model as a flat
  vector, built once per (task, seed) and shared read-only by the nodes of a process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfl import data, datacache, training
from p2pfl.data import Shard, load_digits
from p2pfl.training import LocalTrainer, Task, TrainConfig, init_model, initial_flat, load_task, model_flat

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("x_train", "y_train", "x_test", "y_test")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache directory (never the user's ~/.cache)."""
    where = tmp_path / "cache"
    monkeypatch.setenv(datacache.ENV, str(where))
    return where


def _digits_before(seed: int, test_fraction: float) -> dict[str, np.ndarray]:
    """load_digits as it was before the cache (scikit-learn every time), kept here verbatim."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = _sk_load_digits()
    x = raw.data.astype(np.float32) / 16.0
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-6] = 1.0
    return {
        "x_train": ((x_train - mean) / std).astype(np.float32),
        "y_train": y_train,
        "x_test": ((x_test - mean) / std).astype(np.float32),
        "y_test": y_test,
    }


def _same_bytes(ds: data.Dataset, want: dict[str, np.ndarray]) -> None:
    for f in FIELDS:
        got = getattr(ds, f)
        assert got.dtype == want[f].dtype and got.shape == want[f].shape, f
        assert got.tobytes() == want[f].tobytes(), f


def _digits_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("digits-*.npz")) if cache.exists() else []


# -- the digits cache ------------------------------------------------------------------------


@pytest.mark.parametrize("seed,test_fraction", [(0, 0.2), (3, 0.25), (7, 0.2)])
def test_cached_digits_are_the_uncached_bytes(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                              seed: int, test_fraction: float) -> None:
    want = _digits_before(seed, test_fraction)
    miss = load_digits(seed=seed, test_fraction=test_fraction)  # computed, then stored
    _same_bytes(miss, want)
    assert len(_digits_files(cache)) == 1

    def no_split(*args: object) -> None:
        raise AssertionError("a cache hit must not split again")

    monkeypatch.setattr(data, "_split_digits", no_split)
    hit = load_digits(seed=seed, test_fraction=test_fraction)  # read back from the file
    _same_bytes(hit, want)
    assert (hit.num_classes, hit.input_shape, hit.name) == (10, (64,), "digits")
    assert all(getattr(hit, f).flags.c_contiguous for f in FIELDS)


def test_one_file_per_seed_and_fraction(cache: Path) -> None:
    load_digits(seed=0)
    load_digits(seed=0)
    load_digits(seed=1)
    load_digits(seed=0, test_fraction=0.25)
    assert len(_digits_files(cache)) == 3


def test_damaged_digits_cache_is_made_again(cache: Path) -> None:
    load_digits(seed=0)
    (path,) = _digits_files(cache)
    path.write_bytes(path.read_bytes()[:200])  # cut short
    _same_bytes(load_digits(seed=0), _digits_before(0, 0.2))
    _same_bytes(load_digits(seed=0), _digits_before(0, 0.2))  # and the file is whole again


def test_numpy_arguments_share_the_plain_ones_file(cache: Path) -> None:
    _same_bytes(load_digits(seed=np.int64(2), test_fraction=np.float64(0.2)), _digits_before(2, 0.2))
    _same_bytes(load_digits(seed=2, test_fraction=0.2), _digits_before(2, 0.2))
    assert len(_digits_files(cache)) == 1


def test_bad_arguments_are_refused_as_before(cache: Path) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)
    with pytest.raises(ValueError):  # scikit-learn's own refusal, uncached
        load_digits(seed=-1)
    with pytest.raises(ValueError):
        load_digits(seed=0, test_fraction=np.float32(0.2))
    assert _digits_files(cache) == []


def _python(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, datacache.ENV: str(cache)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_a_cache_hit_does_not_import_sklearn(cache: Path) -> None:
    check = ("import sys\nfrom p2pfl.training import load_task\n"
             "task = load_task('digits-mlp', 0)\nassert len(task.dataset.y_train) == 1437\n"
             "print('sklearn' in sys.modules)")
    first = _python(check, cache)  # a miss: scikit-learn splits, and the file is written
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "True"
    assert len(_digits_files(cache)) == 1
    second = _python(check, cache)  # a hit, as a second `p2pfl simulate` would have
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "False", "a cache hit imported scikit-learn"


# -- init_model: the same models, cheaper ------------------------------------------------------


def _init_before(task: Task, seed: int) -> torch.nn.Module:
    """init_model as it was: torch.manual_seed (every device) inside a forked CPU RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.make_model()


@pytest.fixture(scope="module")
def tasks() -> list[Task]:
    return [load_task("digits-mlp", 0), load_task("digits-cnn", 0)]


@pytest.mark.parametrize("seed", [0, 7, 8, 123456, 2**40 + 3])
def test_init_models_are_unchanged(tasks: list[Task], seed: int) -> None:
    for task in tasks:
        before = model_flat(_init_before(task, seed))
        after = model_flat(init_model(task, seed))
        assert before.dtype == after.dtype == np.float32
        assert before.tobytes() == after.tobytes(), (task.name, seed)


def test_init_model_leaves_the_global_generator_alone(tasks: list[Task]) -> None:
    torch.manual_seed(99)
    want = torch.rand(5)
    torch.manual_seed(99)
    init_model(tasks[0], 3)
    assert torch.equal(torch.rand(5), want)


def test_cpu_only_torch_is_seeded_without_torch_manual_seed(tasks: list[Task], monkeypatch: pytest.MonkeyPatch) -> None:
    if not training._cpu_generator_only():
        pytest.skip("this torch has an accelerator backend: init_model calls torch.manual_seed, as before")
    want = model_flat(init_model(tasks[0], 5))

    def refused(seed: int) -> None:
        raise AssertionError("torch.manual_seed called on a CPU-only torch")

    monkeypatch.setattr(torch, "manual_seed", refused)
    assert model_flat(init_model(tasks[0], 5)).tobytes() == want.tobytes()


def test_torch_with_an_accelerator_still_gets_torch_manual_seed(tasks: list[Task], monkeypatch: pytest.MonkeyPatch) -> None:
    want = model_flat(_init_before(tasks[0], 4))
    monkeypatch.setattr(training, "_cpu_generator_only", lambda: False)
    calls: list[int] = []
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda seed: calls.append(seed) or real(seed))
    assert model_flat(init_model(tasks[0], 4)).tobytes() == want.tobytes()
    assert calls == [4]


# -- the shared initial vector -----------------------------------------------------------------


def _trainer_flat(task: Task, seed: int) -> np.ndarray:
    """What Node.__init__ computed for its reference before: a LocalTrainer's get_flat."""
    shard = Shard(x=task.dataset.x_train[:4], y=task.dataset.y_train[:4])
    return LocalTrainer(init_model(task, seed), shard, TrainConfig(), 0).get_flat()


def test_initial_flat_is_the_reference_node_built(tasks: list[Task]) -> None:
    for task in tasks:
        for seed in (0, 7):
            flat = initial_flat(task, seed)
            assert flat.dtype == np.float32 and flat.ndim == 1
            assert flat.tobytes() == _trainer_flat(task, seed).tobytes()
            assert flat.tobytes() == model_flat(_init_before(task, seed)).tobytes()


def test_initial_flat_is_shared_and_read_only() -> None:
    task = load_task("digits-mlp", 0)
    ref = initial_flat(task, 7)
    assert task.initial_flat(7) is ref  # one array for every node of the process
    assert initial_flat(task, 8) is not ref
    saved = ref.copy()
    assert not ref.flags.writeable
    with pytest.raises(ValueError):
        ref[0] = 1.0
    with pytest.raises(ValueError):
        ref += 1.0
    moved = ref + np.ones_like(ref)  # what nodes do with it: new arrays
    moved[0] = 5.0  # theirs to change
    assert np.array_equal(moved[1:], saved[1:] + 1.0)
    assert np.array_equal(ref, saved)
    assert load_task("digits-mlp", 0).initial_flat(7) is not ref  # another task object: its own


def test_initial_flat_built_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    task = load_task("digits-mlp", 0)
    built: list[int] = []
    real = training.init_model
    monkeypatch.setattr(training, "init_model", lambda t, s: built.append(s) or real(t, s))
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(initial_flat(task, 11))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == [11]
    assert len(got) == 8 and all(g is got[0] for g in got)


def test_initial_flat_keeps_a_few_seeds() -> None:
    task = load_task("digits-mlp", 0)
    first = initial_flat(task, 0)
    for seed in range(1, training.INITIAL_FLAT_SEEDS + 3):
        initial_flat(task, seed)
    assert len(task._initial) == training.INITIAL_FLAT_SEEDS
    again = initial_flat(task, 0)  # dropped, then built again: the same numbers
    assert again is not first and again.tobytes() == first.tobytes() and not again.flags.writeable


def test_task_equality_and_repr_ignore_the_cache() -> None:
    task = load_task("digits-mlp", 0)
    other = Task(task.name, task.make_model, task.dataset)
    task.initial_flat(0)
    assert task == other and "_initial" not in repr(task)
