"""Tables and plots from finished run directories.

This module owns the human-readable comparison of runs: what ``p2pfl compare`` shows at the end and what
``p2pfl report RUN_DIR...`` prints and writes.  It only *reads* run directories, and only through
:mod:`p2pfl.record`, which owns their schema, validation and the merging of the directories that the nodes of
one experiment wrote on different machines (``docs/architecture.md``, section "Run directory").
It must not run anything and must not import torch or zmq.

Public API
----------
- :class:`ReportError` (``record.RunDirError``, a ``ValueError``): bad or missing data, naming the file, line
  and field.
- :class:`RunData`, :func:`load_run` and :func:`load_runs`: validated runs (per-node directories of one
  experiment merged into one) with per-round helpers.
- :class:`Row` and :func:`summarize`: one table row per run for a target accuracy.
- :func:`render_table` (rich), :func:`to_markdown`, :func:`to_csv`.
- :func:`plot_accuracy_vs_round`, :func:`plot_accuracy_vs_bytes`, :func:`plot_consensus_vs_round` (PNG).
- :func:`write_report` -> :class:`ReportFiles`; :func:`find_runs`; :func:`main` (used by the CLI).

Conventions
-----------
- Accuracies are fractions in [0, 1]; they are shown as percentages for humans and stored raw in CSV.
- "Mean" and "std" are over nodes (population std, ``ddof=0``); nodes whose ``test_acc`` is null are left out.
- A round "reaches" the target when the mean accuracy over nodes is >= target (with a 1e-9 tolerance for
  floating-point noise in the mean).  Bytes to target = mean cumulative ``bytes_sent`` over all nodes at that
  round; wall time to target = max ``wall_time`` over nodes at that round (the round is done when the slowest
  node is).
- Plots are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas: no pyplot, no GUI,
  no global backend switch for whoever imports this module.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from p2pfl import record
from p2pfl.record import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RoundRecord, RunDirError, RunSummary

__all__ = [
    "ReportError",
    "RunData",
    "load_run",
    "load_runs",
    "Row",
    "summarize",
    "render_table",
    "to_markdown",
    "to_csv",
    "read_csv",
    "plot_accuracy_vs_round",
    "plot_accuracy_vs_bytes",
    "plot_consensus_vs_round",
    "ReportFiles",
    "write_report",
    "find_runs",
    "main",
    "CONFIG_FILE",
    "SUMMARY_FILE",
    "METRICS_FILE",
]

DASH = "—"  # shown for "never reached" / unknown in markdown and terminal; CSV leaves the cell empty
PNG_DPI = 120
_TARGET_EPS = 1e-9


#: One error type for everything a report refuses: bad run directories (raised by p2pfl.record, naming the
#: file, line and field) and bad report arguments.
ReportError = RunDirError


# --------------------------------------------------------------------------------------------- run data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


@dataclass
class RunData:
    """One run, validated by :func:`load_run` / :func:`load_runs` (or built directly, e.g. in tests).

    ``records`` are the metrics.jsonl records of every node (of every directory, for a run merged from the
    directories of its nodes).  The per-round helpers return numpy arrays, one entry per round, sorted by round.
    """

    label: str
    summary: RunSummary
    config: dict[str, Any]
    records: list[RoundRecord]
    path: Path | None = None

    # -- grouping -------------------------------------------------------------------------------------
    def _by_round(self) -> dict[int, list[RoundRecord]]:
        groups: dict[int, list[RoundRecord]] = defaultdict(list)
        for rec in self.records:
            groups[rec.round].append(rec)
        return dict(sorted(groups.items()))

    @property
    def rounds(self) -> list[int]:
        """Sorted distinct rounds present in the records."""
        return list(self._by_round())

    @property
    def node_ids(self) -> list[int]:
        return sorted({rec.node for rec in self.records})

    # -- per-round series ------------------------------------------------------------------------------
    def accuracy_per_round(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rounds, mean, std)`` of test accuracy over nodes with a non-null ``test_acc``.

        Rounds where no node was evaluated are left out.
        """
        rounds, means, stds = [], [], []
        for rnd, recs in self._by_round().items():
            accs = [r.test_acc for r in recs if r.test_acc is not None]
            if not accs:
                continue
            arr = np.asarray(accs, dtype=float)
            rounds.append(rnd)
            means.append(float(arr.mean()))
            stds.append(float(arr.std()))
        return np.asarray(rounds, dtype=int), np.asarray(means, dtype=float), np.asarray(stds, dtype=float)

    def consensus_per_round(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rounds, consensus distance)``; the value is the same for all nodes of a round (their mean is
        taken to be safe).  Rounds without a finite value are left out (a run merged from per-node
        directories has none: no single process saw every model)."""
        rounds, values = [], []
        for rnd, recs in self._by_round().items():
            vals = [r.consensus_distance for r in recs if _finite(r.consensus_distance)]
            if vals:
                rounds.append(rnd)
                values.append(float(np.mean(vals)))
        return np.asarray(rounds, dtype=int), np.asarray(values, dtype=float)

    def bytes_sent_per_round(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rounds, mean cumulative bytes_sent per node)`` over all nodes of each round."""
        rounds, values = [], []
        for rnd, recs in self._by_round().items():
            rounds.append(rnd)
            values.append(float(np.mean([float(r.bytes_sent) for r in recs])))
        return np.asarray(rounds, dtype=int), np.asarray(values, dtype=float)

    def wall_time_per_round(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rounds, max wall_time over nodes)``: seconds since start when the slowest node finished."""
        rounds, values = [], []
        for rnd, recs in self._by_round().items():
            rounds.append(rnd)
            values.append(max(r.wall_time for r in recs))
        return np.asarray(rounds, dtype=int), np.asarray(values, dtype=float)

    # -- convenience -----------------------------------------------------------------------------------
    def total_wall_time(self) -> float | None:
        """``summary.wall_time``."""
        return self.summary.wall_time

    def partition_text(self) -> str:
        return describe_partition(self.summary.partition, self.config)

    def final_epsilon(self) -> float | None:
        """Largest ``epsilon`` over nodes in the last round that has any (None for runs without DP)."""
        for _, recs in reversed(list(self._by_round().items())):
            eps = [r.epsilon for r in recs if _finite(r.epsilon)]
            if eps:
                return max(eps)
        return None


def describe_partition(partition: Any, config: dict[str, Any] | None = None) -> str:
    """Human text for ``summary.partition`` (a name, or a dict such as ``{"kind": "dirichlet", "alpha": 0.5}``).

    For a bare ``"dirichlet"`` the concentration is looked up in the config (keys ``alpha`` /
    ``dirichlet_alpha``) when it can be found unambiguously.
    """
    if partition is None:
        return "unknown"
    if isinstance(partition, dict):
        kind = partition.get("kind") or partition.get("name") or partition.get("type") or "partition"
        params = ", ".join(f"{k}={v}" for k, v in partition.items() if k not in ("kind", "name", "type"))
        return f"{kind}({params})" if params else str(kind)
    text = str(partition)
    if "dirichlet" in text.lower() and "alpha" not in text.lower() and "(" not in text and config:
        alphas = _find_keys(config, ("alpha", "dirichlet_alpha"))
        if len(set(alphas)) == 1:
            text = f"{text}(alpha={alphas[0]})"
    return text


def _find_keys(obj: Any, keys: Sequence[str], depth: int = 0) -> list[Any]:
    found: list[Any] = []
    if depth > 4 or not isinstance(obj, dict):
        return found
    for k, v in obj.items():
        if k in keys and _is_number(v):
            found.append(v)
        elif isinstance(v, dict):
            found.extend(_find_keys(v, keys, depth + 1))
    return found


def _run_data(run: record.RunDirectory, label: str | None = None) -> RunData:
    if label is None:
        label = run.summary.label.strip() or run.path.resolve().name
    return RunData(label=label, summary=run.summary, config=run.config, records=run.records, path=run.path)


def load_run(path: str | os.PathLike[str], label: str | None = None) -> RunData:
    """Read and validate one run directory that holds every node of its run.

    Raises :class:`ReportError` naming the file, line and field on missing files, bad JSON, missing
    required fields, wrong types, an unknown schema version, duplicate records, or a node lacking a round.
    """
    run = record.read_run(path)
    record.check_complete(run)
    return _run_data(run, label)


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[RunData]:
    """Read every run directory of ``paths``; the directories that hold one node's share of a run
    (``p2pfl node --run-dir`` on each machine) are merged into one run, refused with the differing field
    if they are not the same experiment or with both places if a (node, round) is recorded twice."""
    return [_run_data(run) for run in record.read_runs(paths)]


# --------------------------------------------------------------------------------------------- summary rows


@dataclass
class Row:
    """One run's line in the comparison.  ``None`` means unknown / never reached."""

    label: str
    topology: str
    aggregation: str
    secure_agg: bool
    partition: str
    nodes: int
    rounds: int
    target_acc: float
    final_round: int | None  # last evaluated round
    final_acc_mean: float | None
    final_acc_std: float | None
    rounds_to_target: int | None
    bytes_to_target: float | None  # mean cumulative bytes_sent per node at rounds_to_target
    wall_time_to_target: float | None  # s, max over nodes at rounds_to_target
    total_wall_time: float | None  # s
    spectral_gap: float | None
    final_consensus: float | None
    peak_rss_mb: float | None
    epsilon: float | None = None  # DP: largest epsilon of any node after the last round (None without DP)
    dp_delta: float | None = None  # the delta that epsilon is stated at

    @property
    def reached(self) -> bool:
        return self.rounds_to_target is not None


