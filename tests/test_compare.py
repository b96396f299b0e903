"""`p2pfl compare` and `p2pfl report` end to end: real simulations, then the table and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from matplotlib.image import imread

from p2pfl.cli import main
from p2pfl.report import read_csv

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "consensus_vs_round.png")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_compare_writes_a_table_and_plots_that_agree_with_the_metrics(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--topologies", "ring,complete,star-fedavg", "--nodes", "4", "--rounds", "4",
            "--processes", "2", "--seed", "5", "--partition", "dirichlet", "--alpha", "1.0",
            "--target", "0.6", "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    rows = {row.label: row for row in read_csv(out / "comparison.csv")}
    assert set(rows) == {"ring", "complete", "star-fedavg"}
    for label, row in rows.items():
        records = _records(out / label)
        last = [r for r in records if r["round"] == 4]
        assert len(records) == 4 * 4 and len(last) == 4
        assert row.final_acc_mean == np.mean([r["test_acc"] for r in last])
        assert row.final_consensus == last[0]["consensus_distance"]
        if row.rounds_to_target is not None:
            at = [r for r in records if r["round"] == row.rounds_to_target]
            assert np.mean([r["test_acc"] for r in at]) >= 0.6
            assert row.bytes_to_target == np.mean([r["bytes_sent"] for r in at])
        assert row.partition.startswith("dirichlet")
    assert rows["star-fedavg"].aggregation == "fedavg"
    assert rows["star-fedavg"].final_consensus == 0.0

    markdown = (out / "comparison.md").read_text()
    assert "dirichlet" in markdown and all(label in markdown for label in rows)
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
        pixels = imread(out / name)
        assert pixels.std() > 0.01  # not a blank canvas

    # `p2pfl report` re-renders the same table from the finished runs.
    again = tmp_path / "again"
    result = CliRunner().invoke(main, ["report", str(out), "--out", str(again), "--target", "0.6"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (again / "comparison.csv").read_text() == (out / "comparison.csv").read_text()


def test_report_rejects_a_directory_without_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0
    assert "summary.json" in result.output or "no run" in result.output.lower()
