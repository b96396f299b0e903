"""The run directory: its files, their typed schema, the one writer and the one reader.

A run directory holds what one experiment produced (docs/architecture.md, "Run directory"):
`config.json` (the resolved `ExperimentConfig`), `metrics.jsonl` (one `RoundRecord` per node per
round), `summary.json` (one `RunSummary`) and `models/node-K.npy`. `simulate` writes one directory
for all its nodes; `p2pfl node --run-dir` writes one per node, and `merge` joins the directories
of the nodes of one experiment (one per machine) into one run.

Owns: the record and summary dataclasses, `SCHEMA_VERSION` (written into every record and
summary, checked on reading), writing (a record line at a time, the summary and config
atomically, the final models), reading with validation of every field (`RunDirError` names the
file, line and field), completeness and merging. Must not touch sockets, training, protocols or
presentation (tables and plots are `report`'s), and must not import torch at module level
(`report` reads run directories without it).
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from p2pfl.config import ExperimentConfig

#: Version of the record and summary layout; every metrics.jsonl line and summary.json carry it as "schema".
SCHEMA_VERSION = 1
SCHEMA_KEY = "schema"

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODELS_DIR = "models"

#: config.json settings that may differ between the nodes of one experiment: how each machine keeps
#: its own files and waits for its neighbours, not what the run computes.
PER_NODE_SETTINGS = ("checkpoint_dir", "checkpoint_every", "processes", "startup_timeout")
#: summary.json fields that describe one directory's share of a run, not the experiment.
PER_DIRECTORY_SUMMARY = ("node_ids", "final_acc_mean", "final_acc_std", "epsilon_max", "wall_time", "processes",
                         "peak_rss_mb", "versions", "status", "failures", "first_round_s")


# -- the schema ------------------------------------------------------------------------------------


@dataclass
class RoundRecord:
    """What one node reports after one round (the run directory's metrics.jsonl line)."""

    round: int
    node: int
    train_loss: float | None  # None when the node sat the round out (no local training)
    test_loss: float | None
    test_acc: float | None
    bytes_sent: int
    bytes_received: int
    wall_time: float
    round_time: float
    train_time: float  # seconds of local training within round_time
    cpu_time: float  # CPU seconds of the node's own thread this round (not the sockets' I/O threads)
    arrived: int
    dropped: dict[str, int]
    aggregation: str  # "ok", or why this node's aggregate failed safely (secure aggregation)
    epsilon: float | None = None  # DP: privacy spent so far at dp_delta (None without DP)
    participated: bool = True  # False: the node sat this round out (schedule or spent budget)
    # Mean squared distance of the round's node models to their average. Only a launcher that sees
    # every model (simulate) can know it; a node on its own machine writes None.
    consensus_distance: float | None = None
    # Per neighbour (its id as a string): [bytes sent to it, bytes received from it, messages of its
    # link dropped], cumulative like bytes_sent (channel.TransportStats.links). None: not recorded.
    links: dict[str, list[int]] | None = None
    # This node's squared distance to the round's average model (consensus_distance is the mean of
    # these over the nodes); like it, only a launcher that sees every model can know it.
    node_distance: float | None = None
    # Accuracy on the node's own test split (its writers' test rows, partition natural); None where it has none.
    local_acc: float | None = None
    # The neighbours whose contributions made it into the result (`arrived` of them); None: not recorded.
    heard: list[int] | None = None
    delta: np.ndarray | None = field(default=None, repr=False)  # model - common init, for consensus; never written

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {SCHEMA_KEY: SCHEMA_VERSION}
        out.update((k, v) for k, v in self.__dict__.items() if k != "delta")
        out["dropped"] = dict(self.dropped)
        return out


@dataclass
class RunSummary:
    """summary.json: the experiment's identity and headline figures of one run directory."""

    label: str
    topology: str
    aggregation: str  # "gossip" | "fedavg"
    secure_agg: bool
    nodes: int  # nodes in the experiment
    rounds: int
    partition: str  # partition_label(): "iid", "dirichlet(alpha=0.3)", "personas(alpha=0.2)"
    seed: int
    spectral_gap: float
    node_ids: list[int]  # the nodes whose records this directory holds (simulate: all of them)
    final_acc_mean: float | None  # over node_ids, each at its last evaluated round
    final_acc_std: float | None
    dp: str
    dp_delta: float | None  # None without DP
    epsilon_max: float | None  # largest epsilon of any node after its last round (None without DP)
    compression: str
    participation: float
    fedavg_sample: int
    fedprox_mu: float
    wall_time: float  # seconds, start to end of the slowest process
    processes: int  # OS processes that ran the nodes
    peak_rss_mb: float  # sum of every process's own peak: an upper bound on the run's footprint
    versions: dict[str, str]  # python and package versions (of the first directory, once merged)
    status: str = "complete"  # "failed": some node or worker process ended with an error (`failures`)
    failures: list[str] = field(default_factory=list)  # "node 3: <its exception's last line>"
    first_round_s: float | None = None  # launch to the first complete round (simulate only)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {SCHEMA_KEY: SCHEMA_VERSION}
        out.update(self.__dict__)
        out["node_ids"] = list(self.node_ids)
        out["versions"] = dict(self.versions)
        return out

    @property
    def complete(self) -> bool:
        """Whether this directory holds every node of the experiment (not one machine's share)."""
        return sorted(self.node_ids) == list(range(self.nodes))


class RunDirError(ValueError):
    """Bad or missing data in a run directory (or bad arguments to read one).

    `path`, `line` (1-based) and `field` are set where they are known and are part of the message
    as `path:line: field 'name': what is wrong (line N)`.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        what = f"field '{field}': " if field is not None else ""
        if line is not None and self.path is not None:
            message = f"{message} (line {line})"  # "line N" greppable too, not only "path:N"
        super().__init__(f"{where}{what}{message}")


# -- field checks: each returns the value to keep, or raises _Bad with what is wrong ----------------


class _Bad(Exception):
    pass


Check = Callable[[Any], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(low: int) -> Check:
    def check(value: Any) -> int:
        if not _is_int(value) or value < low:
            raise _Bad(f"expected an integer >= {low}, got {value!r}")
        return value
    return check


def _number(low: float | None = 0.0, finite: bool = True) -> Check:
    """A JSON number (an integer is fine), >= `low` unless None; NaN and infinities only if not `finite`."""
    def check(value: Any) -> float:
        if not _is_number(value) or (finite and not math.isfinite(value)):
            raise _Bad(f"expected a {'finite ' if finite else ''}number, got {value!r}")
        if low is not None and value < low:  # NaN compares False: a diverged loss stays readable
            raise _Bad(f"expected a number >= {low}, got {value!r}")
        return float(value)
    return check


def _fraction(value: Any) -> float:
    if not (_is_number(value) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _Bad(f"expected null or an accuracy in [0, 1], got {value!r}")
    return float(value)


def _nullable(check: Check) -> Check:
    def nullable(value: Any) -> Any:
        return None if value is None else check(value)
    return nullable


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {value!r}")
    return value


def _one_of(*names: str) -> Check:
    def check(value: Any) -> str:
        if value not in names:
            raise _Bad(f"expected one of {', '.join(names)}, got {value!r}")
        return value
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not all(_is_int(v) and v >= 0 for v in value.values()):
        raise _Bad(f"expected an object of non-negative integer counts, got {value!r}")
    return dict(value)


def _names(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Bad(f"expected an object of strings, got {value!r}")
    return dict(value)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"expected an array of strings, got {value!r}")
    return list(value)


def _links(value: Any) -> dict[str, list[int]]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, list) and len(v) == 3
            and all(_is_int(x) and x >= 0 for x in v) for k, v in value.items()):
        raise _Bad(f"expected an object of neighbour id -> [sent, received, dropped] counts, got {value!r}")
    return {k: list(v) for k, v in value.items()}


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(v) and v >= 0 for v in value) or len(set(value)) != len(value):
        raise _Bad(f"expected a list of distinct node ids, got {value!r}")
    return sorted(value)


def _node_ids(value: Any) -> list[int]:
    ids = _ids(value)
    if not ids:
        raise _Bad("expected a non-empty list of distinct node ids, got []")
    return ids


_LOSS = _nullable(_number(low=None, finite=False))
RECORD_SCHEMA: dict[str, Check] = {
    "round": _integer(1), "node": _integer(0), "train_loss": _LOSS, "test_loss": _LOSS,
    "test_acc": _nullable(_fraction), "bytes_sent": _integer(0), "bytes_received": _integer(0),
    "wall_time": _number(), "round_time": _number(), "train_time": _number(), "cpu_time": _number(),
    "arrived": _integer(0), "dropped": _counts, "aggregation": _string,
    "epsilon": _nullable(_number(finite=False)), "participated": _boolean,
    "consensus_distance": _nullable(_number(finite=False)), "links": _nullable(_links),
    "node_distance": _nullable(_number(finite=False)), "local_acc": _nullable(_fraction),
    "heard": _nullable(_ids),
}
# Fields added after schema 1 was first written: a record without them reads as these values.
RECORD_DEFAULTS: dict[str, Any] = {"links": None, "node_distance": None, "local_acc": None, "heard": None}
SUMMARY_SCHEMA: dict[str, Check] = {
    "label": _string, "topology": _string, "aggregation": _one_of("gossip", "fedavg"), "secure_agg": _boolean,
    "nodes": _integer(1), "rounds": _integer(1), "partition": _string, "seed": _integer(0),
    "spectral_gap": _number(low=None), "node_ids": _node_ids,
    "final_acc_mean": _nullable(_fraction), "final_acc_std": _nullable(_number()),
    "dp": _string, "dp_delta": _nullable(_number()), "epsilon_max": _nullable(_number(finite=False)),
    "compression": _string, "participation": _number(), "fedavg_sample": _integer(0),
    "fedprox_mu": _number(), "wall_time": _number(), "processes": _integer(1), "peak_rss_mb": _number(),
    "versions": _names, "status": _one_of("complete", "failed"), "failures": _strings,
    "first_round_s": _nullable(_number()),
}
# Fields added after schema 1 was first written: a summary without them reads as these values.
SUMMARY_DEFAULTS: dict[str, Any] = {"status": "complete", "failures": [], "first_round_s": None}


def _parse(obj: Any, schema: dict[str, Check], path: Path, line: int | None,
           defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """`obj` checked against `schema` (version first, then every field in order); the values to keep."""
    if not isinstance(obj, dict):
        raise RunDirError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=line)
    _check_version(obj, path, line)
    unknown = sorted(set(obj) - set(schema) - {SCHEMA_KEY})
    if unknown:
        raise RunDirError(f"not a field of schema version {SCHEMA_VERSION}", path=path, line=line, field=unknown[0])
    out = {}
    for name, check in schema.items():
        if name not in obj and defaults is not None and name in defaults:
            out[name] = defaults[name]
            continue
        if name not in obj:
            raise RunDirError("required field is missing", path=path, line=line, field=name)
        try:
            out[name] = check(obj[name])
        except _Bad as bad:
            raise RunDirError(str(bad), path=path, line=line, field=name) from None
    return out


def _check_version(obj: dict[str, Any], path: Path, line: int | None) -> None:
    if SCHEMA_KEY not in obj:
        raise RunDirError(f"no schema version: written before run directories were versioned; this p2pfl reads "
                          f"schema {SCHEMA_VERSION} (rerun the experiment, or report it with the p2pfl that wrote it)",
                          path=path, line=line, field=SCHEMA_KEY)
    version = obj[SCHEMA_KEY]
    if version != SCHEMA_VERSION or not _is_int(version):
        newer = _is_int(version) and version > SCHEMA_VERSION
        raise RunDirError(f"schema version {version!r} is not one this p2pfl reads (it reads version {SCHEMA_VERSION})"
                          + ("; the run was written by a newer p2pfl: report it with that one" if newer else ""),
                          path=path, line=line, field=SCHEMA_KEY)


def parse_record(obj: Any, path: Path, line: int | None = None) -> RoundRecord:
    """One metrics.jsonl object as a RoundRecord; RunDirError naming `path`, `line` and the field if bad."""
    return RoundRecord(**_parse(obj, RECORD_SCHEMA, path, line, RECORD_DEFAULTS))


def parse_summary(obj: Any, path: Path) -> RunSummary:
    return RunSummary(**_parse(obj, SUMMARY_SCHEMA, path, None, SUMMARY_DEFAULTS))


# -- building a summary ----------------------------------------------------------------------------


def partition_label(kind: str, alpha: float, shards_per_node: int = 2) -> str:
    """"iid", "natural", or a skewed partition's name with its knob: "dirichlet(alpha=0.3)", "personas(alpha=0.2)",
    "size-skew(alpha=1.0)", "pathological(k=2)", "shard(k=2)"."""
    if kind in ("iid", "natural"):
        return kind
    if kind in ("pathological", "shard"):
        return f"{kind}(k={shards_per_node})"
    return f"{kind}(alpha={alpha})"


def final_figures(records: Iterable[RoundRecord]) -> tuple[float | None, float | None, float | None]:
    """(mean, std) over nodes of each node's last evaluated accuracy, and the largest last epsilon."""
    last_acc: dict[int, float] = {}
    last_eps: dict[int, float] = {}
    for rec in sorted(records, key=lambda r: r.round):
        if rec.test_acc is not None:
            last_acc[rec.node] = rec.test_acc
        if rec.epsilon is not None:
            last_eps[rec.node] = rec.epsilon
    accs = list(last_acc.values())
    return (float(np.mean(accs)) if accs else None, float(np.std(accs)) if accs else None,
            max(last_eps.values()) if last_eps else None)


def build_summary(config: ExperimentConfig, *, topology: str, spectral_gap: float, node_ids: Iterable[int],
                  records: Sequence[RoundRecord], wall_time: float, processes: int, peak_rss_mb: float,
                  failures: Sequence[str] = (), first_round_s: float | None = None) -> RunSummary:
    """The summary of a run directory holding `node_ids`' `records` of the experiment `config`."""
    acc_mean, acc_std, eps_max = final_figures(records)
    return RunSummary(
        label=config.display_label(), topology=topology, aggregation=config.aggregation,
        secure_agg=config.secure_agg, nodes=config.nodes, rounds=config.rounds,
        partition=partition_label(config.partition, config.alpha, config.shards_per_node), seed=config.seed, spectral_gap=spectral_gap,
        node_ids=sorted(node_ids), final_acc_mean=acc_mean, final_acc_std=acc_std, dp=config.dp,
        dp_delta=config.dp_delta if config.dp_enabled else None, epsilon_max=eps_max,
        compression=config.compression, participation=config.participation, fedavg_sample=config.fedavg_sample,
        fedprox_mu=config.fedprox_mu, wall_time=wall_time, processes=processes, peak_rss_mb=peak_rss_mb,
        versions=versions(), status="failed" if failures else "complete", failures=list(failures),
        first_round_s=first_round_s,
    )


def own_peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("p2pfl", "torch", "pyzmq", "pynacl", "networkx", "msgpack", "numpy", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# -- writing ---------------------------------------------------------------------------------------


def record_line(record: RoundRecord) -> str:
    """The metrics.jsonl line of `record` (also what `p2pfl node --metrics FILE` appends)."""
    return json.dumps(record.to_json()) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Either the old file or the complete new one is at `path`, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    _write_atomic(run_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    _write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary.to_json(), indent=2) + "\n")


def save_model(path: Path, flat: np.ndarray) -> None:
    """A node's trained model, flat float32 (LocalTrainer.set_flat loads it back; no pickle).

    Mode 0600 from the start, like a checkpoint: the model is what the node's data taught it.
    """
    from p2pfl.checkpoint import write_private  # imports torch: only the processes that ran nodes call this

    buf = io.BytesIO()
    np.save(buf, flat, allow_pickle=False)
    write_private(path, [buf.getvalue()])


class MetricsWriter:
    """Appends records to a metrics.jsonl, one flushed line each: a killed run keeps its finished rounds.

    `resume` keeps the records already in the file, for one node (`node`): a node restarted from
    its checkpoint runs again the rounds after it, so the first record appended drops the old
    records of that round and later ones (rewritten atomically) and no (node, round) is written twice.
    Without `resume` the file starts empty.
    """

    def __init__(self, path: Path, *, resume: bool = False, node: int | None = None) -> None:
        self.path = path
        self._kept: list[RoundRecord] | None = None  # records to trim on the first append (resume)
        if resume and path.exists():
            self._kept = [rec for rec, _ in read_records(path)]
            others = sorted({rec.node for rec in self._kept} - {node})
            if others:
                raise RunDirError(f"holds records of node {others[0]}, not only of node {node}: give every node its "
                                  "own run directory", path=path, field="node")
            self.file = None
        else:
            self.file = path.open("a" if resume else "w", encoding="utf-8")

    def append(self, record: RoundRecord) -> None:
        if self.file is None:
            kept = [rec for rec in self._kept or [] if rec.round < record.round]
            _write_atomic(self.path, "".join(record_line(rec) for rec in kept))
            self.file = self.path.open("a", encoding="utf-8")
        self.file.write(record_line(record))
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class NodeRunDirectory:
    """`p2pfl node --run-dir`: one node's share of a run, in the layout `simulate` writes for all nodes.

    Opening it refuses a directory that holds another experiment (config.json differs, apart from
    PER_NODE_SETTINGS) or another node's records, then writes config.json. A restarted node keeps
    its records of the rounds before the one it resumes at (`MetricsWriter(resume=True)`).
    """

    def __init__(self, path: Path, config: dict[str, Any], node: int) -> None:
        self.path = path
        self.node = node
        path.mkdir(parents=True, exist_ok=True)
        if (path / CONFIG_FILE).exists():
            before = read_json_object(path / CONFIG_FILE)
            name = config_difference(before, config)
            if name is not None:
                raise RunDirError(f"holds a run of another experiment: {name} was {before.get(name)!r}, now "
                                  f"{config.get(name)!r} (give another run directory, or delete this one)",
                                  path=path / CONFIG_FILE, field=name)
        if (path / SUMMARY_FILE).exists():
            ids = read_json_object(path / SUMMARY_FILE).get("node_ids")
            if ids != [node]:
                raise RunDirError(f"holds the run of node(s) {ids}, not of node {node}: give every node its own "
                                  "run directory", path=path / SUMMARY_FILE, field="node_ids")
        self.metrics = MetricsWriter(path / METRICS_FILE, resume=True, node=node)
        write_config(path, config)
        # Until finish() writes the new one, an old summary would claim rounds the metrics may no longer hold.
        (path / SUMMARY_FILE).unlink(missing_ok=True)

    def append(self, record: RoundRecord) -> None:
        self.metrics.append(record)

    def close(self) -> None:
        self.metrics.close()

    def records(self) -> list[RoundRecord]:
        """Every record of the directory (of this and earlier starts of the node)."""
        metrics = self.path / METRICS_FILE
        return [rec for rec, _ in read_records(metrics)] if metrics.exists() else []

    def finish(self, summary: RunSummary, model: np.ndarray) -> None:
        """Write the summary and the node's final model (models/node-K.npy, mode 0600)."""
        models = self.path / MODELS_DIR
        models.mkdir(mode=0o700, exist_ok=True)  # the node's private model
        save_model(models / f"node-{self.node}.npy", model)
        write_summary(self.path, summary)


# -- reading ---------------------------------------------------------------------------------------


def read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunDirError("file is missing", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"cannot read file: {exc}", path=path) from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunDirError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=exc.lineno) from exc
    if not isinstance(obj, dict):
        raise RunDirError(f"expected a JSON object, got {type(obj).__name__}", path=path)
    return obj