def _check_target(target_acc: float) -> float:
    if not _is_number(target_acc) or not (0.0 < float(target_acc) <= 1.0):
        raise ReportError(f"target accuracy must be in (0, 1], got {target_acc!r}")
    return float(target_acc)


def summarize(run: RunData, target_acc: float) -> Row:
    """Reduce a run to one :class:`Row` for ``target_acc`` (a fraction in (0, 1])."""
    target_acc = _check_target(target_acc)
    acc_rounds, acc_mean, acc_std = run.accuracy_per_round()
    final_round = final_mean = final_std = None
    if len(acc_rounds):
        final_round, final_mean, final_std = int(acc_rounds[-1]), float(acc_mean[-1]), float(acc_std[-1])

    rounds_to_target = bytes_to_target = wall_to_target = None
    hits = np.nonzero(acc_mean >= target_acc - _TARGET_EPS)[0]
    if len(hits):
        rounds_to_target = int(acc_rounds[hits[0]])
        b_rounds, b_vals = run.bytes_sent_per_round()
        w_rounds, w_vals = run.wall_time_per_round()
        bytes_to_target = float(b_vals[list(b_rounds).index(rounds_to_target)])
        wall_to_target = float(w_vals[list(w_rounds).index(rounds_to_target)])

    _, cons = run.consensus_per_round()
    s = run.summary
    epsilon = run.final_epsilon()
    return Row(
        label=run.label,
        topology=s.topology,
        aggregation=s.aggregation,
        secure_agg=s.secure_agg,
        partition=run.partition_text(),
        nodes=s.nodes,
        rounds=s.rounds,
        target_acc=target_acc,
        final_round=final_round,
        final_acc_mean=final_mean,
        final_acc_std=final_std,
        rounds_to_target=rounds_to_target,
        bytes_to_target=bytes_to_target,
        wall_time_to_target=wall_to_target,
        total_wall_time=run.total_wall_time(),
        spectral_gap=s.spectral_gap,
        final_consensus=float(cons[-1]) if len(cons) else None,
        peak_rss_mb=s.peak_rss_mb,
        epsilon=epsilon,
        dp_delta=s.dp_delta if epsilon is not None else None,
    )


