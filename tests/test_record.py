"""The run directory's schema (p2pfl.record): writing and reading back, validation, versions, merging."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from p2pfl import record, report
from p2pfl.config import ExperimentConfig
from p2pfl.record import (SCHEMA_VERSION, MetricsWriter, NodeRunDirectory, RoundRecord, RunDirError, RunSummary,
                          build_summary, merge, read_records, read_run, read_runs, read_summary)

ROUNDS = 3


def make_record(r: int, n: int, **changes) -> RoundRecord:
    base = RoundRecord(round=r, node=n, train_loss=0.5 / r, test_loss=0.6 / r, test_acc=0.5 + 0.1 * r,
                       bytes_sent=1000 * r, bytes_received=900 * r, wall_time=1.5 * r, round_time=1.5,
                       train_time=0.7, cpu_time=0.9, arrived=2, dropped={"stale": r}, aggregation="ok",
                       heard=[n + 1, n + 3])
    return replace(base, **changes)


def make_summary(node_ids: list[int], nodes: int = 2, **changes) -> RunSummary:
    base = RunSummary(label="ring", topology="ring", aggregation="gossip", secure_agg=False, nodes=nodes,
                      rounds=ROUNDS, partition="iid", seed=0, spectral_gap=0.25, node_ids=node_ids,
                      final_acc_mean=0.8, final_acc_std=0.0, dp="off", dp_delta=None, epsilon_max=None,
                      compression="none", participation=1.0, fedavg_sample=0, fedprox_mu=0.0, wall_time=5.0,
                      processes=1, peak_rss_mb=200.0, versions={"python": "3.12"})
    return replace(base, **changes)


def node_dir(root: Path, node: int, config: dict | None = None, nodes: int = 2, **summary_changes) -> Path:
    """One node's share of a run, as `p2pfl node --run-dir` writes it."""
    path = root / f"node-{node}"
    out = NodeRunDirectory(path, config or ExperimentConfig(nodes=nodes, rounds=ROUNDS).to_dict(), node)
    for r in range(1, ROUNDS + 1):
        out.append(make_record(r, node, wall_time=1.5 * r + node))
    out.close()
    record.write_summary(path, make_summary([node], nodes=nodes, **summary_changes))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, lineno: int, obj: dict) -> None:
    text = path.read_text().splitlines()
    text[lineno - 1] = json.dumps(obj)
    path.write_text("\n".join(text) + "\n")


# -- round trip ------------------------------------------------------------------------------------


def test_records_and_summary_round_trip(tmp_path: Path) -> None:
    written = [make_record(1, 0), make_record(1, 1, test_acc=None, train_loss=None, epsilon=1.25,
                                                   participated=False, consensus_distance=3e-4)]
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for rec in written:
        writer.append(replace(rec, delta=np.ones(3, dtype=np.float32)))  # the delta is never written
    writer.close()
    assert all(obj["schema"] == SCHEMA_VERSION and "delta" not in obj for obj in lines(tmp_path / "metrics.jsonl"))
    assert [rec for rec, _ in read_records(tmp_path / "metrics.jsonl")] == written

    summary = make_summary([0, 1])
    record.write_summary(tmp_path, summary)
    assert json.loads((tmp_path / "summary.json").read_text())["schema"] == SCHEMA_VERSION
    assert read_summary(tmp_path / "summary.json") == summary


def test_schema_covers_every_dataclass_field() -> None:
    assert set(record.RECORD_SCHEMA) == {f for f in RoundRecord.__dataclass_fields__ if f != "delta"}
    assert set(record.SUMMARY_SCHEMA) == set(RunSummary.__dataclass_fields__)


