"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium (no mocked DOM).

A live `simulate --dashboard` (the round counter advances while the run goes on, one SVG element
per node and per edge, a node's colour follows its accuracy), a node's drill-down against
metrics.jsonl, a compare directory with every run, hostile run-directory names shown as text with
no script run, a bad run directory as a message, and the self-contained HTML report opened from
file:// with the network off showing the same figures."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pfl import htmlreport, record
from p2pfl.dashboard import browser
from p2pfl.dashboard.runs import open_runs
from p2pfl.dashboard.server import Dashboard
from tests.helpers.synthetic_run import write_run

P2PFL = str(Path(sys.executable).with_name("p2pfl"))
TESTS = Path(__file__).resolve().parent
HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    d = browser.start()
    yield d
    browser.quit(d)


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def load(driver: Any, url: str) -> None:
    browser.errors(driver)  # drain: the previous page's stream, cut when its server stopped, is not this page's error
    driver.get(url)
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "1", 20, "the page to load")


def by_css(driver: Any, css: str) -> list[Any]:
    return driver.find_elements("css selector", css)


def tab(driver: Any, view: str) -> None:
    by_css(driver, f'#tabs button[data-view="{view}"]')[0].click()


def metrics(run_dir: Path) -> dict[tuple[int, int], record.RoundRecord]:
    return {(r.node, r.round): r for r, _ in record.read_records(run_dir / record.METRICS_FILE)}


def check_drilldown(driver: Any, node: int, recs: dict[tuple[int, int], record.RoundRecord]) -> None:
    """The node view's round table holds exactly the node's records, figure for figure."""
    mine = sorted((r for (n, _), r in recs.items() if n == node), key=lambda r: r.round)
    assert driver.find_element("id", "node-select").get_attribute("value") == str(node)
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#node-table tbody tr')).map("
        "tr => Array.from(tr.cells).map(td => [td.textContent, td.dataset.value]))")
    assert len(rows) == len(mine)
    for row, rec in zip(rows, mine):
        cells = dict(zip(("round", "test_acc", "test_loss", "train_loss", "node_distance", "epsilon", "bytes_sent",
                          "bytes_received", "arrived", "dropped", "aggregation", "round_time"), row))
        assert cells["round"][0] == str(rec.round)
        for name in ("test_acc", "test_loss", "train_loss"):
            value = getattr(rec, name)
            shown, exact = cells[name]
            if value is None:
                assert (shown, exact) == ("-", "null")
            else:
                assert float(exact) == value and abs(float(shown) - value) <= 0.5e-4 + 1e-12, (name, shown, value)
        for name in ("bytes_sent", "bytes_received", "arrived"):
            assert cells[name] == [str(getattr(rec, name))] * 2, name
        assert json.loads(cells["dropped"][1]) == rec.dropped
        assert cells["aggregation"][0] == rec.aggregation
        if rec.epsilon is None:
            assert cells["epsilon"][1] == "null"
        else:
            assert float(cells["epsilon"][1]) == rec.epsilon
    last = mine[-1]
    drops = driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#node-drops tbody tr[data-reason]'))"
        ".map(tr => [tr.dataset.reason, Number(tr.cells[1].textContent)]))")
    assert drops == last.dropped
    links = driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#node-links tbody tr'))"
        ".map(tr => [tr.dataset.neighbour, [1, 2, 3].map(i => Number(tr.cells[i].textContent))]))")
    assert links == last.links
    outcomes = driver.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#node-outcomes tbody tr'))"
        ".map(tr => [tr.cells[0].textContent, Number(tr.cells[1].textContent)]))")
    assert outcomes == dict(Counter(r.aggregation for r in mine))


