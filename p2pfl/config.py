"""Experiment and cluster configuration: TOML files plus overrides, validated into dataclasses.

Owns `ExperimentConfig` (what to train and how), `Cluster` (who the nodes are: id, address,
public key, topology) and `ConfigError`. Every bad value is rejected here, before anything
starts, with the field and the problem named. It does not start nodes or open sockets.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import networkx as nx

from p2pfl import strategies, topology

PARTITIONS = ("iid", "dirichlet", "personas")
OPTIMIZERS = ("sgd", "adam")
DP_MODES = ("off", "local", "central", "distributed")
DP_UNITS = ("record", "node")
COMPRESSIONS = ("none", "q8", "q16")
BUILTIN_TASKS = ("digits-mlp", "digits-cnn", "apps")  # training.BUILTIN_TASKS, named here without importing torch
GROUPED_TASKS = ("apps",)  # built-in tasks whose dataset has user groups (partition = "personas")
_PLUGIN_TASK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_ADDRESS = re.compile(r"^tcp://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the problem."""

    def __init__(self, field_name: str, problem: str, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field_name}: {problem}")
        self.field = field_name


@dataclass
class ExperimentConfig:
    """Everything that defines a run; the same on every node of a cluster."""

    task: str = "digits-mlp"
    nodes: int = 8
    topology: str = "ring"
    aggregation: str = "gossip"  # a strategy's name (`strategies.names()`); "fedavg": the star baseline
    rounds: int = 40
    local_epochs: int = 1
    local_steps: int = 0  # > 0 overrides local_epochs
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    optimizer: str = "sgd"
    partition: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration (partition = "dirichlet")
    seed: int = 0
    same_init: bool = True  # False: each node starts from its own random model (averaging studies)
    eval_every: int = 1
    round_timeout: float = 10.0  # seconds per protocol phase before missing peers are skipped
    startup_timeout: float = 120.0  # seconds to wait for neighbours to come up
    secure_agg: bool = False
    secagg_threshold: float = 0.5  # Shamir threshold as a fraction of the group (majority)
    min_contributors: int = 2  # privacy floor: never unmask fewer contributors than this
    # members confirm a view that drops someone before revealing (defends against an active aggregator);
    # False: the semi-honest variant, two message steps fewer in such rounds (docs/threat-model.md)
    secagg_verify_views: bool = True
    down_after: int = 3  # rounds a neighbour may miss before we stop waiting for it
    checkpoint_dir: str = ""  # node: persist state here every `checkpoint_every` rounds; resume from it
    checkpoint_every: int = 1
    processes: int = 0  # simulate: OS processes to spread nodes over (0 = automatic)
    label: str = ""  # name of the run in reports (default: derived from topology and options)
    # differential privacy (docs/privacy.md): clip each round update to dp_clip, noise sigma * clip
    dp: str = "off"  # "local" | "central" (FedAvg hub) | "distributed" (secure FedAvg)
    dp_clip: float = 1.0  # C: L2 bound of a node's round update
    dp_noise: float = 1.0  # sigma: noise std / C (the noise multiplier)
    dp_delta: float = 1e-5
    dp_budget: float = 0.0  # epsilon a node may spend (0 = no limit); then it stops sharing
    dp_unit: str = "record"  # unit of privacy: "record" (one record of a node) or "node" (all of it)
    dp_test_seed: int = -1  # TEST ONLY: >= 0 makes the DP noise a seeded stream (no privacy at all)
    fedprox_mu: float = 0.0  # FedProx proximal term mu/2 ||w - w_round_start||^2 (0 = plain)
    participation: float = 1.0  # probability that a node trains and shares in a round
    fedavg_sample: int = 0  # star FedAvg: leaves the hub samples per round (0 = all)
    compression: str = "none"  # plain gossip / FedAvg: "q8" | "q16" quantized vectors with error feedback

    def validate(self, source: str | None = None) -> "ExperimentConfig":
        """Check every field; raise `ConfigError` naming the first bad one."""
        _check_types(self, source)
        _check_task(self.task, source)
        positive = ("nodes", "rounds", "local_epochs", "batch_size", "eval_every", "min_contributors",
                "down_after", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}", source)
        for name in ("local_steps", "processes", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}", source)
        if self.lr < 0:
            raise ConfigError("lr", f"must be >= 0 (0 = pure averaging), got {self.lr}", source)
        for name in ("round_timeout", "startup_timeout", "alpha"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, f"must be > 0, got {getattr(self, name)}", source)
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum}", source)
        if not 0.5 <= self.secagg_threshold < 1:
            raise ConfigError("secagg_threshold", f"must be in [0.5, 1) (see docs/secagg.md), got {self.secagg_threshold}", source)
        _check_choice("aggregation", self.aggregation, strategies.names(), source)
        _check_choice("partition", self.partition, PARTITIONS, source)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS, source)
        if self.nodes < 2:
            raise ConfigError("nodes", "a decentralized run needs at least 2 nodes", source)
        if self.partition == "personas" and self.task in ("digits-mlp", "digits-cnn"):
            raise ConfigError("partition", f"personas splits users by persona: it needs a task with user groups "
                              f"({', '.join(GROUPED_TASKS)}), not {self.task}", source)
        self._validate_knobs(source)
        return self

    def _validate_knobs(self, source: str | None) -> None:
        """DP, FedProx, participation and compression: values, then combinations."""
        _check_choice("dp", self.dp, DP_MODES, source)
        _check_choice("dp_unit", self.dp_unit, DP_UNITS, source)
        _check_choice("compression", self.compression, COMPRESSIONS, source)
        for name in ("dp_clip", "dp_noise"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(name, f"must be > 0 and finite, got {getattr(self, name)}", source)
        if not 0 < self.dp_delta < 1:
            raise ConfigError("dp_delta", f"must be in (0, 1), got {self.dp_delta}", source)
        for name in ("dp_budget", "fedprox_mu"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(name, f"must be >= 0 and finite, got {getattr(self, name)}", source)
        if self.dp_test_seed < -1:
            raise ConfigError("dp_test_seed", f"must be -1 (off: cryptographic noise) or a seed >= 0, got {self.dp_test_seed}", source)
        if not 0 < self.participation <= 1:
            raise ConfigError("participation", f"must be a probability in (0, 1], got {self.participation}", source)
        if self.fedavg_sample < 0:
            raise ConfigError("fedavg_sample", f"must be >= 0 (0 = every leaf), got {self.fedavg_sample}", source)
        if self.dp == "off" and self.dp_budget > 0:
            raise ConfigError("dp_budget", "a privacy budget needs differential privacy: set dp to local, central or distributed", source)
        strategy = strategies.get(self.aggregation)
        if self.secure_agg and not strategy.secure:
            secure = ", ".join(n for n in strategies.names() if strategies.get(n).secure)
            raise ConfigError("secure_agg", f"aggregation = {self.aggregation} has no secure-aggregation protocol "
                              f"(secure aggregation runs with aggregation = {secure})", source)
        # Placement problems in the order the messages are most useful: a strategy without a
        # trusted aggregator before secure_agg's conflict with one; distributed DP's need for
        # secure_agg before the strategy's support for it.
        problem = strategy.dp_problem(self.dp, self.secure_agg) if self.dp_enabled else None
        if self.dp == "central" and problem:
            raise ConfigError("dp", problem, source)
        if self.dp == "central" and self.secure_agg:
            raise ConfigError("dp", "central DP trusts the hub with every un-noised update, which secure_agg is there "
                              "to avoid; with secure_agg use dp = distributed (each leaf adds a share of the noise)", source)
        if self.dp == "distributed" and not self.secure_agg:
            raise ConfigError("dp", "distributed DP needs secure_agg: without it every message would carry only "
                              "1/sqrt(m) of the noise; use dp = local", source)
        if problem:
            raise ConfigError("dp", problem, source)
        if self.compression != "none" and not strategy.compression:
            raise ConfigError("compression", f"aggregation = {self.aggregation} sends no quantizable vectors", source)
        if self.compression != "none" and self.secure_agg:
            raise ConfigError("compression", "quantized vectors do not compose with secure aggregation's masked "
                              "integers; secure aggregation already sends fixed-point uint32", source)
        if self.compression != "none" and self.dp == "central":
            raise ConfigError("compression", "with central DP the leaves send un-noised updates, and error feedback "
                              "would carry them into later rounds (quantize only after noise: use dp = local)", source)
        if self.fedavg_sample:
            if not strategy.needs_hub:
                raise ConfigError("fedavg_sample", f"sampling leaves needs a star hub, which aggregation = "
                                  f"{self.aggregation} does not have (use aggregation = fedavg)", source)
            if self.fedavg_sample > self.nodes - 1:
                raise ConfigError("fedavg_sample", f"must be at most the {self.nodes - 1} leaves of {self.nodes} nodes, "
                                  f"got {self.fedavg_sample}", source)
            if self.secure_agg and self.fedavg_sample < self.min_contributors:
                raise ConfigError("fedavg_sample", f"secure aggregation never unmasks fewer than min_contributors = "
                                  f"{self.min_contributors} inputs; sample at least that many, got {self.fedavg_sample}", source)

    @property
    def dp_enabled(self) -> bool:
        return self.dp != "off"

    def graph(self) -> nx.Graph:
        """The topology, resolved and validated for `nodes` nodes."""
        try:
            g = topology.resolve(self.topology, self.nodes, self.seed)
            topology.validate(g, range(self.nodes))
        except topology.TopologyError as exc:
            raise ConfigError("topology", str(exc)) from exc
        if strategies.get(self.aggregation).needs_hub and hub_of(g) is None:
            raise ConfigError("aggregation", f"{self.aggregation} needs a star topology (one hub linked to every other node)")
        return g

    def display_label(self) -> str:
        if self.label:
            return self.label
        topo = Path(self.topology).stem if _is_file(self.topology) else self.topology
        base = strategies.get(self.aggregation).label(topo)
        return base + ("+secagg" if self.secure_agg else "") + self.knob_suffix()

    def knob_suffix(self) -> str:
        """Label suffix naming the knobs that differ from a plain run ("" for a plain run)."""
        out = ""
        if self.dp_enabled:
            out += f"+dp-{self.dp}"
        if self.compression != "none":
            out += f"+{self.compression}"
        if self.fedprox_mu > 0:
            out += f"+prox{self.fedprox_mu:g}"
        if self.participation < 1:
            out += f"+p{self.participation:g}"
        if self.fedavg_sample:
            out += f"+K{self.fedavg_sample}"
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "ExperimentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})", source)
        return cls(**data).validate(source)

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None,
             defaults: dict[str, Any] | None = None) -> "ExperimentConfig":
        """Read a TOML file (top level or an [experiment] table), apply non-None overrides, validate.

        `defaults` replace the built-in defaults: the file and the overrides still win over them
        (`p2pfl node` takes its node count from the cluster file this way).
        """
        data: dict[str, Any] = dict(defaults or {})
        source = None
        if path is not None:
            source = str(path)
            raw = _read_toml(Path(path))
            data.update(raw.get("experiment", raw))
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data, source)


