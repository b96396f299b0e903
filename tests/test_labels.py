"""labels.json (p2pfl/labels.py): written whole, read back with every field checked, drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from p2pfl import labels


def test_round_trip_and_plot(tmp_path: Path) -> None:
    counts = np.arange(24).reshape(4, 6)
    doc = labels.document("mnist", "dirichlet(alpha=0.5)", [f"c{i}" for i in range(6)], counts)
    path = labels.write(tmp_path, doc)
    assert path.name == "labels.json" and labels.read(path) == doc
    png = labels.plot(doc, tmp_path / labels.PLOT_FILE)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("change,field", [
    (lambda d: d.update(schema=2), "schema"),
    (lambda d: d.update(dataset=3), "dataset"),
    (lambda d: d.update(classes=[]), "classes"),
    (lambda d: d["counts"][1].pop(), "counts"),
    (lambda d: d["counts"][0].__setitem__(0, -1), "counts"),
    (lambda d: d["counts"][0].__setitem__(0, True), "counts"),
])
def test_bad_documents_name_the_field(tmp_path: Path, change, field: str) -> None:  # noqa: ANN001
    doc = labels.document("npz", "iid", ["a", "b"], np.ones((3, 2), dtype=np.int64))
    change(doc)
    (tmp_path / "labels.json").write_text(json.dumps(doc))
    with pytest.raises(labels.LabelsError, match=f"labels.json: field '{field}'"):
        labels.read(tmp_path / "labels.json")


def test_document_refuses_a_mismatched_histogram() -> None:
    with pytest.raises(ValueError, match="counts must be nodes x 3"):
        labels.document("x", "iid", ["a", "b", "c"], np.ones((2, 2)))


def test_many_nodes_draw_a_heat_map_quickly(tmp_path: Path) -> None:
    import time

    doc = labels.document("mnist1d", "iid", [str(c) for c in range(10)], np.ones((5000, 10), dtype=np.int64))
    began = time.monotonic()
    png = labels.plot(doc, tmp_path / "h.png")
    assert png.stat().st_size > 1000 and time.monotonic() - began < 20
