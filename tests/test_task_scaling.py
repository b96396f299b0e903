"""Data that grows with the network (issue 19): the mnist1d task, its cache, and splits the data cannot support.

- `mnist1d.generate` is seeded and vectorised: same seed, same bytes; a stream's first samples
  do not depend on how many are asked for; its steps match the original's scipy calls.
- `data.load_mnist1d` sizes the training set by the node count (the test set stays the same) and
  keeps it in `datacache`: a hit gives the bytes a fresh generation gives, and a damaged,
  foreign or pickled file is generated again, never trusted.
- A split that leaves a node fewer than the minimum samples is a config error (exit 2, field
  `nodes`, the numbers named) before anything starts: from known sizes for the built-in tasks,
  when the task loads for a plug-in.
- A short real `p2pfl simulate --task mnist1d` learns (above chance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from p2pfl import cli, config, datacache, mnist1d
from p2pfl.config import ConfigError, ExperimentConfig, NodeEntry, write_cluster
from p2pfl.data import MNIST1D_MIN_TRAIN, MNIST1D_PER_NODE, MNIST1D_TEST, load_mnist1d, mnist1d_sizes, partition

P2PFL = Path(sys.executable).parent / "p2pfl"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache directory (never the user's ~/.cache)."""
    where = tmp_path / "cache"
    monkeypatch.setenv(datacache.ENV, str(where))
    return where


def _cache_file(seed: int, nodes: int | None) -> Path:
    train, test = mnist1d_sizes(nodes)
    return datacache.cache_path("mnist1d", {"v": mnist1d.GENERATOR_VERSION, "seed": seed, "train": train, "test": test})


def _same(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k)) and getattr(a, k).dtype == getattr(b, k).dtype
               for k in ("x_train", "y_train", "x_test", "y_test"))


# -- the generator ---------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_data() -> None:
    x1, y1 = mnist1d.generate(3000, seed=5)
    x2, y2 = mnist1d.generate(3000, seed=5)
    assert x1.tobytes() == x2.tobytes() and y1.tobytes() == y2.tobytes()
    assert x1.dtype == np.float32 and y1.dtype == np.int64 and x1.shape == (3000, mnist1d.LENGTH)
    x3, _ = mnist1d.generate(3000, seed=6)
    x4, _ = mnist1d.generate(3000, seed=5, stream=1)
    assert not np.allclose(x1, x3) and not np.allclose(x1, x4)


def test_a_stream_starts_the_same_whatever_its_length() -> None:
    """Across a chunk boundary too: a larger network's data begins with a smaller one's."""
    n = mnist1d.CHUNK + 500
    big_x, big_y = mnist1d.generate(n + 7000, seed=2)
    x, y = mnist1d.generate(n, seed=2)
    assert np.array_equal(big_x[:n], x) and np.array_equal(big_y[:n], y)