def hub_of(g: nx.Graph) -> int | None:
    """The hub of a star graph (a node adjacent to every other node, the others only to it)."""
    n = g.number_of_nodes()
    if n < 2 or g.number_of_edges() != n - 1:
        return None
    hubs = [v for v in g.nodes if g.degree[v] == n - 1]
    return min(hubs) if hubs else None


@dataclass
class NodeEntry:
    """One node of a cluster: where it listens and its long-term public key."""

    id: int
    address: str
    public_key: bytes
    key_file: Path | None = None  # its private key, only meaningful on its own machine


@dataclass
class Cluster:
    """Who takes part: node entries and the topology that links them."""

    nodes: dict[int, NodeEntry]
    graph: nx.Graph
    path: Path | None = None
    topology_spec: str = ""

    @classmethod
    def load(cls, path: str | Path, seed: int = 0) -> "Cluster":
        path = Path(path)
        raw = _read_toml(path)
        src = str(path)
        entries = raw.get("nodes")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("nodes", "must be a non-empty array of [[nodes]] tables", src)
        nodes: dict[int, NodeEntry] = {}
        for i, entry in enumerate(entries):
            node = _parse_node(entry, f"nodes[{i}]", path.parent, src)
            if node.id in nodes:
                raise ConfigError(f"nodes[{i}].id", f"duplicate node id {node.id}", src)
            nodes[node.id] = node
        _check_unique_addresses(nodes, src)
        spec = raw.get("topology")
        if not isinstance(spec, str) or not spec:
            raise ConfigError("topology", "must name a topology file (relative to the cluster file) or a generator", src)
        graph = _cluster_graph(spec, path.parent, len(nodes), seed, nodes, src)
        return cls(nodes=nodes, graph=graph, path=path, topology_spec=spec)

    def neighbours(self, node_id: int) -> list[int]:
        return sorted(self.graph.neighbors(node_id))

    def require(self, node_id: int) -> NodeEntry:
        if node_id not in self.nodes:
            raise ConfigError("id", f"node {node_id} is not in the cluster (ids: {sorted(self.nodes)})")
        return self.nodes[node_id]