def test_live_simulation(driver: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "live"
    # Training steps of at least 20 ms (helpers/slow_task.py): every round lasts a known minimum,
    # several times the dashboard's look at the files (0.5 s) for the run, however fast the machine.
    cmd = [P2PFL, "simulate", "-n", "6", "-r", "12", "--task", "helpers.slow_task:slow", "--out", str(run_dir),
           "--dashboard", "--dashboard-port", "0"]
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = None
        for line in proc.stdout:  # type: ignore[union-attr]
            match = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None, "simulate --dashboard printed no URL"
        load(driver, url)
        samples = []  # (round counter, round drawn, node 0's value, node 0's colour) while the run goes on
        while not (run_dir / record.SUMMARY_FILE).exists():
            samples.append(driver.execute_script(
                "const c = document.querySelector('#nodes circle[data-node=\"0\"]');"
                "return [Number(document.getElementById('round-counter').textContent),"
                " Number(document.getElementById('graph').dataset.round), c && c.dataset.value, c && c.getAttribute('fill')]"))
            assert proc.poll() is None, "simulate ended before writing its summary"
            time.sleep(0.1)
        summary = json.loads((run_dir / record.SUMMARY_FILE).read_text())
        rounds = summary["rounds"]
        wait_for(lambda: driver.find_element("id", "round-counter").text == str(rounds), 10, "the last round")
        live = sorted({s[0] for s in samples if 0 < s[0] < rounds})
        assert len(live) >= 2, f"the round counter did not advance while the run went on: saw {live}"
        assert [s[0] for s in samples] == sorted(s[0] for s in samples), "the round counter went back"

        recs = metrics(run_dir)
        graph = json.loads((run_dir / "topology.json").read_text())
        assert len(by_css(driver, "#nodes circle.node")) == 6
        assert len(by_css(driver, "#edges line.edge")) == len(graph["edges"])
        seen = {(s[1], s[2], s[3]) for s in samples if s[1] > 0 and s[2] not in (None, "null")}
        for drawn, value, _ in seen:  # what was drawn is what metrics.jsonl says for that round
            assert float(value) == recs[(0, drawn)].test_acc
        colours = {}
        for _, value, colour in seen:
            colours.setdefault(value, set()).add(colour)
        assert len(colours) >= 2, f"node 0's accuracy did not change while watched: {seen}"
        assert all(len(c) == 1 for c in colours.values())
        assert len({next(iter(c)) for c in colours.values()}) == len(colours), "different accuracy, same colour"

        # Real per-link figures: each node's links add up to its totals.
        for rec in recs.values():
            assert rec.links is not None and sum(v[0] for v in rec.links.values()) == rec.bytes_sent
            assert sum(v[1] for v in rec.links.values()) == rec.bytes_received

        by_css(driver, '#nodes circle[data-node="2"]')[0].click()
        wait_for(lambda: driver.find_element("id", "view-node").is_displayed(), 5, "the node view")
        check_drilldown(driver, 2, recs)
        assert browser.errors(driver) == []
        # The run's tail (its label plot) comes after the summary: SIGTERM stops the dashboard cleanly
        # once the launcher says it serves on (its handler is set before that line).
        for line in proc.stdout:  # type: ignore[union-attr]
            if "still serving" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)  # it serves until Ctrl-C or SIGTERM (SIGINT may be ignored in a background job)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out[-2000:]
    shutil.copytree(run_dir, tmp_path.parent / "live-run", dirs_exist_ok=True)  # for the report test below


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmp") / "compare"
    write_run(root / "ring", nodes=8, rounds=6, topo="ring", seed=1)
    write_run(root / "torus", nodes=9, rounds=6, topo="torus", seed=2, drop_every=4)
    write_run(root / HOSTILE, nodes=5, rounds=6, topo="complete", seed=3, epsilon=True, secure=True)
    # "<script>window.pwned=2</script>" as a path: a directory name cannot hold "/"
    write_run(root / "<script>window.pwned=2<" / "script>", nodes=4, rounds=6, topo="ring", seed=4)
    return root


def check_compare(driver: Any, names: list[str]) -> None:
    tab(driver, "compare")
    rows = driver.execute_script("return Array.from(document.querySelectorAll('#compare-table tbody tr'))"
                                 ".map(tr => tr.cells[0].textContent)")
    assert rows == names
    options = [o.text for o in by_css(driver, "#run-select option")]
    assert options == names
    series = driver.execute_script(
        "return ['cmp-acc', 'cmp-bytes', 'cmp-consensus'].map(id => "
        "echarts.getInstanceByDom(document.getElementById(id)).getOption().series.map(s => s.name))")
    assert series == [names] * 3


def check_no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.pwned") is None
    assert by_css(driver, "img") == []  # the name was never parsed as markup
    assert driver.execute_script("return document.querySelectorAll('script').length") in (2, 3)


