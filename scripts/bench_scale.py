"""The scale curve: round time, memory, start-up and CPU overhead of `p2pfl simulate` as nodes grow.

Runs `p2pfl simulate -t regular:d=D -n N` for each N (real processes, hub transports, real crypto)
and measures from outside, while it runs:

- **round**: the steady round period, median over nodes of (wall time at the last round - at
  round 1) / (rounds - 1), from metrics.jsonl;
- **first round**: launch of the command to the first complete round written (the launcher's
  `first_round_s` plus the command's own start-up, measured here as the whole command's start);
- **peak memory**: the largest sum of PSS (proportional set size: a page shared by k processes
  counts 1/k in each, so forked workers sharing torch are not counted twice) over the command's
  whole process tree, sampled every 0.2 s; the launcher's own `peak_rss_mb` (a sum of per-process
  peaks, an upper bound) is printed beside it;
- **CPU/node-round**: the process tree's CPU (user + system) from round 1 written to the end,
  divided by node-rounds; **beyond training**: that minus the mean local training time per
  node-round (from the metrics' `train_time`; an older p2pfl's threads timed their training by
  the wall clock, so only the first figure compares across versions). It includes everything the simulator spends: crypto, sockets,
  protocol, the event loop, the launcher's consensus distance and the record keeping;
- **lost**: nodes that did not complete every round; **ok**: the share of node-rounds that
  aggregated every neighbour.

Baselines measured in the same run, for the ratios: the floor of a process that trains at all
(`python -c "import torch, torch._dynamo"`: torch.optim's first step imports dynamo), and with
`--baseline-rev REV` the same configurations run by an older commit of p2pfl (a git worktree),
e.g. the thread-per-node simulator before the hub transport (8962fbe).

    .venv/bin/python scripts/bench_scale.py --nodes 16,64,256,1000 --rounds 10
    .venv/bin/python scripts/bench_scale.py --nodes 16,64,256,1000,4000,10000 --rounds 10 --secure both
    .venv/bin/python scripts/bench_scale.py --default-run            # the 8-node default: start-up and memory
    .venv/bin/python scripts/bench_scale.py --nodes 256,1000 --baseline-rev 8962fbe --task apps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sampler:
    """Samples the PSS and CPU of a process tree until stopped; notes the CPU when round 1 is written."""

    root: int
    metrics: Path
    nodes: int
    peak_pss_mb: float = 0.0
    cpu_at_round1: float | None = None
    t_round1: float | None = None
    cpu: dict[int, float] = field(default_factory=dict)  # per pid, the last reading (dead ones keep theirs)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def cpu_total(self) -> float:
        return sum(self.cpu.values())

    def _run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            pids = _tree(self.root)
            pss = 0.0
            for pid in pids:
                pss += _pss_kb(pid) / 1024
                stat = _stat(pid)
                if stat is not None:
                    self.cpu[pid] = (int(stat[11]) + int(stat[12])) / tick
            self.peak_pss_mb = max(self.peak_pss_mb, pss)
            if self.cpu_at_round1 is None and _lines(self.metrics) >= self.nodes:
                self.cpu_at_round1, self.t_round1 = self.cpu_total(), time.monotonic()
            self._stop.wait(0.2)


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...], utime at 11, stime at 12 (clock ticks)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss_kb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_startup() -> float:
    """Seconds a fresh interpreter takes to import what training needs (torch and dynamo)."""
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, torch._dynamo"], check=True)
    return time.monotonic() - t


def primitives_floor(params: int, degree: int, repeats: int = 400) -> float:
    """ms per node-round of what a gossip round must do beyond training, timed alone in one thread:
    seal `degree` model messages (wire.seal: encode + AEAD), open `degree` (header, meta, tensors),
    pass each through a ZeroMQ inproc PAIR, and mix. No protocol logic, no event loop, no records:
    the floor that a Python node on this machine cannot go below with these primitives."""
    import numpy as np
    import zmq

    from p2pfl import wire
    from p2pfl.messages import Kind, Message
    from p2pfl.protocols import mix

    limits = wire.Limits.for_model(params)
    key = bytes(range(32))
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(params).astype(np.float32)
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://floor")
    b.connect("inproc://floor")
    counter = 1
    began = time.perf_counter()
    for _ in range(repeats):
        got = {}
        for j in range(degree):
            counter += 1
            msg = Message(Kind.MODEL, 0, 1, {}, {"delta": vec})
            a.send_multipart(wire.seal(msg, 1, counter, key, limits), copy=False)
            frames = b.recv_multipart(copy=False)
            header = wire.read_header(frames, limits)
            aead = wire.message_aead(header, key)
            wire.open_meta(header, frames, aead, limits)
            got[j] = (0.2, wire.open_tensors(header, frames, aead)["delta"])
        mix(vec, got)
    elapsed = time.perf_counter() - began
    a.close(0)
    b.close(0)
    ctx.term()
    return elapsed / repeats * 1000


def run(args: list[str], out: Path, nodes: int, pythonpath: str | None = None) -> dict:
    """One `p2pfl simulate` with `args`; its figures."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "p2pfl.cli", "simulate", *args, "--out", str(out)]
    started, before = time.monotonic(), _children_cpu()
    # `python -m` puts the working directory first on sys.path: run each code from its own tree
    proc = subprocess.Popen(cmd, env=env, cwd=pythonpath or ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    sampler = Sampler(proc.pid, out / "metrics.jsonl", nodes)
    thread = sampler.start()
    _, err = proc.communicate()
    elapsed = time.monotonic() - started
    sampler.stop()
    thread.join()
    total_cpu = _children_cpu() - before  # the whole tree: each process's CPU goes to its parent when reaped
    figures: dict = {"elapsed": elapsed, "peak_pss_mb": sampler.peak_pss_mb, "rc": proc.returncode}
    if proc.returncode != 0 or not (out / "summary.json").exists():
        figures["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        return figures
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = max(r["round"] for r in records)
    by_node: dict[int, dict[int, dict]] = {}
    for r in records:
        by_node.setdefault(r["node"], {})[r["round"]] = r
    complete = [v for v in by_node.values() if len(v) == rounds]
    periods = [(v[rounds]["wall_time"] - v[1]["wall_time"]) / (rounds - 1) for v in complete] if rounds > 1 else []
    later = [r for r in records if r["round"] >= 2]
    train = statistics.mean(r["train_time"] for r in later) if later else 0.0
    cpu_rounds = total_cpu - (sampler.cpu_at_round1 or 0.0)
    figures.update(
        round_s=statistics.median(periods) if periods else None,
        # an older p2pfl's summary has no first_round_s: then unknown
        first_round_s=(summary["first_round_s"] + elapsed - summary["wall_time"]) if summary.get("first_round_s") else None,
        launcher_rss_mb=summary["peak_rss_mb"],
        lost=nodes - len(complete),
        ok=sum(r["aggregation"] == "ok" for r in records) / len(records),
        train_ms=train * 1000,
        cpu_ms=cpu_rounds / max(1, len(later)) * 1000 if later else None,
        overhead_ms=(cpu_rounds / max(1, len(later)) - train) * 1000 if later else None,
        acc=summary["final_acc_mean"],
        status=summary.get("status", "complete"),
    )
    return figures


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="16,64,256,1000")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--degree", type=int, default=4)
    ap.add_argument("--task", default="mnist1d")
    ap.add_argument("--secure", choices=("off", "on", "both"), default="off")
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--round-timeout", type=float, default=None)
    ap.add_argument("--default-run", action="store_true", help="measure the 8-node default run instead")
    ap.add_argument("--baseline-rev", help="also run every configuration with this git revision of p2pfl")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    floor = floor_startup()
    print(f"floor: a fresh interpreter imports torch + torch._dynamo in {floor:.2f} s")
    print(f"floor: the primitives of one gossip node-round (seal, send, open, mix {a.degree} models of 7,434 "
          f"parameters) take {primitives_floor(7434, a.degree):.2f} ms in one thread")
    base_path = None
    if a.baseline_rev:
        base_path = tempfile.mkdtemp(prefix="p2pfl-base-")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", base_path, a.baseline_rev],
                       check=True, capture_output=True)
    configs: list[tuple[str, list[str], int]] = []
    if a.default_run:
        configs.append(("default (8-node ring, digits, 40 rounds)", [], 8))
    else:
        for n in [int(x) for x in a.nodes.split(",")]:
            for secure in {"off": [False], "on": [True], "both": [False, True]}[a.secure]:
                args = ["-t", f"regular:d={a.degree}", "-n", str(n), "-r", str(a.rounds), "--task", a.task,
                        "--eval-every", str(a.rounds), "--processes", str(a.processes)]
                if secure:
                    args.append("--secure")
                if a.round_timeout:
                    args += ["--round-timeout", str(a.round_timeout)]
                configs.append((f"{n} nodes{' secure' if secure else ''}", args, n))
    print("| run | code | round (s) | first round (s) | peak PSS (MiB) | launcher's RSS sum (MiB) | train ms/node-round "
          "| CPU ms/node-round | CPU beyond training ms/node-round | lost | rounds ok | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            for label, args, n in configs:
                for code, path in [("now", None), *([(a.baseline_rev, base_path)] if base_path else [])]:
                    for k in range(a.repeats):
                        f = run(args, Path(tmp) / f"{len(os.listdir(tmp))}", n, path)
                        if "error" in f:
                            print(f"| {label} | {code} | failed: {f['error'][:120]} | | {f['peak_pss_mb']:.0f} | | | | | | | |")
                            continue
                        first = f["first_round_s"]
                        first_text = "-" if first is None else f"{first:.2f} ({first / floor:.1f}x floor)"
                        print(f"| {label} | {code} | {_fmt(f['round_s'], '.3f')} | {first_text} | {f['peak_pss_mb']:.0f} "
                              f"| {f['launcher_rss_mb']:.0f} | {f['train_ms']:.2f} | {_fmt(f['cpu_ms'], '.2f')} "
                              f"| {_fmt(f['overhead_ms'], '.2f')} | {f['lost']} | {f['ok']:.3f} "
                              f"| {_fmt(f['acc'], '.3f')} |", flush=True)
    finally:
        if base_path:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", base_path], capture_output=True)


if __name__ == "__main__":
    main()
