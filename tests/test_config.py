"""Experiment and cluster files: every bad value is rejected before anything starts, naming the field."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from p2pfl.config import Cluster, ConfigError, ExperimentConfig, NodeEntry, write_cluster


def _key(i: int) -> bytes:
    return bytes([i + 1]) * 32


def _cluster(tmp_path: Path, n: int = 4, topology: str = "ring") -> Path:
    nodes = [NodeEntry(i, f"tcp://127.0.0.1:{6000 + i}", _key(i)) for i in range(n)]
    path = tmp_path / "cluster.toml"
    write_cluster(path, nodes, topology)
    return path


def test_defaults_are_valid_and_resolve_a_ring() -> None:
    cfg = ExperimentConfig().validate()
    g = cfg.graph()
    assert g.number_of_nodes() == cfg.nodes
    assert all(d == 2 for _, d in g.degree)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"nodes": 1}, "nodes"),
        ({"rounds": 0}, "rounds"),
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"partition": "sorted"}, "partition"),
        ({"aggregation": "allreduce"}, "aggregation"),
        ({"rounds": "ten"}, "rounds"),
        ({"secure_agg": 1}, "secure_agg"),
        ({"round_timeout": 0}, "round_timeout"),
        ({"secagg_threshold": 1.5}, "secagg_threshold"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_experiment_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(overrides)
    assert err.value.field == field
    assert field in str(err.value)


def test_experiment_toml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('[experiment]\nnodes = 6\ntopology = "complete"\nlr = 0.1\n')
    cfg = ExperimentConfig.load(path, {"lr": 0.2, "rounds": None})
    assert (cfg.nodes, cfg.topology, cfg.lr, cfg.rounds) == (6, "complete", 0.2, ExperimentConfig().rounds)


def test_experiment_toml_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("nodes = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.load(path)
    path.write_text("nodes = 0\n")
    with pytest.raises(ConfigError, match=r"exp.toml: nodes"):
        ExperimentConfig.load(path)
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.load(tmp_path / "missing.toml")


def test_fedavg_requires_a_star() -> None:
    with pytest.raises(ConfigError, match="aggregation"):
        ExperimentConfig(aggregation="fedavg", topology="ring").validate().graph()
    assert ExperimentConfig(aggregation="fedavg", topology="star").validate().graph().number_of_nodes() == 8


def test_unknown_topology_is_rejected_with_its_field() -> None:
    with pytest.raises(ConfigError, match="topology"):
        ExperimentConfig(topology="hypercube-of-doom").validate().graph()


def test_cluster_round_trip(tmp_path: Path) -> None:
    cluster = Cluster.load(_cluster(tmp_path))
    assert sorted(cluster.nodes) == [0, 1, 2, 3]
    assert cluster.nodes[2].public_key == _key(2)
    assert cluster.neighbours(0) == [1, 3]


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("tcp://127.0.0.1:6001", "tcp://127.0.0.1:6000", "address"),  # duplicate address
        ("tcp://127.0.0.1:6002", "udp://127.0.0.1:6002", "address"),
        ("tcp://127.0.0.1:6003", "tcp://127.0.0.1:99999", "address"),
        ("id = 3", "id = 2", "id"),  # duplicate id
        ("id = 3", 'id = "three"', "id"),
        (base64.b64encode(_key(1)).decode(), "bm90IGEga2V5", "public_key"),
        (base64.b64encode(_key(1)).decode(), base64.b64encode(_key(0)).decode(), "public_key"),  # same key twice
        ("id = 3", "id = 7", "topology"),  # ring ids 0..3 but cluster says 7
    ],
)
def test_bad_cluster_files_are_rejected(tmp_path: Path, old: str, new: str, field: str) -> None:
    path = _cluster(tmp_path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        Cluster.load(path)
    assert field in str(err.value)
    assert "cluster.toml" in str(err.value)


def test_cluster_topology_file_must_match_the_nodes(tmp_path: Path) -> None:
    (tmp_path / "graph.edgelist").write_text("0 1\n1 2\n2 0\n")  # 3 nodes, cluster has 4
    path = _cluster(tmp_path, topology="graph.edgelist")
    with pytest.raises(ConfigError, match="topology"):
        Cluster.load(path)


def test_cluster_missing_key_field(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('topology = "ring"\n[[nodes]]\nid = 0\naddress = "tcp://127.0.0.1:5000"\n')
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.public_key: missing"):
        Cluster.load(path)
    assert not os.path.exists(tmp_path / "keys")