def test_personas_partition_keeps_its_name() -> None:
    cfg = ExperimentConfig(task="apps", partition="personas", alpha=0.2, nodes=2).validate()
    summary = build_summary(cfg, topology="ring", spectral_gap=0.5, node_ids=[0, 1], records=[make_record(1, 0)],
                            wall_time=1.0, processes=1, peak_rss_mb=1.0)
    assert summary.partition == "personas(alpha=0.2)"
    assert record.partition_label("dirichlet", 0.3) == "dirichlet(alpha=0.3)"
    assert record.partition_label("iid", 0.3) == "iid"
    assert record.partition_label("pathological", 0.3, 3) == "pathological(k=3)"
    assert record.partition_label("natural", 0.3) == "natural"


# -- bad input -------------------------------------------------------------------------------------


def test_bad_field_names_file_line_and_field(tmp_path: Path) -> None:
    run = node_dir(tmp_path, 0)
    metrics = run / "metrics.jsonl"
    bad = lines(metrics)[1]
    bad["arrived"] = -1
    rewrite(metrics, 2, bad)
    with pytest.raises(RunDirError) as exc:
        read_run(run)
    assert (exc.value.path, exc.value.line, exc.value.field) == (str(metrics), 2, "arrived")
    assert "metrics.jsonl:2" in str(exc.value) and "arrived" in str(exc.value)

    del bad["arrived"]
    rewrite(metrics, 2, bad)
    with pytest.raises(RunDirError, match="required field is missing") as exc:
        read_run(run)
    assert exc.value.field == "arrived"

    rewrite(metrics, 2, {**lines(metrics)[0], "round": 2, "extra": 1})
    with pytest.raises(RunDirError, match="not a field of schema version 1") as exc:
        read_run(run)
    assert exc.value.field == "extra"


@pytest.mark.parametrize("heard", [[1, 1], [-1], "1,3", [0.5]])
def test_a_bad_heard_list_is_refused_and_an_old_record_reads_as_none(tmp_path: Path, heard) -> None:
    run = node_dir(tmp_path, 0)
    metrics = run / "metrics.jsonl"
    rewrite(metrics, 2, {**lines(metrics)[1], "heard": heard})
    with pytest.raises(RunDirError) as exc:
        read_run(run)
    assert exc.value.field == "heard"
    old = lines(metrics)[1]
    del old["heard"]  # written before the field existed
    rewrite(metrics, 2, old)
    assert read_run(run).records[1].heard is None


def test_bad_summary_field(tmp_path: Path) -> None:
    run = node_dir(tmp_path, 0)
    summary = json.loads((run / "summary.json").read_text())
    summary["aggregation"] = "median"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunDirError, match="gossip, fedavg") as exc:
        read_run(run)
    assert exc.value.field == "aggregation" and "summary.json" in str(exc.value)


def test_unknown_and_missing_version(tmp_path: Path) -> None:
    run = node_dir(tmp_path, 0)
    metrics = run / "metrics.jsonl"
    rewrite(metrics, 3, {**lines(metrics)[2], "schema": SCHEMA_VERSION + 1})
    with pytest.raises(RunDirError) as exc:
        read_run(run)
    assert exc.value.line == 3 and exc.value.field == "schema"
    assert f"schema version {SCHEMA_VERSION + 1} is not one this p2pfl reads" in str(exc.value)
    assert "newer p2pfl" in str(exc.value)

    old = lines(metrics)[0]
    del old["schema"]
    rewrite(metrics, 3, {**old, "round": 3})
    with pytest.raises(RunDirError, match="no schema version") as exc:
        read_run(run)
    assert exc.value.line == 3

    run = node_dir(tmp_path / "b", 0)
    summary = json.loads((run / "summary.json").read_text())
    summary["schema"] = "1"
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunDirError, match="schema version '1' is not one") as exc:
        read_run(run)
    assert exc.value.path.endswith("summary.json")


# -- merging the directories of one experiment -----------------------------------------------------


