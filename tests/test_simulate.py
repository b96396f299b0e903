"""Whole simulations: real node processes, real loopback ZeroMQ, real crypto."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from p2pfl import topology
from p2pfl.config import ExperimentConfig
from p2pfl.simulate import run_simulation
from p2pfl.training import LocalTrainer, TrainConfig, init_model, load_task
from p2pfl.data import partition, shard

QUIET = Console(file=open("/dev/null", "w"))


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _per_round(records: list[dict], key: str) -> list[float]:
    rounds = sorted({r["round"] for r in records})
    return [next(r[key] for r in records if r["round"] == k) for k in rounds]


def _averaging_run(tmp_path: Path, name: str, nodes: int, rounds: int) -> Path:
    cfg = ExperimentConfig(nodes=nodes, topology=name, rounds=rounds, lr=0.0, same_init=False,
                           eval_every=rounds, seed=3, processes=2, round_timeout=60).validate()
    run_simulation(cfg, tmp_path / name, QUIET)
    return tmp_path / name


def test_pure_averaging_reaches_the_initial_average_at_the_spectral_rate(tmp_path: Path) -> None:
    """lr = 0 on a ring of 8: models converge to the average of the initial models, geometrically."""
    rounds = 40
    run_dir = _averaging_run(tmp_path, "ring", 8, rounds)
    task = load_task("digits-mlp", 3)
    data = shard(task.dataset, partition(task.dataset.y_train, 8, "iid", seed=3)[0])
    initial = np.stack([LocalTrainer(init_model(task, 3 + 1 + i), data, TrainConfig(), 0).get_flat() for i in range(8)])
    final = np.stack([np.load(run_dir / "models" / f"node-{i}.npy") for i in range(8)])
    target = initial.astype(np.float64).mean(axis=0)
    spread0 = np.abs(initial - target).max()
    assert np.abs(final - target).max() < 1e-3 * spread0

    distance = _per_round(_records(run_dir), "consensus_distance")
    lam = 1 - topology.spectral_gap(topology.metropolis_hastings(topology.generate("ring", 8)))
    # Consensus distance is a squared norm: in the slowest mode it shrinks by lambda_2^2 a round.
    tail = np.log(distance[10:30])
    rate = float(np.exp(np.polyfit(np.arange(len(tail)), tail, 1)[0]))
    assert rate == pytest.approx(lam**2, abs=0.05)
    assert all(b < a for a, b in zip(distance, distance[1:]))


def test_consensus_distance_orders_ring_torus_complete(tmp_path: Path) -> None:
    rounds = 6
    final = {name: _per_round(_records(_averaging_run(tmp_path, name, 16, rounds)), "consensus_distance")[-1]
             for name in ("ring", "torus", "complete")}
    assert final["ring"] > final["torus"] > final["complete"]


def test_star_fedavg_nodes_hold_identical_models_after_every_round(tmp_path: Path) -> None:
    cfg = ExperimentConfig(nodes=5, topology="star", aggregation="fedavg", rounds=4, seed=1, processes=2,
                           partition="dirichlet", alpha=0.5, round_timeout=60).validate()
    result = run_simulation(cfg, tmp_path / "star", QUIET)
    records = _records(result.run_dir)
    assert len(records) == 5 * 4
    assert all(r["consensus_distance"] == 0.0 for r in records)
    final = [np.load(result.run_dir / "models" / f"node-{i}.npy") for i in range(5)]
    assert all(np.array_equal(final[0], f) for f in final[1:])
    assert result.summary["aggregation"] == "fedavg"
    assert result.summary["partition"] == "dirichlet(alpha=0.5)"


@pytest.mark.slow
def test_sixty_four_nodes_simulate_on_this_host(tmp_path: Path) -> None:
    cfg = ExperimentConfig(nodes=64, topology="regular:d=4", rounds=3, processes=8, seed=0, round_timeout=120).validate()
    result = run_simulation(cfg, tmp_path / "big", QUIET)
    records = _records(result.run_dir)
    assert {(r["node"], r["round"]) for r in records} == {(n, k) for n in range(64) for k in range(1, 4)}
    assert all(r["arrived"] == 4 for r in records)
    assert 0 < result.summary["peak_rss_mb"] < 24 * 1024
    assert result.summary["processes"] == 8