def read_summary(path: Path) -> RunSummary:
    return parse_summary(read_json_object(path), path)


def read_records(path: Path) -> list[tuple[RoundRecord, int]]:
    """Every record of a metrics.jsonl with its line number; blank lines are skipped."""
    if not path.is_file():
        raise RunDirError("file is missing", path=path)
    out: list[tuple[RoundRecord, int]] = []
    try:
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RunDirError(f"invalid JSON: {exc.msg} (column {exc.colno})", path=path, line=lineno) from exc
                out.append((parse_record(obj, path, lineno), lineno))
    except UnicodeDecodeError as exc:
        raise RunDirError(f"file is not UTF-8: {exc}", path=path) from exc
    except OSError as exc:
        raise RunDirError(f"cannot read file: {exc}", path=path) from exc
    return out


@dataclass
class RunDirectory:
    """One run directory as read and validated (or several merged: `paths` lists them all)."""

    paths: list[Path]
    config: dict[str, Any]
    summary: RunSummary
    records: list[RoundRecord]
    sources: list[tuple[Path, int]]  # where each record was read: (metrics file, line)

    @property
    def path(self) -> Path:
        return self.paths[0]


def read_run(path: str | os.PathLike[str]) -> RunDirectory:
    """Read and validate one run directory: every file, every field, no (node, round) twice,
    only the summary's nodes and rounds. It may hold a share of a run (`merge` joins the shares)."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunDirError("not a directory", path=run_dir)
    config = read_json_object(run_dir / CONFIG_FILE)
    summary = read_summary(run_dir / SUMMARY_FILE)
    metrics = run_dir / METRICS_FILE
    pairs = read_records(metrics)
    if not pairs:
        raise RunDirError("no records", path=metrics)
    run = RunDirectory([run_dir], config, summary, [rec for rec, _ in pairs], [(metrics, line) for _, line in pairs])
    _check_records(run)
    return run


def _check_records(run: RunDirectory) -> None:
    """Records name only the summary's nodes and rounds, each (node, round) once."""
    members = set(run.summary.node_ids)
    seen: dict[tuple[int, int], tuple[Path, int]] = {}
    for rec, (path, line) in zip(run.records, run.sources):
        if rec.node not in members:
            raise RunDirError(f"node {rec.node} is not one of the nodes summary.json lists ({run.summary.node_ids})",
                              path=path, line=line, field="node")
        if rec.round > run.summary.rounds:
            raise RunDirError(f"round {rec.round} is beyond summary.rounds = {run.summary.rounds}",
                              path=path, line=line, field="round")
        key = (rec.node, rec.round)
        if key in seen:
            first_path, first_line = seen[key]
            first = f"line {first_line}" if first_path == path else f"{first_path}:{first_line}"
            raise RunDirError(f"duplicate record for node {rec.node} round {rec.round} (first at {first})",
                              path=path, line=line, field="round")
        seen[key] = (path, line)