def test_merge_of_two_node_directories(tmp_path: Path) -> None:
    # A per-node setting may differ between machines: it does not change what the run computes.
    dirs = [node_dir(tmp_path, 0), node_dir(tmp_path, 1, ExperimentConfig(nodes=2, rounds=ROUNDS,
                                                                          checkpoint_dir="/ckpt").to_dict(),
                                            wall_time=7.0, peak_rss_mb=100.0)]
    with pytest.raises(RunDirError, match="add the run directories of nodes \\[1\\]"):
        read_runs(dirs[:1])  # one node's share alone is not a run
    [run] = read_runs(dirs)
    assert run.summary.node_ids == [0, 1] and run.paths == dirs
    assert sorted((r.node, r.round) for r in run.records) == [(n, r) for n in (0, 1) for r in range(1, ROUNDS + 1)]
    assert run.summary.wall_time == 7.0 and run.summary.peak_rss_mb == 300.0 and run.summary.processes == 2
    assert run.summary.final_acc_mean == pytest.approx(0.8)

    files = report.main([str(d) for d in dirs], str(tmp_path / "rep"), 0.7, Console(file=io.StringIO()))
    [row] = files.rows
    assert (row.nodes, row.rounds, row.rounds_to_target) == (2, ROUNDS, 2)
    assert row.final_consensus is None  # no process saw both models
    assert row.wall_time_to_target == 1.5 * 2 + 1  # the slower node, 1


def test_merge_refuses_another_experiment(tmp_path: Path) -> None:
    a = node_dir(tmp_path / "a", 0)
    b = node_dir(tmp_path / "a", 1, ExperimentConfig(nodes=2, rounds=ROUNDS, lr=0.1).to_dict())
    with pytest.raises(RunDirError) as exc:
        read_runs([a, b])
    assert exc.value.field == "lr" and exc.value.path == str(b / "config.json")
    assert "not the same experiment" in str(exc.value) and "0.05" in str(exc.value) and "0.1" in str(exc.value)

    c = node_dir(tmp_path / "c", 1, topology="torus")  # the cluster's topology is in the summary
    with pytest.raises(RunDirError) as exc:
        merge([read_run(a), read_run(c)])
    assert exc.value.field == "topology" and "summary.json" in str(exc.value)


def test_merge_refuses_a_record_in_two_directories(tmp_path: Path) -> None:
    a, b = node_dir(tmp_path, 0), node_dir(tmp_path, 1)
    # b also claims node 0's round 2: a (node, round) recorded on two machines
    record.write_summary(b, make_summary([0, 1]))
    metrics = b / "metrics.jsonl"
    with metrics.open("a") as fh:
        fh.write(record.record_line(make_record(2, 0)))
    with pytest.raises(RunDirError, match="duplicate record for node 0 round 2") as exc:
        merge([read_run(a), replace(read_run(b), summary=make_summary([1]))])
    assert exc.value.path == str(metrics) and exc.value.line == ROUNDS + 1
    assert str(a / "metrics.jsonl") + ":2" in str(exc.value)  # where the first copy is


# -- a node's own directory ------------------------------------------------------------------------


def test_restarted_node_keeps_the_rounds_before_its_checkpoint(tmp_path: Path) -> None:
    path = node_dir(tmp_path, 0)
    out = NodeRunDirectory(path, ExperimentConfig(nodes=2, rounds=ROUNDS).to_dict(), 0)
    assert not (path / "summary.json").exists()  # the run is in progress again
    out.append(make_record(2, 0, test_acc=0.99))  # resumed from the checkpoint of round 1
    out.close()
    recs = out.records()
    assert [(r.round, r.test_acc) for r in recs] == [(1, pytest.approx(0.6)), (2, 0.99)]


def test_node_directory_refuses_another_experiment_or_node(tmp_path: Path) -> None:
    path = node_dir(tmp_path, 0)
    with pytest.raises(RunDirError) as exc:
        NodeRunDirectory(path, ExperimentConfig(nodes=2, rounds=ROUNDS + 1).to_dict(), 0)
    assert exc.value.field == "rounds" and "another experiment" in str(exc.value)
    with pytest.raises(RunDirError, match="give every node its own run directory"):
        NodeRunDirectory(path, ExperimentConfig(nodes=2, rounds=ROUNDS).to_dict(), 1)