def write_cluster(path: Path, nodes: list[NodeEntry], topology_ref: str) -> None:
    """Write a cluster file (TOML) that `Cluster.load` reads back."""
    lines = [f'topology = "{topology_ref}"', ""]
    for node in nodes:
        lines += ["[[nodes]]", f"id = {node.id}", f'address = "{node.address}"',
                  f'public_key = "{base64.b64encode(node.public_key).decode()}"']
        if node.key_file is not None:
            lines.append(f'key_file = "{node.key_file}"')
        lines.append("")
    path.write_text("\n".join(lines))


def _parse_node(entry: Any, where: str, base: Path, src: str) -> NodeEntry:
    if not isinstance(entry, dict):
        raise ConfigError(where, "must be a table with id, address, public_key", src)
    for key in ("id", "address", "public_key"):
        if key not in entry:
            raise ConfigError(f"{where}.{key}", "missing", src)
    extra = sorted(set(entry) - {"id", "address", "public_key", "key_file"})
    if extra:
        raise ConfigError(f"{where}.{extra[0]}", "unknown key", src)
    if not isinstance(entry["id"], int) or entry["id"] < 0:
        raise ConfigError(f"{where}.id", f"must be a non-negative integer, got {entry['id']!r}", src)
    address = entry["address"]
    match = _ADDRESS.match(address) if isinstance(address, str) else None
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"{where}.address", f"must look like tcp://HOST:PORT with 0 < PORT < 65536, got {address!r}", src)
    key_file = entry.get("key_file")
    if key_file is not None and not isinstance(key_file, str):
        raise ConfigError(f"{where}.key_file", "must be a path string", src)
    return NodeEntry(
        id=entry["id"],
        address=address,
        public_key=_decode_key(entry["public_key"], f"{where}.public_key", src),
        key_file=(base / key_file) if key_file else None,
    )