def check_complete(run: RunDirectory) -> None:
    """Every node of the experiment has exactly one record for every round 1..rounds."""
    summary = run.summary
    missing = sorted(set(range(summary.nodes)) - set(summary.node_ids))
    if missing:
        given = ", ".join(str(p) for p in run.paths)
        raise RunDirError(f"the run has {summary.nodes} nodes, but the directories given ({given}) hold nodes "
                          f"{summary.node_ids}: add the run directories of nodes {missing}", field="node_ids")
    have = {(rec.node, rec.round) for rec in run.records}
    lines_of_round: dict[int, list[tuple[Path, int]]] = defaultdict(list)
    for rec, source in zip(run.records, run.sources):
        lines_of_round[rec.round].append(source)
    one_file = len({p for p, _ in run.sources}) == 1
    for rnd in range(1, summary.rounds + 1):
        for node in summary.node_ids:
            if (node, rnd) in have:
                continue
            others = lines_of_round.get(rnd, [])[:8]
            where = ", ".join(str(line) if one_file else f"{p}:{line}" for p, line in others)
            hint = (f"other nodes' round-{rnd} records are at line(s) {where}" if others
                    else f"no node has a record for round {rnd}")
            raise RunDirError(f"node {node} has no record for round {rnd} (expected rounds 1..{summary.rounds}; "
                              f"{hint})", path=run.sources[0][0] if one_file else None, field="round")


