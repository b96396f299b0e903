"""Run `p2pfl node` as real OS processes from a test: start, watch metrics, finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pfl.config import ExperimentConfig
from p2pfl.simulate import prepare_cluster

NODES = 6


def make_cluster(tmp_path: Path, nodes: int = NODES, topology: str = "ring") -> Path:
    return prepare_cluster(ExperimentConfig(nodes=nodes, topology=topology).validate(), tmp_path)


def start_node(cluster: Path, k: int, tmp_path: Path, rounds: int, *extra: str, nodes: int = NODES,
               round_timeout: float = 4.0, verbose: bool = False) -> subprocess.Popen:
    # The deadline is generous for a loaded 2-core machine: a live neighbour must never miss it,
    # so the tests can tell "dead" from "slow" without timing luck.
    cmd = [sys.executable, "-m", "p2pfl.cli", *(["-v"] if verbose else []), "node", "--cluster", str(cluster), "--id", str(k),
           "--nodes", str(nodes), "--rounds", str(rounds), "--seed", "0", "--round-timeout", str(round_timeout),
           "--metrics", str(tmp_path / f"metrics-{k}.jsonl"), *extra]
    log = open(tmp_path / f"node-{k}.log", "a")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def node_records(tmp_path: Path, k: int) -> list[dict]:
    path = tmp_path / f"metrics-{k}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_round(tmp_path: Path, k: int, r: int, procs: dict, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while not any(rec["round"] >= r for rec in node_records(tmp_path, k)):
        dead = {j: p.returncode for j, p in procs.items() if p.poll() is not None and p.returncode != 0}
        assert not dead, f"nodes exited early: {dead}; logs in {tmp_path}"
        assert time.monotonic() < deadline, f"node {k} never reported round {r}; logs in {tmp_path}"
        time.sleep(0.2)


def finish(procs: dict, tmp_path: Path, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    for k, p in procs.items():
        try:
            code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            pytest.fail(f"node {k} did not finish; log: {(tmp_path / f'node-{k}.log').read_text()[-3000:]}")
        assert code == 0, f"node {k} exited {code}: {(tmp_path / f'node-{k}.log').read_text()[-3000:]}"