# --------------------------------------------------------------------------------------------- formatting


def fmt_bytes(n: float | None) -> str:
    """``1536 -> '1.5 KiB'``; binary units; ``None -> '—'``."""
    if n is None:
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return DASH
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m} min {sec:02d} s"
    h, rest = divmod(round(s), 3600)
    return f"{h} h {rest // 60:02d} min"


def fmt_percent(frac: float) -> str:
    """``0.9 -> '90%'``, ``0.925 -> '92.5%'``."""
    return f"{frac * 100:.4g}%"


def fmt_acc(mean: float | None, std: float | None) -> str:
    if mean is None:
        return DASH
    if std is None:
        return f"{mean * 100:.1f}%"
    return f"{mean * 100:.1f} ± {std * 100:.1f}%"


def _fmt_float(x: float | None, spec: str) -> str:
    return DASH if x is None else format(x, spec)


def _fmt_mib(x: float | None) -> str:
    return DASH if x is None else f"{x:.0f} MiB"


def _common_target(rows: Sequence[Row]) -> float | None:
    targets = {r.target_acc for r in rows}
    return targets.pop() if len(targets) == 1 else None


def _partitions(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r.partition for r in rows))


def _columns(rows: Sequence[Row], target: float | None) -> list[tuple[str, str, list[str]]]:
    """(header, justify, cells) for the human tables (markdown and terminal)."""
    tgt = fmt_percent(target) if target is not None else "target"
    cols: list[tuple[str, str, list[str]]] = [
        ("Run", "left", [r.label for r in rows]),
        ("Topology", "left", [r.topology for r in rows]),
        ("Aggregation", "left", [r.aggregation for r in rows]),
        ("SecAgg", "left", ["yes" if r.secure_agg else "no" for r in rows]),
    ]
    if len(_partitions(rows)) > 1:
        cols.append(("Partition", "left", [r.partition for r in rows]))
    cols += [
        ("Nodes", "right", [str(r.nodes) for r in rows]),
        ("Final acc", "right", [fmt_acc(r.final_acc_mean, r.final_acc_std) for r in rows]),
        (f"Rounds to {tgt}", "right",
         [DASH if r.rounds_to_target is None else f"{r.rounds_to_target}/{r.rounds}" for r in rows]),
        (f"Sent/node to {tgt}", "right", [fmt_bytes(r.bytes_to_target) for r in rows]),
        (f"Wall to {tgt}", "right", [fmt_seconds(r.wall_time_to_target) for r in rows]),
        ("Total wall", "right", [fmt_seconds(r.total_wall_time) for r in rows]),
        ("Spectral gap", "right", [_fmt_float(r.spectral_gap, ".3f") for r in rows]),
        ("Consensus dist", "right", [_fmt_float(r.final_consensus, ".2e") for r in rows]),
        ("Peak RSS", "right", [_fmt_mib(r.peak_rss_mb) for r in rows]),
    ]
    if any(r.epsilon is not None for r in rows):
        cols.insert(7, ("Epsilon (δ)", "right", [fmt_epsilon(r.epsilon, r.dp_delta) for r in rows]))
    return cols