# -- merging the directories of one experiment -----------------------------------------------------


def config_difference(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = PER_NODE_SETTINGS) -> str | None:
    """The first setting (sorted by name) on which two configs differ, apart from `ignore`; None if none."""
    skip = set(ignore)
    for name in sorted((set(a) | set(b)) - skip):
        if a.get(name, _ABSENT) != b.get(name, _ABSENT):
            return name
    return None


_ABSENT = object()


def merge(parts: Sequence[RunDirectory]) -> RunDirectory:
    """One run from the directories of its nodes (one per machine or node).

    Refuses directories of different experiments (config.json or the summary's experiment fields
    differ, naming the field) and a (node, round) recorded in two of them. The merged summary
    holds every directory's nodes, the slowest wall time, the processes and peak memory summed
    (as `simulate` sums its processes') and final figures recomputed from all the records.
    """
    if not parts:
        raise RunDirError("no run directories to merge")
    first = parts[0]
    for other in parts[1:]:
        _check_same_experiment(first, other)
    records = [rec for part in parts for rec in part.records]
    acc_mean, acc_std, eps_max = final_figures(records)
    fields_ = {**first.summary.__dict__}
    fields_.update(
        node_ids=sorted({n for part in parts for n in part.summary.node_ids}), final_acc_mean=acc_mean,
        final_acc_std=acc_std, epsilon_max=eps_max, wall_time=max(p.summary.wall_time for p in parts),
        processes=sum(p.summary.processes for p in parts), peak_rss_mb=sum(p.summary.peak_rss_mb for p in parts),
        failures=[f for p in parts for f in p.summary.failures],
        status="failed" if any(p.summary.status == "failed" for p in parts) else "complete",
        first_round_s=None,
    )
    merged = RunDirectory(paths=[p for part in parts for p in part.paths], config=dict(first.config),
                          summary=RunSummary(**fields_), records=records,
                          sources=[s for part in parts for s in part.sources])
    _check_records(merged)  # a (node, round) in two directories is refused here, naming both places
    return merged


