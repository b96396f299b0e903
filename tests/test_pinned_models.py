"""Refactors must not change what a run computes: the same seed gives bit-identical models.

Each configuration below runs every node in this process (real sockets, real crypto) and the
SHA-256 of every node's final model is compared with `tests/golden/pinned_models.json`, which
was written by the code before the architecture refactor (issue 18). A change that alters any
float of any node's model, in plain or secure mode, fails here.

Float results of the local training can differ between CPUs (BLAS kernels chosen by ISA). The
golden file therefore also holds a *training fingerprint*: the hash of one node's model after
one round of local training alone, no network. Where this machine's fingerprint matches, the
models must match bit for bit; where it does not (another CPU), they must match to 1e-5
relative, and the message says so. Regenerate (only on purpose, from the code you want to pin):
`P2PFL_PIN_UPDATE=1 .venv/bin/python -m pytest tests/test_pinned_models.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfl.config import ExperimentConfig
from p2pfl.data import shard
from p2pfl.training import LocalTrainer, TrainConfig, init_model, load_task, partition_task
from helpers.inproc import run_nodes

GOLDEN = Path(__file__).parent / "golden" / "pinned_models.json"
UPDATE = os.environ.get("P2PFL_PIN_UPDATE") == "1"

BASE = dict(rounds=3, seed=7, round_timeout=20.0, startup_timeout=60.0)
CONFIGS: dict[str, dict] = {
    "plain-gossip-ring": dict(nodes=4, topology="ring"),
    "plain-fedavg-star": dict(nodes=4, topology="star", aggregation="fedavg"),
    "secure-gossip-ring": dict(nodes=5, topology="ring", secure_agg=True),
    "secure-fedavg-star": dict(nodes=4, topology="star", aggregation="fedavg", secure_agg=True),
    "q8-gossip-dirichlet-prox": dict(nodes=4, topology="ring", compression="q8", partition="dirichlet",
                                     fedprox_mu=0.01, local_steps=5),
}


def _digest(vec: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vec, dtype=np.float32).tobytes()).hexdigest()


def _fingerprint() -> str:
    """One round of local training, no network: how this CPU computes the training floats."""
    task = load_task("digits-mlp", 7)
    parts = partition_task(task, 4, "iid", 0.5, 7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = LocalTrainer(init_model(task, 7), shard(task.dataset, parts[0]), TrainConfig(), 7)
        trainer.train()
        return _digest(trainer.get_flat())
    finally:
        torch.set_num_threads(threads)


def _load_golden() -> dict:
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing: it pins the models; write it from the code to pin with P2PFL_PIN_UPDATE=1")
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def golden() -> dict:
    if UPDATE:
        return {"fingerprint": _fingerprint(), "configs": {}}
    return _load_golden()


@pytest.fixture(scope="module", autouse=True)
def _write_golden(golden: dict):
    yield
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_gives_the_pinned_models(name: str, golden: dict, tmp_path: Path) -> None:
    cfg = ExperimentConfig(**BASE, **CONFIGS[name]).validate()
    nodes, records = run_nodes(cfg, tmp_path)
    assert all(len(records[i]) == cfg.rounds for i in nodes), {i: len(r) for i, r in records.items()}
    failed = {i: r[-1].aggregation for i, r in records.items() if r[-1].aggregation != "ok"}
    assert not failed, f"{name}: rounds failed ({failed}): a fault-free run must aggregate every round"
    models = {i: node.trainer.get_flat() for i, node in sorted(nodes.items())}
    if UPDATE:
        golden["configs"][name] = {"sha256": {str(i): _digest(m) for i, m in models.items()},
                                   "models": {str(i): m.astype(float).round(7).tolist()[:64] for i, m in models.items()},
                                   "norms": {str(i): float(np.linalg.norm(m)) for i, m in models.items()}}
        return
    pinned = golden["configs"].get(name)
    assert pinned is not None, f"{GOLDEN} has no entry for {name}: regenerate it with P2PFL_PIN_UPDATE=1"
    got = {str(i): _digest(m) for i, m in models.items()}
    if _fingerprint() == golden["fingerprint"]:
        assert got == pinned["sha256"], (
            f"{name}: the final models differ from the pinned ones (this CPU trains bit-identically to the one "
            f"that wrote {GOLDEN.name}, so the protocol or aggregation changed what it computes)")
        return
    # Another CPU: its BLAS rounds differently. Compare what the golden keeps: the first 64 weights and norms.
    for i, m in models.items():
        head = np.asarray(pinned["models"][str(i)])
        assert np.allclose(m[:64], head, rtol=1e-5, atol=1e-6), f"{name} node {i}: first weights differ (other CPU)"
        assert np.isclose(np.linalg.norm(m), pinned["norms"][str(i)], rtol=1e-5), f"{name} node {i}: norm differs"