def fmt_epsilon(epsilon: float | None, delta: float | None) -> str:
    """``(2.5, 1e-05) -> '2.50 (1e-05)'``; no DP -> '∞' (nothing protects the updates)."""
    if epsilon is None:
        return "∞"
    return f"{epsilon:.2f}" + (f" ({delta:g})" if delta is not None else "")


def render_table(rows: Sequence[Row]) -> Table:
    """A rich table for the terminal: one row per run, numbers formatted for humans."""
    target = _common_target(rows)
    title = "Run comparison"
    if rows:
        parts = ", ".join(_partitions(rows))
        title += f" — partition: {parts}"
        if target is not None:
            title += f"; target accuracy {fmt_percent(target)}"
    table = Table(title=title, caption=f"{DASH} = target not reached" if any(not r.reached for r in rows)
                  else None)
    cols = _columns(rows, target)
    for header, justify, _ in cols:
        table.add_column(header, justify=justify, no_wrap=header == "Run")  # type: ignore[arg-type]
    for i in range(len(rows)):
        table.add_row(*(cells[i] for _, _, cells in cols))
    return table


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def partition_line(rows: Sequence[Row], target: float) -> str:
    parts = _partitions(rows)
    noun = "Partition" if len(parts) <= 1 else "Partitions"
    return (f"{noun}: {', '.join(parts) if parts else 'none'} · target accuracy: {fmt_percent(target)} "
            f"(mean test accuracy over nodes)")