def test_signals_are_standardised_and_classes_balanced() -> None:
    x, y = mnist1d.generate(2 * mnist1d.CHUNK, seed=0)
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02
    assert np.array_equal(np.bincount(y), np.full(10, 2 * mnist1d.CHUNK // 10))


def test_steps_match_the_original_scipy_calls() -> None:
    """The original MNIST-1D filters with scipy.ndimage.gaussian_filter and resamples with interp1d."""
    from scipy.interpolate import interp1d
    from scipy.ndimage import gaussian_filter

    rows = np.random.default_rng(0).standard_normal((6, mnist1d.WIDE))
    expected = np.stack([gaussian_filter(r, mnist1d.CORR_NOISE_SIGMA) for r in rows])
    assert np.allclose(mnist1d._gaussian_filter(rows, mnist1d.CORR_NOISE_SIGMA), expected, atol=1e-12)
    lengths = np.array([48, 50, 61, 72, 55, 60])
    expected = np.stack([interp1d(np.linspace(0, 1, n), r[:n])(np.linspace(0, 1, mnist1d.WIDE))
                         for r, n in zip(rows, lengths)])
    assert np.allclose(mnist1d._resample(rows, lengths, mnist1d.WIDE), expected, atol=1e-12)


def test_ten_thousand_nodes_generate_in_seconds(cache: Path) -> None:
    start = time.perf_counter()
    ds = load_mnist1d(seed=0, nodes=10_000)
    took = time.perf_counter() - start
    assert ds.x_train.shape == (10_000 * MNIST1D_PER_NODE, mnist1d.LENGTH)
    assert took < 30, f"{took:.1f} s to generate and cache the data of 10,000 nodes"  # ~3 s; a shared 2-core CI
    assert _cache_file(0, 10_000).stat().st_size < 80 * 2**20


# -- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [None, 2, 16, 100, 101, 1000])
def test_training_samples_grow_with_the_nodes_and_the_test_set_does_not(nodes: int | None) -> None:
    from p2pfl.training import load_task

    task = load_task("mnist1d", seed=1, nodes=nodes)
    assert len(task.dataset.y_train) == max(MNIST1D_MIN_TRAIN, MNIST1D_PER_NODE * (nodes or 0))
    assert task.dataset.x_test.tobytes() == load_mnist1d(seed=1).x_test.tobytes()
    assert len(task.dataset.y_test) == MNIST1D_TEST
    if nodes:  # every node gets at least its share
        assert min(len(p) for p in partition(task.dataset.y_train, nodes)) >= MNIST1D_PER_NODE


def test_known_sizes_in_config_agree_with_the_loaded_tasks() -> None:
    """config refuses a split without loading the task: its numbers must be the tasks' own."""
    from p2pfl.training import BUILTIN_TASKS, load_task

    assert set(config.TASK_TRAIN_SAMPLES) | {config.SCALING_TASK} == set(BUILTIN_TASKS)
    for name, samples in config.TASK_TRAIN_SAMPLES.items():
        for seed in (0, 3):
            assert len(load_task(name, seed=seed).dataset.y_train) == samples, name


# -- the cache -------------------------------------------------------------------------------


def test_a_cache_hit_equals_a_fresh_generation(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = load_mnist1d(seed=4, nodes=150)
    path = _cache_file(4, 150)
    assert path.is_file() and path.parent == cache
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left behind

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("generated although the cache holds the data")

    monkeypatch.setattr(mnist1d, "generate", no_generation)
    assert _same(load_mnist1d(seed=4, nodes=150), fresh)


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bit_flipped(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside x_train's bytes: the zip stays readable
    path.write_bytes(bytes(data))


def _another_keys_file(path: Path) -> None:
    """A well-formed cache file, but of another seed, under this key's name."""
    other = _cache_file(9, 150)
    load_mnist1d(seed=9, nodes=150)
    os.replace(other, path)


def _pickled(path: Path) -> None:
    """An .npz whose arrays need unpickling: must never be loaded."""
    np.savez(path, x_train=np.array([{"evil": 1}], dtype=object))


@pytest.mark.parametrize("damage", [_garbage, _truncated, _bit_flipped, _another_keys_file, _pickled],
                         ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_cache_file_is_generated_again_not_trusted(damage, cache: Path) -> None:
    fresh = load_mnist1d(seed=4, nodes=150)
    path = _cache_file(4, 150)
    damage(path)
    again = load_mnist1d(seed=4, nodes=150)
    assert _same(again, fresh)
    train, test = mnist1d_sizes(150)
    key = {"v": mnist1d.GENERATOR_VERSION, "seed": 4, "train": train, "test": test}
    assert datacache.read(path, "mnist1d", key) is not None, "the bad file was not replaced"


def test_an_unwritable_cache_directory_only_costs_the_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(datacache.ENV, str(blocker / "cache"))  # a directory below a file cannot exist
    ds = load_mnist1d(seed=0, nodes=2)
    assert len(ds.y_train) == MNIST1D_MIN_TRAIN


def test_the_cache_directory_defaults_to_the_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(datacache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datacache.cache_dir() == tmp_path / "xdg" / "p2pfl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datacache.cache_dir() == Path.home() / ".cache" / "p2pfl"


# -- a split the data cannot support -----------------------------------------------------------

TOO_MANY = "digits-mlp has 1437 training samples: 1024 nodes with at least 2 each need 2048"


def test_config_refuses_more_nodes_than_the_data_supports() -> None:
    with pytest.raises(ConfigError) as exc:
        ExperimentConfig(nodes=1024).validate()
    assert exc.value.field == "nodes"
    assert TOO_MANY in str(exc.value) and "--task mnist1d" in str(exc.value) and "at most 718 nodes" in str(exc.value)
    ExperimentConfig(nodes=718).validate()
    with pytest.raises(ConfigError, match="719 nodes with at least 2 each need 1438"):
        ExperimentConfig(nodes=719, task="digits-cnn").validate()
    with pytest.raises(ConfigError, match="apps has 8000 training samples"):
        ExperimentConfig(nodes=4001, task="apps", partition="personas").validate()
    ExperimentConfig(nodes=10_000, task="mnist1d").validate()  # its data grows: any count


@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_simulate_and_compare_refuse_it_at_config_validation(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extra = ["--topologies", "ring"] if command == "compare" else []
    result = CliRunner().invoke(cli.main, [command, "-n", "1024", *extra, "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "nodes: " + TOO_MANY in message and "--task mnist1d" in message
    assert not out.exists()


def test_node_refuses_it_before_anything_starts(tmp_path: Path) -> None:
    """`p2pfl node` takes the count from the cluster file: 1024 entries, digits cannot feed them."""
    entries = [NodeEntry(i, f"tcp://127.0.0.1:{20000 + i}", i.to_bytes(2, "big") * 16) for i in range(1024)]
    write_cluster(tmp_path / "cluster.toml", entries, "ring")
    metrics = tmp_path / "metrics.jsonl"
    result = CliRunner().invoke(cli.main, ["node", "--cluster", str(tmp_path / "cluster.toml"), "--id", "0",
                                           "--metrics", str(metrics)])
    assert result.exit_code == 2, result.output
    assert TOO_MANY in " ".join(result.output.split())
    assert not metrics.exists()


PLUGIN = textwrap.dedent(
    """
    import numpy as np

    from p2pfl.data import Dataset
    from p2pfl.models import mlp
    from p2pfl.training import Task

    def _dataset(n):
        x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
        y = (np.arange(n) % 2).astype(np.int64)
        return Dataset(x, y, x[:2].copy(), y[:2].copy(), 2, (4,), "tiny")

    def tiny(seed):
        return Task("tiny", lambda: mlp(4, 2, hidden=(4,)), _dataset(7))

    def sized(seed, nodes):
        return Task("sized", lambda: mlp(4, 2, hidden=(4,)), _dataset(3 * nodes))
    """
)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "scaling_plugins.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_too_small_is_refused_when_it_loads(plugins: Path) -> None:
    """Its size is known only once it is built: simulate refuses it then, before any node starts."""
    out = plugins / "out"
    result = CliRunner().invoke(cli.main, ["simulate", "--task", "scaling_plugins:tiny", "-n", "4", "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "nodes: scaling_plugins:tiny has 7 training samples: 4 nodes with at least 2 each need 8" in message
    assert "at most 3 nodes" in message
    assert not (out / "metrics.jsonl").exists()


def test_a_plugin_that_takes_nodes_gets_the_node_count(plugins: Path) -> None:
    from p2pfl.launch import load_workload

    work = load_workload(ExperimentConfig(task="scaling_plugins:sized", nodes=5).validate())
    assert len(work.task.dataset.y_train) == 15 and len(work.parts) == 5


# -- a real run ----------------------------------------------------------------------------------


def test_simulate_mnist1d_learns(tmp_path: Path, cache: Path) -> None:
    """Six nodes on a ring, three rounds, through the installed command: above chance (10%)."""
    out = tmp_path / "run"
    env = {**os.environ, datacache.ENV: str(cache)}
    proc = subprocess.run([str(P2PFL), "simulate", "--task", "mnist1d", "-n", "6", "-r", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_acc_mean"] > 0.15, summary["final_acc_mean"]
    assert _cache_file(0, 6).is_file()
