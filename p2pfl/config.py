"""Experiment and cluster configuration: TOML files plus overrides, validated into dataclasses.

Owns `ExperimentConfig` (what to train and how), `Cluster` (who the nodes are: id, address,
public key, topology) and `ConfigError`. Every bad value is rejected here, before anything
starts, with the field and the problem named. It does not start nodes or open sockets.

One source of truth. Each `ExperimentConfig` field is declared with `setting(...)`, which keeps
in the field's metadata everything else that is said about it: the help text, the command-line
flag (or why there is none: `file_only`), the commands that offer the flag, the choices, simple
bounds (ge/gt/le/lt) and, for the secure-aggregation parameters, the `SecAggParams` field it
sets. From those fields come

- the validation of single values (`validate`: type, choices, bounds, in field order);
- the click options of `p2pfl simulate|compare|node` (`cli._experiment_options`: flag, type,
  choices, help and the "[default: ...]" shown in --help);
- the JSON Schema of an experiment file (`json_schema`, `p2pfl config schema`);
- the reference of every setting (`reference_markdown`, docs/config-reference.md);
- the secure-aggregation parameters of a node (`ExperimentConfig.secagg_params`).

Rules that relate several fields (DP placement against the strategy, compression against secure
aggregation, ...) are written once, in `validate`. Why a dataclass with metadata rather than
pydantic: callers use `dataclasses.replace`/`fields`, runs must stay bit-identical, and the
project's value checks (finite floats, no bools for numbers, errors that name the field and the
file) are already here; what was missing was one place that says what a setting is, not another
validation engine.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from p2pfl import datasets, strategies, topology
from p2pfl.data import DEFAULT_MIN_SIZE

if TYPE_CHECKING:
    from p2pfl.secagg.group import SecAggParams

PARTITIONS = ("iid", "dirichlet", "personas", "pathological", "shard", "natural", "size-skew")
OPTIMIZERS = ("sgd", "adam")
DP_MODES = ("off", "local", "central", "distributed")
DP_UNITS = ("record", "node")
COMPRESSIONS = ("none", "q8", "q16")
BUILTIN_TASKS = ("digits-mlp", "digits-cnn", "apps", "mnist1d")  # training.BUILTIN_TASKS, named here without importing torch
DEFAULT_TASK = "digits-mlp"
GROUPED_TASKS = ("apps",)  # built-in tasks whose dataset has user groups (partition = "personas")
# Training samples of the built-in tasks whose data does not grow with the node count, known here
# so that a split they cannot support is refused without loading them (tests/test_task_scaling.py
# checks them against the loaded tasks). mnist1d is not here: it generates enough for any count.
TASK_TRAIN_SAMPLES = {"digits-mlp": 1437, "digits-cnn": 1437, "apps": 8000}
SCALING_TASK = "mnist1d"  # the built-in task to suggest when the data runs out
COMMANDS = ("simulate", "compare", "node")  # the commands that take experiment options
MODELS = ("mlp", "cnn28", "cnn32", "resnet8", "resnet20", "char-lstm")  # models.MODELS, named without importing torch
TABLE_DATASETS = ("csv", "hf")  # datasets whose rows may name their group in a column (group_column)
_PLUGIN_TASK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_ADDRESS = re.compile(r"^tcp://([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")
# nodes of one host: a Unix socket at an absolute path that fits sun_path (108 bytes with the NUL)
_IPC_ADDRESS = re.compile(r"^ipc://(/[^\x00]{1,106})$")
HUB_PREFIX = "hub+"


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the problem."""

    def __init__(self, field_name: str, problem: str, source: str | None = None) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field_name}: {problem}")
        self.field = field_name


