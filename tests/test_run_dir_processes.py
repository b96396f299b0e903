"""A multi-host run, as separate `p2pfl node --run-dir` processes, read by one `p2pfl report`."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.processes import finish, make_cluster, node_records, start_node

from p2pfl import report
from p2pfl.config import ExperimentConfig
from p2pfl.record import NodeRunDirectory

NODES = 3
ROUNDS = 3


def test_report_merges_the_run_directories_of_node_processes(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=NODES)
    dirs = [tmp_path / f"host-{k}" for k in range(NODES)]  # one per machine
    procs = {k: start_node(cluster, k, tmp_path, ROUNDS, "--run-dir", str(dirs[k]), nodes=NODES) for k in range(NODES)}
    try:
        finish(procs, tmp_path)
    finally:
        for p in procs.values():
            p.kill()
    for k, d in enumerate(dirs):
        assert {p.name for p in d.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "models"}
        assert (d / "models" / f"node-{k}.npy").stat().st_mode & 0o077 == 0  # private, as simulate's
        # --metrics still appends the same records
        assert [r["round"] for r in node_records(tmp_path, k)] == list(range(1, ROUNDS + 1))

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "report", *map(str, dirs), "--out", str(out),
                           "--target", "0.5"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with (out / "comparison.csv").open(newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert (int(row["nodes"]), int(row["rounds"])) == (NODES, ROUNDS)
    assert float(row["final_acc_mean"]) > 0.5

    [run] = report.load_runs(dirs)
    assert sorted((r.node, r.round) for r in run.records) == [(k, r) for k in range(NODES)
                                                               for r in range(1, ROUNDS + 1)]
    assert run.summary.node_ids == list(range(NODES)) and run.summary.processes == NODES

    # A copy of node 0's directory as if from another machine: its (node, round)s would count twice.
    shutil.copytree(dirs[0], tmp_path / "again")
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "report", *map(str, dirs), str(tmp_path / "again"),
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "duplicate record for node 0 round 1" in proc.stderr, proc.stderr


def test_node_refuses_a_run_directory_of_another_experiment(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=NODES)
    old = ExperimentConfig(nodes=NODES, rounds=ROUNDS + 4, topology="topology.json").to_dict()
    NodeRunDirectory(tmp_path / "run", old, 0).close()
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "node", "--cluster", str(cluster), "--id", "0",
                           "--rounds", str(ROUNDS), "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "another experiment: rounds was 7, now 3" in proc.stderr, proc.stderr
