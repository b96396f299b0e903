"""`p2pfl node` as separate OS processes: a node killed mid-run, and one that restarts and rejoins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pfl.config import ExperimentConfig
from p2pfl.simulate import prepare_cluster

NODES = 6


def _cluster(tmp_path: Path) -> Path:
    return prepare_cluster(ExperimentConfig(nodes=NODES, topology="ring").validate(), tmp_path)


def _start(cluster: Path, k: int, tmp_path: Path, rounds: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "p2pfl.cli", "node", "--cluster", str(cluster), "--id", str(k),
           "--nodes", str(NODES), "--rounds", str(rounds), "--seed", "0", "--round-timeout", "2",
           "--metrics", str(tmp_path / f"metrics-{k}.jsonl"), *extra]
    log = open(tmp_path / f"node-{k}.log", "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _records(tmp_path: Path, k: int) -> list[dict]:
    path = tmp_path / f"metrics-{k}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_for_round(tmp_path: Path, k: int, r: int, procs: dict, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while not any(rec["round"] >= r for rec in _records(tmp_path, k)):
        dead = {j: p.returncode for j, p in procs.items() if p.poll() is not None and p.returncode != 0}
        assert not dead, f"nodes exited early: {dead}; logs in {tmp_path}"
        assert time.monotonic() < deadline, f"node {k} never reported round {r}; logs in {tmp_path}"
        time.sleep(0.2)


def _finish(procs: dict, tmp_path: Path, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    for k, p in procs.items():
        try:
            code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            pytest.fail(f"node {k} did not finish; log: {(tmp_path / f'node-{k}.log').read_text()[-3000:]}")
        assert code == 0, f"node {k} exited {code}: {(tmp_path / f'node-{k}.log').read_text()[-3000:]}"


def test_sigkilled_node_does_not_stop_its_neighbours(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    rounds = 12
    procs = {k: _start(cluster, k, tmp_path, rounds, "--down-after", "2") for k in range(NODES)}
    try:
        _wait_for_round(tmp_path, 2, 3, procs)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        survivors = {k: p for k, p in procs.items() if k != 2}
        _finish(survivors, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    for k in survivors:
        recs = _records(tmp_path, k)
        assert [r["round"] for r in recs] == list(range(1, rounds + 1))
        assert recs[-1]["test_acc"] > 0.8
    killed_at = max(r["round"] for r in _records(tmp_path, 2))
    for k in (1, 3):  # ring neighbours of node 2 carried on with one neighbour
        late = [r for r in _records(tmp_path, k) if r["round"] > killed_at + 1]
        assert late and all(r["arrived"] == 1 for r in late)


def test_restarted_node_resumes_from_its_checkpoint_and_rejoins(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    rounds = 20
    # Neighbours keep waiting for the dead node (high --down-after), so its restart lands mid-run.
    extra = ("--down-after", "100", "--checkpoint-dir", str(tmp_path / "ckpt"))
    procs = {k: _start(cluster, k, tmp_path, rounds, *extra) for k in range(NODES)}
    try:
        _wait_for_round(tmp_path, 2, 4, procs)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait()
        before = max(r["round"] for r in _records(tmp_path, 2))
        procs[2] = _start(cluster, 2, tmp_path, rounds, *extra)
        _finish(procs, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    rounds_2 = [r["round"] for r in _records(tmp_path, 2)]
    resumed = rounds_2[before:]
    assert resumed[0] > before, f"restart began at round {resumed[0]}, checkpoint was round {before}"
    assert resumed[-1] == rounds
    assert "resumed from the checkpoint" in (tmp_path / "node-2.log").read_text()
    for k in (1, 3):  # taken back: full neighbourhoods again at the end
        assert _records(tmp_path, k)[-1]["arrived"] == 2
    accs = [_records(tmp_path, k)[-1]["test_acc"] for k in range(NODES)]
    assert min(accs) > 0.85
    assert max(accs) - min(accs) < 0.05