def setting(default: Any, help: str, *, flag: str | None = None, short: str | None = None,
            commands: tuple[str, ...] = COMMANDS, file_only: str = "", hidden: bool = False,
            choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            note: str = "", secagg: str | None = None, directory: bool = False) -> Any:
    """A dataclass field of `ExperimentConfig` with everything said about it in its metadata.

    help: one sentence or two, used by --help, the JSON schema and docs/config-reference.md.
    flag: the command-line flag ("--secure/--no-secure" for a boolean pair); default: the
        field's name with dashes (booleans: "--name/--no-name"). short: a one-letter alias.
    commands: which of simulate, compare, node offer the flag; `file_only` says why a command
        (or, with commands=(), every command) has none: the setting is then set in the file.
    choices: allowed values (a callable for a registry read at validation time).
    ge/gt/le/lt: bounds; `note` is added to the message of a value out of them.
    secagg: the `SecAggParams` field this setting sets (`ExperimentConfig.secagg_params`).
    directory: the value is a directory path (the option refuses an existing file).
    """
    meta = dict(help=help, flag=flag, short=short, commands=commands, file_only=file_only, hidden=hidden,
                choices=choices, ge=ge, gt=gt, le=le, lt=lt, note=note, secagg=secagg, directory=directory)
    return field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> tuple[Any, ...] | None:
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


