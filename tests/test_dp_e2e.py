"""Differential privacy end to end: what nodes share, the noise on it, the epsilon they report,
the accuracy at a stated epsilon, budgets, and `compare` with plain, secure and secure + DP.

Noise is drawn through the test-only deterministic switch (`dp_test_seed`) so runs are
reproducible; production runs read the kernel CSPRNG. Figures asserted here were measured on
this code (docs/privacy.md records them) and carry a margin.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from click.testing import CliRunner
from dp_accounting.rdp import rdp_privacy_accountant
from rich.console import Console

from p2pfl.cli import main
from p2pfl.config import ExperimentConfig
from p2pfl.messages import Kind
from p2pfl.protocols import DELTA
from p2pfl.report import read_csv
from p2pfl.simulate import _figures, run_simulation
from helpers.inproc import run_nodes

QUIET = Console(file=open("/dev/null", "w"))


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _direct_epsilon(sigma: float, steps: int, delta: float, sensitivity: float) -> float:
    """dp-accounting called directly: `steps` Gaussian releases with std/sensitivity = sigma/sensitivity."""
    if steps == 0:
        return 0.0
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / sensitivity), steps))
    return acc.get_epsilon(delta)


# -- what leaves the node ----------------------------------------------------------------------


def test_leaves_share_round_updates_clipped_to_C(tmp_path: Path) -> None:
    """Central DP: a leaf's MODEL is the last global model plus its update clipped to C."""
    clip = 0.05
    cfg = ExperimentConfig(nodes=5, topology="star", aggregation="fedavg", rounds=4, lr=0.3, dp="central",
                           dp_clip=clip, dp_noise=1.0, dp_test_seed=3, round_timeout=30).validate()
    sent: list = []
    run_nodes(cfg, tmp_path, sent)
    globals_ = {m.round: m.tensors[DELTA] for _, _, m in sent if m.kind == Kind.GLOBAL}
    norms = []
    for sender, to, m in sent:
        if m.kind == Kind.MODEL:
            start = globals_.get(m.round - 1, np.zeros_like(m.tensors[DELTA]))
            norms.append(float(np.linalg.norm(m.tensors[DELTA].astype(np.float64) - start)))
    assert len(norms) == 4 * 4
    assert max(norms) <= clip * (1 + 1e-4)  # float32 rounding of start + update only
    assert min(norms) > 0.99 * clip  # lr 0.3 moves every update past C: the bound was at work


@pytest.mark.parametrize(
    "placement, kw, expected_std",
    [
        # local: each node's first message is its noised update (0 with lr = 0): std sigma * C
        ("local", dict(topology="complete"), lambda s, c: s * c),
        # central: the hub noises the average of 6 equal weights: std sigma * C / 6
        ("central", dict(topology="star", aggregation="fedavg"), lambda s, c: s * c / 6),
        # distributed: 5 leaves each add sigma * C / sqrt(floor = 2); the sum is divided by 6 weights
        ("distributed", dict(topology="star", aggregation="fedavg", secure_agg=True),
         lambda s, c: s * c * math.sqrt(5 / 2) / 6),
    ],
)
def test_noise_on_what_nodes_share_has_the_intended_scale(tmp_path: Path, placement: str, kw: dict,
                                                          expected_std) -> None:
    sigma, clip = 2.0, 0.5
    cfg = ExperimentConfig(nodes=6, rounds=2, lr=0.0, dp=placement, dp_noise=sigma, dp_clip=clip, dp_test_seed=7,
                           round_timeout=30, **kw).validate()
    sent: list = []
    run_nodes(cfg, tmp_path, sent)
    if placement == "local":
        noise = [m.tensors[DELTA] for _, _, m in sent if m.kind == Kind.MODEL and m.round == 1]
    else:  # lr = 0: every update is 0, so a global model minus the last one is the noise alone
        g = {m.round: m.tensors[DELTA].astype(np.float64) for _, _, m in sent if m.kind == Kind.GLOBAL}
        noise = [g[1], g[2] - g[1]]
    for vec in noise:
        std = float(np.std(vec))
        assert std == pytest.approx(expected_std(sigma, clip), rel=0.04)  # ~9000 coordinates
        assert abs(float(np.mean(vec))) < 4 * std / math.sqrt(len(vec))