def _decode_key(value: Any, where: str, src: str) -> bytes:
    try:
        key = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        key = b""
    if len(key) != 32:
        raise ConfigError(where, "must be a base64 X25519 public key (32 bytes), as written by `p2pfl keygen`", src)
    return key


def _check_unique_addresses(nodes: dict[int, NodeEntry], src: str) -> None:
    seen: dict[str, int] = {}
    for node in nodes.values():
        if node.address in seen:
            raise ConfigError(f"nodes(id={node.id}).address", f"{node.address} is also used by node {seen[node.address]}", src)
        seen[node.address] = node.id
    keys: dict[bytes, int] = {}
    for node in nodes.values():
        if node.public_key in keys:
            raise ConfigError(f"nodes(id={node.id}).public_key", f"same key as node {keys[node.public_key]}", src)
        keys[node.public_key] = node.id


def _cluster_graph(spec: str, base: Path, n: int, seed: int, nodes: dict[int, NodeEntry], src: str) -> nx.Graph:
    candidate = base / spec
    try:
        g = topology.load(candidate) if candidate.exists() else topology.resolve(spec, n, seed)
        topology.validate(g, nodes.keys())
    except topology.TopologyError as exc:
        raise ConfigError("topology", str(exc), src) from exc
    return g


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("file", f"{path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("file", f"{path} is not valid TOML: {exc}") from exc


def _check_types(cfg: ExperimentConfig, source: str | None) -> None:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool}[str(f.type)]
        if isinstance(value, bool) and expected is not bool:
            raise ConfigError(f.name, f"must be {f.type}, got a boolean", source)
        if not isinstance(value, expected):
            raise ConfigError(f.name, f"must be {f.type}, got {type(value).__name__} {value!r}", source)
        if str(f.type) == "float":
            # nan slips through every range check (all comparisons are False) and inf through the
            # open-ended ones: both would train a NaN model or wait forever, never a useful run.
            if not math.isfinite(value):
                raise ConfigError(f.name, f"must be a finite number, got {value}", source)
            setattr(cfg, f.name, float(value))


def _check_task(task: str, source: str | None) -> None:
    """A built-in task name or a plug-in spec 'package.module:function' (imported when the task loads)."""
    if task in BUILTIN_TASKS or _PLUGIN_TASK.match(task):
        return
    raise ConfigError("task", f"unknown task {task!r}: use one of {', '.join(BUILTIN_TASKS)} "
                      "or a plug-in 'package.module:function'", source)


def _check_choice(name: str, value: str, choices: tuple[str, ...], source: str | None) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}", source)


def _is_file(spec: str) -> bool:
    return Path(spec).suffix in topology.FILE_EXTENSIONS or Path(spec).exists()