@dataclass
class ExperimentConfig:
    """Everything that defines a run; the same on every node of a cluster."""

    task: str = setting("digits-mlp", "digits-mlp, digits-cnn, apps (next-app recommendation), mnist1d (1-D digits "
                        "generated for the node count: 40 training samples per node, at least 4,000), or a plug-in "
                        "'package.module:function' returning a task.")
    nodes: int = setting(8, "Number of nodes (node: taken from the cluster file; if given it must agree).",
                         short="-n", ge=2, note="(a decentralized run needs at least 2 nodes)")
    topology: str = setting("ring", "Topology: a name (ring, torus, complete, star, regular:d=4, ...) or a graph file.",
                            short="-t", commands=("simulate",),
                            file_only="compare takes --topologies; node runs the cluster file's topology")
    aggregation: str = setting("gossip", "The aggregation strategy (p2pfl.strategies); fedavg and the others with a "
                               "hub run on a star (fedavg: the star baseline).", choices=strategies.names,
                               commands=("simulate", "node"), file_only="compare sets it per topology (star-fedavg)")
    rounds: int = setting(40, "Training rounds.", short="-r", ge=1)
    local_epochs: int = setting(1, "Local epochs per round.", ge=1)
    local_steps: int = setting(0, "Local SGD steps per round; > 0 overrides local_epochs.", ge=0)
    lr: float = setting(0.05, "Learning rate.", ge=0, note="(0 = pure averaging)")
    momentum: float = setting(0.9, "SGD momentum (Adam uses its default betas).", ge=0, lt=1)
    batch_size: int = setting(32, "Mini-batch size of local training.", ge=1)
    optimizer: str = setting("sgd", "Local optimizer.", choices=OPTIMIZERS)
    partition: str = setting("iid", "How the data is split: iid, dirichlet (label skew) or personas (a task with "
                             "user groups: users of a few personas per node).", choices=PARTITIONS)
    alpha: float = setting(0.5, "Dirichlet concentration for partition dirichlet, personas or size-skew.", gt=0)
    # -- data from disk (p2pfl/datasets, docs/datasets.md) and the models that fit it
    dataset: str = setting("", "A dataset read from data_dir in its publisher's format: mnist, fashion-mnist, "
                           "emnist-SPLIT, cifar10, cifar100 (binary versions), femnist, shakespeare (LEAF JSON), npz, "
                           "csv, imagefolder, hf (docs/datasets.md). Empty: the task's data.",
                           choices=lambda: ("", *datasets.names()))
    data_dir: str = setting("", "The folder holding the dataset's files (docs/datasets.md: the layout of each).",
                            directory=True)
    model: str = setting("", "Model for the dataset: mlp, cnn28, cnn32, resnet8, resnet20 (GroupNorm), char-lstm "
                         "(empty: the dataset's default).", choices=("", *MODELS))
    augment: bool = setting(False, "Augment training images as the CIFAR baselines do: random crop of the image "
                            "padded by 4 pixels, random horizontal flip (a dataset of images only).")
    label_column: str = setting("label", "csv / hf datasets: the column holding the label.")
    group_column: str = setting("", "csv / hf datasets: a column naming each row's writer or user; partition natural "
                                "keeps each of them on one node.")
    shards_per_node: int = setting(2, "partition pathological: labels per node; shard: label-sorted shards per node "
                                   "(McMahan et al. 2017).", ge=1)
    eval_sample: int = setting(2000, "Evaluate each round on a fixed seeded sample of this many test rows (0: the "
                               "whole test set); the last round always evaluates on the whole test set.", ge=0)
    seed: int = setting(0, "Seed of the data split, the models, generated topologies and schedules.", ge=0)
    same_init: bool = setting(True, "Every node starts from the same random model (--no-same-init: each from its "
                              "own; averaging studies).")
    eval_every: int = setting(1, "Evaluate the model every this many rounds.", ge=1)
    round_timeout: float = setting(10.0, "Seconds per protocol phase before missing peers are skipped.", gt=0)
    startup_timeout: float = setting(120.0, "Seconds to wait for neighbours to come up.", gt=0)
    secure_agg: bool = setting(False, "Secure aggregation with secret-shared masks (docs/secagg.md).",
                               flag="--secure/--no-secure")
    secagg_threshold: float = setting(0.5, "Secure aggregation: Shamir threshold as a fraction of the holders of a "
                                      "member's secrets, t = floor(threshold * holders) + 1 (0.5: strict majority).",
                                      ge=0.5, lt=1, note="(see docs/secagg.md)", secagg="threshold")
    min_contributors: int = setting(2, "Privacy floor: secure aggregation never unmasks a sum of fewer contributors; "
                                    "distributed DP sizes each share of the noise by it.", ge=2,
                                    note="(a sum of one input reveals that input)", secagg="min_contributors")
    secagg_verify_views: bool = setting(
        True, "Secure aggregation: members confirm the aggregator's view before revealing shares where it drops "
        "someone or the group is sparse. --no-verify-views: never, two message steps fewer in those rounds, safe "
        "against honest-but-curious nodes only (docs/threat-model.md).",
        flag="--verify-views/--no-verify-views", secagg="verify_views")
    secagg_clip: float = setting(16.0, "Secure aggregation: each coordinate of a contribution is clipped to "
                                 "[-clip, clip] before fixed-point encoding.", gt=0, secagg="clip")
    secagg_bits: int = setting(32, "Secure aggregation: width of the fixed-point integers (the masked wire format "
                               "is uint32, so only 32).", choices=(32,), secagg="bits")
    secagg_sparse_above: int = setting(12, "Secure aggregation: groups with more members than this mask with a "
                                       "sparse graph (SecAgg+).", ge=2, secagg="sparse_above")
    secagg_sparse_degree: int = setting(0, "Secure aggregation: masking degree in sparse groups, >= 2 (0 = automatic, "
                                        "masking.auto_degree of the group size).", ge=0, secagg="sparse_degree")
    secagg_max_samples: int = setting(1 << 16, "Secure FedAvg: a leaf's weight is min(samples, max_samples) / "
                                      "max_samples.", ge=1, lt=1 << 40, secagg="max_samples")
    secagg_patience: int = setting(3, "Secure aggregation: a member (or FedAvg leaf) gives up after this many "
                                   "deadlines in a row without a message from its aggregator.", ge=1, secagg="patience")
    secagg_max_deadlines: int = setting(8, "Secure aggregation: after this many deadlines in one round the protocol "
                                        "finishes whatever is pending.", ge=4, note="(one per aggregator phase)",
                                        secagg="max_deadlines")
    down_after: int = setting(3, "Rounds a neighbour may stay silent before it is no longer waited for.", ge=1)
    checkpoint_dir: str = setting("", "Checkpoint every checkpoint_every rounds here; resume from it on restart "
                                  "(empty: no checkpoints).", commands=("node",), directory=True,
                                  file_only="simulate and compare do not checkpoint")
    checkpoint_every: int = setting(1, "Rounds between checkpoints.", ge=1, commands=("node",),
                                    file_only="simulate and compare do not checkpoint")
    processes: int = setting(0, "OS processes to spread the nodes over (0 = automatic).", ge=0,
                             commands=("simulate", "compare"), file_only="node is one process")
    ray: str = setting("", "Address of a Ray cluster's head (HOST:PORT): place the worker processes as Ray actors "
                       "across its machines, each node keyed and bound on its own host (needs pip install "
                       "'p2pfl[ray]'; run on a machine of the cluster). Empty: every process on this host.",
                       commands=("simulate", "compare"), file_only="node is one node of a cluster file")
    label: str = setting("", "Name of the run in reports (empty: derived from topology and options).",
                         commands=("simulate", "node"), file_only="compare labels each of its runs")
    # differential privacy (docs/privacy.md): clip each round update to dp_clip, noise sigma * clip
    dp: str = setting("off", "Differential privacy: local (each node noises what it sends), central (the FedAvg hub "
                      "noises the average), distributed (secure FedAvg: each leaf adds a share). See docs/privacy.md.",
                      choices=DP_MODES)
    dp_clip: float = setting(1.0, "DP: C, the L2 bound of a node's round update.", gt=0)
    dp_noise: float = setting(1.0, "DP: sigma, the noise std divided by C (the noise multiplier).", gt=0)
    dp_delta: float = setting(1e-5, "DP: delta of the reported (epsilon, delta).", gt=0, lt=1)
    dp_budget: float = setting(0.0, "DP: epsilon a node may spend; then it stops sharing (0 = no limit).", ge=0)
    dp_unit: str = setting("record", "DP: unit of privacy, one record of a node or all of a node's data.",
                           choices=DP_UNITS)
    dp_test_seed: int = setting(-1, "TEST ONLY: >= 0 makes the DP noise a seeded stream, which protects nothing "
                                "(-1: cryptographic noise).", ge=-1, hidden=True,
                                note="(-1: off, cryptographic noise; or a seed >= 0)")
    fedprox_mu: float = setting(0.0, "FedProx proximal term mu/2 ||w - w_round_start||^2 (0 = plain local training).",
                                ge=0)
    participation: float = setting(1.0, "Probability that a node trains and shares in a round.", gt=0, le=1)
    fedavg_sample: int = setting(0, "Star FedAvg: leaves the hub samples per round (0 = all).", ge=0,
                                 note="(0 = every leaf)")
    compression: str = setting("none", "Plain gossip / FedAvg: q8 or q16 quantized vectors with error feedback.",
                               choices=COMPRESSIONS)
    # privacy audit (docs/privacy.md, "Measured"): simulate only; p2pfl node refuses it
    record: str = setting("", "Privacy audit: node ids (e.g. 0 or 0,5) whose decrypted view is recorded in the run "
                          "directory (view/), with every node's true models (truth/), for `p2pfl audit` (empty: off).",
                          commands=("simulate", "compare"),
                          file_only="node refuses to record, so that no deployment records by accident")

    def validate(self, source: str | None = None) -> "ExperimentConfig":
        """Check every field, then the rules between fields; raise `ConfigError` naming the first bad one."""
        _check_types(self, source)
        _check_task(self.task, source)
        for f in fields(self):
            _check_values(f, getattr(self, f.name), source)
        if self.secagg_sparse_degree == 1:
            raise ConfigError("secagg_sparse_degree", "must be 0 (automatic) or >= 2, got 1", source)
        if self.partition == "personas" and self.task in BUILTIN_TASKS and self.task not in GROUPED_TASKS:
            raise ConfigError("partition", f"personas splits users by persona: it needs a task with user groups "
                              f"({', '.join(GROUPED_TASKS)}), not {self.task}", source)
        self._validate_dataset(source)
        if self.task in TASK_TRAIN_SAMPLES and not self.dataset:  # a plug-in's or a dataset's size: known once it loads
            check_partition_size(self.task, TASK_TRAIN_SAMPLES[self.task], self.nodes, source)
        self._validate_knobs(source)
        self.record_nodes(source)
        return self

    def record_nodes(self, source: str | None = None) -> tuple[int, ...]:
        """The node ids of `record` (sorted; empty: recording off), or ConfigError naming the problem."""
        ids: list[int] = []
        for part in (self.record.split(",") if self.record.strip() else []):
            part = part.strip()
            if not part.isdigit():
                raise ConfigError("record", f"{self.record!r}: give node ids separated by commas, e.g. 0 or 0,5 "
                                  f"({part!r} is not a node id)", source)
            if int(part) >= self.nodes:
                raise ConfigError("record", f"{self.record!r}: node {part} does not exist in a run of {self.nodes} "
                                  f"nodes (ids 0..{self.nodes - 1})", source)
            if int(part) in ids:
                raise ConfigError("record", f"{self.record!r}: node {part} is named twice", source)
            ids.append(int(part))
        return tuple(sorted(ids))

    def _validate_dataset(self, source: str | None) -> None:
        """dataset, data_dir, model, augment, group_column and the partitions that need a dataset's groups."""
        if not self.dataset:
            for name in ("data_dir", "model", "group_column"):
                if getattr(self, name):
                    raise ConfigError(name, "is a setting of a dataset read from disk: set dataset too", source)
            if self.augment:
                raise ConfigError("augment", "augments a dataset of images read from disk: set dataset too", source)
            if self.partition == "natural" and self.task in BUILTIN_TASKS and self.task not in GROUPED_TASKS:
                raise ConfigError("partition", f"natural keeps each writer or user on one node: it needs a dataset with "
                                  f"them (femnist, shakespeare, or group_column of a csv / hf dataset), not {self.task}",
                                  source)
            return
        if not self.data_dir:
            raise ConfigError("data_dir", f"dataset {self.dataset} is read from files: give the folder that holds them "
                              "(--data-dir DIR; docs/datasets.md shows each layout)", source)
        if self.task != DEFAULT_TASK:
            raise ConfigError("dataset", f"give a task or a dataset, not both (task = {self.task}, dataset = "
                              f"{self.dataset})", source)
        if self.partition == "personas":
            raise ConfigError("partition", "personas is the apps task's split; a dataset from disk has natural "
                              "(by writer or group column) instead", source)
        if self.group_column and self.dataset not in TABLE_DATASETS:
            raise ConfigError("group_column", f"names a column of a table ({', '.join(TABLE_DATASETS)}); "
                              f"{self.dataset} has its own writers or none", source)
        if self.partition == "natural" and not (datasets.get(self.dataset).natural or self.group_column):
            raise ConfigError("partition", f"natural needs each row's writer or user: {self.dataset} has none "
                              "(femnist, shakespeare and an npz with a group array have; a csv or hf table needs group_column)", source)

    def _validate_knobs(self, source: str | None) -> None:
        """DP, FedProx, participation and compression: combinations."""
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

    def graph(self) -> topology.Topology:
        """The topology, resolved and validated for `nodes` nodes: a graph, or a `topology.TimeVarying`
        (a time-varying spec such as epidemic:s=3 or onepeer-exp), checked against the strategy."""
        try:
            g = topology.resolve(self.topology, self.nodes, self.seed)
            topology.validate(g, range(self.nodes))
        except topology.TopologyError as exc:
            raise ConfigError("topology", str(exc)) from exc
        self.check_topology(g)
        return g

    def check_topology(self, topo: topology.Topology, source: str | None = None) -> None:
        """The rules between this experiment and its topology, before anything starts: a strategy that
        needs a hub gets a star; a time-varying topology has no hub, and under secure aggregation its
        per-round degree must reach min_contributors (else every round of every node would fail)."""
        strategy = strategies.get(self.aggregation)
        if not isinstance(topo, topology.TimeVarying):
            if strategy.needs_hub and hub_of(topo) is None:
                raise ConfigError("aggregation", f"{self.aggregation} needs a star topology (one hub linked to every "
                                  "other node)", source)
            return
        if strategy.needs_hub:
            raise ConfigError("aggregation", f"{self.aggregation} runs through a star's hub, and the time-varying "
                              f"topology {topo.spec} has none (its graph changes every round): use a gossip strategy "
                              "such as aggregation = gossip", source)
        if self.secure_agg and topo.degree < self.min_contributors:
            m = self.min_contributors
            if topo.kind == "epidemic":
                fix = f"use epidemic:s={m} or more" + (", or a lower min_contributors (at least 2)" if m > 2 else "")
            else:
                fix = "run it without secure aggregation, or use epidemic:s=2 or more"
            raise ConfigError("topology", f"secure aggregation never unmasks a sum of fewer than min_contributors = {m} "
                              f"inputs, but {topo.spec} gives each of the {topo.nodes} nodes {topo.degree} peer(s) per "
                              f"round, so every secure round would fail: {fix}", source)

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

    def secagg_params(self) -> "SecAggParams":
        """The secure-aggregation parameters of this run: every field with `secagg` metadata, one place."""
        from p2pfl.secagg.group import SecAggParams

        return SecAggParams(**{f.metadata["secagg"]: getattr(self, f.name) for f in fields(self) if f.metadata.get("secagg")})

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