# -- the accountant ----------------------------------------------------------------------------


def test_epsilon_in_the_metrics_equals_a_direct_dp_accounting_call(tmp_path: Path) -> None:
    """Per node and round, over the rounds it took part in (participation 0.6: they differ)."""
    sigma, delta = 3.0, 1e-6
    cfg = ExperimentConfig(nodes=6, topology="ring", rounds=6, seed=1, processes=2, dp="local", dp_noise=sigma,
                           dp_clip=0.5, dp_delta=delta, participation=0.6, round_timeout=60).validate()
    result = run_simulation(cfg, tmp_path / "run", QUIET)
    records = _records(result.run_dir)
    steps = {k: 0 for k in range(6)}
    for rec in sorted(records, key=lambda r: r["round"]):
        steps[rec["node"]] += rec["participated"]
        assert rec["epsilon"] == pytest.approx(_direct_epsilon(sigma, steps[rec["node"]], delta, 2.0), rel=1e-12)
    assert len(set(steps.values())) > 1
    assert result.summary["epsilon_max"] == pytest.approx(_direct_epsilon(sigma, max(steps.values()), delta, 2.0))

    # node-level unit, central DP: sensitivity C, every node steps every round
    cfg = ExperimentConfig(nodes=4, topology="star", aggregation="fedavg", rounds=3, processes=2, dp="central",
                           dp_noise=sigma, dp_unit="node", round_timeout=60).validate()
    for rec in _records(run_simulation(cfg, tmp_path / "star", QUIET).run_dir):
        assert rec["epsilon"] == pytest.approx(_direct_epsilon(sigma, rec["round"], 1e-5, 1.0), rel=1e-12)


@pytest.mark.parametrize("placement, floor", [("central", 0.65), ("distributed", 0.6)])
def test_dp_on_digits_reaches_the_documented_accuracy(tmp_path: Path, placement: str, floor: float) -> None:
    """32 nodes, star FedAvg, sigma 4, C 0.2, 30 rounds: epsilon 15.85 at delta 1e-5 (record level).

    Measured (docs/privacy.md), this noise seed: central 0.756 (0.80 and 0.84 with other seeds),
    distributed (secure aggregation, floor of 16 contributors) 0.706; 0.96 without DP.
    """
    cfg = ExperimentConfig(nodes=32, topology="star", aggregation="fedavg", rounds=30, eval_every=30, processes=2,
                           dp=placement, secure_agg=placement == "distributed", min_contributors=16,
                           dp_noise=4.0, dp_clip=0.2, dp_test_seed=0, round_timeout=60).validate()
    summary = run_simulation(cfg, tmp_path / "dp", QUIET).summary
    assert summary["epsilon_max"] == pytest.approx(_direct_epsilon(4.0, 30, 1e-5, 2.0)) == pytest.approx(15.85, abs=0.01)
    assert summary["final_acc_mean"] >= floor


# -- budgets -----------------------------------------------------------------------------------


def test_a_spent_budget_stops_sharing_and_epsilon_never_exceeds_it(tmp_path: Path) -> None:
    sigma, budget = 4.0, 6.0
    stop = max(k for k in range(1, 50) if _direct_epsilon(sigma, k, 1e-5, 2.0) <= budget)  # 4 rounds
    cfg = ExperimentConfig(nodes=5, topology="star", aggregation="fedavg", rounds=stop + 3, processes=2, dp="central",
                           dp_noise=sigma, dp_clip=0.2, dp_budget=budget, round_timeout=60).validate()
    records = _records(run_simulation(cfg, tmp_path / "star", QUIET).run_dir)
    for rec in records:
        assert rec["epsilon"] <= budget
        assert rec["participated"] is (rec["round"] <= stop)
        assert (rec["train_loss"] is None) is (rec["round"] > stop)
    after = [r["test_acc"] for r in records if r["round"] >= stop]
    assert len(set(after)) == 1  # nobody shares anything new: the global model stays as it was

    cfg = ExperimentConfig(nodes=4, topology="ring", rounds=stop + 2, processes=2, dp="local", dp_noise=sigma,
                           dp_clip=0.2, dp_budget=budget, round_timeout=60).validate()
    records = _records(run_simulation(cfg, tmp_path / "ring", QUIET).run_dir)
    for rec in records:
        assert rec["epsilon"] <= budget and rec["participated"] is (rec["round"] <= stop)
        assert rec["arrived"] == 2  # gossip: spent nodes still relay their last public model


