"""The experimenter's ground truth of a recorded run, for scoring attacks only.

Reads truth/node-J.npz (`recording.TruthRecorder`: each node's trained model and contributed
vector per round, and its shard's indices) and the final models (models/node-J.npy). Only the
scorer (`score`) imports this; the attack modules may not (an import-linter contract in
pyproject.toml, tests/test_layering.py).

Owns: reading and checking the truth. Must not touch: the attack, the view.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2pfl.recording import TRUTH_DIR


class TruthError(Exception):
    """The ground truth of a recorded run is missing or malformed."""


@dataclass(frozen=True)
class NodeTruth:
    own: dict[int, np.ndarray]  # round -> contributed vector (delta)
    trained: dict[int, np.ndarray]  # round -> model after local training (delta)
    shard: np.ndarray  # training indices


def load_truth(run_dir: Path, nodes: int) -> dict[int, NodeTruth]:
    out = {}
    for j in range(nodes):
        path = Path(run_dir) / TRUTH_DIR / f"node-{j}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                rounds = [int(r) for r in z["rounds"]]
                out[j] = NodeTruth(dict(zip(rounds, z["own"])), dict(zip(rounds, z["trained"])), z["shard"].copy())
        except (OSError, KeyError, ValueError) as exc:
            raise TruthError(f"{path}: cannot read the ground truth ({exc}); was the run recorded and did node {j} finish?") from None
    return out


def final_models(run_dir: Path, nodes: int) -> dict[int, np.ndarray]:
    """Every node's final model (flat), as simulate wrote it."""
    out = {}
    for j in range(nodes):
        path = Path(run_dir) / "models" / f"node-{j}.npy"
        try:
            out[j] = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise TruthError(f"{path}: cannot read the final model ({exc})") from None
    return out
