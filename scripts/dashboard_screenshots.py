#!/usr/bin/env python3
"""Screenshots of every dashboard view into docs/img/, taken in headless Chromium (Debian's).

    .venv/bin/python scripts/dashboard_screenshots.py [COMPARE_DIR]

Without COMPARE_DIR it first runs `p2pfl compare --topologies ring,torus,regular:d=4 -n 16 -r 15`
into a temporary directory (a real run: real per-link bytes, real consensus distance). The views:
topology (colour = accuracy at a round picked with the scrubber, and = distance to the average
model), curves, node drill-down, run comparison, the self-contained report opened from file://, and
a synthetic 1,000-node run (tests/helpers/synthetic_run.py: a few links dropping messages).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pfl import htmlreport  # noqa: E402
from p2pfl.dashboard import browser  # noqa: E402
from p2pfl.dashboard.runs import open_runs  # noqa: E402
from p2pfl.dashboard.server import Dashboard  # noqa: E402
from tests.helpers.synthetic_run import write_run  # noqa: E402

OUT = ROOT / "docs" / "img"


def wait_ready(d) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 30
    while d.execute_script("return document.body.dataset.ready") != "1":
        if time.monotonic() > deadline:
            raise SystemExit("the page did not load in 30 s")
        time.sleep(0.1)
    time.sleep(0.5)


def click(d, css: str) -> None:  # noqa: ANN001
    d.find_element("css selector", css).click()
    time.sleep(0.6)


def select(d, element_id: str, value: str) -> None:  # noqa: ANN001
    d.execute_script("const s = document.getElementById(arguments[0]); s.value = arguments[1];"
                     "s.dispatchEvent(new Event('change'));", element_id, value)
    time.sleep(0.6)


def shoot(d, name: str) -> None:  # noqa: ANN001
    path = OUT / f"dashboard_{name}.png"
    d.save_screenshot(str(path))
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    if len(sys.argv) > 1:
        compare = Path(sys.argv[1])
    else:
        compare = Path(tempfile.mkdtemp(prefix="p2pfl-shots-")) / "compare"
        subprocess.run([str(ROOT / ".venv/bin/p2pfl"), "compare", "--topologies", "ring,torus,regular:d=4", "-n", "16",
                        "-r", "15", "--out", str(compare)], check=True)
    OUT.mkdir(parents=True, exist_ok=True)
    runs = open_runs([compare])
    torus = next(i for i, r in enumerate(runs) if "torus" in r.name)
    board = Dashboard(runs, port=0)
    board.start()
    d = browser.start(width=1400, height=860)
    try:
        d.get(board.url)
        wait_ready(d)
        select(d, "run-select", str(torus))
        d.execute_script("const s = document.getElementById('scrubber'); s.value = 3; s.dispatchEvent(new Event('input'));")
        time.sleep(0.4)
        shoot(d, "topology")
        select(d, "metric", "node_distance")
        shoot(d, "topology_distance")
        select(d, "metric", "test_acc")
        click(d, '#tabs button[data-view="curves"]')
        shoot(d, "curves")
        click(d, '#tabs button[data-view="topology"]')
        click(d, '#nodes circle[data-node="5"]')
        shoot(d, "node")
        click(d, '#tabs button[data-view="compare"]')
        shoot(d, "compare")
        big = write_run(Path(tempfile.mkdtemp(prefix="p2pfl-shots-")) / "synthetic-1000", nodes=1000, rounds=10,
                        topo="regular:d=4", drop_every=9)
        big_board = Dashboard(open_runs([big]), port=0)
        big_board.start()
        try:
            d.get(big_board.url)
            wait_ready(d)
            d.execute_script("const s = document.getElementById('scrubber'); s.value = 2; s.dispatchEvent(new Event('input'));")
            time.sleep(0.5)
            shoot(d, "1000_nodes")
        finally:
            big_board.stop()
        report = htmlreport.write([compare], Path(tempfile.mkdtemp(prefix="p2pfl-report-")) / "report.html")
        offline = browser.start(width=1400, height=860, offline=True)
        try:
            offline.get(report.as_uri())
            wait_ready(offline)
            select(offline, "run-select", "1")
            select(offline, "metric", "node_distance")
            shoot(offline, "report_html")
        finally:
            browser.quit(offline)
    finally:
        browser.quit(d)
        board.stop()


if __name__ == "__main__":
    main()
