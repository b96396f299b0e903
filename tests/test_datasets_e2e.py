"""8-node simulations through the real CLI on every publisher format (synthetic files of the same shape):
each run loads the files, splits them, trains over real sockets and learns.

"Learns" is stated per run as a margin over chance (1 / the classes in the test set): the synthetic classes are
a prototype plus noise, so a few rounds are enough. Shakespeare's LSTM needs far more steps than a test can
afford to beat its majority character, so its run is held to the loss of a uniform guess and to chance.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import publish as P

P2PFL = str(Path(sys.executable).parent / "p2pfl")
NODES = 8


def _simulate(tmp_path: Path, dataset: str, data_dir: Path, *args: str, rounds: int = 4) -> tuple[dict, list[dict]]:
    out = tmp_path / "run"
    cmd = [P2PFL, "simulate", "--dataset", dataset, "--data-dir", str(data_dir), "-n", str(NODES), "-r", str(rounds),
           "-t", "ring", "--processes", "2", "--seed", "1", "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    labels = json.loads((out / "labels.json").read_text())
    assert summary["status"] == "complete" and len(records) == NODES * rounds
    assert len(labels["counts"]) == NODES and (out / "label_histogram.png").stat().st_size > 1000
    return summary, [r for r in records if r["round"] == rounds]


def _learns(summary: dict, test_classes: int, margin: float) -> None:
    chance = 1 / test_classes
    assert summary["final_acc_mean"] >= chance + margin, (summary["final_acc_mean"], chance, margin)


def test_mnist_idx_gzipped(tmp_path: Path) -> None:
    d = P.write_idx_dataset(tmp_path / "mnist", n_train=400, n_test=100, gz=True)
    summary, last = _simulate(tmp_path, "mnist", d, "--model", "mlp", "--partition", "dirichlet", "--alpha", "1.0",
                              "--eval-sample", "30", rounds=3)
    _learns(summary, 10, 0.5)
    # rounds before the last evaluate on the 30-row sample, the last on all 100 test rows
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    early = [r["test_acc"] for r in records if r["round"] < 3]
    assert all(abs(a * 30 - round(a * 30)) < 1e-9 for a in early)
    assert any(abs(r["test_acc"] * 30 - round(r["test_acc"] * 30)) > 1e-6 for r in last)  # k/100, not k/30
    assert all(r["local_acc"] is None for r in last)  # no writers, no local test split


def test_cifar10_binary_tarball(tmp_path: Path) -> None:
    d = P.write_cifar10(tmp_path / "cifar", per_batch=64, n_test=100, tar=True)
    summary, _ = _simulate(tmp_path, "cifar10", d, "--model", "mlp", rounds=3)
    _learns(summary, 10, 0.5)


def test_femnist_natural_partition_records_local_accuracy(tmp_path: Path) -> None:
    d = P.write_femnist(tmp_path / "femnist", writers=16, per_writer=30)
    summary, last = _simulate(tmp_path, "femnist", d, "--partition", "natural", "--model", "mlp")
    _learns(summary, 10, 0.4)
    local = [r["local_acc"] for r in last]
    assert all(a is not None for a in local) and np.mean(local) >= 0.1 + 0.4


@pytest.mark.slow  # LEAF's 2 x 256 LSTM over 80 characters: seconds of CPU per step on 8 nodes
def test_shakespeare_natural_by_role_with_the_lstm(tmp_path: Path) -> None:
    """LEAF's own optimiser (SGD, lr 0.8, no momentum); three rounds are enough to beat a uniform guess and
    chance (the character frequencies), not to learn the lines: an LSTM needs hundreds of steps for that."""
    d = P.write_shakespeare(tmp_path / "shakespeare", roles=8, per_role=16)
    summary, last = _simulate(tmp_path, "shakespeare", d, "--partition", "natural", "--lr", "0.8", "--momentum", "0",
                              "--batch-size", "16", rounds=3)
    assert np.mean([r["test_loss"] for r in last]) < math.log(80) - 0.1  # below a uniform guess over 80
    _learns(summary, 80, 0.1)
    assert all(r["local_acc"] is not None for r in last)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert [sum(row) for row in labels["counts"]] == [16] * NODES  # one role of 16 lines per node


def test_npz_table_pathological_split(tmp_path: Path) -> None:
    d = P.write_npz(tmp_path / "npz", 800, 200)
    summary, _ = _simulate(tmp_path, "npz", d, "--partition", "pathological", "--shards-per-node", "2")
    _learns(summary, 4, 0.4)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert all(sum(c > 0 for c in row) == 2 for row in labels["counts"])
    assert labels["partition"] == "pathological(k=2)"
    # p2pfl report draws it beside its other plots
    proc = subprocess.run([P2PFL, "report", str(tmp_path / "run"), "--out", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "report" / "label_histogram.png").stat().st_size > 1000
    assert (tmp_path / "report" / "accuracy_vs_round.png").is_file()


def test_csv_table_natural_by_a_group_column(tmp_path: Path) -> None:
    d = P.write_csv(tmp_path / "csv", 800, 200)
    summary, last = _simulate(tmp_path, "csv", d, "--label-column", "species", "--group-column", "writer",
                              "--partition", "natural")
    _learns(summary, 4, 0.4)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert labels["classes"] == ["adelie", "chinstrap", "gentoo", "macaroni"]


def test_image_folder_with_the_automatic_cnn(tmp_path: Path) -> None:
    d = P.write_imagefolder(tmp_path / "images", per_class=48, classes=4, side=16)
    summary, _ = _simulate(tmp_path, "imagefolder", d, "--partition", "size-skew", "--alpha", "2")
    _learns(summary, 4, 0.4)


def test_huggingface_parquet(tmp_path: Path) -> None:
    d = P.write_hf(tmp_path / "hf", 800, 200, parquet=True)
    summary, _ = _simulate(tmp_path, "hf", d, "--partition", "shard", "--shards-per-node", "2")
    _learns(summary, 4, 0.3)
