"""Time-varying topologies: a fresh graph every round, computed alike by every node from (seed, round).

Epidemic Learning's s-peer sampling (`epidemic:s=S`, a random S-regular graph per round) and the
one-peer exponential graph (`onepeer-exp`, i paired with i XOR 2^((r - 1) mod log2 n)): the graphs
themselves, their files, the rules config enforces before anything starts, the strategy's view of
a round, and whole runs (`p2pfl simulate`, `p2pfl node` processes, nodes in one process) in which
the edges that carried each round's traffic are exactly that round's graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from helpers.processes import finish, make_cluster, node_records, start_node

from p2pfl import topology as T
from p2pfl.config import Cluster, ConfigError, ExperimentConfig
from p2pfl.inprocess import run_nodes
from p2pfl.messages import Kind
from p2pfl.secagg.group import SecAggParams
from p2pfl.simulate import compare_configs
from p2pfl.strategies import RoundContext, get
from p2pfl.topology import TimeVarying, TopologyError


def edges(g: nx.Graph) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in g.edges}


def both_ways(g: nx.Graph) -> set[tuple[int, int]]:
    return edges(g) | {(v, u) for u, v in edges(g)}


# ----------------------------------------------------------------------------- the graphs


@pytest.mark.parametrize("n, s", [(8, 2), (16, 3), (16, 4), (33, 4), (64, 7), (10, 9)])
def test_epidemic_rounds_are_s_regular_agree_for_a_seed_and_differ_across_rounds(n: int, s: int) -> None:
    t = T.resolve(f"epidemic:s={s}", n, 11)
    assert isinstance(t, TimeVarying) and (t.spec, t.degree, t.period) == (f"epidemic:s={s}", s, None)
    other = TimeVarying("epidemic", n, 11, s)  # another node's own object: nothing shared but the seed
    graphs = [edges(t.graph_at(r)) for r in range(1, 9)]
    for r, g in enumerate(graphs, start=1):
        assert g == edges(other.graph_at(r))
        assert sorted(t.graph_at(r).nodes) == list(range(n))
        assert all(d == s for _, d in t.graph_at(r).degree), (r, dict(t.graph_at(r).degree))
        assert g <= edges(t.union())
    if s < n - 1:  # the complete graph is the only (n-1)-regular one
        assert len({frozenset(g) for g in graphs}) == len(graphs), "every round draws a fresh graph"
        assert edges(TimeVarying("epidemic", n, 12, s).graph_at(1)) != graphs[0], "the seed matters"


def test_the_graph_is_the_same_in_another_process() -> None:
    code = ("import json; from p2pfl.topology import TimeVarying; t = TimeVarying('epidemic', 24, 5, 3); "
            "print(json.dumps([sorted(t.graph_at(r).edges) for r in range(1, 6)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    t = TimeVarying("epidemic", 24, 5, 3)
    assert json.loads(out) == [[list(e) for e in sorted(t.graph_at(r).edges)] for r in range(1, 6)]


def test_onepeer_exponential_pairs_i_with_i_xor_2_to_the_round() -> None:
    t = T.resolve("onepeer-exp", 16, 0)
    assert isinstance(t, TimeVarying) and (t.spec, t.degree, t.period) == ("onepeer-exp", 1, 4)
    for r in range(1, 10):
        bit = 1 << ((r - 1) % 4)
        assert edges(t.graph_at(r)) == {(i, i ^ bit) for i in range(16) if i < i ^ bit}
        assert all(d == 1 for _, d in t.graph_at(r).degree)
        assert edges(t.graph_at(r)) == edges(t.graph_at(r + 4))  # period log2 n
    assert edges(t.graph_at(1)) != edges(t.graph_at(2))
    union = t.union()  # the 4-dimensional hypercube
    assert all(d == 4 for _, d in union.degree) and union.number_of_edges() == 32
    assert all(bin(u ^ v).count("1") == 1 for u, v in union.edges)


def test_union_of_epidemic_is_complete_and_the_rounds_graph_is_cached_and_frozen() -> None:
    t = TimeVarying("epidemic", 12, 0, 3)
    assert edges(t.union()) == edges(nx.complete_graph(12))
    g = t.graph_at(3)
    assert t.graph_at(3) is g and t.adjacency_at(3) is t.adjacency_at(3), "nodes ask several times per round"
    assert nx.is_frozen(g)
    with pytest.raises(nx.NetworkXError):
        g.add_edge(0, 1)
    with pytest.raises(TypeError):
        t.adjacency_at(3)[0] = ()  # type: ignore[index]
    for r in range(1, 60):
        t.graph_at(r)
    assert len(t._cache) <= 16, "only the last rounds are kept"
    with pytest.raises(TopologyError, match="rounds are 1-based, got 0"):
        t.graph_at(0)


def test_round_weights_are_the_round_graphs_metropolis_hastings_row() -> None:
    t = TimeVarying("epidemic", 10, 3, 3)
    for r in (1, 2, 7):
        for i in range(10):
            assert t.weights_at(r, i) == pytest.approx(T.mh_weights(t.graph_at(r), i))
            assert t.weights_at(r, i) == pytest.approx({j: 0.25 for j in (*t.adjacency_at(r)[i], i)})  # EL's 1/(s+1)
    o = TimeVarying("onepeer-exp", 8)
    assert o.weights_at(2, 5) == {7: 0.5, 5: 0.5}


def test_effective_gap() -> None:
    onepeer = TimeVarying("onepeer-exp", 16)
    assert T.effective_gap(onepeer, 4) == 1.0  # one period averages exactly
    assert T.effective_gap(onepeer, 3) == pytest.approx(0.0, abs=1e-9)  # one dimension not mixed yet
    ring = T.generate("ring", 12)
    assert T.effective_gap(ring, 40) == T.spectral_gap(T.metropolis_hastings(ring))  # static: the spectral gap
    fixed = T.spectral_gap(T.metropolis_hastings(T.generate("regular", 16, seed=0, d=3)))
    assert T.effective_gap(TimeVarying("epidemic", 16, 0, 3), 40) > 2 * fixed
    big = TimeVarying("epidemic", 300, 0, 4)  # power iteration beyond the dense limit
    assert 0.3 < T.effective_gap(big, 10) < 0.8


def test_describe() -> None:
    text = T.describe(T.resolve("epidemic:s=3", 16, 0), "epidemic:s=3")
    assert "random 3-regular graph every round" in text and "120 edges, degree 15" in text
    assert "effective spectral gap" in text and "WARNING" not in text
    text = T.describe(T.resolve("onepeer-exp", 8, 0), "onepeer-exp")
    assert "i XOR 2^((r - 1) mod 3)" in text and "WARNING: every node has 1 peer(s) per round" in text
    T.validate(T.resolve("onepeer-exp", 8, 0), range(8))
    with pytest.raises(TopologyError, match=r"nodes 0\.\.7; node_ids has \[8\] beyond them"):
        T.validate(T.resolve("onepeer-exp", 8, 0), range(9))


@pytest.mark.parametrize(
    "spec, n, match",
    [
        ("epidemic:s=3", 7, r"topology 'epidemic': n \* s must be even .*got n=7, s=3"),
        ("epidemic:s=8", 8, r"s \(peers per round\) must be in \[1, n - 1\], got s=8, n=8"),
        ("epidemic:s=0", 8, r"got s=0, n=8"),
        ("epidemic:s=2.5", 8, "parameter s must be an integer, got 2.5"),
        ("epidemic:d=3", 8, r"unknown parameter\(s\) d \(valid: s\)"),
        ("onepeer-exp", 12, r"topology 'onepeer-exp': needs n to be a power of two .*got n=12"),
        ("onepeer-exp:s=2", 8, r"unknown parameter\(s\) s \(valid: none\)"),
        ("epidemics", 8, r"unknown topology 'epidemics'.*exponential, epidemic, onepeer-exp"),
        ("epidemic", None, "the number of nodes n is required"),
    ],
)
def test_bad_specs_are_refused_naming_the_problem(spec: str, n: int | None, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        T.resolve(spec, n, 0)


def test_default_degree_is_four() -> None:
    assert T.resolve("epidemic", 10, 0) == TimeVarying("epidemic", 10, 0, 4)


# ----------------------------------------------------------------------------- files and clusters


def test_file_round_trip(tmp_path: Path) -> None:
    for t in (TimeVarying("epidemic", 16, 7, 3), TimeVarying("onepeer-exp", 8, 2)):
        T.save(t, tmp_path / "t.json")
        assert T.load(tmp_path / "t.json") == t and T.resolve(str(tmp_path / "t.json"), None, 99) == t
        assert json.loads((tmp_path / "t.json").read_text())["time_varying"] == t.kind
    with pytest.raises(TopologyError, match=r"saved as \.json, not \.edgelist"):
        T.save(TimeVarying("onepeer-exp", 8), tmp_path / "t.edgelist")
    with pytest.raises(TopologyError, match="file has 8 nodes but n=16"):
        T.resolve(str(tmp_path / "t.json"), 16, 0)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"time_varying": "epidemic", "nodes": 8, "s": 3, "seed": 0, "d": 2}, r"unknown field 'd' .*nodes, seed, s"),
        ({"time_varying": "epidemic", "nodes": 8, "seed": 0}, "field 's' is missing"),
        ({"time_varying": "epidemic", "nodes": 8, "s": 3}, "field 'seed' is missing"),
        ({"time_varying": "epidemic", "nodes": 8, "s": "3", "seed": 0}, "field 's' must be an integer, got '3'"),
        ({"time_varying": "epidemic", "nodes": True, "s": 3, "seed": 0}, "field 'nodes' must be an integer"),
        ({"time_varying": "gossip", "nodes": 8}, "field 'time_varying' must be one of epidemic, onepeer-exp"),
        ({"time_varying": "epidemic", "nodes": 7, "s": 3, "seed": 0}, r"n \* s must be even"),
        ({"time_varying": "onepeer-exp", "nodes": 6, "seed": 0}, "power of two"),
        ({"time_varying": "onepeer-exp", "nodes": 8, "seed": 0, "s": 1}, "unknown field 's'"),
    ],
)
def test_bad_fields_in_a_topology_file_are_named(tmp_path: Path, data: dict, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TopologyError, match=f"{path}: .*{match}"):
        T.load(path)


def test_a_cluster_file_carries_the_time_varying_topology(tmp_path: Path) -> None:
    path = make_cluster(tmp_path, nodes=8, topology="epidemic:s=3")
    assert json.loads((tmp_path / "topology.json").read_text()) == {"time_varying": "epidemic", "nodes": 8, "s": 3,
                                                                     "seed": 0}
    cluster = Cluster.load(path, seed=5)  # the file's seed, not the loader's: every node reads the same
    assert cluster.time_varying == TimeVarying("epidemic", 8, 0, 3)
    assert edges(cluster.graph) == edges(nx.complete_graph(8))  # the transports connect over the union
    (tmp_path / "topology.json").write_text(json.dumps({"time_varying": "epidemic", "nodes": 6, "s": 3, "seed": 0}))
    with pytest.raises(ConfigError, match=r"topology: time-varying topology epidemic:s=3 runs on nodes 0\.\.5"):
        Cluster.load(path)
    (tmp_path / "topology.json").write_text(json.dumps({"time_varying": "epidemic", "nodes": 8, "s": 3}))
    with pytest.raises(ConfigError, match="topology: .*topology.json: field 'seed' is missing"):
        Cluster.load(path)


# ----------------------------------------------------------------------------- config and strategies


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(topology="epidemic:s=3", aggregation="fedavg"),
         r"aggregation: fedavg runs through a star's hub, and the time-varying topology epidemic:s=3 has none"),
        (dict(topology="onepeer-exp", aggregation="fednova"), "aggregation: fednova runs through a star's hub"),
        (dict(topology="onepeer-exp", secure_agg=True),
         r"topology: secure aggregation never unmasks a sum of fewer than min_contributors = 2 inputs, but "
         r"onepeer-exp gives each of the 8 nodes 1 peer\(s\) per round.*without secure aggregation"),
        (dict(topology="epidemic:s=2", secure_agg=True, min_contributors=3),
         r"min_contributors = 3 inputs, but epidemic:s=2 gives each of the 8 nodes 2 peer\(s\) per round.*"
         r"use epidemic:s=3 or more, or a lower min_contributors"),
        (dict(topology="onepeer-exp", nodes=12), r"topology: topology 'onepeer-exp': needs n to be a power of two"),
    ],
)
def test_config_refuses_what_cannot_run_before_anything_starts(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig(**kw).validate().graph()


def test_config_accepts_gossip_pushsum_and_secure_epidemic() -> None:
    assert isinstance(ExperimentConfig(topology="epidemic:s=2", secure_agg=True).validate().graph(), TimeVarying)
    assert isinstance(ExperimentConfig(topology="onepeer-exp", aggregation="pushsum").validate().graph(), TimeVarying)
    assert ExperimentConfig(topology="epidemic:s=3").validate().display_label() == "epidemic:s=3"
    runs = compare_configs(ExperimentConfig(nodes=16).validate(), ["regular:d=3", "epidemic:s=3", "onepeer-exp"])
    assert [c.topology for c in runs] == ["regular:d=3", "epidemic:s=3", "onepeer-exp"]
    with pytest.raises(ConfigError, match="onepeer-exp gives each of the 16 nodes 1 peer"):
        compare_configs(ExperimentConfig(nodes=16).validate(), ["epidemic:s=3", "onepeer-exp"], secure="on")


def test_secure_gossip_pipelines_the_next_share_phase_only_on_a_fixed_graph() -> None:
    """On a time-varying graph the next round's groups are other nodes' neighbourhoods: no pipelining."""
    t = TimeVarying("epidemic", 8, 0, 3)
    adj = t.adjacency_at(1)
    ctx = dict(node_id=0, round=1, last_round=3, adjacency=adj, weights=t.weights_at(1, 0), hub=None,
               own=np.zeros(4, np.float32), start=np.zeros(4, np.float32), fallback=None, samples=1, local_steps=1,
               expected=frozenset(adj[0]), active=frozenset(range(8)), secagg=SecAggParams(),
               secret=lambda peer, context: bytes(32))
    fixed = get("gossip").protocol(RoundContext(**ctx))
    varying = get("gossip").protocol(RoundContext(**ctx, time_varying=True))
    assert fixed._prepare_next and not varying._prepare_next
    assert get("gossip").senders(RoundContext(**ctx, time_varying=True)) == frozenset(adj[0])


# ----------------------------------------------------------------------------- whole runs


def _simulate(tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "p2pfl.cli", "simulate", "-t", "epidemic:s=2", "-n", "8", "-r", "3",
                           "--round-timeout", "30", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert json.loads((out / "topology.json").read_text())["time_varying"] == "epidemic"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["topology"] == "epidemic:s=2"
    assert summary["spectral_gap"] == pytest.approx(T.effective_gap(TimeVarying("epidemic", 8, 0, 2), 3))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_simulate_epidemic_every_round_of_every_node_aggregates_its_rounds_peers(tmp_path: Path, secure: bool) -> None:
    records = _simulate(tmp_path, *(["--secure"] if secure else []))
    assert sorted((r["round"], r["node"]) for r in records) == [(k, i) for k in (1, 2, 3) for i in range(8)]
    assert all(r["aggregation"] == "ok" for r in records), [r["aggregation"] for r in records]
    assert all(r["arrived"] == 2 for r in records), [r["arrived"] for r in records]  # that round's degree
    assert all(r["dropped"] == {} for r in records), [r["dropped"] for r in records if r["dropped"]]


@pytest.mark.parametrize("spec, secure", [("epidemic:s=3", False), ("epidemic:s=2", True), ("onepeer-exp", False)])
def test_the_edges_that_carry_a_rounds_traffic_are_that_rounds_graph(tmp_path: Path, spec: str, secure: bool) -> None:
    cfg = ExperimentConfig(nodes=8, topology=spec, rounds=3, lr=0.0, same_init=False, secure_agg=secure,
                           round_timeout=30, seed=4).validate()
    t = cfg.graph()
    assert isinstance(t, TimeVarying)
    sent: list = []
    nodes, records = run_nodes(cfg, tmp_path, "mem", sent)
    kind = Kind.SECAGG if secure else Kind.MODEL
    for r in (1, 2, 3):
        assert {(a, b) for a, b, m in sent if m.kind == kind and m.round == r} == both_ways(t.graph_at(r)), r
        assert all(rec.arrived == t.degree and rec.aggregation == "ok" for recs in records.values() for rec in recs)
    if spec == "onepeer-exp":  # lr = 0: log2(8) = 3 rounds of the one-peer hypercube average exactly
        final = np.stack([n.trainer.get_flat() for n in nodes.values()]).astype(np.float64)
        assert np.abs(final - final.mean(axis=0)).max() < 1e-6


def test_node_processes_agree_on_the_rounds_graph_from_the_cluster_file(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path, nodes=4, topology="onepeer-exp")
    procs = {k: start_node(cluster, k, tmp_path, 3, nodes=4, round_timeout=20.0) for k in range(4)}
    finish(procs, tmp_path)
    for k in range(4):
        records = node_records(tmp_path, k)
        assert [r["round"] for r in records] == [1, 2, 3], records
        assert [r["arrived"] for r in records] == [1, 1, 1]  # the round's one peer, never another
        assert all(r["dropped"] == {} for r in records), [r["dropped"] for r in records]
