"""Starting a node: from an experiment, its cluster and a node id to a `Node` ready to run.

Owns the one start-up path that `p2pfl node`, `simulate`'s workers and the tests' helpers share:
load the task and split it over the experiment's nodes (`Workload`, once per process: every
process of a run computes the same seeded split), load the node's private key and check it
against the cluster entry, take the node's shard and build the `Node`. Must not run the node,
write run directories or parse command lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from p2pfl.config import Cluster, ConfigError, ExperimentConfig, check_partition_size
from p2pfl.crypto import load_private_key, public_from_private
from p2pfl.data import shard
from p2pfl.node import Node, NodeSpec
from p2pfl.record import RoundRecord
from p2pfl.runtime import lean_optimizers
from p2pfl.training import Task, dataset_task, load_task, local_test_rows, partition_task


@dataclass(frozen=True)
class Workload:
    """The task and its split over the experiment's nodes (`parts[k]`: node k's training indices)."""

    task: Task
    parts: list[np.ndarray]
    local_tests: list[np.ndarray | None] | None = None  # node k's own test rows (partition natural), else None


def load_workload(config: ExperimentConfig) -> Workload:
    """The experiment's task, sized for and split over its nodes by its partition and seed.

    ConfigError (field `nodes`): too few training samples for the nodes (the config refuses that
    for the built-in tasks; a plug-in's size is known only here). ValueError: a plug-in task that
    fails when called, or a dataset that cannot be split this way.
    """
    lean_optimizers()  # once per process that builds nodes: faster, same results
    if config.dataset:  # read from disk (p2pfl.datasets); a bad file is a one-line error naming it
        try:
            task = dataset_task(config.dataset, config.data_dir, config.model, config.augment,
                                label_column=config.label_column, group_column=config.group_column)
        except ValueError as exc:
            raise ConfigError("dataset", str(exc)) from exc
    else:
        task = load_task(config.task, config.seed, config.nodes)
    check_partition_size(config.dataset or config.task, len(task.dataset.y_train), config.nodes)
    task.initial_flat(config.seed)  # the nodes' shared reference, made before simulate forks its workers
    try:
        parts = partition_task(task, config.nodes, config.partition, config.alpha, config.seed, config.shards_per_node)
    except ValueError as exc:
        if config.partition in ("iid", "dirichlet", "personas"):
            raise  # as before: a plug-in's data that cannot be split this way
        raise ConfigError("partition", str(exc)) from exc
    local = [local_test_rows(task, p) for p in parts] if config.partition == "natural" else None
    return Workload(task, parts, local)


def load_node_key(cluster: Cluster, node_id: int, key_file: str | Path | None = None) -> bytes:
    """Node `node_id`'s private key: `key_file`, else its cluster entry's key_file.

    ConfigError: the node is not in the cluster, no key file is known, or the key is another
    node's (its public key differs from the cluster entry). KeyFileError: the file is unreadable
    or not a key.
    """
    entry = cluster.require(node_id)
    path = Path(key_file) if key_file else entry.key_file
    if path is None:
        raise ConfigError("key", f"no --key given and the cluster entry of node {node_id} has no key_file")
    private_key = load_private_key(path)
    if public_from_private(private_key) != entry.public_key:
        raise ConfigError("key", f"{path} is not node {node_id}'s key: its public key differs from the cluster entry")
    return private_key


def build_node(config: ExperimentConfig, cluster: Cluster, node_id: int, *, workload: Workload | None = None,
               private_key: bytes | None = None, context: zmq.Context | None = None,
               on_round: Callable[[RoundRecord], None] | None = None) -> Node:
    """Node `node_id` of the experiment, on its shard of the task, with its key (loaded if not given).

    Pass `workload` when one process builds several nodes: loading and splitting the task once
    is what makes a process of many nodes cheap.
    """
    work = workload if workload is not None else load_workload(config)
    key = private_key if private_key is not None else load_node_key(cluster, node_id)
    spec = NodeSpec(node_id, config, cluster, key)
    own = shard(work.task.dataset, work.parts[node_id])
    rows = work.local_tests[node_id] if work.local_tests is not None else None
    if rows is not None:
        own.x_test, own.y_test = work.task.dataset.x_test[rows], work.task.dataset.y_test[rows]
    return Node(spec, work.task, own, context, on_round)
