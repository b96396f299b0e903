"""Tests for p2pfl.topology: generators, files, validation, MH weights, spectral figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfl import topology as T
from p2pfl.topology import TopologyError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIR = ROOT / "topologies"
SHIPPED = {
    "ring8.edgelist": ("ring", 8, {}),
    "ring16.edgelist": ("ring", 16, {}),
    "star8.edgelist": ("star", 8, {}),
    "complete8.edgelist": ("complete", 8, {}),
    "torus16.graphml": ("torus", 16, {}),
    "regular16_d4.json": ("regular", 16, {"d": 4}),
    "exponential16.json": ("exponential", 16, {}),
    "small_world16_k4.json": ("small_world", 16, {"k": 4}),
}
# sizes each generator accepts
SIZES = {
    "ring": [3, 4, 7, 16, 33],
    "torus": [9, 12, 16, 30, 36],
    "complete": [2, 3, 8, 20],
    "star": [2, 3, 8, 20],
    "regular": [5, 8, 16, 30],
    "erdos_renyi": [2, 5, 16, 40],
    "small_world": [5, 8, 16, 40],
    "exponential": [2, 3, 8, 16, 33],
}


def edges(g: nx.Graph) -> set[tuple[int, int]]:
    return {(min(u, v), max(u, v)) for u, v in g.edges}


def assert_mh_ok(g: nx.Graph) -> None:
    w = T.metropolis_hastings(g)
    n = g.number_of_nodes()
    assert w.shape == (n, n)
    assert np.array_equal(w, w.T), "MH matrix must be exactly symmetric"
    assert (w >= -1e-15).all(), "MH weights must be non-negative"
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    order = sorted(g.nodes)
    for i, u in enumerate(order):  # zero exactly off the graph
        for j, v in enumerate(order):
            if i != j and not g.has_edge(u, v):
                assert w[i, j] == 0.0


def direct_gap(w: np.ndarray) -> float:
    lam = np.sort(np.real(np.linalg.eigvals(w)))[::-1]
    return float(1.0 - max(abs(lam[1]), abs(lam[-1])))


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize("fname", sorted(SHIPPED))
def test_shipped_file_valid_and_mh_ok(fname: str) -> None:
    g = T.load(SHIPPED_DIR / fname)
    T.validate(g)
    assert_mh_ok(g)
    assert T.spectral_gap(T.metropolis_hastings(g)) == pytest.approx(direct_gap(T.metropolis_hastings(g)), abs=1e-9)


@pytest.mark.parametrize("fname", sorted(SHIPPED))
def test_shipped_file_matches_generator(fname: str) -> None:
    name, n, params = SHIPPED[fname]
    assert edges(T.load(SHIPPED_DIR / fname)) == edges(T.generate(name, n, seed=0, **params))


def test_every_shipped_file_is_listed() -> None:
    on_disk = {p.name for p in SHIPPED_DIR.iterdir() if p.suffix in T.FILE_EXTENSIONS}
    assert on_disk == set(SHIPPED)


# ----------------------------------------------------------------------------- generators


@pytest.mark.parametrize("name", sorted(T.GENERATORS))
def test_generator_connected_sized_deterministic(name: str) -> None:
    for n in SIZES[name]:
        for seed in (0, 1, 7):
            g = T.generate(name, n, seed=seed)
            T.validate(g)
            assert sorted(g.nodes) == list(range(n))
            assert nx.is_connected(g)
            assert edges(g) == edges(T.generate(name, n, seed=seed))
            assert_mh_ok(g)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(T.GENERATORS)),
    idx=st.integers(0, 10),
    seed=st.integers(0, 2**31 - 1),
)
def test_generators_property(name: str, idx: int, seed: int) -> None:
    n = SIZES[name][idx % len(SIZES[name])]
    g = T.generate(name, n, seed=seed)
    T.validate(g, range(n))
    assert_mh_ok(g)
    w = T.metropolis_hastings(g)
    assert T.spectral_gap(w) == pytest.approx(direct_gap(w), abs=1e-9)
    assert 0.0 < T.spectral_gap(w) <= 1.0 + 1e-12


def test_random_generators_depend_on_seed() -> None:
    for name in ("regular", "erdos_renyi", "small_world"):
        graphs = {frozenset(edges(T.generate(name, 16, seed=s))) for s in range(5)}
        assert len(graphs) > 1, name


def test_generator_shapes() -> None:
    assert all(d == 2 for _, d in T.generate("ring", 10).degree)
    assert T.generate("complete", 6).number_of_edges() == 15
    star = T.generate("star", 6)
    assert star.degree(0) == 5 and all(star.degree(i) == 1 for i in range(1, 6))
    assert all(d == 3 for _, d in T.generate("regular", 10, d=3).degree)
    assert T.torus_shape(16) == (4, 4) and T.torus_shape(36) == (6, 6) and T.torus_shape(30) == (5, 6)
    assert T.torus_shape(24) == (4, 6) and T.torus_shape(8) is None and T.torus_shape(13) is None
    torus = T.generate("torus", 12)
    assert all(d == 4 for _, d in torus.degree) and torus.number_of_edges() == 24
    exp = T.generate("exponential", 8)  # offsets +-1, +-2, +-4 (4 == -4 mod 8)
    assert set(exp.neighbors(0)) == {1, 7, 2, 6, 4}
    assert all(d == 5 for _, d in exp.degree)
    assert set(T.generate("exponential", 10).neighbors(0)) == {1, 9, 2, 8, 4, 6}
    sw = T.generate("small_world", 20, k=6, p=0.0)
    assert all(d == 6 for _, d in sw.degree)
    assert T.generate("erdos_renyi", 10, p=1.0).number_of_edges() == 45


@pytest.mark.parametrize(
    "args, match",
    [
        (("mesh", 8), "valid names: ring, torus"),
        (("ring", 2), "n >= 3"),
        (("torus", 8), "does not factor"),
        (("torus", 13), "does not factor"),
        (("regular", 7, {"d": 3}), "must be even"),
        (("regular", 4, {"d": 4}), "d must be < n"),
        (("regular", 8, {"d": 1}), "d must be >= 2"),
        (("regular", 8, {"d": 2.5}), "must be an integer"),
        (("regular", 8, {"q": 2}), r"unknown parameter\(s\) q \(valid: d\)"),
        (("ring", 8, {"d": 2}), r"valid: none"),
        (("erdos_renyi", 8, {"p": 0.0}), r"p must be in \(0, 1\]"),
        (("erdos_renyi", 60, {"p": 0.001}), "no connected sample"),
        (("small_world", 8, {"k": 3}), "must be even"),
        (("small_world", 4, {"k": 4}), "k must be < n"),
        (("complete", 0), "positive integer"),
    ],
)
def test_generator_errors(args: tuple, match: str) -> None:
    name, n, *rest = args
    params = rest[0] if rest else {}
    with pytest.raises(TopologyError, match=match):
        T.generate(name, n, seed=0, **params)


# ----------------------------------------------------------------------------- spectral figures


def test_complete_graph_gap_is_one() -> None:
    for n in (2, 5, 12):
        w = T.metropolis_hastings(T.generate("complete", n))
        np.testing.assert_allclose(w, np.full((n, n), 1.0 / n), atol=1e-15)
        assert T.spectral_gap(w) == pytest.approx(1.0, abs=1e-12)


def test_ring_gap_closed_form_and_decreasing() -> None:
    gaps = []
    for n in range(4, 40):
        gap = T.spectral_gap(T.metropolis_hastings(T.generate("ring", n)))
        assert gap == pytest.approx(1.0 - (1.0 + 2.0 * math.cos(2.0 * math.pi / n)) / 3.0, abs=1e-12)
        gaps.append(gap)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))


def test_star_gap_is_one_over_n() -> None:
    for n in (3, 8, 20):
        assert T.spectral_gap(T.metropolis_hastings(T.generate("star", n))) == pytest.approx(1.0 / n, abs=1e-12)


def test_spectral_gap_single_node_and_bad_input() -> None:
    assert T.spectral_gap(np.ones((1, 1))) == 1.0
    with pytest.raises(TopologyError, match="square"):
        T.spectral_gap(np.ones((2, 3)))
    with pytest.raises(TopologyError, match="symmetric"):
        T.spectral_gap(np.array([[0.5, 0.5], [0.2, 0.8]]))


def test_mh_weights_match_matrix_row() -> None:
    g = T.generate("erdos_renyi", 12, seed=3)
    w = T.metropolis_hastings(g)
    for v in g.nodes:
        row = T.mh_weights(g, v)
        assert set(row) == set(g.neighbors(v)) | {v}
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-12)
        for u, x in row.items():
            assert x == pytest.approx(w[v, u], abs=1e-15)
    assert T.mh_weights(T.generate("ring", 5), 0) == pytest.approx({1: 1 / 3, 4: 1 / 3, 0: 1 / 3})
    with pytest.raises(TopologyError, match="not in the graph"):
        T.mh_weights(g, 99)


def test_mh_sorted_order_with_custom_ids() -> None:
    g = nx.Graph([(10, 30), (30, 20)])  # path 10 - 30 - 20
    w = T.metropolis_hastings(g)  # order 10, 20, 30
    np.testing.assert_allclose(w, [[2 / 3, 0, 1 / 3], [0, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]])


def test_mh_rejects_self_loop_and_directed() -> None:
    g = nx.Graph([(0, 1), (1, 1)])
    with pytest.raises(TopologyError, match="self-loop"):
        T.metropolis_hastings(g)
    with pytest.raises(TopologyError, match="directed"):
        T.metropolis_hastings(nx.DiGraph([(0, 1)]))


# ----------------------------------------------------------------------------- stats / describe


def test_stats_values() -> None:
    s = T.stats(T.generate("ring", 8))
    assert (s.nodes, s.edges, s.min_degree, s.mean_degree, s.max_degree, s.diameter) == (8, 8, 2, 2.0, 2, 4)
    assert s.low_degree_nodes == ()
    s = T.stats(T.generate("star", 6))
    assert s.low_degree_nodes == (1, 2, 3, 4, 5) and s.diameter == 2 and s.max_degree == 5
    assert s.spectral_gap == pytest.approx(1 / 6)


def test_describe_warns_for_star_not_ring() -> None:
    text = T.describe(T.load(SHIPPED_DIR / "star8.edgelist"), "star8.edgelist")
    last = text.splitlines()[-1]
    assert last.startswith("WARNING") and "[1, 2, 3, 4, 5, 6, 7]" in last and "reveals an input" in last
    assert "star8.edgelist" in text and "spectral gap" in text
    ring = T.describe(T.load(SHIPPED_DIR / "ring8.edgelist"), "ring8")
    assert "WARNING" not in ring and "nodes: 8" in ring and "diameter: 4" in ring
    assert ring.splitlines()[-1].startswith("note: 8 node(s) have degree 2") and "drops out" in ring


def test_describe_notes_degree_two_nodes_only() -> None:
    assert T.stats(T.generate("ring", 6)).fragile_nodes == tuple(range(6))
    assert "note:" not in T.describe(T.generate("regular", 16, d=4), "regular:d=4")
    path = nx.path_graph(5)  # ends: degree 1 (warning); inside: degree 2 (note)
    text = T.describe(path, "path")
    assert "note: 3 node(s) have degree 2: [1, 2, 3]" in text and "WARNING: 2 node(s)" in text


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("ext", [".graphml", ".json", ".edgelist", ".txt"])
@pytest.mark.parametrize("name, n", [("regular", 12), ("star", 5), ("complete", 2)])
def test_round_trip(tmp_path: Path, ext: str, name: str, n: int) -> None:
    g = T.generate(name, n, seed=4)
    path = tmp_path / f"g{ext}"
    T.save(g, path)
    h = T.load(path)
    assert sorted(h.nodes) == sorted(g.nodes) and edges(h) == edges(g)
    assert all(type(v) is int for v in h.nodes)


def test_round_trip_single_node(tmp_path: Path) -> None:
    g = nx.Graph()
    g.add_node(0)
    for ext in T.FILE_EXTENSIONS:
        T.save(g, tmp_path / f"one{ext}")
        h = T.load(tmp_path / f"one{ext}")
        assert list(h.nodes) == [0] and h.number_of_edges() == 0


def test_json_readable_by_networkx(tmp_path: Path) -> None:
    g = T.generate("torus", 9)
    T.save(g, tmp_path / "t.json")
    h = nx.node_link_graph(json.loads((tmp_path / "t.json").read_text()), edges="edges")
    assert edges(h) == edges(g)


def test_load_networkx_written_files(tmp_path: Path) -> None:
    g = T.generate("exponential", 10)
    nx.write_graphml(g, tmp_path / "x.graphml")
    (tmp_path / "links.json").write_text(json.dumps(nx.node_link_data(g, edges="links")))
    nx.write_edgelist(g, tmp_path / "x.edgelist", data=False)
    for f in ("x.graphml", "links.json", "x.edgelist"):
        assert edges(T.load(tmp_path / f)) == edges(g)


def test_edgelist_comments_and_blank_lines(tmp_path: Path) -> None:
    p = write(tmp_path, "c.txt", "# header\n\n0 1   # first\n 1 2\n2 0\n+3 0\n")
    assert edges(T.load(p)) == {(0, 1), (1, 2), (0, 2), (0, 3)}


@pytest.mark.parametrize(
    "fname, text, match",
    [
        ("bad.edgelist", "0 1\n1 2 3\n", r"bad\.edgelist:2: expected 'u v'"),
        ("bad.edgelist", "0 1\n1 a\n", r"bad\.edgelist:2: node id 'a' is not an integer"),
        ("bad.txt", "0 1\n1 2.0\n", r"bad\.txt:2: node id '2\.0' is not an integer"),
        ("bad.edgelist", "0 1\n1 1\n", r"bad\.edgelist:2: self-loop 1-1"),
        ("bad.edgelist", "0 1\n1 2\n1 0\n", r"bad\.edgelist:3: duplicate edge 1-0 \(already on line 1\)"),
        ("bad.edgelist", "0 1\n2 3\n", r"bad\.edgelist: graph is not connected: 2 components"),
        ("bad.edgelist", "# nothing\n", r"bad\.edgelist: graph has no nodes"),
        ("bad.json", '{"nodes": [{"id": 0}], "edges": [}', r"bad\.json:1: invalid JSON"),
        ("bad.json", "[1, 2]", r"bad\.json: expected a node-link JSON object"),
        ("bad.json", '{"nodes": [{"id": 0}]}', r"exactly one of the fields edges / links"),
        ("bad.json", '{"nodes": [{"id": "x"}], "edges": []}', r"nodes\[0\]\.id: node id 'x' is not an integer"),
        ("bad.json", '{"nodes": [{"id": true}], "edges": []}', r"nodes\[0\]\.id: node id True"),
        ("bad.json", '{"nodes": [{"name": 0}], "edges": []}', r"nodes\[0\] must be an object with an 'id'"),
        ("bad.json", '{"nodes": [{"id": 0}, {"id": 1}], "edges": [{"source": 0, "target": 2}]}',
         r"edges\[0\]\.target 2 is not listed in 'nodes'"),
        ("bad.json", '{"nodes": [{"id": 0}], "edges": [{"source": 0, "target": 0}]}', r"edges\[0\]: self-loop 0-0"),
        ("bad.json", '{"nodes": [{"id": 0}, {"id": 1}], "links": [{"source": 0}]}',
         r"links\[0\] must be an object with 'source' and 'target'"),
        ("bad.json", '{"directed": true, "nodes": [], "edges": []}', r"'directed' is true"),
        ("bad.json", '{"nodes": [{"id": 0}, {"id": 1}, {"id": 2}], "edges": [{"source": 0, "target": 1}]}',
         r"bad\.json: graph is not connected.*\[2\] cannot reach"),
        ("bad.graphml", "<graphml><graph", r"bad\.graphml: not a valid GraphML file"),
        ("bad.csv", "0,1\n", r"unknown topology file format '\.csv'"),
    ],
)
def test_malformed_files(tmp_path: Path, fname: str, text: str, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        T.load(write(tmp_path, fname, text))


def _graphml(edgedefault: str, nodes: list[str], edge_pairs: list[tuple[str, str]]) -> str:
    body = "".join(f'<node id="{v}"/>' for v in nodes)
    body += "".join(f'<edge source="{u}" target="{v}"/>' for u, v in edge_pairs)
    return (
        '<?xml version="1.0"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
        f'<graph edgedefault="{edgedefault}">{body}</graph></graphml>'
    )


def test_malformed_graphml(tmp_path: Path) -> None:
    cases = [
        (_graphml("undirected", ["n0", "n1"], [("n0", "n1")]), "node id 'n0' is not an integer"),
        (_graphml("directed", ["0", "1"], [("0", "1")]), "directed"),
        (_graphml("undirected", ["0", "1"], [("0", "1"), ("1", "1")]), r"self-loop\(s\) on node\(s\) \[1\]"),
        (_graphml("undirected", ["0", "1"], [("0", "1"), ("0", "1")]), "parallel edges"),
        (_graphml("undirected", ["0", "1", "2"], [("0", "1")]), "not connected"),
        (_graphml("undirected", ["1", "01"], [("1", "01")]), "same integer"),
    ]
    for i, (text, match) in enumerate(cases):
        with pytest.raises(TopologyError, match=match) as info:
            T.load(write(tmp_path, f"g{i}.graphml", text))
        assert f"g{i}.graphml" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    for ext in T.FILE_EXTENSIONS:
        with pytest.raises(TopologyError, match="no such topology file"):
            T.load(tmp_path / f"nope{ext}")


def test_save_refuses_invalid_graphs(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="not connected"):
        T.save(nx.Graph([(0, 1), (2, 3)]), tmp_path / "x.edgelist")
    with pytest.raises(TopologyError, match="integers"):
        T.save(nx.Graph([("a", "b")]), tmp_path / "x.json")
    with pytest.raises(TopologyError, match="unknown topology file format"):
        T.save(T.generate("ring", 4), tmp_path / "x.yaml")
    with pytest.raises(TopologyError, match="cannot write"):
        T.save(T.generate("ring", 4), tmp_path / "missing-dir" / "x.edgelist")


# ----------------------------------------------------------------------------- validate


def test_validate_ok_and_node_ids() -> None:
    T.validate(T.generate("ring", 5))
    T.validate(T.generate("ring", 5), [4, 3, 2, 1, 0])
    T.validate(nx.relabel_nodes(T.generate("ring", 3), {0: 10, 1: 11, 2: 12}), [10, 11, 12])


def test_validate_names_missing_and_extra_ids() -> None:
    g = T.generate("ring", 5)
    with pytest.raises(TopologyError, match=r"missing from the graph \(expected node_ids\): \[5, 6\]"):
        T.validate(g, range(7))
    with pytest.raises(TopologyError, match=r"unexpected nodes in the graph \(expected node_ids\): \[3, 4\]"):
        T.validate(g, range(3))
    shifted = nx.relabel_nodes(g, {i: i + 1 for i in range(5)})
    with pytest.raises(TopologyError, match=r"missing.*\(expected 0\.\.n-1\): \[0\].*unexpected.*\[5\]"):
        T.validate(shifted)


@pytest.mark.parametrize(
    "g, match",
    [
        (nx.Graph(), "no nodes"),
        (nx.Graph([(0, 1), (1, 1)]), r"self-loop\(s\) on node\(s\) \[1\]"),
        (nx.Graph([(0, 1), (2, 3)]), "not connected: 2 components"),
        (nx.DiGraph([(0, 1)]), "directed"),
        (nx.MultiGraph([(0, 1), (0, 1)]), "multigraph"),
        (nx.Graph([("a", "b")]), r"node ids must be integers, got \['a', 'b'\]"),
        ([(0, 1)], "expected a networkx.Graph"),
    ],
)
def test_validate_rejects(g: object, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        T.validate(g)  # type: ignore[arg-type]


def test_validate_bad_node_ids_argument() -> None:
    with pytest.raises(TopologyError, match="node_ids: node id 'x'"):
        T.validate(T.generate("ring", 3), ["x"])


def test_long_id_lists_are_abbreviated() -> None:
    with pytest.raises(TopologyError, match=r"\[50, 51, .*59, \.\.\. \(40 more\)\]"):
        T.validate(T.generate("ring", 50), range(100))


# ----------------------------------------------------------------------------- resolve


def test_resolve_names_and_params() -> None:
    assert edges(T.resolve("ring", 6, 0)) == edges(T.generate("ring", 6))
    assert all(d == 3 for _, d in T.resolve("regular:d=3", 10, 2).degree)
    assert edges(T.resolve("regular:d=3", 10, 2)) == edges(T.generate("regular", 10, seed=2, d=3))
    assert T.resolve("erdos_renyi:p=1", 6, 0).number_of_edges() == 15
    assert edges(T.resolve(" small_world: k=4 , p=0.3 ", 12, 5)) == edges(T.generate("small_world", 12, 5, k=4, p=0.3))


def test_resolve_files(tmp_path: Path) -> None:
    path = str(SHIPPED_DIR / "torus16.graphml")
    assert edges(T.resolve(path, 16, 0)) == edges(T.generate("torus", 16))
    assert T.resolve(path, None, 0).number_of_nodes() == 16
    with pytest.raises(TopologyError, match=r"torus16\.graphml: file has 16 nodes but n=8"):
        T.resolve(path, 8, 0)
    with pytest.raises(TopologyError, match="no such topology file"):
        T.resolve(str(tmp_path / "absent.edgelist"), 8, 0)
    plain = write(tmp_path, "mygraph", "0 1\n")  # existing file, unknown extension
    with pytest.raises(TopologyError, match="unknown topology file format"):
        T.resolve(str(plain), None, 0)


@pytest.mark.parametrize(
    "spec, n, match",
    [
        ("mesh", 8, r"unknown topology 'mesh'.*ring, torus, complete"),
        ("ring", None, "number of nodes n is required"),
        ("regular:d", 8, "must look like key=value"),
        ("regular:d=", 8, "must look like key=value"),
        ("regular:d=x", 8, r"parameter d='x' is not a number"),
        ("regular:d=3,d=4", 8, "given twice"),
        ("regular:d=3.5", 8, "must be an integer"),
        ("erdos_renyi:p=nan", 8, "not finite"),
        ("ring:d=2", 8, "unknown parameter"),
    ],
)
def test_resolve_errors(spec: str, n: int | None, match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        T.resolve(spec, n, 0)


def test_topology_error_is_value_error() -> None:
    assert issubclass(TopologyError, ValueError)
