"""CLI mistakes and restarts of `p2pfl node`: a clear one-line refusal or a clean finish, never a traceback.

Every case runs `python -m p2pfl.cli ...` in a subprocess, as a user would: non-finite numbers
and unknown tasks for simulate, compare and node; the node count of `node` taken from the
cluster file; and restarts against a checkpoint directory that is finished, another node's,
another model's or wholly corrupt (`--fresh` is the way to start over). The checkpoints are
real: a lone node of a 3-node ring runs its rounds and writes them (its neighbours never come
up, so each round ends at its deadline). Outcomes go to the fault table (tests/faultlog.py).
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from faultlog import recording
from test_bad_config import Run, assert_rejected, check, p2pfl

from p2pfl import config, training
from p2pfl.checkpoint import CheckpointStore, NodeState
from p2pfl.config import ConfigError, ExperimentConfig
from p2pfl.simulate import save_model

ROUNDS = 2
# No node count: `node` takes it from the cluster file. Short deadlines: a lone node is done in seconds.
QUICK = f"""\
[experiment]
rounds = {ROUNDS}
startup_timeout = 1.0
round_timeout = 1.0
"""
# The default startup_timeout (120 s): a restart that waited for its (finished) neighbours would show.
PATIENT = f"""\
[experiment]
rounds = {ROUNDS}
round_timeout = 1.0
"""
RESTART_LIMIT = 30.0  # seconds; the old code waited startup_timeout (120 s) and then crashed


@pytest.fixture
def run(tmp_path: Path) -> Run:
    r = Run(tmp_path)
    r.experiment.write_text(QUICK)
    return r


# -- non-finite numbers and unknown tasks --------------------------------------------------------

FLOAT_FIELDS = [f.name for f in fields(ExperimentConfig) if f.type == "float"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_every_float_setting_refuses_non_finite_values(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: must be a finite number") as exc:
        ExperimentConfig.from_dict({name: value})
    assert exc.value.field == name


NON_FINITE = [
    ("simulate", "--lr", "nan"), ("simulate", "--lr", "inf"), ("simulate", "--alpha", "inf"),
    ("simulate", "--round-timeout", "inf"), ("simulate", "--dp-clip", "nan"), ("simulate", "--dp-noise", "inf"),
    ("simulate", "--dp-budget", "inf"), ("simulate", "--fedprox-mu", "nan"), ("simulate", "--participation", "nan"),
    ("compare", "--lr", "inf"), ("compare", "--alpha", "nan"),
    ("node", "--lr", "inf"), ("node", "--lr", "nan"), ("node", "--round-timeout", "nan"),
]


@pytest.mark.parametrize("command, option, value", NON_FINITE, ids=[f"{c} {o} {v}" for c, o, v in NON_FINITE])
def test_non_finite_options_are_refused(tmp_path: Path, command: str, option: str, value: str) -> None:
    field = option.removeprefix("--").replace("-", "_")
    with recording(f"{command} {option} {value}") as rec:
        if command == "node":
            run = Run(tmp_path)
            proc = run.node(option, value)
            assert not run.metrics.exists()
        else:
            proc = p2pfl(tmp_path, command, option, value, "--out", "out")
            assert not (tmp_path / "out").exists()
        check(rec, proc, tmp_path, field, "must be a finite number", value)


def test_non_finite_values_in_the_experiment_file(run: Run) -> None:
    run.experiment.write_text(QUICK + "momentum = nan\n")
    with recording("simulate and node: momentum = nan in the experiment TOML", 2, unit="commands") as rec:
        proc = p2pfl(run.dir, "simulate", "--config", run.experiment.name, "--out", "out")
        check(rec, proc, run.dir, "experiment.toml", "momentum", "must be a finite number, got nan")
        assert not (run.dir / "out").exists()
        proc = run.node()
        check(rec, proc, run.dir, "experiment.toml", "momentum", "must be a finite number, got nan")
        assert not run.metrics.exists()


def test_compare_target_must_be_finite(tmp_path: Path) -> None:
    with recording("compare --target nan") as rec:
        proc = p2pfl(tmp_path, "compare", "--target", "nan", "--out", "out")
        check(rec, proc, tmp_path, "--target", "must be a finite number")
        assert not (tmp_path / "out").exists()


BAD_TASKS = [
    ("digits-mpl", ("task", "unknown task 'digits-mpl'", "digits-mlp")),
    ("nosuch.module:make", ("nosuch.module:make", "cannot import module")),
    ("p2pfl.models:nosuch", ("p2pfl.models:nosuch", "no callable 'nosuch'")),
]


@pytest.mark.parametrize("command", ["simulate", "compare", "node"])
@pytest.mark.parametrize("task, needles", BAD_TASKS, ids=[t for t, _ in BAD_TASKS])
def test_bad_task_is_refused_before_anything_starts(tmp_path: Path, command: str, task: str,
                                                    needles: tuple[str, ...]) -> None:
    with recording(f"{command} --task {task}") as rec:
        if command == "node":
            run = Run(tmp_path)
            proc = run.node("--task", task)
            assert not run.metrics.exists()
        else:
            proc = p2pfl(tmp_path, command, "--task", task, "--out", "out")
            assert not (tmp_path / "out").exists()
        check(rec, proc, tmp_path, *needles)


def test_config_knows_the_builtin_tasks() -> None:
    """config names the built-in tasks without importing torch; the two lists must agree."""
    assert config.BUILTIN_TASKS == tuple(training.BUILTIN_TASKS)


# -- the node count of `p2pfl node` ------------------------------------------------------------------


def test_node_takes_the_node_count_from_the_cluster_file(run: Run) -> None:
    """A 3-node cluster, no --nodes anywhere: the node runs (it used to assume 8 and refuse)."""
    proc = run.node()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert run.rounds_run() == ROUNDS


def test_explicit_node_count_that_disagrees_with_the_cluster(run: Run) -> None:
    with recording("node --nodes 8 on a 3-node cluster file") as rec:
        proc = run.node("--nodes", "8")
        check(rec, proc, run.dir, "nodes", "--nodes gives 8 nodes", "cluster.toml has 3")
        assert not run.metrics.exists()


# -- restarts against a checkpoint directory --------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose node 0 ran all its rounds with --checkpoint-dir ckpt (copied per test)."""
    base = tmp_path_factory.mktemp("finished")
    run = Run(base)
    run.experiment.write_text(QUICK)
    proc = run.node("--checkpoint-dir", "ckpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.rounds_run() == ROUNDS
    return base


def _reopen(directory: Path) -> Run:
    """A `Run` over files that already exist (the constructor would make new keys and ports)."""
    run = Run.__new__(Run)
    run.dir = directory
    run.cluster = directory / "cluster.toml"
    run.experiment = directory / "experiment.toml"
    run.metrics = directory / "metrics-0.jsonl"
    return run


def _copy_tree(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_checkpoints_are_private(finished: Path) -> None:
    """They hold the node's model: 0600 files in a 0700 directory, whatever the umask."""
    directory = finished / "ckpt" / "node-0"
    files = sorted(directory.glob("ckpt-*.p2c"))
    assert files
    assert _mode(directory) == 0o700
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_private_files_ignore_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = CheckpointStore(tmp_path / "store").save(1, NodeState(trainer={"w": np.ones(3, np.float32)}))
        save_model(tmp_path / "node-0.npy", np.arange(4, dtype=np.float32))
    finally:
        os.umask(old)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert _mode(tmp_path / "node-0.npy") == 0o600
    assert np.array_equal(np.load(tmp_path / "node-0.npy", allow_pickle=False), np.arange(4, dtype=np.float32))


def test_restart_of_a_finished_node_exits_at_once(finished: Path, tmp_path: Path) -> None:
    run = _reopen(_copy_tree(finished, tmp_path))
    run.experiment.write_text(PATIENT)
    with recording("node restarted after its last round (checkpoint of the final round, startup_timeout 120 s)",
                   unit="restart") as rec:
        started = time.monotonic()
        proc = run.node("--checkpoint-dir", "ckpt")
        took = time.monotonic() - started
        out = proc.stderr + proc.stdout
        last = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.strip()][-1:]
        rec.outcome = f"exit {proc.returncode} well within {RESTART_LIMIT:.0f}s, no round run again: {' '.join(last)}"
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert "finished already" in out and f"all {ROUNDS} rounds" in out, out[-3000:]
        assert took < RESTART_LIMIT, f"took {took:.0f}s"
        assert run.rounds_run() == ROUNDS  # no round ran again


def test_another_nodes_checkpoint_directory_is_refused(finished: Path, tmp_path: Path) -> None:
    run = _reopen(_copy_tree(finished, tmp_path))
    (run.dir / "ckpt" / "node-0").rename(run.dir / "ckpt" / "node-1")
    with recording("node 1 started on node 0's checkpoints") as rec:
        proc = run.node("--checkpoint-dir", "ckpt", "--metrics", "metrics-1.jsonl", node=1)
        check(rec, proc, run.dir, "ckpt/node-1", "written by node 0, not node 1", "--fresh")
        assert not (run.dir / "metrics-1.jsonl").read_text()


def test_another_models_checkpoint_is_refused(finished: Path, tmp_path: Path) -> None:
    run = _reopen(_copy_tree(finished, tmp_path))
    with recording("node restarted with another task (its checkpoint holds another model)") as rec:
        proc = run.node("--checkpoint-dir", "ckpt", "--task", "digits-cnn")
        check(rec, proc, run.dir, "ckpt/node-0", "-parameter model, this task's has", "--fresh")
        assert run.rounds_run() == ROUNDS


def test_a_checkpoint_of_the_right_size_but_another_layout_is_refused(finished: Path, tmp_path: Path) -> None:
    """Owner and parameter count right, the tensors' shapes not this model's (a forged or foreign file
    with a valid checksum): refused with the error line, not a traceback from torch."""
    run = _reopen(_copy_tree(finished, tmp_path))
    store = CheckpointStore(run.dir / "ckpt" / "node-0")
    found = store.load_latest()
    assert found is not None
    r, state = found
    model = state.trainer["model"]
    name = next(k for k, v in model.items() if v.ndim == 2 and v.shape[0] != v.shape[1])
    model[name] = model[name].T.contiguous()  # same count, transposed shape
    store.save(r, state)
    with recording("node restarted on a checkpoint whose tensors have another layout (same parameter count)") as rec:
        proc = run.node("--checkpoint-dir", "ckpt")
        check(rec, proc, run.dir, "ckpt/node-0", "does not fit this task's model", "--fresh")
        assert run.rounds_run() == ROUNDS


def _corrupt_every_checkpoint(directory: Path) -> int:
    files = sorted(directory.glob("ckpt-*.p2c"))
    for p in files:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    return len(files)


def test_all_checkpoints_corrupt_needs_fresh(finished: Path, tmp_path: Path) -> None:
    run = _reopen(_copy_tree(finished, tmp_path))
    directory = run.dir / "ckpt" / "node-0"
    count = _corrupt_every_checkpoint(directory)
    with recording("node restarted with every checkpoint corrupt (one byte flipped in each)", 2,
                   unit="restarts") as rec:
        proc = run.node("--checkpoint-dir", "ckpt")
        check(rec, proc, run.dir, "ckpt/node-0", "no usable checkpoint", f"{count} unusable", "checksum mismatch",
              "--fresh")
        # The corrupt files were set aside on that start: a second start must refuse all the same.
        assert sorted(directory.glob("*.corrupt")) and not sorted(directory.glob("ckpt-*.p2c"))
        proc = run.node("--checkpoint-dir", "ckpt")
        assert_rejected(proc, "no usable checkpoint", "set aside as corrupted", "--fresh")
        assert run.rounds_run() == ROUNDS
    proc = run.node("--checkpoint-dir", "ckpt", "--fresh")
    assert proc.returncode == 0, (proc.stderr + proc.stdout)[-3000:]
    assert "Traceback" not in proc.stderr
    assert "--fresh" in proc.stderr and "deleted" in proc.stderr
    assert run.rounds_run() == 2 * ROUNDS  # every round again, from round 1
    assert not sorted(directory.glob("*.corrupt"))
    assert [r for r, _ in CheckpointStore(directory).checkpoints()] == list(range(1, ROUNDS + 1))


def test_fresh_needs_a_checkpoint_dir(run: Run) -> None:
    with recording("node --fresh without --checkpoint-dir") as rec:
        proc = run.node("--fresh")
        check(rec, proc, run.dir, "fresh", "needs --checkpoint-dir")
        assert not run.metrics.exists()
