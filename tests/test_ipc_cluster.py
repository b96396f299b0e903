"""Nodes of one host over ipc:// (Unix sockets): real `p2pfl node` processes, a cluster file of ipc addresses.

The transport seam serves ipc:// with the same channel (sessions, sealing, replay rule) as tcp://;
here the cluster file, the CLI's start-up checks and the node processes take it end to end.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers.processes import finish, make_cluster, node_records, start_node

ROUNDS = 3


def _ipc_cluster(tmp_path: Path, nodes: int, socket_dir: Path) -> Path:
    """make_cluster's file with every address an ipc:// socket in `socket_dir`."""
    cluster = make_cluster(tmp_path, nodes=nodes)
    counter = iter(range(nodes))
    text = re.sub(r'address = "tcp://[^"]+"', lambda _: f'address = "ipc://{socket_dir}/node{next(counter)}"',
                  cluster.read_text())
    cluster.write_text(text)
    return cluster


def test_a_ring_of_node_processes_over_ipc_runs_every_round(tmp_path: Path) -> None:
    # sun_path holds 107 bytes: pytest's tmp_path can be longer than that, so the sockets go to a short directory
    with tempfile.TemporaryDirectory(prefix="p2pfl-ipc-") as sockets:
        cluster = _ipc_cluster(tmp_path, 3, Path(sockets))
        procs = {k: start_node(cluster, k, tmp_path, ROUNDS, nodes=3) for k in range(3)}
        finish(procs, tmp_path)
        assert sorted(p.name for p in Path(sockets).iterdir()) == ["node0", "node1", "node2"]
    for k in range(3):
        records = node_records(tmp_path, k)
        assert [r["round"] for r in records] == list(range(1, ROUNDS + 1)), records
        assert [r["arrived"] for r in records] == [2] * ROUNDS  # both neighbours, every round
        assert all(r["dropped"] == {} for r in records), [r["dropped"] for r in records]
        assert records[-1]["bytes_received"] > 0 and records[-1]["test_acc"] > 0.3


def test_an_ipc_address_in_a_missing_directory_is_refused_before_anything_starts(tmp_path: Path) -> None:
    cluster = _ipc_cluster(tmp_path, 3, tmp_path / "no-such-dir")
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "node", "--cluster", str(cluster), "--id", "0",
                           "--rounds", "1", "--metrics", str(tmp_path / "m.jsonl")],
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "Traceback" not in out and "address" in out and "does not exist" in out, out[-2000:]
    assert not (tmp_path / "m.jsonl").exists() or not (tmp_path / "m.jsonl").read_text()


def test_a_malformed_ipc_address_names_the_field(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=3)
    cluster.write_text(re.sub(r'address = "tcp://[^"]+"', 'address = "ipc://relative/path"', cluster.read_text(), count=1))
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "node", "--cluster", str(cluster), "--id", "1",
                           "--rounds", "1"], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "nodes[0].address" in out and "ipc:///ABSOLUTE/PATH" in out, out[-2000:]
