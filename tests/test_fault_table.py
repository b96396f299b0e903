"""The fault table of docs/faults.md is true to the stored results, and the recorder behaves.

- the "Fault table" section is exactly what scripts/fault_table.py renders from docs/faults/;
- every test named in the stored results still exists (no rows left by renamed or deleted tests);
- tests/faultlog.py: one line per (test, fault), reruns replace, concurrent writers lose nothing;
  rendering is deterministic and leaves the rest of the doc alone.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import faultlog
from faultlog import fault_table, record_fault, recording

ROOT = Path(__file__).resolve().parents[1]


# -- the repository's own table ---------------------------------------------------------------


def test_docs_fault_table_is_up_to_date() -> None:
    problem = fault_table.check_doc()
    assert problem is None, f"docs/faults.md is out of date; run .venv/bin/python scripts/fault_table.py\n{problem}"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_table.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_recorded_test_still_exists() -> None:
    tests = sorted({row.test for row in fault_table.load()})
    files = sorted({t.split("::")[0] for t in tests})
    missing_files = [f for f in files if not (ROOT / f).is_file()]
    assert not missing_files, f"results name test files that do not exist: {missing_files}"
    if not files:
        return
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    collected = {line.strip() for line in proc.stdout.splitlines() if "::" in line}
    stale = [t for t in tests if t not in collected]
    assert not stale, (f"docs/faults/ has rows of tests that no longer exist: {stale}; delete their lines from "
                       f"docs/faults/results.jsonl and run scripts/fault_table.py\n{proc.stdout[-2000:]}")


# -- the recorder ------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path]:
    faults = tmp_path / "faults"
    faults.mkdir()
    doc = tmp_path / "faults.md"
    doc.write_text("# Faults\n\nIntro.\n\n## Multi-host network test\n\n<!-- netns-results:begin -->\n"
                   "| theirs |\n<!-- netns-results:end -->\n\nTheir closing words.\n")
    return faults / "results.jsonl", doc


def lines(results: Path) -> list[dict]:
    return [json.loads(line) for line in results.read_text().splitlines()]


def test_record_replaces_the_same_fault_and_keeps_the_order(store: tuple[Path, Path]) -> None:
    results, doc = store
    for fault, count in (("b fault", 1), ("a fault", 2), ("b fault", 3)):
        record_fault(fault, count, "held: fine", unit="times", test="tests/test_x.py::test_one", results=results, doc=doc)
    record_fault("z fault", 4, "held: ok", test="tests/test_a.py::test_two", results=results, doc=doc)
    got = [(e["test"], e["fault"], e["count"], e["seq"]) for e in lines(results)]
    assert got == [("tests/test_a.py::test_two", "z fault", 4, 0),
                   ("tests/test_x.py::test_one", "b fault", 3, 0),  # replaced in place, not appended
                   ("tests/test_x.py::test_one", "a fault", 2, 1)]
    table = fault_table.current_section(doc.read_text())
    assert table is not None
    assert table.index("| z fault |") < table.index("| b fault | 3 times |") < table.index("| a fault | 2 times |")


def test_a_rerun_replaces_every_line_the_test_left(store: tuple[Path, Path]) -> None:
    results, doc = store
    old = [{"test": "tests/test_x.py::test_one", "fault": f, "count": 1, "unit": "", "outcome": "held", "seq": i}
           for i, f in enumerate(("gone", "kept"))]
    old.append({"test": "tests/test_y.py::test_other", "fault": "other", "count": 1, "unit": "", "outcome": "held", "seq": 0})
    results.write_text("".join(json.dumps(e) + "\n" for e in old))
    record_fault("kept", 9, "held: again", test="tests/test_x.py::test_one", results=results, doc=doc)
    got = {(e["test"], e["fault"]): e["count"] for e in lines(results)}
    assert got == {("tests/test_x.py::test_one", "kept"): 9, ("tests/test_y.py::test_other", "other"): 1}


def test_the_test_id_comes_from_pytest(store: tuple[Path, Path]) -> None:
    results, doc = store
    entry = record_fault("f", 1, "held", results=results, doc=doc)
    assert entry["test"] == "tests/test_fault_table.py::test_the_test_id_comes_from_pytest"


def test_recording_says_what_failed_and_reraises(store: tuple[Path, Path]) -> None:
    results, doc = store
    with recording("ok fault", 3, unit="tries", test="t.py::a", results=results, doc=doc) as rec:
        rec.outcome = "rejected cleanly"
    with pytest.raises(AssertionError):
        with recording("bad fault", test="t.py::a", results=results, doc=doc) as rec:
            rec.outcome = "exit 1 with a traceback"
            assert False
    with pytest.raises(ZeroDivisionError):
        with recording("raised fault", test="t.py::a", results=results, doc=doc):
            1 / 0
    with pytest.raises(pytest.skip.Exception):
        with recording("skipped fault", test="t.py::a", results=results, doc=doc):
            pytest.skip("not here")
    got = {e["fault"]: (e["count"], e["outcome"]) for e in lines(results)}
    assert got == {"ok fault": (3, "held: rejected cleanly"),
                   "bad fault": (1, "NOT HELD: exit 1 with a traceback"),
                   "raised fault": (1, "NOT HELD: division by zero")}


def test_concurrent_writers_lose_nothing(store: tuple[Path, Path]) -> None:
    results, doc = store
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from faultlog import record_fault\n"
              f"from pathlib import Path\n"
              f"for i in range(15):\n"
              f"    record_fault(f'fault {{i}}', i, 'held', test='t.py::' + sys.argv[1], "
              f"results=Path({str(results)!r}), doc=Path({str(doc)!r}))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"test_{k}"]) for k in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    got = {(e["test"], e["fault"]) for e in lines(results)}
    assert got == {(f"t.py::test_{k}", f"fault {i}") for k in range(4) for i in range(15)}
    assert fault_table.check_doc(doc, results.parent) is None


def test_rendering_is_deterministic_and_leaves_other_sections_alone(store: tuple[Path, Path]) -> None:
    results, doc = store
    before = doc.read_text()
    entries = [{"test": f"tests/test_{t}.py::test_{t}", "fault": f"f{i} | with a pipe\nand a newline", "count": 1000 * i,
                "unit": "frames", "outcome": "held: yes" if i % 2 else "NOT HELD: no", "seq": i}
               for t in "abc" for i in range(4)]
    (results.parent / "other.json").write_text(json.dumps(
        {"test": "tests/test_net.py::test_net", "faults": [{"fault": "loss", "count": 5, "unit": "packets", "outcome": "held"}]}))
    rendered = set()
    for seed in range(5):
        random.Random(seed).shuffle(entries)
        results.write_text("".join(json.dumps(e) + "\n" for e in entries))
        rendered.add(fault_table.render_section(fault_table.load(results.parent)))
    assert len(rendered) == 1
    fault_table.write_doc(doc, results.parent)
    text = doc.read_text()
    assert text.startswith(before.rstrip("\n"))  # their part untouched; ours appended after it
    table = fault_table.current_section(text)
    assert r"| f1 \| with a pipe and a newline | 1,000 frames | held: yes | `tests/test_a.py::test_a` |" in table
    assert "| loss | 5 packets | held | `tests/test_net.py::test_net` |" in table
    assert "13 faults from 4 tests; 7 held." in table
    assert fault_table.write_doc(doc, results.parent) is False  # idempotent
    # a hand edit of the table is caught, and so is a stale one
    doc.write_text(text.replace("1,000 frames", "2,000 frames"))
    assert "2,000 frames" in fault_table.check_doc(doc, results.parent)
    # a netns-style rewrite of their own block keeps ours
    netns_rewritten = doc.read_text().replace("| theirs |", "| theirs, updated |")
    doc.write_text(netns_rewritten)
    fault_table.write_doc(doc, results.parent)
    assert "| theirs, updated |" in doc.read_text()
    assert fault_table.check_doc(doc, results.parent) is None


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "invalid JSON"),
        ('{"test": "t", "fault": "f", "count": -1, "outcome": "held"}', "count"),
        ('{"test": "t", "fault": "", "count": 1, "outcome": "held"}', "fault"),
        ('{"test": "t", "fault": "f", "count": true, "outcome": "held"}', "count"),
        ('["a list"]', "JSON object"),
    ],
)
def test_a_malformed_results_line_is_an_error_naming_the_line(store: tuple[Path, Path], line: str, problem: str) -> None:
    results, _ = store
    results.write_text('{"test": "t", "fault": "ok", "count": 1, "outcome": "held"}\n' + line + "\n")
    with pytest.raises(fault_table.FaultTableError, match=rf"results.jsonl:2: .*{problem}"):
        fault_table.load(results.parent)


def test_the_same_fault_in_two_sources_is_an_error(store: tuple[Path, Path]) -> None:
    results, _ = store
    results.write_text('{"test": "t.py::a", "fault": "f", "count": 1, "outcome": "held"}\n')
    (results.parent / "b.json").write_text('{"test": "t.py::a", "faults": [{"fault": "f", "count": 1, "outcome": "held"}]}')
    with pytest.raises(fault_table.FaultTableError, match="both"):
        fault_table.load(results.parent)


def test_the_recorder_writes_where_the_doc_says(store: tuple[Path, Path]) -> None:
    assert faultlog.RESULTS == ROOT / "docs" / "faults" / "results.jsonl"
    assert faultlog.DOC == fault_table.DOC == ROOT / "docs" / "faults.md"
