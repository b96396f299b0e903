"""What the dashboard shows of run directories: a read-only, incremental, forgiving reader.

Owns turning run directories (one `simulate` run, the per-node shares of a multi-host run, or a
`compare` directory of runs) into the JSON the page draws: the run's headline facts, the graph
with a networkx layout computed here, and the metrics records as compact rows. A directory that is
still being written is read incrementally (only the bytes appended since the last look; a last
line without its newline is left for the next look). A directory that is missing, partial or
corrupt becomes a `Run` with a `message` saying what is wrong, never an exception: the page shows
the message. Every record line is validated by `p2pfl.record` (the schema's one reader).

Must not write anything, start anything, or import torch, zmq or the node.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from p2pfl import record, topology
from p2pfl.record import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunDirError

TOPOLOGY_FILE = "topology.json"
#: The columns of a row, in order (metrics.jsonl field names). Sent once with every snapshot.
FIELDS = ("round", "node", "test_acc", "test_loss", "train_loss", "consensus_distance", "epsilon", "bytes_sent",
          "bytes_received", "arrived", "round_time", "participated", "aggregation", "dropped", "links", "node_distance")
#: Summary fields shown on the page (summary.json names).
SUMMARY_SHOWN = ("label", "topology", "aggregation", "secure_agg", "nodes", "rounds", "partition", "seed",
                 "spectral_gap", "final_acc_mean", "final_acc_std", "dp", "dp_delta", "epsilon_max", "compression",
                 "wall_time", "processes", "peak_rss_mb", "status", "failures")
LARGE_GRAPH = 300  # above this many nodes the layout starts from the spectral one (BENCHMARKS.md, Dashboard)
READ_CHUNK = 8 << 20  # bytes read per look at a growing metrics file: a huge file is taken in steps


def _finite(value: Any) -> Any:
    """JSON for the browser: NaN and infinities (a diverged loss) become null (JSON.parse refuses them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def row_of(rec: record.RoundRecord) -> list[Any]:
    return [_finite(getattr(rec, name)) for name in FIELDS]


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE))


