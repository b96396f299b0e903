"""Tests for p2pfl.apps: the synthetic app-recommendation task."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl import apps
from p2pfl.data import Dataset, Shard, partition, shard
from p2pfl.training import LocalTrainer, Task, TrainConfig, init_model, load_task

SPEC = "p2pfl.apps:app_task"


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(SPEC, seed=0)


def test_plugin_spec_loads_a_valid_task(task: Task) -> None:
    ds = task.dataset
    assert isinstance(task, Task) and isinstance(ds, Dataset) and isinstance(ds, apps.AppDataset)
    assert task.name == "apps-mlp" and ds.name == "apps"
    assert ds.num_classes == apps.N_APPS == 20 and ds.input_shape == (apps.FEATURES,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.shape[1] == apps.FEATURES and np.isfinite(ds.x_train).all()
    assert len(ds.y_train) + len(ds.y_test) == apps.N_USERS * apps.SESSIONS_PER_USER
    assert set(np.unique(ds.y_train)) == set(range(apps.N_APPS))  # every app occurs
    assert len(ds.groups_train) == len(ds.y_train) and len(ds.groups_test) == len(ds.y_test)
    out = init_model(task, 0)(__import__("torch").from_numpy(ds.x_test[:4]))
    assert tuple(out.shape) == (4, apps.N_APPS)


def test_deterministic_per_seed() -> None:
    a, b, c = apps.load_apps(3), apps.load_apps(3), apps.load_apps(4)
    for f in ("x_train", "y_train", "x_test", "y_test", "groups_train"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.y_train, c.y_train)


def test_learns_well_above_chance(task: Task) -> None:
    ds = task.dataset
    tr = LocalTrainer(init_model(task, 0), Shard(ds.x_train, ds.y_train), TrainConfig(local_epochs=5), seed=0)
    tr.train()
    _, acc = tr.evaluate(ds.x_test, ds.y_test)
    chance, majority = 1 / apps.N_APPS, apps.majority_baseline(ds)
    assert majority < 0.25
    assert acc > majority + 0.2 and acc > 5 * chance, (acc, majority)


def _label_skew(ds: Dataset, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each part's label mix and the whole training set's."""
    glob = np.bincount(ds.y_train, minlength=ds.num_classes) / len(ds.y_train)
    tv = [0.5 * np.abs(np.bincount(ds.y_train[p], minlength=ds.num_classes) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tv))


def test_partitions_give_per_node_preference_skew(task: Task) -> None:
    ds = task.dataset
    iid = _label_skew(ds, partition(ds.y_train, 8, "iid", seed=0))
    by_label = _label_skew(ds, partition(ds.y_train, 8, "dirichlet", alpha=0.3, seed=0))
    groups = apps.partition_by_group(ds, 8, alpha=0.3, seed=0)
    by_group = _label_skew(ds, groups)
    assert iid < 0.1
    assert by_label > 3 * iid and by_group > 3 * iid, (iid, by_label, by_group)
    # group partition: each node's users come from few personas; shards are usable as-is
    for p in groups:
        share = np.bincount(ds.groups_train[p], minlength=apps.N_GROUPS) / len(p)
        assert np.sort(share)[-3:].sum() > 0.6
    s = shard(ds, groups[0])
    assert len(s) == len(groups[0]) and sorted(np.concatenate(groups).tolist()) == list(range(len(ds.y_train)))


def test_generate_validates() -> None:
    with pytest.raises(ValueError):
        apps.generate(0, n_users=0)
    with pytest.raises(ValueError):
        apps.load_apps(0, test_fraction=1.0)
    small = apps.generate(1, n_users=10, sessions=2)
    assert small["x"].shape == (20, apps.FEATURES) and small["y"].max() < apps.N_APPS