def test_compare_directory_and_hostile_names(driver: Any, compare_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    board = Dashboard(open_runs([compare_dir, compare_dir / "<script>window.pwned=2<", missing]), port=0)
    board.start()
    try:
        load(driver, board.url)
        names = sorted([HOSTILE, "ring", "torus"]) + ["script>", "gone"]
        check_compare(driver, names)
        check_no_script_ran(driver)
        text = driver.find_element("id", "messages").text
        assert f"gone: {missing}: no such directory" in text and "Traceback" not in driver.page_source
        # the run named like markup: its figures are there, its name is text everywhere
        select = driver.find_element("id", "run-select")
        select.find_elements("css selector", "option")[names.index(HOSTILE)].click()
        tab(driver, "summary")
        cell = driver.execute_script("return document.querySelector('#summary-table tr[data-key=\"name\"] td:last-child').textContent")
        assert cell == HOSTILE
        paths = driver.execute_script("return document.querySelector('#summary-table tr[data-key=\"directories\"] td:last-child').textContent")
        assert paths == str(compare_dir / HOSTILE)
        tab(driver, "topology")
        assert len(by_css(driver, "#nodes circle.node")) == 5
        check_no_script_ran(driver)
        by_css(driver, '#nodes circle[data-node="3"]')[0].click()  # epsilon and secure-aggregation outcomes
        check_drilldown(driver, 3, metrics(compare_dir / HOSTILE))
        tab(driver, "curves")  # mean, its band, and each of the 5 nodes as a line of its own
        series = driver.execute_script(
            "return echarts.getInstanceByDom(document.getElementById('chart-acc')).getOption().series.map(s => s.name)")
        assert sorted(series) == sorted([f"node {i}" for i in range(5)] + ["lower", "spread", "mean"])
        mean = driver.execute_script(
            "return echarts.getInstanceByDom(document.getElementById('chart-acc')).getOption().series"
            ".find(s => s.name === 'mean').data")
        recs = metrics(compare_dir / HOSTILE)
        for rnd, value in mean:
            accs = [r.test_acc for (_, k), r in recs.items() if k == rnd]
            assert abs(value - sum(accs) / len(accs)) < 1e-12
        # the torus run's links that dropped messages (up to the round shown) are marked, and only those
        select.find_elements("css selector", "option")[names.index("torus")].click()
        tab(driver, "topology")
        recs = metrics(compare_dir / "torus")
        for rnd in (1, max(r for _, r in recs)):
            driver.execute_script("const s = document.getElementById('scrubber'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", rnd)
            marked = driver.execute_script(
                "return Array.from(document.querySelectorAll('#edges line'))"
                ".map(l => [Number(l.dataset.a), Number(l.dataset.b), l.classList.contains('dropped')])")
            assert len(marked) == 18
            expected = {(a, b): recs[(a, rnd)].links[str(b)][2] + recs[(b, rnd)].links[str(a)][2] > 0  # type: ignore[index]
                        for a, b, _ in marked}
            assert {(a, b): m for a, b, m in marked} == expected
            if rnd == 1:
                assert 0 < sum(expected.values()) < len(expected)
        assert browser.errors(driver) == []
    finally:
        board.stop()


def test_html_report_from_file_with_the_network_off(compare_dir: Path, tmp_path: Path) -> None:
    live = tmp_path.parent / "live-run"  # the live test's real run, when it ran first
    dirs = [compare_dir, compare_dir / "<script>window.pwned=2<"] + ([live] if live.is_dir() else [])
    page = htmlreport.write(dirs, tmp_path / "report.html")
    names = sorted([HOSTILE, "ring", "torus"]) + ["script>"] + (["live-run"] if live.is_dir() else [])
    run = live if live.is_dir() else compare_dir / "<script>window.pwned=2<" / "script>"
    d = browser.start(offline=True)
    try:
        load(d, page.as_uri())
        check_compare(d, names)
        check_no_script_ran(d)
        assert d.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched
        d.find_element("id", "run-select").find_elements("css selector", "option")[len(names) - 1].click()
        tab(d, "topology")
        recs = metrics(run)
        last = max(r for _, r in recs)
        edges = d.execute_script("return Array.from(document.querySelectorAll('#edges line'))"
                                 ".map(l => [Number(l.dataset.a), Number(l.dataset.b), Number(l.dataset.bytes)])")
        assert len(edges) == len(json.loads((run / "topology.json").read_text())["edges"])
        for a, b, size in edges:
            links_a, links_b = recs[(a, last)].links, recs[(b, last)].links
            assert links_a is not None and links_b is not None
            assert size == links_a[str(b)][0] + links_b[str(a)][0]  # both directions' bytes over the link
        by_css(d, '#nodes circle[data-node="1"]')[0].click()
        check_drilldown(d, 1, recs)
        assert browser.errors(d) == []
    finally:
        browser.quit(d)