@dataclass
class _Source:
    """One directory's metrics.jsonl, read from where the last look stopped."""

    path: Path
    offset: int = 0
    line: int = 0
    inode: tuple[int, int] | None = None
    error: str | None = None  # a bad line stops this file: later lines are not trusted to be in order

    def read_new(self, seen: set[tuple[int, int]]) -> list[record.RoundRecord]:
        metrics = self.path / METRICS_FILE
        try:
            st = metrics.stat()
        except OSError:
            return []
        ident = (st.st_dev, st.st_ino)
        if self.inode is not None and (ident != self.inode or st.st_size < self.offset):
            raise _Replaced()  # rewritten from the start (a restarted node, a new run in the same place)
        self.inode = ident
        if self.error is not None or st.st_size <= self.offset:
            return []
        try:
            with metrics.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(min(READ_CHUNK, st.st_size - self.offset))
        except OSError as exc:
            self.error = f"{metrics}: cannot read: {exc}"
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # a line still being written
        out: list[record.RoundRecord] = []
        for raw in data[:end + 1].split(b"\n")[:-1]:
            self.line += 1
            self.offset += len(raw) + 1
            if not raw.strip():
                continue
            try:
                rec = record.parse_record(json.loads(raw.decode("utf-8")), metrics, self.line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self.error = f"{metrics}:{self.line}: not a JSON line ({type(exc).__name__}); later lines not shown"
                break
            except RunDirError as exc:
                self.error = f"{exc}; later lines not shown"
                break
            key = (rec.node, rec.round)
            if key in seen:
                self.error = f"{metrics}:{self.line}: node {rec.node} round {rec.round} recorded twice; later lines not shown"
                break
            seen.add(key)
            out.append(rec)
        return out


class _Replaced(Exception):
    pass


@dataclass
class Run:
    """One run as the page sees it: facts, graph, rows so far, and what is wrong with it (if anything)."""

    name: str
    paths: list[Path]
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # what is missing or wrong, for the page
    nodes: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "x", "y"}]
    edges: list[list[int]] = field(default_factory=list)
    version: int = 0  # bumped whenever rows are replaced rather than appended
    _sources: list[_Source] = field(default_factory=list, repr=False)
    _seen: set[tuple[int, int]] = field(default_factory=set, repr=False)
    _layout_for: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.summary is not None:
            return str(self.summary.get("status", "complete"))
        if self.config is None and not self.rows:
            return "unreadable"
        return "running"

    def refresh(self) -> int:
        """Take what was written since the last call; the number of new rows (-1: start over, rows replaced)."""
        self._read_facts()
        try:
            new = [rec for src in self._sources for rec in src.read_new(self._seen)]
        except _Replaced:
            self.rows, self._seen, self.version = [], set(), self.version + 1
            self._sources = [_Source(p) for p in self.paths]
            self._read_facts()
            self.refresh()
            return -1
        self.rows.extend(row_of(rec) for rec in new)
        self._update_graph(new)
        self.messages += [src.error for src in self._sources if src.error and src.error not in self.messages]
        return len(new)

    def _read_facts(self) -> None:
        messages: list[str] = []
        for path in self.paths:
            if not path.exists():
                messages.append(f"{path}: no such directory (yet: a run starting writes it)")
            elif not path.is_dir():
                messages.append(f"{path}: not a directory")
        if self.config is None:
            self.config = self._json(CONFIG_FILE, messages)
        if self.summary is None or self.status == "running":
            summaries = []
            for path in self.paths:
                if (path / SUMMARY_FILE).is_file():
                    try:
                        summaries.append(record.read_summary(path / SUMMARY_FILE))
                    except RunDirError as exc:
                        messages.append(str(exc))
            if summaries and len(summaries) == len(self.paths):
                s = summaries[0].to_json()
                if len(summaries) > 1:
                    s["node_ids"] = sorted({n for x in summaries for n in x.node_ids})
                    s["status"] = "failed" if any(x.status == "failed" for x in summaries) else "complete"
                    s["failures"] = [f for x in summaries for f in x.failures]
                self.summary = {k: _finite(s.get(k)) for k in SUMMARY_SHOWN}
        for path in self.paths:
            if path.is_dir() and not (path / METRICS_FILE).is_file():
                messages.append(f"{path / METRICS_FILE}: not written yet" if self.summary is None
                                else f"{path / METRICS_FILE}: missing")
            if path.is_dir() and self.config is None and not (path / CONFIG_FILE).is_file():
                messages.append(f"{path / CONFIG_FILE}: missing")
        self.messages = messages

    def _json(self, name: str, messages: list[str]) -> dict[str, Any] | None:
        for path in self.paths:
            f = path / name
            if not f.is_file():
                continue
            try:
                return record.read_json_object(f)
            except RunDirError as exc:
                messages.append(str(exc))
                return None
        return None

    # -- the graph ----------------------------------------------------------------------------

    def node_count(self) -> int:
        n = self.config.get("nodes") if self.config else None
        ids = [row[1] for row in self.rows]
        if isinstance(n, int) and n > 0:
            return max([n] + [i + 1 for i in ids])
        return max(ids) + 1 if ids else 0

    def _update_graph(self, new: list[record.RoundRecord]) -> None:
        links = {(min(r.node, int(j)), max(r.node, int(j))) for r in new for j in (r.links or {})}
        n = self.node_count()
        known = {tuple(e) for e in self.edges}
        if self._layout_for is not None and self._layout_for[0] == n and links <= known:
            return
        graph = self._topology(n)
        graph.add_nodes_from(range(n))
        for u, v in links | known:  # traffic on a link the file does not name (a time-varying graph)
            graph.add_edge(u, v)
        self.edges = [[int(u), int(v)] for u, v in sorted((min(a, b), max(a, b)) for a, b in graph.edges)]
        if self._layout_for is None or self._layout_for[0] != n:
            pos = layout(graph)
            self.nodes = [{"id": int(v), "x": round(float(pos[v][0]), 4), "y": round(float(pos[v][1]), 4)}
                          for v in sorted(graph.nodes)]
        self._layout_for = (n, len(self.edges))

    def _topology(self, n: int) -> nx.Graph:
        """The run's graph: its topology.json, else its config's topology; time-varying: no fixed edges."""
        g: Any = None
        for path in self.paths:
            if (path / TOPOLOGY_FILE).is_file():
                try:
                    g = topology.load(path / TOPOLOGY_FILE)
                except (topology.TopologyError, OSError, ValueError) as exc:
                    self.messages.append(f"{path / TOPOLOGY_FILE}: {exc}")
                break
        if g is None and self.config and isinstance(self.config.get("topology"), str) and n > 0:
            try:
                g = topology.resolve(self.config["topology"], n, int(self.config.get("seed", 0)))
            except (topology.TopologyError, OSError, ValueError, TypeError):
                g = None  # a file on the machine that ran it: the links recorded say where traffic went
        if isinstance(g, nx.Graph):
            return nx.Graph(g)
        return nx.Graph()

    # -- what the page gets ---------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        return {"name": self.name, "paths": [str(p) for p in self.paths], "status": self.status,
                "messages": list(self.messages), "summary": self.summary, "config": _config_shown(self.config),
                "nodes": self.nodes, "edges": self.edges, "version": self.version}

    def snapshot(self) -> dict[str, Any]:
        return {**self.facts(), "fields": list(FIELDS), "rows": list(self.rows)}


