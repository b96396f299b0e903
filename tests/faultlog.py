"""Record the faults a test injected and what held, for the fault table of docs/faults.md.

    from faultlog import record_fault, recording

    record_fault("replayed frame", 5, "held: dropped and counted as replay", unit="frames")

    with recording("port already in use", unit="start") as fault:
        ...                                   # inject the fault, look at what happened
        fault.outcome = "rejected, exit 2: ..."   # what was seen, in words
        assert ...                            # the checks
    # passed -> "held: <outcome>"; raised -> "NOT HELD: <outcome or the error>", then re-raised

Entries go to docs/faults/results.jsonl, one JSON line per (test, fault); the test is the running
pytest test (PYTEST_CURRENT_TEST) unless given. Recording a fault again replaces its line, and the
first fault a test records in a process replaces every line that test left before, so reruns never
accumulate and a fault a test no longer injects disappears. Every write is atomic (a temporary
file renamed over the old one) under an flock on the results directory, so concurrent test
processes do not lose each other's lines. After each write the "Fault table" section of
docs/faults.md is rendered again (scripts/fault_table.py), so the table stays true.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import operator
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "faults" / "results.jsonl"
DOC = ROOT / "docs" / "faults.md"


def _load_fault_table():
    name = "p2pfl_fault_table"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "fault_table.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fault_table = _load_fault_table()

# tests (per results file) that already recorded in this process: their older lines are gone
_started: dict[Path, set[str]] = {}


def current_test() -> str:
    """The node id of the running pytest test, e.g. tests/test_soak.py::test_soak_fds_stay_flat."""
    current = os.environ.get("PYTEST_CURRENT_TEST")
    if not current:
        raise RuntimeError("record_fault outside a pytest test: pass test=...")
    return re.sub(r" \((setup|call|teardown)\)$", "", current)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_fault(fault: str, count: int, outcome: str, *, unit: str = "", test: str | None = None,
                 results: Path = RESULTS, doc: Path | None = DOC) -> dict:
    """Store one fault's outcome (replacing the same fault's earlier line) and re-render the table.

    `fault`: what was done, in words; `count`: how many times (`unit` says of what);
    `outcome`: what held, starting with "held" if the test's checks passed. Returns the entry.
    """
    test = test or current_test()
    results = Path(results)
    with _locked(results.parent):
        rows = fault_table.read_jsonl(results) if results.exists() else []
        started = _started.setdefault(results.resolve(), set())
        if test not in started:  # first record of this test in this run: its old lines go
            rows = [r for r in rows if r.test != test]
            started.add(test)
        mine = [r for r in rows if r.test == test]
        same = [r for r in mine if r.fault == fault]
        seq = same[0].seq if same else max((r.seq for r in mine), default=-1) + 1
        entry = {"test": test, "fault": fault, "count": operator.index(count), "unit": unit, "outcome": outcome, "seq": seq}
        row = fault_table._row(entry, "record_fault", results.name)  # the renderer's checks, now
        rows = sorted([r for r in rows if (r.test, r.fault) != (test, fault)] + [row], key=fault_table.Row.key)
        lines = [json.dumps(_entry(r), sort_keys=True) for r in rows]
        tmp = results.with_name(f".{results.name}.tmp{os.getpid()}")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, results)
        if doc is not None:
            fault_table.write_doc(Path(doc), results.parent)
    return entry


def _entry(row) -> dict:
    return {"test": row.test, "fault": row.fault, "count": row.count, "unit": row.unit,
            "outcome": row.outcome, "seq": row.seq}


@dataclass
class Recording:
    """What a `recording` block saw: set `outcome` (and `count`) before the checks."""

    fault: str
    count: int = 1
    unit: str = ""
    outcome: str = ""


@contextmanager
def recording(fault: str, count: int = 1, *, unit: str = "", test: str | None = None,
              results: Path = RESULTS, doc: Path | None = DOC) -> Iterator[Recording]:
    """Record `fault` when the block ends: "held: ..." if it passed, "NOT HELD: ..." if it raised.

    A skipped test records nothing. The failure is recorded before it propagates, so a fault that
    stopped holding is never left in the table as held.
    """
    rec = Recording(fault, count, unit)
    test = test or current_test()
    try:
        yield rec
    except BaseException as exc:
        if type(exc).__name__ == "Skipped" or isinstance(exc, KeyboardInterrupt):
            raise
        seen = rec.outcome or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        record_fault(fault, rec.count, f"NOT HELD: {seen}", unit=rec.unit, test=test, results=results, doc=doc)
        raise
    record_fault(fault, rec.count, f"held: {rec.outcome or 'checks passed'}", unit=rec.unit, test=test,
                 results=results, doc=doc)
