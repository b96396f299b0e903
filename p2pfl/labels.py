"""The per-node label histogram of a run: computed from the split, kept as labels.json, drawn as label_histogram.png.

Owns: the labels.json document of a run directory (`{"schema": 1, "dataset": ..., "partition": ...,
"classes": [...], "counts": [[per-class counts of node 0], ...]}`), writing it atomically, reading
it back with every field checked, and drawing it (a stacked bar per node, one colour per class).
Must not touch: torch, sockets, training; matplotlib is imported only to draw.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

LABELS_FILE = "labels.json"
PLOT_FILE = "label_histogram.png"
SCHEMA = 1
MAX_BARS = 64  # above this many nodes the plot is a heat map of label shares, not a bar per node


class LabelsError(ValueError):
    """labels.json is missing a field or holds a bad one; the message names the file and the field."""


def document(dataset: str, partition: str, classes: list[str], counts: np.ndarray) -> dict[str, Any]:
    """The labels.json document of a split: `counts[k][c]` training rows of class c on node k."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != len(classes) or (counts < 0).any():
        raise ValueError(f"counts must be nodes x {len(classes)} non-negative integers, got shape {counts.shape}")
    return {"schema": SCHEMA, "dataset": dataset, "partition": partition, "classes": list(classes),
            "counts": counts.tolist()}


def write(run_dir: Path, doc: dict[str, Any]) -> Path:
    """labels.json in `run_dir`, written through a temporary file renamed into place."""
    path = Path(run_dir) / LABELS_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".labels.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read(path: Path) -> dict[str, Any]:
    """A labels.json document, every field checked (LabelsError naming the file and the field)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LabelsError(f"{path}: field 'schema': expected {SCHEMA}")
    for key in ("dataset", "partition"):
        if not isinstance(doc.get(key), str):
            raise LabelsError(f"{path}: field '{key}': expected a string")
    classes, counts = doc.get("classes"), doc.get("counts")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or not classes:
        raise LabelsError(f"{path}: field 'classes': expected a non-empty list of names")
    if (not isinstance(counts, list) or not counts
            or not all(isinstance(row, list) and len(row) == len(classes)
                       and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row) for row in counts)):
        raise LabelsError(f"{path}: field 'counts': expected one list of {len(classes)} counts per node")
    return doc


def plot(doc: dict[str, Any], path: Path, title: str = "") -> Path:
    """label_histogram.png: one stacked bar per node (its training rows by class); above MAX_BARS nodes a heat map
    of every node's label shares."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(doc["counts"], dtype=np.int64)
    nodes, classes = counts.shape
    title = title or f"Labels per node: {doc['dataset']}, {doc['partition']}"
    if nodes > MAX_BARS:  # thousands of bars would take minutes and say nothing: each node's label shares instead
        fig = Figure(figsize=(10.0, 4.0), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(shares.T, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower")
        fig.colorbar(image, ax=ax, label="share of the node's samples")
        ax.set_xlabel("node")
        ax.set_ylabel("label")
        ax.set_title(title)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png", dpi=100)
        return out
    fig = Figure(figsize=(max(6.0, 0.3 * nodes + 2), 4.0), dpi=100)
    FigureCanvasAgg(fig)  # explicit Agg canvas, as report draws: no GUI, no pyplot state, no backend switch
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10" if classes <= 10 else "tab20" if classes <= 20 else "turbo"]
    bottom = np.zeros(nodes)
    for c in range(classes):
        colour = cmap(c if classes <= 20 else c / max(classes - 1, 1))
        ax.bar(np.arange(nodes), counts[:, c], bottom=bottom, color=colour, width=0.85,
               label=doc["classes"][c] if classes <= 20 else None)
        bottom += counts[:, c]
    ax.set_xlabel("node")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    if classes <= 20:
        ax.legend(title="label", fontsize="x-small", ncol=2 if classes > 10 else 1, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png", dpi=100)
    return out
