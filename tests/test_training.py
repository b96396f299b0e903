"""Tests for p2pfl.models and p2pfl.training: tasks, local training, flat vectors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfl import models
from p2pfl.data import Shard, partition, shard
from p2pfl.training import (
    BUILTIN_TASKS,
    LocalTrainer,
    Task,
    TrainConfig,
    init_model,
    load_task,
)


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task("digits-mlp", seed=0)


def _full(task: Task) -> Shard:
    return Shard(task.dataset.x_train, task.dataset.y_train)


def _node_trainer(task: Task, node: int = 0, cfg: TrainConfig | None = None) -> LocalTrainer:
    parts = partition(task.dataset.y_train, 8, "iid", seed=0)
    return LocalTrainer(init_model(task, 0), shard(task.dataset, parts[node]), cfg or TrainConfig(), node)


def test_centralized_mlp_reaches_95(task: Task) -> None:
    tr = LocalTrainer(init_model(task, 0), _full(task), TrainConfig(local_epochs=30), seed=0)
    loss = tr.train()
    assert np.isfinite(loss)
    test_loss, acc = tr.evaluate(task.dataset.x_test, task.dataset.y_test)
    assert acc >= 0.95, acc
    assert test_loss < 0.3


def test_centralized_cnn_above_90() -> None:
    t = load_task("digits-cnn", seed=0)
    tr = LocalTrainer(init_model(t, 0), _full(t), TrainConfig(local_epochs=8), seed=0)
    tr.train()
    _, acc = tr.evaluate(t.dataset.x_test, t.dataset.y_test)
    assert acc > 0.90, acc


def test_cnn_accepts_flat_and_images() -> None:
    net = models.small_cnn(10)
    flat = torch.randn(3, 64)
    assert net(flat).shape == (3, 10)
    assert torch.allclose(net(flat), net(flat.reshape(3, 1, 8, 8)))


def test_mlp_shape() -> None:
    net = models.mlp(64, 10, hidden=(32,))
    assert net(torch.randn(5, 64)).shape == (5, 10)
    assert sum(p.numel() for p in net.parameters()) == 64 * 32 + 32 + 32 * 10 + 10
    with pytest.raises(ValueError):
        models.mlp(0, 10)


def test_decentralized_averaging_smoke(task: Task) -> None:
    """8 IID nodes, 1 local epoch, exact averaging: default config is >= 90% within 10 rounds."""
    trainers = [_node_trainer(task, i) for i in range(8)]
    for _ in range(10):
        for t in trainers:
            t.train()
        avg = np.mean([t.get_flat() for t in trainers], axis=0).astype(np.float32)
        for t in trainers:
            t.set_flat(avg)
    _, acc = trainers[0].evaluate(task.dataset.x_test, task.dataset.y_test)
    assert acc >= 0.90, acc


def test_flat_round_trip(task: Task) -> None:
    tr = _node_trainer(task)
    flat = tr.get_flat()
    assert flat.dtype == np.float32 and flat.ndim == 1 and len(flat) == tr.num_params
    assert tr.num_params == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    flat[0] += 1.0  # get_flat returns a copy
    assert tr.get_flat()[0] != flat[0]
    new = np.arange(tr.num_params, dtype=np.float32) / tr.num_params
    tr.set_flat(new)
    assert np.array_equal(tr.get_flat(), new)
    new[0] = 42.0  # set_flat copied the data in
    assert tr.get_flat()[0] != 42.0


def test_set_flat_validation(task: Task) -> None:
    tr = _node_trainer(task)
    n = tr.num_params
    with pytest.raises(ValueError, match="length"):
        tr.set_flat(np.zeros(n - 1, np.float32))
    with pytest.raises(ValueError, match="length"):
        tr.set_flat(np.zeros((1, n), np.float32))
    with pytest.raises(ValueError, match="float32"):
        tr.set_flat(np.zeros(n, np.float64))
    with pytest.raises(ValueError, match="numpy"):
        tr.set_flat([0.0] * n)  # type: ignore[arg-type]


def test_init_model_deterministic_and_isolated(task: Task) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = init_model(task, 7), init_model(task, 7), init_model(task, 8)
    after = torch.rand(3)
    assert torch.equal(before, after), "init_model disturbed the global RNG"
    pa, pb, pc = (torch.cat([p.reshape(-1) for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_same_seed_same_trajectory(task: Task) -> None:
    runs = []
    for _ in range(2):
        tr = _node_trainer(task, 3)
        losses = [tr.train() for _ in range(3)]
        runs.append((losses, tr.get_flat()))
    assert runs[0][0] == runs[1][0]
    assert np.array_equal(runs[0][1], runs[1][1])
    ref = _node_trainer(task, 3)
    other = LocalTrainer(init_model(task, 0), Shard(ref.x.numpy(), ref.y.numpy()), TrainConfig(), seed=99)
    assert other.train() != runs[0][0][0]  # a different shuffling seed gives a different path


def test_local_steps_override_epochs(task: Task) -> None:
    cfg = TrainConfig(optimizer="adam", lr=1e-3, local_epochs=5, local_steps=13)
    tr = _node_trainer(task, cfg=cfg)
    tr.train()
    steps = {int(s["step"]) for s in tr.optimizer.state_dict()["state"].values()}
    assert steps == {13}
    tr.train()
    steps = {int(s["step"]) for s in tr.optimizer.state_dict()["state"].values()}
    assert steps == {26}, "optimizer state must persist across rounds"


def test_momentum_persists_across_set_flat(task: Task) -> None:
    tr = _node_trainer(task)
    tr.train()
    buf = [s["momentum_buffer"].clone() for s in tr.optimizer.state.values()]
    tr.set_flat(np.zeros(tr.num_params, np.float32))
    after = [s["momentum_buffer"] for s in tr.optimizer.state.values()]
    assert len(buf) == len(after) > 0 and all(torch.equal(x, y) for x, y in zip(buf, after))


def _plain(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool))


def test_state_dict_round_trip(task: Task) -> None:
    tr = _node_trainer(task)
    tr.train()
    state = tr.state_dict()
    assert _plain(state)
    tr.train()
    expected = tr.get_flat()

    fresh = _node_trainer(task)
    fresh.load_state_dict(state)
    assert fresh.rounds == 1
    fresh.train()
    assert np.array_equal(fresh.get_flat(), expected)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"model": state["model"]})


def test_evaluate_restores_mode(task: Task) -> None:
    tr = _node_trainer(task)
    tr.model.train()
    loss, acc = tr.evaluate(task.dataset.x_test, task.dataset.y_test)
    assert tr.model.training and 0.0 <= acc <= 1.0 and loss > 0
    with pytest.raises(ValueError):
        tr.evaluate(task.dataset.x_test, task.dataset.y_test[:5])


def test_empty_shard_rejected(task: Task) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        LocalTrainer(init_model(task, 0), Shard(np.zeros((0, 64), np.float32), np.zeros(0, np.int64)),
                     TrainConfig(), 0)


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"lr": -0.01}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"batch_size": 0}, "batch_size"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"local_steps": 0}, "local_steps"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_train_config_validation(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        TrainConfig(**kwargs)


def test_builtin_tasks() -> None:
    classes = {"digits-mlp": 10, "digits-cnn": 10, "apps": 20, "mnist1d": 10}
    assert set(BUILTIN_TASKS) == set(classes)
    for name in BUILTIN_TASKS:
        t = load_task(name, seed=1)
        assert t.name == name and t.dataset.num_classes == classes[name]
        out = init_model(t, 0)(torch.from_numpy(t.dataset.x_test[:4]))
        assert out.shape == (4, classes[name])


def test_unknown_task_lists_builtins() -> None:
    with pytest.raises(ValueError, match="digits-mlp") as exc:
        load_task("mnist", seed=0)
    assert "digits-cnn" in str(exc.value) and "mnist" in str(exc.value)
    with pytest.raises(ValueError, match="non-empty"):
        load_task("  ", seed=0)


PLUGIN = textwrap.dedent(
    """
    from p2pfl.data import load_digits
    from p2pfl.models import mlp
    from p2pfl.training import Task

    def make(seed):
        ds = load_digits(seed=seed, test_fraction=0.25)
        return Task("my-task", lambda: mlp(64, 10, hidden=(16,)), ds)

    def wrong(seed):
        return 42

    def broken(seed):
        raise RuntimeError("boom")
    """
)


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "my_plugin_tasks.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_task(plugin_dir: Path) -> None:
    t = load_task("my_plugin_tasks:make", seed=2)
    assert t.name == "my-task" and len(t.dataset.y_test) == 450
    tr = LocalTrainer(init_model(t, 0), Shard(t.dataset.x_train, t.dataset.y_train), TrainConfig(), 0)
    assert tr.num_params == 64 * 16 + 16 + 16 * 10 + 10
    assert np.isfinite(tr.train())


@pytest.mark.parametrize(
    "spec,word",
    [
        ("my_plugin_tasks:wrong", "must return"),
        ("my_plugin_tasks:broken", "boom"),
        ("my_plugin_tasks:nothing", "no callable"),
        ("no_such_module_xyz:make", "cannot import"),
        ("my_plugin_tasks:", "package.module:function"),
        (":make", "package.module:function"),
    ],
)
def test_plugin_errors_name_the_spec(plugin_dir: Path, spec: str, word: str) -> None:
    with pytest.raises(ValueError, match=word) as exc:
        load_task(spec, seed=0)
    assert repr(spec) in str(exc.value)


def test_init_model_is_identical_when_nodes_share_a_process() -> None:
    """Nodes of one simulation process build their models in parallel threads."""
    import threading

    task = load_task("digits-mlp", 0)
    flats: list[np.ndarray] = []

    def build() -> None:
        for _ in range(20):
            model = init_model(task, 123)
            flats.append(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy())

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(flats) == 80
    assert all(np.array_equal(flats[0], f) for f in flats[1:])
