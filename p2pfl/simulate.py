"""Simulation on one host: many real nodes, real sockets, real crypto, as OS processes.

Owns the cluster of a local run (keys, cluster file, topology file), the worker processes that
each host one or more nodes (one thread per node), the live progress display and the consensus
distance (only the launcher sees every model). The run directory's files are written through
`p2pfl.record`, which owns their schema. It does not know protocol details: nodes are started
exactly as `p2pfl node` starts them, from a cluster file, by `launch.build_node`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from p2pfl import strategies, topology
from p2pfl.config import Cluster, ConfigError, ExperimentConfig, NodeEntry, write_cluster
from p2pfl.crypto import decode_public, write_keypair
from p2pfl.record import (MODELS_DIR, METRICS_FILE, MetricsWriter, RoundRecord, build_summary, own_peak_rss_mb,
                          parse_record, save_model, write_config, write_summary)

log = logging.getLogger(__name__)

FINAL_LINGER_S = 2.0  # a worker's last messages (its nodes' last models) get this long to leave
# A round's cost per node beyond local training, on a 2-core machine (BENCHMARKS.md, scale curve):
# what `_paced` adds to the training it times, and the slack between that estimate and a deadline.
NODE_OVERHEAD_S = 0.003
SECURE_NODE_OVERHEAD_S = 0.015
PACE_SLACK = 3.0


@dataclass
class RunResult:
    """Where a finished simulation wrote its files, and its headline figures."""

    run_dir: Path
    summary: dict[str, Any]  # summary.json as written (`record.RunSummary.to_json()`)


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


def prepare_cluster(config: ExperimentConfig, run_dir: Path, groups: list[list[int]] | None = None) -> Path:
    """Keys, topology file and cluster file for a local run; returns the cluster file path.

    With `groups` (the node ids of each worker process) the nodes of a group share their process's
    hub address (`transports.hub`); without, every node gets a TCP port of its own.
    """
    graph = config.graph()
    keys = run_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    topology.save(graph, run_dir / "topology.json")
    if groups is None:
        address = {i: f"tcp://127.0.0.1:{port}" for i, port in enumerate(free_ports(config.nodes))}
    else:
        address = {i: f"hub+tcp://127.0.0.1:{port}" for group, port in zip(groups, free_ports(len(groups)))
                   for i in group}
    entries = []
    for node_id in range(config.nodes):
        private_path, public_b64 = write_keypair(keys, node_id)
        entries.append(NodeEntry(node_id, address[node_id], decode_public(public_b64),
                                 Path(private_path).relative_to(run_dir)))
    path = run_dir / "cluster.toml"
    write_cluster(path, entries, "topology.json")
    return path


def assign_processes(nodes: int, processes: int) -> list[list[int]]:
    """Spread node ids over processes round-robin (0 = automatic: one per core).

    A process runs all its nodes in one event loop (`host.Host`), so more processes than cores
    only adds start-up and memory.
    """
    count = processes or min(nodes, os.cpu_count() or 1)
    count = max(1, min(count, nodes))
    return [list(range(p, nodes, count)) for p in range(count)]


# -- worker processes ------------------------------------------------------------------------


def _worker(node_ids: list[int], config: dict, cluster_path: str, events: mp.Queue,
            workload: Any = None) -> None:
    """Host `node_ids` in this process, in one event loop, reporting every round to `events`.

    `workload`: the task and its split, when the launcher forked this process after loading it
    (the pages are shared, nothing is loaded twice); None: load it here. Whatever ends the
    process early is reported for each node that had not ended yet: never a silent exit.
    """
    ended: set[int] = set()
    try:
        _host_nodes(node_ids, config, cluster_path, events, workload, ended)
    except BaseException:  # noqa: BLE001 - reported, then the process ends
        why = "its worker process failed:\n" + traceback.format_exc()
        for node_id in node_ids:
            if node_id not in ended:
                events.put(("error", node_id, why))
        events.put(("rss", os.getpid(), own_peak_rss_mb()))


def _host_nodes(node_ids: list[int], config: dict, cluster_path: str, events: mp.Queue, workload: Any,
                ended: set[int]) -> None:
    """`_worker`'s work; `ended` collects the nodes whose end was reported."""
    # One compute thread: N processes x the default pool would thrash the cores (set before torch
    # is imported when this is a fresh interpreter; a forked one sets it below).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import zmq

    from p2pfl.host import Host
    from p2pfl.launch import build_node, load_workload
    from p2pfl.transports.hub import Hub

    torch.set_num_threads(1)
    # Node warnings (drops, deadlines, dropouts) go to the run directory, not over the live display.
    logs = Path(cluster_path).parent / "logs"
    logs.mkdir(exist_ok=True)
    logging.basicConfig(level=logging.WARNING, filename=str(logs / f"worker-{node_ids[0]}.log"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    cfg = ExperimentConfig.from_dict(config)
    cluster = Cluster.load(cluster_path, seed=cfg.seed)
    workload = workload if workload is not None else load_workload(cfg)  # once for all the process's nodes
    context = zmq.Context()
    hub = Hub(cluster.nodes[node_ids[0]].address, context, capacity=len(node_ids))
    host = Host(hub)
    models = Path(cluster_path).parent / MODELS_DIR
    models.mkdir(mode=0o700, exist_ok=True)  # the nodes' private models

    def report(record: RoundRecord) -> None:
        # Serialised now, not when the queue's feeder thread pickles it: the node drops `delta` on return.
        events.put(("round", record.to_json(), record.delta.tobytes()))

    coalition = cfg.record_nodes()  # simulate --record: every node keeps its truth, the coalition its view

    def done(node: Any, _records: list) -> None:
        try:
            if node.observer is not None:
                node.observer.close()
            save_model(models / f"node-{node.id}.npy", node.trainer.get_flat())
            events.put(("done", node.id, None))
            ended.add(node.id)
        except BaseException as exc:  # noqa: BLE001 - reported, never silent
            failed(node, exc)

    def failed(node: Any, exc: BaseException) -> None:
        if node.observer is not None:
            node.observer.close()  # what it recorded so far stays readable
        events.put(("error", node.id, "".join(traceback.format_exception(exc))))
        ended.add(node.id)

    for node_id in node_ids:
        try:
            node = build_node(cfg, cluster, node_id, workload=workload, context=hub, on_round=report)
        except BaseException:  # report and let the launcher decide; never die silently
            events.put(("error", node_id, traceback.format_exc()))
            ended.add(node_id)
            continue
        if coalition:
            from p2pfl.recording import Recorder

            node.observer = Recorder(Path(cluster_path).parent, node_id, workload.parts[node_id], coalition)
        host.add(node, done, failed)
    host.run()
    hub.close(linger=FINAL_LINGER_S)
    events.put(("rss", os.getpid(), own_peak_rss_mb()))
    context.term()


# -- the launcher ----------------------------------------------------------------------------


class _Collector:
    """Gathers per-node records, writes complete rounds in order, computes consensus distance."""

    def __init__(self, nodes: int, writer: MetricsWriter, started: float) -> None:
        self.nodes = nodes
        self.started = started
        self.first_round_s: float | None = None  # launch to round 1 written
        self.pending: dict[int, dict[int, tuple[RoundRecord, np.ndarray]]] = {}
        self.writer = writer
        self.written: list[RoundRecord] = []  # what metrics.jsonl holds, for the summary
        self.next_round = 1
        self.live = set(range(nodes))
        self.last: dict[str, Any] = {}

    def add(self, record: RoundRecord, delta: np.ndarray) -> None:
        self.pending.setdefault(record.round, {})[record.node] = (record, delta)
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
            if self.first_round_s is None:
                self.first_round_s = time.monotonic() - self.started
            del self.pending[self.next_round]
            self.next_round += 1

    def _write(self, r: int, got: dict[int, tuple[RoundRecord, np.ndarray]]) -> None:
        deltas = np.stack([d for _, d in got.values()]).astype(np.float64)
        per_node = ((deltas - deltas.mean(axis=0)) ** 2).sum(axis=1)
        distance = float(per_node.mean())
        index = {node_id: k for k, node_id in enumerate(got)}  # `deltas` is in got's order
        for node_id in sorted(got):
            rec = replace(got[node_id][0], consensus_distance=distance, node_distance=float(per_node[index[node_id]]))
            self.writer.append(rec)
            self.written.append(rec)
        recs = [rec for rec, _ in got.values()]
        accs = [rec.test_acc for rec in recs if rec.test_acc is not None]
        eps = [rec.epsilon for rec in recs if rec.epsilon is not None]
        self.last = {"round": r, "consensus": distance, "acc_mean": float(np.mean(accs)) if accs else float("nan"),
                     "acc_std": float(np.std(accs)) if accs else float("nan"),
                     "bytes": float(np.mean([rec.bytes_sent for rec in recs])),
                     "epsilon": max(eps) if eps else None}

    def close(self) -> None:
        self.flush(final=True)
        self.writer.close()


def run_simulation(config: ExperimentConfig, run_dir: Path, console: Console | None = None) -> RunResult:
    """Run every node of `config` on this host and write the run directory."""
    console = console or Console(stderr=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    graph = config.graph()
    groups = assign_processes(config.nodes, config.processes)
    if config.record_nodes() and config.ray:
        raise ConfigError("record", "recording for a privacy audit runs on one host: leave out --ray")
    if not config.ray:
        cluster_path = prepare_cluster(config, run_dir, groups)
    started = time.monotonic()
    if config.ray:  # the worker groups as actors across a Ray cluster, each making its nodes' keys on its host
        from p2pfl import raycluster  # the optional extra p2pfl[ray]: imported only for --ray

        write_config(run_dir, config.to_dict())
        cluster_path, procs, events = raycluster.place(config.ray, config, run_dir, groups, _worker)
    else:
        ctx, workload = _start_method(config)
        if workload is not None:
            config = _paced(config, groups, workload, console)
        if config.record_nodes():
            _start_recording(config, run_dir, workload)
        write_config(run_dir, config.to_dict())  # what the nodes run with
        events: mp.Queue = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(g, config.to_dict(), str(cluster_path), events, workload),
                             daemon=True) for g in groups]
    label_doc = record_labels(config, run_dir, None if config.ray else workload)
    for p in procs:
        p.start()
    collector = _Collector(config.nodes, MetricsWriter(run_dir / METRICS_FILE), started)
    errors: dict[int, str] = {}
    rss: list[float] = []
    try:
        _collect(config, procs, groups, events, collector, errors, rss, console)
    finally:
        collector.close()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    wall = time.monotonic() - started
    failures = [f"node {n}: {last_line(tb)}" for n, tb in sorted(errors.items())]
    summary = build_summary(config, topology=config.topology,
                            spectral_gap=topology.effective_gap(graph, config.rounds),
                            node_ids=range(config.nodes), records=collector.written, wall_time=wall,
                            processes=len(procs), peak_rss_mb=own_peak_rss_mb() + sum(rss), failures=failures,
                            first_round_s=collector.first_round_s)
    write_summary(run_dir, summary)  # a failed run keeps what it measured, marked failed
    draw_labels(label_doc, run_dir)  # after the run: importing matplotlib must not delay the first round
    if errors:
        node_id, tb = next(iter(sorted(errors.items())))
        log.error("node %d failed:\n%s", node_id, tb)
        shown = "\n".join(f"  {f}" for f in failures[:10]) + (f"\n  ... {len(failures) - 10} more" if len(failures) > 10 else "")
        raise SimulationFailed(f"{len(errors)} node(s) failed; summary.json in {run_dir} is marked failed:\n{shown}")
    return RunResult(run_dir, summary.to_json())


def _start_recording(config: ExperimentConfig, run_dir: Path, workload: Any) -> None:
    """`view/coalition.json` (who records, and their own shards) before any node starts."""
    from p2pfl.launch import load_workload
    from p2pfl.recording import write_coalition

    work = workload if workload is not None else load_workload(config)
    coalition = config.record_nodes()
    write_coalition(run_dir, coalition, {k: work.parts[k] for k in coalition})


def record_labels(config: ExperimentConfig, run_dir: Path, workload: Any = None) -> dict[str, Any]:
    """labels.json of the run's split (`labels`), from `workload` or loaded here; returns the document for
    `draw_labels`."""
    from p2pfl import labels
    from p2pfl.partitioners import label_histogram
    from p2pfl.record import partition_label

    if workload is None:  # spawned or Ray workers load their own; the launcher loads it once more, for this
        from p2pfl.launch import load_workload

        workload = load_workload(config)
    ds = workload.task.dataset
    names = list(getattr(ds, "classes", ()) or [str(c) for c in range(ds.num_classes)])
    kind = partition_label(config.partition, config.alpha, config.shards_per_node)
    doc = labels.document(config.dataset or config.task, kind, names,
                          label_histogram(ds.y_train, workload.parts, ds.num_classes))
    labels.write(run_dir, doc)
    return doc


def draw_labels(doc: dict[str, Any], run_dir: Path) -> None:
    """label_histogram.png beside labels.json."""
    from p2pfl import labels

    labels.plot(doc, run_dir / labels.PLOT_FILE)


class SimulationFailed(RuntimeError):
    """Some node or worker process of a simulation ended with an error (the message says which and why)."""


def last_line(text: str) -> str:
    """The last non-empty line of a traceback or message: the exception itself."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _start_method(config: ExperimentConfig) -> tuple[Any, Any]:
    """How workers start: forked from this process after it loaded the task (torch imported and the
    data split once, their pages shared), where the platform can fork; else spawned, each loading
    its own. Nothing here has opened a socket or started a thread yet, so a fork copies none.
    """
    if "fork" not in mp.get_all_start_methods():
        return mp.get_context("spawn"), None
    import torch._dynamo  # noqa: F401  # torch.optim's first step imports it (1 s, ~100 MiB): once, here, shared

    from p2pfl.launch import load_workload

    return mp.get_context("fork"), load_workload(config)


def _paced(config: ExperimentConfig, groups: list[list[int]], workload: Any, console: Console) -> ExperimentConfig:
    """`config`, its round timeout raised where one honest round of the busiest worker would outlast it.

    A worker runs its nodes one after another in one loop, so its neighbours wait up to a whole
    pass over them for a message: at thousands of nodes per process that is longer than a timeout
    meant for dead neighbours, and every round would go ahead short everywhere. The pass is estimated from one node's local training and
    evaluation, timed here, plus the measured per-node cost of a round beyond training.
    """
    from p2pfl.data import shard
    from p2pfl.node import eval_rows, train_config
    from p2pfl.training import LocalTrainer, init_model

    task = workload.task
    trainer = LocalTrainer(init_model(task, config.seed), shard(task.dataset, workload.parts[0]), train_config(config), 0)
    trainer.train()  # the first call pays one-time set-up
    began = time.perf_counter()
    trainer.train()
    rows = eval_rows(len(task.dataset.y_test), config.eval_sample, config.seed)  # what a round evaluates on
    trainer.evaluate(*((task.dataset.x_test, task.dataset.y_test) if rows is None
                       else (task.dataset.x_test[rows], task.dataset.y_test[rows])))
    per_node = time.perf_counter() - began + (SECURE_NODE_OVERHEAD_S if config.secure_agg else NODE_OVERHEAD_S)
    share = max(1.0, len(groups) / (os.cpu_count() or 1))  # workers beyond the cores share them
    needed = PACE_SLACK * per_node * max(len(g) for g in groups) * share
    if needed <= config.round_timeout:
        return config
    console.print(f"[dim]round timeout raised from {config.round_timeout:g}s to {needed:.0f}s: a round of "
                  f"{max(len(g) for g in groups)} nodes per process takes about {needed / PACE_SLACK:.1f}s here[/]")
    return replace(config, round_timeout=float(math.ceil(needed)))


def _collect(config: ExperimentConfig, procs: list, groups: list[list[int]], events: mp.Queue,
             collector: _Collector, errors: dict[int, str], rss: list[float], console: Console) -> None:
    done: set[int] = set()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} rounds"),
               TextColumn("{task.fields[figures]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(config.display_label(), total=config.rounds, figures="starting nodes...")
        while len(done) + len(errors) < config.nodes or len(rss) < len(procs):
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                for p, group in zip(procs, groups):
                    if p.is_alive() or not events.empty():
                        continue
                    for n in set(group) - done - set(errors):  # it died before it could say why
                        errors[n] = _death(p)
                        collector.node_gone(n)
                if not any(p.is_alive() for p in procs) and events.empty():
                    return
                continue
            kind = event[0]
            if kind == "round":
                record = parse_record(event[1], collector.writer.path)  # a worker sent a bad record: say which field
                collector.add(record, np.frombuffer(event[2], dtype=np.float32))
                if collector.last:
                    progress.update(bar, completed=collector.last["round"], figures=_figures(collector.last))
            elif kind == "done":
                done.add(event[1])
            elif kind == "error":
                errors[event[1]] = event[2]
                collector.node_gone(event[1])
            elif kind == "rss":
                rss.append(event[2])


def _death(p: Any) -> str:
    """Why a worker process ended without reporting, as far as its exit code tells."""
    code = p.exitcode
    if code is not None and code < 0:
        hint = " (SIGKILL: out of memory?)" if -code == 9 else ""
        return f"its worker process (pid {p.pid}) was killed by signal {-code}{hint} without reporting"
    return f"its worker process (pid {p.pid}) exited with code {code} without reporting"


def _figures(last: dict[str, Any]) -> str:
    text = (f"acc {last['acc_mean']:.3f}±{last['acc_std']:.3f}  consensus {last['consensus']:.2e}  "
            f"sent/node {last['bytes'] / 2**20:.1f} MiB")
    if last.get("epsilon") is not None:
        text += f"  ε max {last['epsilon']:.2f}"
    return text


# -- comparisons -----------------------------------------------------------------------------

DEFAULT_COMPARE = ("ring", "torus", "regular:d=4", "complete", "star-fedavg")


VARIANT_TOKENS = ("plain", "secure", "dp", "q8", "q16")


def compare_configs(base: ExperimentConfig, specs: list[str], secure: str = "off",
                    variants: list[str] | None = None) -> list[ExperimentConfig]:
    """One config per topology spec and per variant: same task, seed, partition and knobs.

    Without `variants`, `secure` ("off", "on", "both") toggles secure aggregation and the base
    config's DP and compression settings apply to every run. With `variants` (e.g. ["plain",
    "secure", "secure+dp"], see `apply_variant`) each topology runs once per variant. Leaf
    sampling (fedavg_sample) applies to the star-FedAvg runs only.
    """
    out = []
    for spec in specs:
        topo = _topology_config(base, spec)
        if variants is None:
            modes = {"off": [False], "on": [True], "both": [False, True]}[secure]
            runs = [replace(topo, secure_agg=sec) for sec in modes]
        else:
            runs = [apply_variant(topo, v, base.dp) for v in variants]
        for cfg in runs:
            if cfg.label:
                cfg.label += ("+secagg" if cfg.secure_agg else "") + cfg.knob_suffix()
            cfg.validate()
            cfg.graph()  # reject an impossible topology before anything runs
            out.append(cfg)
    return out


def _topology_config(base: ExperimentConfig, spec: str) -> ExperimentConfig:
    if spec in ("star-fedavg", "fedavg"):
        return replace(base, topology="star", aggregation="fedavg", label="")
    if spec == "star-gossip":
        return replace(base, topology="star", aggregation="gossip", label="star-gossip(MH)", fedavg_sample=0)
    return replace(base, topology=spec, aggregation="gossip", label="", fedavg_sample=0)


def apply_variant(cfg: ExperimentConfig, variant: str, placement: str = "off") -> ExperimentConfig:
    """`cfg` as the named variant: tokens joined by "+" from plain, secure, dp, q8, q16.

    "plain" alone turns secure aggregation, DP and compression off; "secure" turns secure
    aggregation on; "q8"/"q16" quantize vectors; "dp" turns DP on with `placement` where that is
    valid for the run (the strategy says which placements it implements), else the natural one:
    distributed for the secure FedAvg star, central for the plain star (local when its vectors are
    quantized), local for gossip.
    """
    tokens = [t.strip() for t in variant.split("+")]
    bad = [t for t in tokens if t not in VARIANT_TOKENS]
    if bad or not tokens or ("plain" in tokens and len(tokens) > 1):
        raise ConfigError("variants", f"{variant!r}: use tokens {', '.join(VARIANT_TOKENS)} joined by '+' "
                          "(plain stands alone), e.g. plain,secure,secure+dp")
    secure = "secure" in tokens
    compression = next((t for t in tokens if t in ("q8", "q16")), "none")
    dp = "off"
    if "dp" in tokens:
        strategy = strategies.get(cfg.aggregation)
        implemented = {p: strategy.dp_problem(p, secure) is None for p in ("local", "central", "distributed")}
        # central: a trusted hub that sees plain, unquantized vectors; distributed: secure sums
        valid = {"local": implemented["local"],
                 "central": implemented["central"] and strategy.needs_hub and not secure and compression == "none",
                 "distributed": implemented["distributed"] and secure}
        natural = next(p for p in ("distributed", "central", "local") if valid[p])
        dp = placement if valid.get(placement, False) else natural
    return replace(cfg, secure_agg=secure, dp=dp, compression=compression,
                   dp_budget=cfg.dp_budget if dp != "off" else 0.0)


def run_dir_name(cfg: ExperimentConfig) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in cfg.display_label())
