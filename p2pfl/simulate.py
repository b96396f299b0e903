"""Simulation on one host: many real nodes, real sockets, real crypto, as OS processes.

Owns the run directory (keys, cluster file, resolved config, metrics.jsonl, summary.json), the
worker processes that each host one or more nodes (one thread per node), the live progress
display and the consensus distance (only the launcher sees every model). It does not know
protocol details: nodes are started exactly as `p2pfl node` starts them, from a cluster file.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import resource
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from p2pfl import topology
from p2pfl.config import Cluster, ExperimentConfig, NodeEntry, write_cluster
from p2pfl.crypto import decode_public, load_private_key, write_keypair

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """Where a finished simulation wrote its files, and its headline figures."""

    run_dir: Path
    summary: dict[str, Any]


# -- preparing a run directory ---------------------------------------------------------------


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS just handed out as free; held together so they are distinct."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def prepare_cluster(config: ExperimentConfig, run_dir: Path) -> Path:
    """Keys, topology file and cluster file for a local run; returns the cluster file path."""
    graph = config.graph()
    keys = run_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    topology.save(graph, run_dir / "topology.json")
    entries = []
    for node_id, port in zip(range(config.nodes), free_ports(config.nodes)):
        private_path, public_b64 = write_keypair(keys, node_id)
        entries.append(NodeEntry(node_id, f"tcp://127.0.0.1:{port}", decode_public(public_b64),
                                 Path(private_path).relative_to(run_dir)))
    path = run_dir / "cluster.toml"
    write_cluster(path, entries, "topology.json")
    return path


def assign_processes(nodes: int, processes: int) -> list[list[int]]:
    """Spread node ids over processes round-robin (0 = automatic: a few per core)."""
    count = processes or min(nodes, 2 * (os.cpu_count() or 1))
    count = max(1, min(count, nodes))
    return [list(range(p, nodes, count)) for p in range(count)]


# -- worker processes ------------------------------------------------------------------------


def _worker(node_ids: list[int], config: dict, cluster_path: str, events: mp.Queue) -> None:
    """Host `node_ids` in this process, one thread each, reporting every round to `events`."""
    # One compute thread per node thread: OpenMP's thread count is per thread, and N processes x
    # M node threads x the default pool would thrash 2 cores (set before torch is imported).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import zmq

    from p2pfl.data import partition, shard
    from p2pfl.node import Node, NodeSpec
    from p2pfl.training import load_task

    torch.set_num_threads(1)  # N processes x default threads would thrash 2 cores
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ExperimentConfig.from_dict(config)
    cluster = Cluster.load(cluster_path, seed=cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    parts = partition(task.dataset.y_train, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed)
    context = zmq.Context()
    models = Path(cluster_path).parent / "models"
    models.mkdir(exist_ok=True)

    def report(record: Any) -> None:
        events.put(("round", record.to_json(), record.delta.tobytes()))

    def run_one(node_id: int) -> None:
        torch.set_num_threads(1)
        try:
            entry = cluster.require(node_id)
            key = load_private_key(entry.key_file)
            node = Node(NodeSpec(node_id, cfg, cluster, key), task, shard(task.dataset, parts[node_id]), context, report)
            node.run()
            # The trained model, flat float32 (LocalTrainer.set_flat loads it back); no pickle.
            np.save(models / f"node-{node_id}.npy", node.trainer.get_flat(), allow_pickle=False)
            events.put(("done", node_id, None))
        except BaseException:  # report and let the launcher decide; never die silently
            events.put(("error", node_id, traceback.format_exc()))

    threads = [threading.Thread(target=run_one, args=(i,), name=f"node-{i}") for i in node_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events.put(("rss", os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    context.term()


# -- the launcher ----------------------------------------------------------------------------


class _Collector:
    """Gathers per-node records, writes complete rounds in order, computes consensus distance."""

    def __init__(self, nodes: int, metrics_path: Path) -> None:
        self.nodes = nodes
        self.pending: dict[int, dict[int, tuple[dict, np.ndarray]]] = {}
        self.file = metrics_path.open("w")
        self.next_round = 1
        self.live = set(range(nodes))
        self.last: dict[str, float] = {}

    def add(self, record: dict, delta: np.ndarray) -> None:
        self.pending.setdefault(record["round"], {})[record["node"]] = (record, delta)
        self.flush()

    def node_gone(self, node_id: int) -> None:
        self.live.discard(node_id)
        self.flush()

    def flush(self, final: bool = False) -> None:
        while self.next_round in self.pending:
            got = self.pending[self.next_round]
            if not final and not self.live <= set(got):
                return
            self._write(self.next_round, got)
            del self.pending[self.next_round]
            self.next_round += 1

    def _write(self, r: int, got: dict[int, tuple[dict, np.ndarray]]) -> None:
        deltas = np.stack([d for _, d in got.values()]).astype(np.float64)
        distance = float(((deltas - deltas.mean(axis=0)) ** 2).sum(axis=1).mean())
        accs = [rec["test_acc"] for rec, _ in got.values() if rec["test_acc"] is not None]
        for node_id in sorted(got):
            rec = dict(got[node_id][0], consensus_distance=distance, epsilon=None)
            self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.last = {"round": r, "consensus": distance, "acc_mean": float(np.mean(accs)) if accs else float("nan"),
                     "acc_std": float(np.std(accs)) if accs else float("nan"),
                     "bytes": float(np.mean([rec["bytes_sent"] for rec, _ in got.values()]))}

    def close(self) -> None:
        self.flush(final=True)
        self.file.close()


def run_simulation(config: ExperimentConfig, run_dir: Path, console: Console | None = None) -> RunResult:
    """Run every node of `config` on this host and write the run directory."""
    console = console or Console(stderr=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    graph = config.graph()
    cluster_path = prepare_cluster(config, run_dir)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    groups = assign_processes(config.nodes, config.processes)
    ctx = mp.get_context("spawn")  # a clean interpreter per worker: no inherited sockets or threads
    events: mp.Queue = ctx.Queue()
    started = time.monotonic()
    procs = [ctx.Process(target=_worker, args=(g, config.to_dict(), str(cluster_path), events), daemon=True) for g in groups]
    for p in procs:
        p.start()
    collector = _Collector(config.nodes, run_dir / "metrics.jsonl")
    errors: dict[int, str] = {}
    rss: list[float] = []
    try:
        _collect(config, procs, events, collector, errors, rss, console)
    finally:
        collector.close()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    wall = time.monotonic() - started
    if errors:
        node_id, tb = next(iter(sorted(errors.items())))
        raise RuntimeError(f"node {node_id} failed ({len(errors)} node(s) in all):\n{tb}")
    summary = _summary(config, graph, run_dir, wall, rss)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(run_dir, summary)


def _collect(config: ExperimentConfig, procs: list, events: mp.Queue, collector: _Collector,
             errors: dict[int, str], rss: list[float], console: Console) -> None:
    done: set[int] = set()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"),
               TextColumn("{task.fields[figures]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(config.display_label(), total=config.rounds, figures="starting nodes...")
        while len(done) + len(errors) < config.nodes or len(rss) < len(procs):
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and events.empty():
                    for n in set(range(config.nodes)) - done - set(errors):
                        errors[n] = "its worker process exited without reporting"
                    return
                continue
            kind = event[0]
            if kind == "round":
                collector.add(event[1], np.frombuffer(event[2], dtype=np.float32))
                if collector.last:
                    progress.update(bar, completed=collector.last["round"], figures=_figures(collector.last))
            elif kind == "done":
                done.add(event[1])
            elif kind == "error":
                errors[event[1]] = event[2]
                collector.node_gone(event[1])
            elif kind == "rss":
                rss.append(event[2])


def _figures(last: dict[str, float]) -> str:
    return (f"acc {last['acc_mean']:.3f}±{last['acc_std']:.3f}  consensus {last['consensus']:.2e}  "
            f"sent/node {last['bytes'] / 2**20:.1f} MiB")


def _summary(config: ExperimentConfig, graph: Any, run_dir: Path, wall: float, rss: list[float]) -> dict[str, Any]:
    last: dict[int, float] = {}
    with (run_dir / "metrics.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            if rec["test_acc"] is not None:
                last[rec["node"]] = rec["test_acc"]
    accs = list(last.values())
    partition = "iid" if config.partition == "iid" else f"dirichlet(alpha={config.alpha})"
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "label": config.display_label(),
        "topology": config.topology,
        "aggregation": config.aggregation,
        "secure_agg": config.secure_agg,
        "nodes": config.nodes,
        "rounds": config.rounds,
        "partition": partition,
        "seed": config.seed,
        "spectral_gap": topology.spectral_gap(topology.metropolis_hastings(graph)),
        "final_acc_mean": float(np.mean(accs)) if accs else None,
        "final_acc_std": float(np.std(accs)) if accs else None,
        "wall_time": wall,
        "processes": len(rss),
        # Sum of every process's own peak: an upper bound on the simulation's peak footprint.
        "peak_rss_mb": own_rss + sum(rss),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("p2pfl", "torch", "pyzmq", "pynacl", "networkx", "msgpack", "numpy", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# -- comparisons -----------------------------------------------------------------------------

DEFAULT_COMPARE = ("ring", "torus", "regular:d=4", "complete", "star-fedavg")


def compare_configs(base: ExperimentConfig, specs: list[str], secure: str = "off") -> list[ExperimentConfig]:
    """One config per topology spec (and per secure-aggregation setting): same task, seed, partition."""
    modes = {"off": [False], "on": [True], "both": [False, True]}[secure]
    out = []
    for spec in specs:
        for sec in modes:
            if spec in ("star-fedavg", "fedavg"):
                cfg = replace(base, topology="star", aggregation="fedavg", secure_agg=sec, label="")
            elif spec == "star-gossip":
                cfg = replace(base, topology="star", aggregation="gossip", secure_agg=sec, label="star-gossip(MH)")
            else:
                cfg = replace(base, topology=spec, aggregation="gossip", secure_agg=sec, label="")
            if cfg.label and sec:
                cfg.label += "+secagg"
            cfg.validate()
            cfg.graph()  # reject an impossible topology before anything runs
            out.append(cfg)
    return out


def run_dir_name(cfg: ExperimentConfig) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in cfg.display_label())
