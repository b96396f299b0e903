"""Tests for p2pfl.report on small synthetic run directories (no simulation is run)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import image as mimage
from rich.console import Console
from rich.table import Table

from p2pfl import record, report
from p2pfl.record import RoundRecord, RunSummary
from p2pfl.report import ReportError, Row, load_run, summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# 3 nodes x 5 rounds. Mean accuracy per round: 0.6, 0.85, 0.91, 0.93, 0.95 -> reaches 0.9 at round 3.
ACC_FAST = [
    [0.5, 0.6, 0.7],
    [0.8, 0.85, 0.9],
    [0.88, 0.92, 0.93],
    [0.92, 0.93, 0.94],
    [0.94, 0.95, 0.96],
]
# Never reaches 0.9 (best mean 0.8).
ACC_SLOW = [
    [0.3, 0.4, 0.5],
    [0.5, 0.55, 0.6],
    [0.6, 0.65, 0.7],
    [0.7, 0.75, 0.8],
    [0.75, 0.8, 0.85],
]


def bytes_sent(rnd: int, node: int) -> int:
    return 1000 * rnd * (node + 1)


def wall_time(rnd: int, node: int) -> float:
    return 1.5 * rnd + 0.25 * node


def consensus(rnd: int) -> float:
    return 10.0 ** (-rnd)


def write_run(root: Path, name: str, accs, *, label: str | None = None, partition="iid",
              topology="ring", aggregation="gossip", secure_agg=False, cons=consensus,
              summary_extra: dict | None = None, drop: tuple[int, int] | None = None) -> Path:
    """Write config.json / summary.json / metrics.jsonl through p2pfl.record, the run directory's writer.

    ``accs[r][n]`` is node n's test_acc at round r+1 (None = not evaluated). ``drop=(round, node)`` leaves that
    record out.
    """
    run = root / name
    run.mkdir(parents=True)
    n_rounds, n_nodes = len(accs), len(accs[0])
    record.write_config(run, {"name": name, "nodes": n_nodes, "rounds": n_rounds})
    writer = record.MetricsWriter(run / "metrics.jsonl")
    for r in range(1, n_rounds + 1):
        for n in range(n_nodes):
            if drop != (r, n):
                writer.append(round_record(r, n, accs[r - 1][n], cons(r)))
    writer.close()
    summary = make_summary(label=label or name, topology=topology, aggregation=aggregation, secure_agg=secure_agg,
                           nodes=n_nodes, rounds=n_rounds, partition=partition,
                           wall_time=wall_time(n_rounds, n_nodes - 1) + 0.5)
    record.write_summary(run, replace(summary, **(summary_extra or {})))
    return run


def round_record(r: int, n: int, acc: float | None, cons: float | None = None) -> RoundRecord:
    return RoundRecord(round=r, node=n, train_loss=1.0 / r, test_loss=1.1 / r, test_acc=acc,
                       bytes_sent=bytes_sent(r, n), bytes_received=bytes_sent(r, n), wall_time=wall_time(r, n),
                       round_time=1.5, train_time=1.0, cpu_time=1.2, arrived=2, dropped={}, aggregation="ok",
                       consensus_distance=cons)


def make_summary(**fields) -> RunSummary:
    base = dict(label="run", topology="ring", aggregation="gossip", secure_agg=False, nodes=3, rounds=5,
                partition="iid", seed=0, spectral_gap=0.25, node_ids=list(range(fields.get("nodes", 3))),
                final_acc_mean=None, final_acc_std=None, dp="off", dp_delta=None, epsilon_max=None,
                compression="none", participation=1.0, fedavg_sample=0, fedprox_mu=0.0, wall_time=1.0,
                processes=1, peak_rss_mb=123.4, versions={"p2pfl": "0.1.0"})
    base.update(fields)
    return RunSummary(**base)


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    compare = tmp_path / "compare"
    fast = write_run(compare, "fast", ACC_FAST, label="ring gossip")
    slow = write_run(compare, "slow", ACC_SLOW, label="star fedavg", topology="star", aggregation="fedavg",
                     secure_agg=True, cons=lambda r: 0.0)
    return fast, slow


# ------------------------------------------------------------------------------------------- load / helpers


def test_load_run_and_per_round_helpers(two_runs):
    run = load_run(two_runs[0])
    assert run.label == "ring gossip"
    assert run.summary.topology == "ring" and run.config["name"] == "fast"
    assert len(run.records) == 15 and run.rounds == [1, 2, 3, 4, 5]

    rounds, mean, std = run.accuracy_per_round()
    assert rounds.tolist() == [1, 2, 3, 4, 5]
    assert mean == pytest.approx([np.mean(a) for a in ACC_FAST])
    assert std == pytest.approx([np.std(a) for a in ACC_FAST])

    b_rounds, b = run.bytes_sent_per_round()
    assert b_rounds.tolist() == [1, 2, 3, 4, 5]
    assert b.tolist() == [2000.0 * r for r in range(1, 6)]  # mean of 1000*r*(1,2,3)

    _, w = run.wall_time_per_round()
    assert w.tolist() == [1.5 * r + 0.5 for r in range(1, 6)]  # slowest node (2)

    _, c = run.consensus_per_round()
    assert c == pytest.approx([10.0 ** -r for r in range(1, 6)])


def test_accuracy_ignores_null_nodes_and_unevaluated_rounds(tmp_path):
    accs = [
        [None, None, None],
        [0.8, None, 0.9],  # mean over the two evaluated nodes: 0.85
        [None, None, None],
        [0.91, 0.93, 0.95],
        [None, None, None],
    ]
    run = load_run(write_run(tmp_path, "sparse", accs))
    rounds, mean, std = run.accuracy_per_round()
    assert rounds.tolist() == [2, 4]
    assert mean == pytest.approx([0.85, 0.93])
    assert std == pytest.approx([0.05, np.std([0.91, 0.93, 0.95])])

    row = summarize(run, 0.9)
    assert row.rounds_to_target == 4
    assert row.final_round == 4  # last *evaluated* round
    assert row.final_acc_mean == pytest.approx(0.93)
    assert row.bytes_to_target == 8000.0
    assert row.wall_time_to_target == 6.5


# ------------------------------------------------------------------------------------------- summarize


def test_summarize_reaches_target_exactly(two_runs):
    row = summarize(load_run(two_runs[0]), 0.9)
    assert isinstance(row, Row)
    assert (row.label, row.topology, row.aggregation, row.secure_agg, row.partition, row.nodes) == (
        "ring gossip", "ring", "gossip", False, "iid", 3)
    assert row.rounds_to_target == 3  # means 0.6, 0.85, 0.91 ...
    assert row.bytes_to_target == 6000.0  # mean of 3000, 6000, 9000
    assert row.wall_time_to_target == 5.0  # max of 4.5, 4.75, 5.0
    assert row.final_round == 5
    assert row.final_acc_mean == pytest.approx(0.95)
    assert row.final_acc_std == pytest.approx(np.std([0.94, 0.95, 0.96]))
    assert row.total_wall_time == 8.5  # summary.wall_time (last round 8.0 + 0.5 s)
    assert row.spectral_gap == 0.25
    assert row.final_consensus == pytest.approx(1e-5)
    assert row.peak_rss_mb == 123.4

    # a lower target is reached earlier, a target equal to a round's mean counts as reached
    assert summarize(load_run(two_runs[0]), 0.6).rounds_to_target == 1
    assert summarize(load_run(two_runs[0]), 0.85).rounds_to_target == 2


def test_summarize_never_reached(two_runs):
    row = summarize(load_run(two_runs[1]), 0.9)
    assert row.rounds_to_target is None
    assert row.bytes_to_target is None and row.wall_time_to_target is None
    assert not row.reached
    assert row.final_acc_mean == pytest.approx(0.8)
    assert row.final_consensus == 0.0
    assert row.secure_agg is True

    md = report.to_markdown([row], 0.9)
    line = next(ln for ln in md.splitlines() if "star fedavg" in ln)
    assert line.count("—") == 3  # rounds, bytes, wall time to target


def test_summarize_rejects_bad_target(two_runs):
    run = load_run(two_runs[0])
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ReportError):
            summarize(run, bad)


# ------------------------------------------------------------------------------------------- tables


def test_csv_round_trip(two_runs, tmp_path):
    rows = [summarize(load_run(p), 0.9) for p in two_runs]
    path = report.to_csv(rows, tmp_path / "out.csv")
    with path.open(newline="") as fh:
        parsed = list(csv.DictReader(fh))
    assert [p["label"] for p in parsed] == ["ring gossip", "star fedavg"]
    fast, slow = parsed
    assert int(fast["rounds_to_target"]) == 3
    assert float(fast["bytes_to_target"]) == 6000.0  # raw bytes, not KiB
    assert float(fast["wall_time_to_target"]) == 5.0
    assert float(fast["final_acc_mean"]) == rows[0].final_acc_mean
    assert float(fast["final_acc_std"]) == rows[0].final_acc_std
    assert float(fast["target_acc"]) == 0.9
    assert slow["rounds_to_target"] == "" and slow["bytes_to_target"] == "" and slow["wall_time_to_target"] == ""
    assert slow["secure_agg"] == "true"
    # the typed reader gives back the very same rows
    assert report.read_csv(path) == rows


def test_markdown_contents(tmp_path):
    compare = tmp_path / "c"
    rows = [
        summarize(load_run(write_run(compare, "a", ACC_FAST, label="ring | gossip")), 0.9),
        summarize(load_run(write_run(compare, "b", ACC_SLOW, label="star",
                                     partition="dirichlet", summary_extra={})), 0.9),
    ]
    md = report.to_markdown(rows, 0.9)
    first = md.splitlines()[0]
    assert first.startswith("Partitions:") and "iid" in first and "dirichlet" in first
    assert "90%" in first
    assert "ring \\| gossip" in md and "| star |" in md
    assert "5.9 KiB" in md  # 6000 B
    assert "5.0 s" in md
    assert "95.0 ± 0.8%" in md  # final accuracy of run a
    assert "3/5" in md

    single = report.to_markdown(rows[:1], 0.75)
    assert single.splitlines()[0].startswith("Partition: iid") and "75%" in single.splitlines()[0]


def test_partition_text_picks_alpha_from_config():
    assert report.describe_partition({"kind": "dirichlet", "alpha": 0.5}) == "dirichlet(alpha=0.5)"
    assert report.describe_partition("dirichlet", {"data": {"alpha": 0.1}}) == "dirichlet(alpha=0.1)"
    assert report.describe_partition("iid", {"data": {"alpha": 0.1}}) == "iid"


def test_human_formatting():
    assert report.fmt_bytes(512) == "512 B"
    assert report.fmt_bytes(1536) == "1.5 KiB"
    assert report.fmt_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert report.fmt_bytes(None) == "—"
    assert report.fmt_seconds(12.34) == "12.3 s"
    assert report.fmt_seconds(125) == "2 min 05 s"
    assert report.fmt_percent(0.925) == "92.5%"


def test_render_table(two_runs):
    rows = [summarize(load_run(p), 0.9) for p in two_runs]
    table = report.render_table(rows)
    assert isinstance(table, Table) and table.row_count == 2
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(table)
    text = console.export_text()
    assert "ring gossip" in text and "star fedavg" in text and "5.9 KiB" in text and "—" in text


# ------------------------------------------------------------------------------------------- plots


def _colour_pixels(img: np.ndarray, colour: str, tol: float = 0.03) -> int:
    rgb = np.asarray(mcolors.to_rgb(colour))
    return int((np.abs(img[..., :3] - rgb).max(axis=-1) < tol).sum())


def _check_png(path: Path) -> np.ndarray:
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    img = mimage.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    flat = img[..., :3].reshape(-1, 3)
    assert flat.std() > 0.05  # not a single colour
    assert len(np.unique(flat, axis=0)) > 20
    return img


def test_write_report_files_and_plots(two_runs, tmp_path):
    runs = [load_run(p) for p in two_runs]
    files = report.write_report(runs, tmp_path / "out", target_acc=0.9)
    names = {p.name for p in files.paths()}
    assert names == {"comparison.md", "comparison.csv", "accuracy_vs_round.png", "accuracy_vs_bytes.png",
                     "consensus_vs_round.png"}
    assert all(p.parent == tmp_path / "out" for p in files.paths())
    assert files.markdown.read_text().startswith("Partition: iid")
    assert len(report.read_csv(files.csv)) == 2

    for png in (files.accuracy_vs_round, files.accuracy_vs_bytes):
        img = _check_png(png)
        # one line per run, drawn in the run's colour
        assert _colour_pixels(img, "tab:blue") > 100
        assert _colour_pixels(img, "tab:orange") > 100
    img = _check_png(files.consensus_vs_round)
    assert _colour_pixels(img, "tab:blue") > 100
    assert _colour_pixels(img, "tab:orange") < 20  # all-zero consensus is skipped on the log scale


def test_plot_without_positive_consensus_still_writes(tmp_path):
    run = load_run(write_run(tmp_path, "zero", ACC_SLOW, cons=lambda r: 0.0))
    out = report.plot_consensus_vs_round([run], tmp_path / "c.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)


# ------------------------------------------------------------------------------------------- validation


def _rewrite_line(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_load_run_rejects_missing_round(tmp_path):
    run = write_run(tmp_path, "gap", ACC_FAST, drop=(3, 2))
    with pytest.raises(ReportError) as exc:
        load_run(run)
    msg = str(exc.value)
    assert "metrics.jsonl" in msg and "node 2" in msg and "round 3" in msg
    assert exc.value.field == "round"
    # the other nodes' round-3 records are at lines 7 and 8
    assert "7, 8" in msg


def test_load_run_rejects_missing_field(tmp_path):
    run = write_run(tmp_path, "nofield", ACC_FAST)
    metrics = run / "metrics.jsonl"
    rec = json.loads(metrics.read_text().splitlines()[6])
    del rec["bytes_sent"]
    _rewrite_line(metrics, 7, json.dumps(rec))
    with pytest.raises(ReportError) as exc:
        load_run(run)
    assert isinstance(exc.value, ValueError)
    assert exc.value.line == 7 and exc.value.field == "bytes_sent"
    assert "metrics.jsonl" in str(exc.value) and "line 7" in str(exc.value) and "bytes_sent" in str(exc.value)


def test_load_run_rejects_bad_json_line(tmp_path):
    run = write_run(tmp_path, "badjson", ACC_FAST)
    _rewrite_line(run / "metrics.jsonl", 4, '{"round": 2, "node": ')
    with pytest.raises(ReportError) as exc:
        load_run(run)
    assert exc.value.line == 4 and "line 4" in str(exc.value) and "metrics.jsonl" in str(exc.value)


def test_load_run_rejects_bad_values_and_duplicates(tmp_path):
    run = write_run(tmp_path, "badval", ACC_FAST)
    metrics = run / "metrics.jsonl"
    rec = json.loads(metrics.read_text().splitlines()[1])
    rec["test_acc"] = "high"
    _rewrite_line(metrics, 2, json.dumps(rec))
    with pytest.raises(ReportError, match="line 2") as exc:
        load_run(run)
    assert exc.value.field == "test_acc"

    run = write_run(tmp_path, "dup", ACC_FAST)
    metrics = run / "metrics.jsonl"
    _rewrite_line(metrics, 2, metrics.read_text().splitlines()[0])  # node 0 round 1 twice, node 1 missing
    with pytest.raises(ReportError, match="duplicate") as exc:
        load_run(run)
    assert exc.value.line == 2


def test_load_run_rejects_bad_summary(tmp_path):
    run = write_run(tmp_path, "nosummaryfield", ACC_FAST)
    summary = json.loads((run / "summary.json").read_text())
    del summary["partition"]
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError) as exc:
        load_run(run)
    assert "summary.json" in str(exc.value) and exc.value.field == "partition"

    (run / "summary.json").unlink()
    with pytest.raises(ReportError, match="summary.json"):
        load_run(run)

    run = write_run(tmp_path, "noconfig", ACC_FAST)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ReportError, match="config.json"):
        load_run(run)


# ------------------------------------------------------------------------------------------- main


def test_main_with_compare_dir_and_separate_dirs(two_runs, tmp_path):
    compare = two_runs[0].parent
    console = Console(file=io.StringIO(), width=250, record=True)
    files = report.main([str(compare)], None, 0.9, console)
    assert files.markdown.parent.resolve() == compare.resolve()  # one argument: written into it
    text = console.export_text()
    assert "ring gossip" in text and "star fedavg" in text and "comparison.md" in text
    assert [r.label for r in files.rows] == ["ring gossip", "star fedavg"]

    out = tmp_path / "rep"
    files = report.main([str(p) for p in two_runs], str(out), 0.5, Console(file=io.StringIO()))
    assert files.csv.parent == out and files.rows[1].rounds_to_target == 2  # slow: means 0.4, 0.55

    with pytest.raises(ReportError):
        report.main([str(tmp_path / "rep")], None, 0.9, Console(file=io.StringIO()))


def test_main_disambiguates_equal_labels(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "seed0", ACC_FAST, label="ring")
    write_run(root, "seed1", ACC_SLOW, label="ring")
    files = report.main([str(root)], str(tmp_path / "o"), 0.9, Console(file=io.StringIO()))
    assert [r.label for r in files.rows] == ["ring (seed0)", "ring (seed1)"]


def test_module_imports_no_torch_or_zmq():
    import subprocess
    import sys

    code = ("import sys, p2pfl.report; "
            "bad = [m for m in ('torch', 'zmq', 'matplotlib.pyplot') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