# -- compare: plain, secure, secure + DP side by side -------------------------------------------


def test_compare_puts_plain_secure_and_secure_dp_side_by_side_with_epsilon(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--topologies", "star-fedavg", "--variants", "plain,secure,secure+dp", "--nodes", "5",
            "--rounds", "3", "--processes", "2", "--dp-noise", "2", "--dp-clip", "0.5", "--target", "0.5",
            "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {row.label: row for row in read_csv(out / "comparison.csv")}
    assert set(rows) == {"star-fedavg", "star-fedavg+secagg", "star-fedavg+secagg+dp-distributed"}
    dp = rows["star-fedavg+secagg+dp-distributed"]
    assert dp.secure_agg and dp.epsilon == pytest.approx(_direct_epsilon(2.0, 3, 1e-5, 2.0)) and dp.dp_delta == 1e-5
    assert rows["star-fedavg"].epsilon is None and rows["star-fedavg+secagg"].epsilon is None
    markdown = (out / "comparison.md").read_text()
    assert "Epsilon (δ)" in markdown and f"{dp.epsilon:.2f} (1e-05)" in markdown and "∞" in markdown
    assert all(r["aggregation"] == "ok" for r in _records(out / "star-fedavg+secagg+dp-distributed"))
    # a comparison written before the epsilon column existed still reads (no epsilon)
    lines = (out / "comparison.csv").read_text().splitlines()
    keep = [i for i, name in enumerate(lines[0].split(",")) if name not in ("epsilon", "dp_delta")]
    old = tmp_path / "old.csv"
    old.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    assert all(row.epsilon is None for row in read_csv(old))
    # the live progress line shows the largest epsilon over nodes
    figures = _figures({"acc_mean": 0.5, "acc_std": 0.1, "consensus": 0.0, "bytes": 2**20, "epsilon": 3.25})
    assert "ε max 3.25" in figures and "ε" not in _figures({"acc_mean": 0.5, "acc_std": 0.1, "consensus": 0.0,
                                                             "bytes": 0.0, "epsilon": None})


@pytest.mark.parametrize("dp", ["off", "local"])
def test_a_node_whose_training_diverges_shares_its_last_averaged_model_and_runs_on(tmp_path: Path, dp: str) -> None:
    """A learning rate far too high turns the local model into NaN/Inf. Under local DP that used
    to crash every node at clipping; now each node says so (counted `diverged`), puts its last
    averaged model into the round instead, and every round completes with finite models."""
    cfg = ExperimentConfig(nodes=3, topology="ring", rounds=3, lr=1e30, dp=dp, dp_clip=0.1, dp_noise=1.0,
                           dp_test_seed=3, round_timeout=30).validate()
    sent: list = []
    nodes, records = run_nodes(cfg, tmp_path, sent)
    assert all(len(records[i]) == cfg.rounds for i in nodes)
    assert all(records[i][-1].dropped.get("diverged", 0) >= 1 for i in nodes)
    assert all(np.isfinite(node.trainer.get_flat()).all() for node in nodes.values())
    shared = [m.tensors[DELTA] for _, _, m in sent if m.kind == Kind.MODEL]
    assert shared and all(np.isfinite(v).all() for v in shared)  # nothing broken ever left a node