def _check_same_experiment(a: RunDirectory, b: RunDirectory) -> None:
    name = config_difference(a.config, b.config)
    if name is not None:
        raise RunDirError(f"not the same experiment as {a.path}: {name} is {a.config.get(name)!r} there, "
                          f"{b.config.get(name)!r} here", path=b.path / CONFIG_FILE, field=name)
    sa, sb = a.summary.__dict__, b.summary.__dict__
    for name in sa:
        if name not in PER_DIRECTORY_SUMMARY and sa[name] != sb[name]:
            raise RunDirError(f"not the same experiment as {a.path}: {name} is {sa[name]!r} there, {sb[name]!r} here",
                              path=b.path / SUMMARY_FILE, field=name)


def read_runs(paths: Iterable[str | os.PathLike[str]]) -> list[RunDirectory]:
    """Every run of `paths` (each a run directory), validated and complete.

    Directories that hold every node of their experiment are runs of their own; the others are
    shares of one run (`p2pfl node --run-dir` on each machine) and are merged into one, placed
    where the first of them was.
    """
    runs: list[RunDirectory | None] = []
    shares: list[RunDirectory] = []
    for path in paths:
        run = read_run(path)
        if run.summary.complete:
            runs.append(run)
        else:
            if not shares:
                runs.append(None)  # the merged run's place
            shares.append(run)
    out = [run if run is not None else merge(shares) for run in runs]
    for run in out:
        check_complete(run)
    return out


def _check_schema_matches_dataclasses() -> None:
    """The checks cover exactly the dataclasses' fields: a field added to one must be added to both."""
    record_fields = {f.name for f in fields(RoundRecord)} - {"delta"}
    summary_fields = {f.name for f in fields(RunSummary)}
    assert record_fields == set(RECORD_SCHEMA), record_fields ^ set(RECORD_SCHEMA)
    assert summary_fields == set(SUMMARY_SCHEMA), summary_fields ^ set(SUMMARY_SCHEMA)


_check_schema_matches_dataclasses()