def to_markdown(rows: Sequence[Row], target: float) -> str:
    """A markdown comparison; the first line states the partition(s) and the target accuracy."""
    target = _check_target(target)
    lines = [partition_line(rows, target), ""]
    cols = _columns(rows, target)
    lines.append("| " + " | ".join(_md_escape(h) for h, _, _ in cols) + " |")
    lines.append("|" + "|".join(":---" if j == "left" else "---:" for _, j, _ in cols) + "|")
    for i in range(len(rows)):
        lines.append("| " + " | ".join(_md_escape(cells[i]) for _, _, cells in cols) + " |")
    lines.append("")
    notes = [
        "Accuracy: mean ± std over nodes at the last evaluated round.",
        f"Rounds to {fmt_percent(target)}: first round whose mean accuracy over nodes reaches the target "
        "(shown as round/total rounds).",
        "Sent/node: mean cumulative bytes sent per node on the wire up to that round; "
        "wall: time since start when the slowest node finished that round.",
        "Consensus dist: mean squared distance of the node models to their average after the last round.",
    ]
    if any(r.epsilon is not None for r in rows):
        notes.append("Epsilon (δ): differential privacy spent, the largest over nodes after the last round "
                     "(per record of a node's data unless the run says otherwise); ∞: run without DP.")
    if any(not r.reached for r in rows):
        notes.append(f"{DASH}: target not reached (or not measured).")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


#: CSV columns, in order: the Row fields (raw numbers; empty cell for None).
CSV_FIELDS = [f.name for f in fields(Row)]
_OPTIONAL_CSV = ("epsilon", "dp_delta")  # later additions: older files lack them


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


def to_csv(rows: Sequence[Row], path: str | os.PathLike[str]) -> Path:
    """Write raw numbers (bytes in bytes, seconds, accuracies as fractions; empty cell for None)."""
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([_csv_cell(getattr(r, name)) for name in CSV_FIELDS])
    return out


def read_csv(path: str | os.PathLike[str]) -> list[Row]:
    """Read back a file written by :func:`to_csv`."""
    types = {f.name: f.type for f in fields(Row)}
    rows = []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for lineno, raw in enumerate(csv.DictReader(handle), start=2):
            kwargs: dict[str, Any] = {}
            for name in CSV_FIELDS:
                if name not in raw and name in _OPTIONAL_CSV:
                    continue  # written before the column existed
                if name not in raw:
                    raise ReportError("column is missing", path=path, line=lineno, field=name)
                cell = raw[name]
                typ = str(types[name])
                try:
                    if cell == "" and "None" in typ:
                        kwargs[name] = None
                    elif typ.startswith("bool"):
                        kwargs[name] = cell == "true"
                    elif typ.startswith("int"):
                        kwargs[name] = int(cell)
                    elif typ.startswith("float"):
                        kwargs[name] = float(cell)
                    else:
                        kwargs[name] = cell
                except ValueError as exc:
                    raise ReportError(f"bad value {cell!r}", path=path, line=lineno, field=name) from exc
            rows.append(Row(**kwargs))
    return rows


# --------------------------------------------------------------------------------------------- plots


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.5, 4.8), dpi=PNG_DPI)
    FigureCanvasAgg(fig)  # explicit Agg canvas: no GUI, no pyplot state
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


def _colour(i: int) -> str:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:gray", "tab:olive", "tab:cyan"]
    return palette[i % len(palette)]


_STYLES = ["-", "--", "-.", ":"]


