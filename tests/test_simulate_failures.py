"""A simulation whose node or worker process fails says which and why, and still writes its
summary.json, marked failed (issue 19: "a worker that dies says why in the launcher's output").

Real runs through the CLI: forked worker processes, hub transports, real crypto. The failing
plug-in tasks (tests/helpers/failing_tasks.py) break the second node a worker builds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ARGS = ["-n", "4", "-r", "2", "--processes", "2", "--startup-timeout", "4", "--round-timeout", "2"]


def _simulate(task: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "p2pfl.cli", "simulate", *ARGS, "--task", task, "--out", str(out)],
                          capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.parametrize("task, why", [
    ("helpers.failing_tasks:raises", "ValueError: model refused: this node's model cannot be built"),
    ("helpers.failing_tasks:killed", "was killed by signal 9"),
])
def test_a_failed_node_is_named_with_its_reason_and_the_summary_is_marked_failed(tmp_path: Path, task: str,
                                                                                 why: str) -> None:
    out = tmp_path / "run"
    done = _simulate(task, out)
    assert done.returncode == 1, done.stderr[-3000:]
    assert why in done.stderr, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    # each worker's second node failed (a killed worker takes all its unreported nodes with it)
    failed = {int(f.split(":")[0].removeprefix("node ")) for f in summary["failures"]}
    assert {2, 3} <= failed, summary["failures"]
    assert all(why in f for f in summary["failures"] if f.startswith(("node 2:", "node 3:"))), summary["failures"]
