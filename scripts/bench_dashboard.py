#!/usr/bin/env python3
"""What the dashboard costs: the page with 1,000 nodes, and the simulation with the dashboard on.

    .venv/bin/python scripts/bench_dashboard.py [--nodes 1000] [--rounds 10] [--sim-nodes 16] [--sim-rounds 30] [--pairs 2]

1. Page with `--nodes` nodes (a synthetic run directory written through `p2pfl.record`, topology
   regular:d=4, `--rounds` rounds): the server's first read of it (records validated, networkx
   layout), the page's load time in headless Chromium (navigation start to first drawing done;
   median of 3), and the cost of one live update: one more round (`--nodes` records) appended to
   metrics.jsonl, measured in the page (parse + redraw of every node and edge) and end to end
   (from the write to the round counter showing it; includes the server's look every 0.5 s).
2. Simulation round time without the dashboard, with `--dashboard` and nobody watching, and with a
   headless Chromium watching the page the whole run (on this machine too), `--pairs` sets
   interleaved in one run; ratios against the runs without. Round time: the median over rounds 2..
   of the time between the last node finishing one round and finishing the next.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2pfl import record  # noqa: E402
from p2pfl.dashboard import browser  # noqa: E402
from p2pfl.dashboard.runs import open_runs  # noqa: E402
from p2pfl.dashboard.server import Dashboard  # noqa: E402
from tests.helpers.synthetic_run import write_run  # noqa: E402

P2PFL = str(ROOT / ".venv" / "bin" / "p2pfl")


def wait(pred, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def page_bench(nodes: int, rounds: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="p2pfl-bench-dash-"))
    full = write_run(tmp / "full", nodes=nodes, rounds=rounds, topo="regular:d=4", drop_every=7)
    lines = (full / record.METRICS_FILE).read_text().splitlines(keepends=True)
    run_dir = tmp / "live"
    run_dir.mkdir()
    for name in ("config.json", "topology.json"):
        (run_dir / name).write_bytes((full / name).read_bytes())
    first = rounds // 2
    (run_dir / record.METRICS_FILE).write_text("".join(lines[:first * nodes]))
    t0 = time.perf_counter()
    runs = open_runs([run_dir])
    read_s = time.perf_counter() - t0
    board = Dashboard(runs, port=0)
    board.start()
    d = browser.start()
    out: dict[str, float] = {"server_first_read_s": read_s}
    try:
        loads = []
        for _ in range(3):
            d.get("about:blank")
            d.get(board.url)
            wait(lambda: d.execute_script("return document.body.dataset.ready") == "1", 60, "the page")
            loads.append(d.execute_script("return window.p2pflDashboard.loadMs") / 1000)
        out["page_load_s"] = statistics.median(loads)
        in_page, end_to_end = [], []
        for r in range(first + 1, rounds + 1):
            chunk = "".join(lines[(r - 1) * nodes:r * nodes])
            t0 = time.perf_counter()
            with (run_dir / record.METRICS_FILE).open("a") as f:
                f.write(chunk)
            wait(lambda: d.find_element("id", "round-counter").text == str(r), 30, f"round {r} on the page")
            end_to_end.append(time.perf_counter() - t0)
            in_page.append(d.execute_script("return window.p2pflDashboard.lastUpdateMs") / 1000)
        out["update_in_page_s"] = statistics.median(in_page)
        out["update_end_to_end_s"] = statistics.median(end_to_end)
        t0 = time.perf_counter()
        d.execute_script("const s = document.getElementById('scrubber'); s.value = 1; s.dispatchEvent(new Event('input'));")
        out["scrub_render_s"] = d.execute_script("return window.p2pflDashboard.lastRenderMs") / 1000
        out["circles"] = d.execute_script("return document.querySelectorAll('#nodes circle').length")
        out["lines"] = d.execute_script("return document.querySelectorAll('#edges line').length")
    finally:
        browser.quit(d)
        board.stop()
    return out


def round_time(run_dir: Path) -> float:
    """Median over rounds 2.. of the time from the last node finishing one round to the last finishing the next
    (a median: a burst of other work on this shared machine moves a mean more than the dashboard does)."""
    done: dict[int, float] = {}
    for rec, _ in record.read_records(run_dir / record.METRICS_FILE):
        done[rec.round] = max(done.get(rec.round, 0.0), rec.wall_time)
    rs = sorted(done)
    return statistics.median(done[b] - done[a] for a, b in zip(rs, rs[1:]))


MODES = ("off", "server", "browser")  # no dashboard; --dashboard, nobody watching; --dashboard and a browser watching


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its reaped children's): /proc/PID/stat utime+stime, cutime+cstime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (the browser: chromedriver, chromium's processes)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += sum(cpu_seconds(p))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def dashboard_cpu(launcher: int) -> float:
    """CPU seconds of `simulate --dashboard`'s dashboard process (a child of the launcher), 0 without one."""
    total = 0.0
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                # the dashboard's process runs "python -m p2pfl.cli dashboard"; the workers, forked
                # from the launcher, carry the launcher's command line, "--dashboard" included
                if b"p2pfl.cli\x00dashboard\x00" in Path(f"/proc/{child}/cmdline").read_bytes():
                    total += sum(cpu_seconds(int(child)))
            except OSError:
                continue
    return total