def _style(i: int) -> str:
    return _STYLES[(i // 10) % len(_STYLES)]


def _finish(fig: Figure, ax: Any, path: str | os.PathLike[str], title: str, xlabel: str, ylabel: str) -> Path:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data to plot", transform=ax.transAxes, ha="center", va="center", color="0.4")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=PNG_DPI)
    return out


def _byte_unit(max_value: float) -> tuple[float, str]:
    for scale, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if max_value >= scale:
            return float(scale), unit
    return 1.0, "B"


def plot_accuracy_vs_round(runs: Sequence[RunData], path: str | os.PathLike[str],
                           target_acc: float | None = None) -> Path:
    """Mean test accuracy over nodes per round, one line per run, shaded mean ± std."""
    fig, ax = _new_figure()
    for i, run in enumerate(runs):
        rounds, mean, std = run.accuracy_per_round()
        if not len(rounds):
            continue
        ax.plot(rounds, mean * 100, _style(i), color=_colour(i), marker="o", markersize=3, linewidth=2,
                label=run.label)
        ax.fill_between(rounds, (mean - std) * 100, (mean + std) * 100, color=_colour(i), alpha=0.18,
                        linewidth=0)
    if target_acc is not None:
        ax.axhline(target_acc * 100, color="0.3", linestyle=":", linewidth=1,
                   label=f"target {fmt_percent(target_acc)}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(fig, ax, path, "Test accuracy per round (mean ± std over nodes)", "round",
                   "test accuracy (%)")


def plot_accuracy_vs_bytes(runs: Sequence[RunData], path: str | os.PathLike[str],
                           target_acc: float | None = None) -> Path:
    """Mean test accuracy against mean cumulative bytes sent per node (evaluated rounds only)."""
    series = []
    for run in runs:
        acc_rounds, mean, _ = run.accuracy_per_round()
        b_rounds, b_vals = run.bytes_sent_per_round()
        lookup = dict(zip(b_rounds.tolist(), b_vals.tolist()))
        xs = np.asarray([lookup[r] for r in acc_rounds.tolist()], dtype=float)
        series.append((run.label, xs, mean))
    top = max((float(xs.max()) for _, xs, _ in series if len(xs)), default=0.0)
    scale, unit = _byte_unit(top)
    fig, ax = _new_figure()
    for i, (label, xs, mean) in enumerate(series):
        if not len(xs):
            continue
        ax.plot(xs / scale, mean * 100, _style(i), color=_colour(i), marker="o", markersize=3, linewidth=2,
                label=label)
    if target_acc is not None:
        ax.axhline(target_acc * 100, color="0.3", linestyle=":", linewidth=1,
                   label=f"target {fmt_percent(target_acc)}")
    return _finish(fig, ax, path, "Test accuracy vs communication", f"bytes sent per node, cumulative ({unit})",
                   "test accuracy (%, mean over nodes)")


def plot_consensus_vs_round(runs: Sequence[RunData], path: str | os.PathLike[str]) -> Path:
    """Consensus distance per round on a log scale; non-positive values are skipped."""
    fig, ax = _new_figure()
    plotted = False
    skipped: list[str] = []
    for i, run in enumerate(runs):
        rounds, values = run.consensus_per_round()
        keep = values > 0
        if not keep.any():
            skipped.append(run.label)
            continue
        ax.plot(rounds[keep], values[keep], _style(i), color=_colour(i), marker="o", markersize=3,
                linewidth=2, label=run.label)
        plotted = True
    if plotted:
        ax.set_yscale("log")
        if skipped:
            ax.text(0.01, 0.01, "not shown (no positive values): " + ", ".join(skipped), transform=ax.transAxes,
                    ha="left", va="bottom", fontsize="x-small", color="0.35")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(fig, ax, path, "Consensus distance per round", "round",
                   "mean squared distance to average model (log)")


def plot_label_histograms(runs: Sequence[RunData], out: Path) -> list[Path]:
    """label_histogram.png of each run that recorded its split (labels.json); with several runs, one file per
    run directory (label_histogram-<directory>.png). Runs without labels.json (older runs) are skipped."""
    from p2pfl import labels

    drawn: list[Path] = []
    with_labels = [run for run in runs if run.path is not None and (run.path / labels.LABELS_FILE).is_file()]
    for run in with_labels:
        assert run.path is not None
        try:
            doc = labels.read(run.path / labels.LABELS_FILE)
        except labels.LabelsError as exc:
            raise ReportError(str(exc)) from None
        name = labels.PLOT_FILE if len(with_labels) == 1 else f"label_histogram-{run.path.name}.png"
        drawn.append(labels.plot(doc, out / name, f"Labels per node: {run.label} ({doc['dataset']}, {doc['partition']})"))
    return drawn


# --------------------------------------------------------------------------------------------- report


@dataclass
class ReportFiles:
    markdown: Path
    csv: Path
    accuracy_vs_round: Path
    accuracy_vs_bytes: Path
    consensus_vs_round: Path
    rows: list[Row] = field(default_factory=list, repr=False)

    def paths(self) -> list[Path]:
        return [self.markdown, self.csv, self.accuracy_vs_round, self.accuracy_vs_bytes,
                self.consensus_vs_round]


def write_report(runs: Sequence[RunData], out_dir: str | os.PathLike[str], target_acc: float = 0.9) -> ReportFiles:
    """Write comparison.md, comparison.csv and the three PNG plots into ``out_dir`` (created if needed)."""
    if not runs:
        raise ReportError("no runs to report")
    target_acc = _check_target(target_acc)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarize(run, target_acc) for run in runs]
    md = out / "comparison.md"
    md.write_text(to_markdown(rows, target_acc), encoding="utf-8")
    plot_label_histograms(runs, out)
    return ReportFiles(
        markdown=md,
        csv=to_csv(rows, out / "comparison.csv"),
        accuracy_vs_round=plot_accuracy_vs_round(runs, out / "accuracy_vs_round.png", target_acc),
        accuracy_vs_bytes=plot_accuracy_vs_bytes(runs, out / "accuracy_vs_bytes.png", target_acc),
        consensus_vs_round=plot_consensus_vs_round(runs, out / "consensus_vs_round.png"),
        rows=rows,
    )


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand arguments to run directories: a directory with summary.json is a run; a directory without one
    counts as all its immediate subdirectories that have one (sorted by name)."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise ReportError("not a directory", path=p)
        if (p / SUMMARY_FILE).is_file():
            found.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / SUMMARY_FILE).is_file())
        if not subs:
            raise ReportError(f"neither a run directory nor a directory of runs (no {SUMMARY_FILE} in it or "
                              "in its subdirectories)", path=p)
        found.extend(subs)
    return list(dict.fromkeys(p.resolve() for p in found))


