"""The "Fault table" of docs/faults.md, rendered from the results the tests themselves stored.

Tests record every fault they inject, how many times, and what held (tests/faultlog.py) in
docs/faults/; this script turns all of it into one markdown table (fault | times | outcome | test)
between the markers of the "Fault table" section of docs/faults.md, and leaves every other part
of that file as it is (the "Multi-host network test" section has its own table and owner).

Sources, every file of docs/faults/ named *.json or *.jsonl, read in name order:

- *.jsonl: one fault per line, `{"test", "fault", "count", "unit", "outcome", "seq"}`
  (tests/faultlog.py writes docs/faults/results.jsonl);
- *.json: one object with `"test"` and a list `"faults"` of `{"fault", "count", "unit", "outcome"}`
  (tests/test_netns.py writes docs/faults/netns.json).

Rendering is deterministic: rows are ordered by test id, then by the order the test recorded
them; the same stored results always give the same bytes. A malformed source is an error that
names the file and line, never a silently shorter table.

    .venv/bin/python scripts/fault_table.py            # rewrite the section
    .venv/bin/python scripts/fault_table.py --check    # exit 1 if the section is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "faults"
DOC = ROOT / "docs" / "faults.md"

HEADING = "## Fault table"
BEGIN, END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"
INTRO = """\
Every fault the tests inject, how many times, and what held, rendered from what the tests stored in
`docs/faults/` (`tests/faultlog.py` writes `results.jsonl`; `tests/test_netns.py` writes `netns.json`)
by `scripts/fault_table.py`. A test that records a fault rewrites this table; `tests/test_fault_table.py`
fails when it is out of date with the stored results. "held" means the test's checks passed;
"NOT HELD" rows are open bugs (the test is marked xfail until the fix lands)."""


class FaultTableError(ValueError):
    """A results file is malformed; the message names the file (and line)."""


@dataclass(frozen=True)
class Row:
    test: str
    fault: str
    count: int
    unit: str
    outcome: str
    seq: int
    source: str  # file name inside the results directory

    def key(self) -> tuple:
        return (self.test, self.seq, self.fault)


def _row(data: object, where: str, source: str, test: str | None = None, seq: int | None = None) -> Row:
    if not isinstance(data, dict):
        raise FaultTableError(f"{where}: expected a JSON object, got {type(data).__name__}")
    test = data.get("test", test)
    seq = data.get("seq", seq if seq is not None else 0)
    unit = data.get("unit", "")
    for name, value in (("test", test), ("fault", data.get("fault")), ("outcome", data.get("outcome"))):
        if not isinstance(value, str) or not value.strip():
            raise FaultTableError(f"{where}: field '{name}' must be a non-empty string, got {value!r}")
    count = data.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise FaultTableError(f"{where}: field 'count' must be a non-negative integer, got {count!r}")
    if not isinstance(unit, str):
        raise FaultTableError(f"{where}: field 'unit' must be a string, got {unit!r}")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise FaultTableError(f"{where}: field 'seq' must be an integer, got {seq!r}")
    return Row(test, data["fault"], count, unit, data["outcome"], seq, source)


def read_jsonl(path: Path) -> list[Row]:
    """The rows of one JSON Lines results file (blank lines allowed)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FaultTableError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        rows.append(_row(data, f"{path}:{n}", path.name))
    return rows


def read_json(path: Path) -> list[Row]:
    """The rows of one JSON results object (`test` plus a list of `faults`)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FaultTableError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("faults"), list):
        raise FaultTableError(f"{path}: expected an object with a list 'faults'")
    return [_row(f, f"{path}: faults[{i}]", path.name, data.get("test"), i) for i, f in enumerate(data["faults"])]


def load(results_dir: Path = RESULTS_DIR) -> list[Row]:
    """Every row of every results file in `results_dir`, in table order."""
    rows: list[Row] = []
    if results_dir.is_dir():
        for path in sorted(results_dir.iterdir(), key=lambda p: p.name):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix == ".jsonl":
                rows += read_jsonl(path)
            elif path.suffix == ".json":
                rows += read_json(path)
    seen: dict[tuple[str, str], str] = {}
    for row in rows:
        other = seen.setdefault((row.test, row.fault), row.source)
        if other != row.source:
            raise FaultTableError(f"fault {row.fault!r} of {row.test} is recorded in both {other} and {row.source}")
    return sorted(rows, key=Row.key)


def _cell(value: object) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def render_table(rows: list[Row]) -> str:
    """The markdown table of `rows` (already in table order) plus a one-line summary."""
    lines = ["| fault | times | outcome | test |", "|---|---:|---|---|"]
    for row in rows:
        times = f"{row.count:,} {row.unit}".strip()
        lines.append(f"| {_cell(row.fault)} | {_cell(times)} | {_cell(row.outcome)} | `{_cell(row.test)}` |")
    tests = len({row.test for row in rows})
    held = sum(row.outcome.startswith("held") for row in rows)
    sources = ", ".join(f"`docs/faults/{s}`" for s in sorted({row.source for row in rows})) or "none"
    lines += ["", f"{len(rows)} faults from {tests} tests; {held} held. Sources: {sources}."]
    return "\n".join(lines)


def render_section(rows: list[Row]) -> str:
    """What lies between the markers."""
    return "\n" + render_table(rows) + "\n"


def update_text(text: str, rows: list[Row]) -> str:
    """`text` (the whole doc) with the fault-table section rendered from `rows`.

    Only the part between the markers changes; a doc without them gets the section appended.
    """
    body = render_section(rows)
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        return text[: start + len(BEGIN)] + body + text[end:]
    if start >= 0 or end >= 0:
        raise FaultTableError(f"the markers {BEGIN} / {END} are incomplete or out of order")
    prefix = text.rstrip("\n") + "\n\n" if text.strip() else "# Faults\n\n"
    return f"{prefix}{HEADING}\n\n{INTRO}\n\n{BEGIN}{body}{END}\n"


def current_section(text: str) -> str | None:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(BEGIN): end]


def write_doc(doc: Path = DOC, results_dir: Path = RESULTS_DIR) -> bool:
    """Rewrite the section of `doc` (atomically); True if the file changed."""
    rows = load(results_dir)
    text = doc.read_text() if doc.exists() else ""
    new = update_text(text, rows)
    if new == text:
        return False
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp{os.getpid()}")
    tmp.write_text(new)
    os.replace(tmp, doc)
    return True


def check_doc(doc: Path = DOC, results_dir: Path = RESULTS_DIR) -> str | None:
    """None if the section of `doc` matches the stored results, else a diff saying what differs."""
    expected = render_section(load(results_dir))
    text = doc.read_text() if doc.exists() else ""
    actual = current_section(text)
    if actual == expected:
        return None
    if actual is None:
        return f"{doc} has no fault table section ({BEGIN} ... {END})"
    diff = difflib.unified_diff(actual.splitlines(), expected.splitlines(), "in the doc", "from the results", lineterm="")
    return "\n".join(diff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the table is out of date")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory of *.json / *.jsonl results")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problem = check_doc(args.doc, args.results)
            if problem:
                print(f"{args.doc}: fault table out of date; run python scripts/fault_table.py\n{problem}", file=sys.stderr)
                return 1
            print(f"{args.doc}: fault table up to date")
            return 0
        changed = write_doc(args.doc, args.results)
    except FaultTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.doc}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