def _config_shown(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    keep = ("label", "topology", "nodes", "rounds", "aggregation", "secure_agg", "task", "partition", "alpha",
            "seed", "dp", "dp_noise", "dp_clip", "dp_delta", "compression", "participation", "local_epochs", "lr")
    return {k: _finite(config[k]) for k in keep if k in config and isinstance(config[k], (str, int, float, bool))}


def layout(graph: nx.Graph) -> dict[Any, tuple[float, float]]:
    """Node positions in [-1, 1]^2: a circle for a ring-like graph, force-directed otherwise (seeded)."""
    n = graph.number_of_nodes()
    if n == 0:
        return {}
    degrees = {d for _, d in graph.degree()}
    if n <= 2 or (degrees == {2} and nx.is_connected(graph)) or graph.number_of_edges() == 0:
        return nx.circular_layout(graph)  # a ring (or nothing known yet): a circle shows it best
    if graph.number_of_edges() == n * (n - 1) // 2:
        return nx.circular_layout(graph)
    if n <= LARGE_GRAPH:
        pos = nx.spring_layout(graph, seed=0, iterations=50)
    else:  # force-directed costs n^2 per iteration: start from the spectral layout, then a few steps to spread it
        pos = _spread(graph, nx.spectral_layout(graph) if nx.is_connected(graph) else nx.random_layout(graph, seed=0))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return {v: ((p[0] - cx) * 2 / span, (p[1] - cy) * 2 / span) for v, p in pos.items()}


def _spread(graph: nx.Graph, start: dict[Any, Any], iterations: int = 10) -> dict[Any, tuple[float, float]]:
    """A few Fruchterman-Reingold steps from `start`, vectorised with numpy (networkx's own code for
    graphs this large loops over the nodes in Python: seconds per run at 1,000 nodes)."""
    nodes = list(graph.nodes)
    index = {v: i for i, v in enumerate(nodes)}
    n = len(nodes)
    pos = np.array([start[v] for v in nodes], dtype=np.float64)
    pos = (pos - pos.min(axis=0)) / np.maximum(np.ptp(pos, axis=0), 1e-9)
    adjacency = np.zeros((n, n))
    for u, v in graph.edges:
        adjacency[index[u], index[v]] = adjacency[index[v], index[u]] = 1.0
    k = math.sqrt(1.0 / n)
    step = 0.1
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        distance = np.maximum(np.sqrt((delta ** 2).sum(axis=-1)), 0.01)
        force = (k * k / distance ** 2 - adjacency * distance / k)[:, :, None] * delta
        move = force.sum(axis=1)
        length = np.maximum(np.sqrt((move ** 2).sum(axis=1)), 0.01)
        pos += move * (np.minimum(length, step) / length)[:, None]
        step -= 0.1 / (iterations + 1)
    return {v: (float(pos[i, 0]), float(pos[i, 1])) for i, v in enumerate(nodes)}


# -- finding runs ---------------------------------------------------------------------------------


def expand(paths: list[str | os.PathLike[str]]) -> list[Path]:
    """Arguments to run directories: a run directory is itself; a directory of runs (a `compare`
    output) is each of its run subdirectories, sorted; anything else is kept (and reported as such)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir() and not is_run_dir(p):
            subs = sorted(d for d in p.iterdir() if d.is_dir() and is_run_dir(d))
            if subs:
                out.extend(subs)
                continue
        out.append(p)
    return list(dict.fromkeys(out))


def open_runs(paths: list[str | os.PathLike[str]]) -> list[Run]:
    """One `Run` per run; the per-node directories of one experiment (same config.json, apart from
    per-machine settings, and no summary covering every node) are joined into one run."""
    runs: list[Run] = []
    for path in expand(paths):
        config = None
        if (path / CONFIG_FILE).is_file():
            try:
                config = record.read_json_object(path / CONFIG_FILE)
            except RunDirError:
                config = None
        share = config is not None and _is_share(path)
        joined = False
        if share:
            for run in runs:
                if run.config is not None and _is_share(run.paths[0]) and \
                        record.config_difference(run.config, config) is None:
                    run.paths.append(path)
                    run._sources.append(_Source(path))
                    joined = True
                    break
        if not joined:
            run = Run(name=path.name or str(path), paths=[path], config=config)
            run._sources.append(_Source(path))
            runs.append(run)
    for run in runs:
        if len(run.paths) > 1:
            run.name = f"{run.paths[0].name} + {len(run.paths) - 1} more"
        run.refresh()
    return runs


def _is_share(path: Path) -> bool:
    """A directory `p2pfl node --run-dir` wrote: its summary (once written) holds one machine's nodes."""
    if (path / SUMMARY_FILE).is_file():
        try:
            return not record.read_summary(path / SUMMARY_FILE).complete
        except RunDirError:
            return False
    try:
        config = record.read_json_object(path / CONFIG_FILE)
    except RunDirError:
        return False
    # Without a summary yet: simulate writes topology.json and a cluster file; a node's run dir does not.
    return not (path / TOPOLOGY_FILE).is_file() and isinstance(config.get("nodes"), int)