def _unique_labels(runs: list[RunData]) -> None:
    counts: dict[str, int] = defaultdict(int)
    for run in runs:
        counts[run.label] += 1
    for run in runs:
        if counts[run.label] > 1 and run.path is not None:
            run.label = f"{run.label} ({run.path.name})"


def main(run_dirs: Sequence[str], out_dir: str | None, target: float, console: Console | None = None) -> ReportFiles:
    """Entry point for ``p2pfl report RUN_DIR...`` (and the end of ``p2pfl compare``).

    Loads every run (a directory of runs counts as all of them; the directories that the nodes of one
    experiment wrote on their own machines are merged into one run), writes the report files and prints the
    table.  ``out_dir`` defaults to the single directory given, or ``./report`` for several.  Raises
    :class:`ReportError` on bad input; the CLI turns it into a usage error.
    """
    console = console or Console()
    if not run_dirs:
        raise ReportError("no run directories given")
    target = _check_target(target)
    runs = load_runs(find_runs(run_dirs))
    _unique_labels(runs)
    if out_dir is None:
        out_dir = str(run_dirs[0]) if len(run_dirs) == 1 else os.path.join(os.getcwd(), "report")
    files = write_report(runs, out_dir, target)
    console.print(render_table(files.rows))
    console.print(f"[bold]report[/bold] written to {Path(out_dir)}:")
    for p in files.paths():
        console.print(f"  {p.name}")
    return files