_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def option_names(f: dataclasses.Field) -> list[str]:
    """The command-line spellings of a setting: its flag (a "--x/--no-x" pair for booleans) and short alias."""
    flag = f.metadata.get("flag")
    if flag is None:
        dashed = f.name.replace("_", "-")
        flag = f"--{dashed}/--no-{dashed}" if str(f.type) == "bool" else f"--{dashed}"
    return [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])


def default_text(value: Any) -> str:
    """A default as a TOML value ("" for an empty string, true/false for booleans)."""
    return json.dumps(value) if isinstance(value, (bool, str)) else repr(value)


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of an experiment file's settings, generated from the fields.

    The settings sit at the top level of the TOML file or in its [experiment] table; the schema
    describes that table. Bounds and choices are the single-value rules of `validate`; the rules
    between fields (see `ExperimentConfig.validate`) are not expressible here and are checked on load.
    """
    props: dict[str, Any] = {}
    for f in fields(ExperimentConfig):
        meta = f.metadata
        prop: dict[str, Any] = {"type": _JSON_TYPES[str(f.type)], "default": f.default, "description": meta["help"]}
        choices = choices_of(f)
        if choices is not None:
            prop["enum"] = list(choices)
        for key, word in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"), ("lt", "exclusiveMaximum")):
            if meta.get(key) is not None:
                prop[word] = meta[key]
        if meta["commands"]:
            prop["x-cli"] = {"flags": option_names(f), "commands": list(meta["commands"])}
        if meta["file_only"]:
            prop["x-file-only"] = meta["file_only"]
        props[f.name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "p2pfl experiment",
        "description": "Settings of a p2pfl experiment file (top level, or its [experiment] table). Rules between "
                       "settings are checked when the file is loaded (p2pfl.config.ExperimentConfig.validate).",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }


def reference_markdown() -> str:
    """docs/config-reference.md: every setting with its TOML default, flag, commands, bounds and help."""
    lines = [
        "# Experiment settings",
        "",
        "Generated from `p2pfl/config.py` by `p2pfl config reference` (do not edit by hand;",
        "`tests/test_config_schema.py` checks that it is up to date). The JSON Schema of the same",
        "settings: `p2pfl config schema`.",
        "",
        "Every setting can be written in an experiment TOML file given with `--config`, at the top",
        "level or in an `[experiment]` table; a command-line flag, where there is one, overrides the",
        "file. Rules that relate several settings (for example `dp = \"distributed\"` needs",
        "`secure_agg = true`) are checked when the configuration is loaded, before anything starts.",
        "",
        "```toml",
        "[experiment]",
    ]
    for f in fields(ExperimentConfig):
        lines.append(f"{f.name} = {default_text(f.default)}")
    lines += ["```", "", "| setting | type | default | flag (commands) | allowed | description |", "|---|---|---|---|---|---|"]
    for f in fields(ExperimentConfig):
        meta = f.metadata
        if meta["commands"]:
            where = "all" if tuple(meta["commands"]) == COMMANDS else ", ".join(meta["commands"])
            flag = f"`{' '.join(option_names(f))}` ({where})"
            if meta["hidden"]:
                flag += ", hidden"
        else:
            flag = "file only"
        if meta["file_only"]:
            flag += f"; not a flag of the others: {meta['file_only']}" if meta["commands"] else f": {meta['file_only']}"
        described = meta["help"].replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.type} | `{default_text(f.default)}` | {flag} | {_allowed(f)} | {described} |")
    return "\n".join(lines) + "\n"


def _allowed(f: dataclasses.Field) -> str:
    choices = choices_of(f)
    parts = [", ".join(f"`{c}`" for c in choices)] if choices is not None else []
    meta = f.metadata
    for key, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{op} {_num(meta[key])}")
    if meta.get("note"):
        parts.append(meta["note"].strip("()"))
    return "; ".join(parts)


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
    graph: nx.Graph  # a time-varying topology's union: every edge that can occur (the transports connect over it)
    path: Path | None = None
    topology_spec: str = ""
    time_varying: topology.TimeVarying | None = None  # round r's graph: time_varying.graph_at(r); None: `graph`

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
        topo = _cluster_graph(spec, path.parent, len(nodes), seed, nodes, src)
        if isinstance(topo, topology.TimeVarying):
            return cls(nodes=nodes, graph=topo.union(), path=path, topology_spec=spec, time_varying=topo)
        return cls(nodes=nodes, graph=topo, path=path, topology_spec=spec)

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
    # hub+: the endpoint of a process hosting many nodes (`transports.hub`); the same rules after it
    bare = address.removeprefix(HUB_PREFIX) if isinstance(address, str) else None
    match = _ADDRESS.match(bare) if bare is not None else None
    ipc = _IPC_ADDRESS.match(bare) if bare is not None else None
    if not ipc and (not match or not 0 < int(match.group(2)) < 65536):
        raise ConfigError(f"{where}.address", "must look like tcp://HOST:PORT with 0 < PORT < 65536, or "
                          "ipc:///ABSOLUTE/PATH (nodes of one host), optionally after hub+ (many nodes of one "
                          f"process), got {address!r}", src)
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
        if node.address in seen and not node.address.startswith(HUB_PREFIX):  # a hub hosts many nodes
            raise ConfigError(f"nodes(id={node.id}).address", f"{node.address} is also used by node {seen[node.address]}", src)
        seen[node.address] = node.id
    keys: dict[bytes, int] = {}
    for node in nodes.values():
        if node.public_key in keys:
            raise ConfigError(f"nodes(id={node.id}).public_key", f"same key as node {keys[node.public_key]}", src)
        keys[node.public_key] = node.id


def _cluster_graph(spec: str, base: Path, n: int, seed: int, nodes: dict[int, NodeEntry],
                   src: str) -> topology.Topology:
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


def check_partition_size(task: str, samples: int, nodes: int, source: str | None = None) -> None:
    """ConfigError (field `nodes`) unless `samples` training samples give each of `nodes` nodes its minimum.

    The minimum is the partitions' (`data.DEFAULT_MIN_SIZE`); a split below it fails in every
    worker after start-up, so it is refused here with the numbers and the way out.
    """
    need = nodes * DEFAULT_MIN_SIZE
    if samples >= need:
        return
    instead = f"--task {SCALING_TASK} (its data grows with the node count)" if task != SCALING_TASK else "a larger dataset"
    raise ConfigError("nodes", f"{task} has {samples} training samples: {nodes} nodes with at least "
                      f"{DEFAULT_MIN_SIZE} each need {need}; use {instead} or at most "
                      f"{samples // DEFAULT_MIN_SIZE} nodes", source)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...], source: str | None) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(map(str, choices))}, got {value!r}", source)


def _check_values(f: dataclasses.Field, value: Any, source: str | None) -> None:
    """The single-value rules of a field's metadata: its choices and its bounds."""
    choices = choices_of(f)
    if choices is not None:
        _check_choice(f.name, value, choices, source)
    meta = f.metadata
    ge, gt, le, lt = meta.get("ge"), meta.get("gt"), meta.get("le"), meta.get("lt")
    ok = ((ge is None or value >= ge) and (gt is None or value > gt)
          and (le is None or value <= le) and (lt is None or value < lt))
    if ok:
        return
    low, high = (ge, "[") if ge is not None else (gt, "(")
    top, close = (le, "]") if le is not None else (lt, ")")
    if low is not None and top is not None:
        rule = f"in {high}{_num(low)}, {_num(top)}{close}"
    elif low is not None:
        rule = f"{'>=' if ge is not None else '>'} {_num(low)}"
    else:
        rule = f"{'<=' if le is not None else '<'} {_num(top)}"
    note = f" {meta['note']}" if meta.get("note") else ""
    raise ConfigError(f.name, f"must be {rule}{note}, got {value}", source)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _is_file(spec: str) -> bool:
    return Path(spec).suffix in topology.FILE_EXTENSIONS or Path(spec).exists()