def simulate(nodes: int, rounds: int, mode: str) -> dict[str, float]:
    """One run: its median round time, and the CPU seconds that the launcher (and the browser) spent
    between round 1 being written and the summary: the steady state, without start-up and imports.
    "launcher" counts the launcher and, with --dashboard, the dashboard's process."""
    run_dir = Path(tempfile.mkdtemp(prefix="p2pfl-bench-sim-")) / "run"
    cmd = [P2PFL, "simulate", "-n", str(nodes), "-t", "regular:d=4", "-r", str(rounds), "--out", str(run_dir)]
    if mode != "off":
        cmd += ["--dashboard", "--dashboard-port", "0"]
    log = run_dir.parent / "simulate.log"  # a file, not a pipe: an unread pipe would block the launcher's output
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    d = None
    try:
        if mode == "browser":
            url = wait(lambda: re.search(r"dashboard: (http://\S+/)", log.read_text()) or proc.poll() is not None,
                       120, "the dashboard's URL")
            if proc.poll() is not None:
                raise SystemExit(f"simulate failed: {log.read_text()[-2000:]}")
            d = browser.start()
            d.get(url.group(1))  # a viewer watches the whole run
        metrics = run_dir / record.METRICS_FILE
        wait(lambda: (metrics.exists() and metrics.read_bytes().count(b"\n") >= nodes) or proc.poll() is not None,
             900, "round 1")
        own_r1, wall_r1 = cpu_seconds(proc.pid)[0] + dashboard_cpu(proc.pid), time.monotonic()
        browser_r1 = tree_cpu(d.service.process.pid) if d is not None else 0.0
        wait(lambda: (run_dir / record.SUMMARY_FILE).exists() or proc.poll() is not None, 900, "the run")
        if not (run_dir / record.SUMMARY_FILE).exists():
            raise SystemExit(f"simulate failed: {log.read_text()[-2000:]}")
        own, children = cpu_seconds(proc.pid)  # the workers are joined before summary.json is written
        own += dashboard_cpu(proc.pid)  # the dashboard's own process: its CPU is the launcher's cost here
        wall = time.monotonic() - wall_r1
        browser_cpu = tree_cpu(d.service.process.pid) - browser_r1 if d is not None else 0.0
        if d is not None:
            wait(lambda: d.find_element("id", "round-counter").text == str(rounds), 10, "the page's last round")
    finally:
        if d is not None:
            browser.quit(d)
        proc.send_signal(signal.SIGTERM)  # simulate --dashboard serves until Ctrl-C or SIGTERM
        proc.wait(timeout=30)
    return {"round_s": round_time(run_dir), "launcher_rounds_cpu_s": own - own_r1, "browser_rounds_cpu_s": browser_cpu,
            "run_cpu_s": own + children, "rounds": rounds - 1, "wall_s": wall,
            "launcher_core": (own - own_r1) / wall, "browser_core": browser_cpu / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--sim-nodes", type=int, default=16)
    ap.add_argument("--sim-rounds", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=3, help="runs of each mode")
    ap.add_argument("--skip-page", action="store_true")
    ap.add_argument("--skip-sim", action="store_true")
    args = ap.parse_args()
    results: dict[str, object] = {}
    if not args.skip_page:
        page = page_bench(args.nodes, args.rounds)
        results["page"] = page
        print(f"page, {args.nodes} nodes ({page['circles']} circles, {page['lines']} links drawn), {args.rounds} rounds:")
        print(f"  server first read (validate records + layout): {page['server_first_read_s']:.2f} s")
        print(f"  page load (median of 3):                        {page['page_load_s']:.2f} s")
        print(f"  one live round ({args.nodes} records), in the page:   {page['update_in_page_s'] * 1000:.0f} ms")
        print(f"  one live round, write to shown (0.5 s polls):  {page['update_end_to_end_s']:.2f} s")
        print(f"  scrubbing to another round (redraw):           {page['scrub_render_s'] * 1000:.0f} ms")
    if not args.skip_sim:
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for i in range(args.pairs):
            for mode in MODES:  # interleaved: a slow spell of this shared machine hits every mode alike
                r = simulate(args.sim_nodes, args.sim_rounds, mode)
                runs[mode].append(r)
                print(f"set {i + 1}: {mode:8s} {r['round_s'] * 1000:6.1f} ms/round; share of a core after round 1: "
                      f"launcher {r['launcher_core']:.1%}, browser {r['browser_core']:.1%}", flush=True)
        med = {m: {k: statistics.median(x[k] for x in runs[m]) for k in runs[m][0]} for m in MODES}
        base = med["off"]
        results["simulation"] = {"runs": runs, "medians": med}
        print(f"simulate -n {args.sim_nodes} -t regular:d=4 -r {args.sim_rounds}, medians of {args.pairs} runs each:")
        for mode in MODES:
            extra = med[mode]["launcher_core"] - base["launcher_core"] + med[mode]["browser_core"]
            print(f"  {mode:8s} round {med[mode]['round_s'] * 1000:6.1f} ms (ratio {med[mode]['round_s'] / base['round_s']:.3f}); "
                  f"launcher {med[mode]['launcher_core']:.1%} of a core, browser {med[mode]['browser_core']:.1%}: "
                  f"the dashboard{' and browser' if mode == 'browser' else ''} take {extra:+.1%} of a core")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
