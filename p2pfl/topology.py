"""Communication graphs of a p2pfl network.

Owns: generating graphs by name (``generate``), loading and saving graph files
(``load`` / ``save``: GraphML, networkx node-link JSON, plain edge lists),
turning a user's topology spec into a graph (``resolve``), checking a graph is
usable (``validate``), Metropolis-Hastings mixing weights
(``metropolis_hastings`` / ``mh_weights``) and spectral figures
(``spectral_gap``, ``stats``, ``describe``).

Must not touch: sockets, torch, or any other module's internals. Every problem
with a graph or a graph file raises ``TopologyError`` (a ``ValueError``) whose
message names the file / field and the problem.

Graphs are undirected, simple ``networkx.Graph`` objects whose nodes are ints
(normally 0..n-1). Matrices use the sorted node order for rows and columns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

__all__ = [
    "TopologyError",
    "GENERATORS",
    "GENERATOR_PARAMS",
    "FILE_EXTENSIONS",
    "generate",
    "load",
    "save",
    "resolve",
    "validate",
    "metropolis_hastings",
    "mh_weights",
    "spectral_gap",
    "TopologyStats",
    "stats",
    "describe",
]

FILE_EXTENSIONS = (".graphml", ".json", ".edgelist", ".txt")
MAX_ATTEMPTS = 200  # connected-sample retries for the random generators
_LIST_LIMIT = 10  # how many ids an error message lists before abbreviating


class TopologyError(ValueError):
    """A graph, a graph file or a topology spec is unusable."""


# --------------------------------------------------------------------------- helpers


def _fmt_ids(ids: Iterable[Any]) -> str:
    """Render ids for a message: sorted (ints numerically), at most _LIST_LIMIT of them."""
    items = sorted(ids, key=lambda x: (0, x, "") if _is_int(x) else (1, 0, repr(x)))
    shown = ", ".join(str(i) if _is_int(i) else repr(i) for i in items[:_LIST_LIMIT])
    if len(items) > _LIST_LIMIT:
        shown += f", ... ({len(items) - _LIST_LIMIT} more)"
    return "[" + shown + "]"


def _is_int(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


_INT_RE = re.compile(r"^[+-]?\d+$")


def _to_node_id(raw: Any, where: str) -> int:
    """Convert a node id read from a file to int; `where` names the place for errors."""
    if _is_int(raw):
        return int(raw)
    if isinstance(raw, str) and _INT_RE.match(raw.strip()):
        return int(raw.strip())
    raise TopologyError(f"{where}: node id {raw!r} is not an integer (node ids must be integers 0..n-1)")


def _canonical(n_or_nodes: int | Iterable[int], edges: Iterable[tuple[int, int]], name: str = "") -> nx.Graph:
    """A fresh Graph with nodes and edges inserted in sorted order (deterministic files)."""
    nodes = range(n_or_nodes) if isinstance(n_or_nodes, int) else sorted(n_or_nodes)
    g = nx.Graph()
    if name:
        g.graph["name"] = name
    g.add_nodes_from(nodes)
    g.add_edges_from(sorted((min(u, v), max(u, v)) for u, v in edges))
    return g


def _attempt_seed(seed: int, attempt: int) -> int:
    """Deterministic per-attempt seed (attempt 0 uses the seed itself)."""
    if attempt == 0 and seed >= 0:
        return seed
    digest = hashlib.blake2b(f"p2pfl-topology:{seed}:{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _structure_problems(g: Any) -> list[str]:
    """Problems that make `g` unusable as a topology, ignoring which ids it has."""
    if not isinstance(g, nx.Graph):
        return [f"expected a networkx.Graph, got {type(g).__name__}"]
    if g.is_directed():
        return ["graph is directed; topologies must be undirected"]
    if g.is_multigraph():
        return ["graph is a multigraph (parallel edges); topologies must be simple graphs"]
    if g.number_of_nodes() == 0:
        return ["graph has no nodes"]
    problems: list[str] = []
    bad = [v for v in g.nodes if not _is_int(v)]
    if bad:
        problems.append(f"node ids must be integers, got {_fmt_ids(bad)}")
    loops = [v for v, _ in nx.selfloop_edges(g)]
    if loops:
        problems.append(f"self-loop(s) on node(s) {_fmt_ids(loops)}")
    if not nx.is_connected(g):
        comps = sorted(nx.connected_components(g), key=len)
        problems.append(
            f"graph is not connected: {len(comps)} components; "
            f"e.g. nodes {_fmt_ids(comps[0])} cannot reach the rest"
        )
    return problems


def _check_structure(g: Any, where: str = "") -> None:
    problems = _structure_problems(g)
    if problems:
        prefix = f"{where}: " if where else ""
        raise TopologyError(prefix + "; ".join(problems))


def _check_simple(g: Any) -> None:
    """Like _check_structure but a disconnected graph is allowed (MH weights are still defined)."""
    problems = [p for p in _structure_problems(g) if not p.startswith("graph is not connected")]
    if problems:
        raise TopologyError("; ".join(problems))


# --------------------------------------------------------------------------- generators


def _int_param(name: str, params: dict[str, Any], key: str, default: int) -> int:
    value = params.pop(key, default)
    if not _is_int(value):
        raise TopologyError(f"topology '{name}': parameter {key} must be an integer, got {value!r}")
    return int(value)


def _float_param(name: str, params: dict[str, Any], key: str, default: float) -> float:
    value = params.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TopologyError(f"topology '{name}': parameter {key} must be a number, got {value!r}")
    return float(value)


def _need(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise TopologyError(f"topology '{name}': {message}")


def _gen_ring(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    _need(n >= 3, "ring", f"needs n >= 3, got n={n}")
    return _canonical(n, ((i, (i + 1) % n) for i in range(n)), f"ring(n={n})")


def torus_shape(n: int) -> tuple[int, int] | None:
    """Most square (rows, cols) with rows * cols == n, rows <= cols, both >= 3; None if none."""
    for rows in range(math.isqrt(n), 2, -1):
        if n % rows == 0 and n // rows >= 3:
            return rows, n // rows
    return None


def _gen_torus(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    shape = torus_shape(n)
    _need(shape is not None, "torus", f"n={n} does not factor into rows x cols with both >= 3 (e.g. 9, 12, 16, 25)")
    rows, cols = shape  # type: ignore[misc]
    edges = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            edges.append((i, r * cols + (c + 1) % cols))
            edges.append((i, ((r + 1) % rows) * cols + c))
    return _canonical(n, edges, f"torus(n={n}, {rows}x{cols})")


def _gen_complete(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    _need(n >= 2, "complete", f"needs n >= 2, got n={n}")
    return _canonical(n, nx.complete_graph(n).edges, f"complete(n={n})")


def _gen_star(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    _need(n >= 2, "star", f"needs n >= 2, got n={n}")
    return _canonical(n, ((0, i) for i in range(1, n)), f"star(n={n}, hub=0)")


def _retry_connected(name: str, seed: int, draw: Callable[[int], nx.Graph], hint: str) -> nx.Graph:
    for attempt in range(MAX_ATTEMPTS):
        g = draw(_attempt_seed(seed, attempt))
        if nx.is_connected(g):
            return g
    raise TopologyError(f"topology '{name}': no connected sample in {MAX_ATTEMPTS} attempts (seed={seed}); {hint}")


def _gen_regular(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    d = _int_param("regular", params, "d", 4)
    _need(d >= 2, "regular", f"d must be >= 2 for a connected graph, got d={d}")
    _need(d < n, "regular", f"d must be < n, got d={d}, n={n}")
    _need(n * d % 2 == 0, "regular", f"n * d must be even, got n={n}, d={d}")
    g = _retry_connected(
        "regular", seed, lambda s: nx.random_regular_graph(d, n, seed=s), "use a larger d (d=2 is rarely connected)"
    )
    return _canonical(n, g.edges, f"regular(n={n}, d={d}, seed={seed})")


def _gen_erdos_renyi(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    _need(n >= 2, "erdos_renyi", f"needs n >= 2, got n={n}")
    p = _float_param("erdos_renyi", params, "p", min(1.0, 2.0 * math.log(n) / n))
    _need(0.0 < p <= 1.0, "erdos_renyi", f"p must be in (0, 1], got p={p}")
    hint = f"use a larger p (ln(n)/n = {math.log(n) / n:.3g})"
    g = _retry_connected("erdos_renyi", seed, lambda s: nx.gnp_random_graph(n, p, seed=s), hint)
    return _canonical(n, g.edges, f"erdos_renyi(n={n}, p={p:.4g}, seed={seed})")


def _gen_small_world(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    k = _int_param("small_world", params, "k", 4)
    p = _float_param("small_world", params, "p", 0.1)
    _need(k >= 2 and k % 2 == 0, "small_world", f"k (ring neighbours) must be even and >= 2, got k={k}")
    _need(k < n, "small_world", f"k must be < n, got k={k}, n={n}")
    _need(0.0 <= p <= 1.0, "small_world", f"p must be in [0, 1], got p={p}")
    g = _retry_connected(
        "small_world", seed, lambda s: nx.watts_strogatz_graph(n, k, p, seed=s), "use a smaller p or a larger k"
    )
    return _canonical(n, g.edges, f"small_world(n={n}, k={k}, p={p:.4g}, seed={seed})")


def _gen_exponential(n: int, seed: int, params: dict[str, Any]) -> nx.Graph:
    _need(n >= 2, "exponential", f"needs n >= 2, got n={n}")
    edges = []
    hop = 1
    while hop < n:
        edges.extend((i, (i + hop) % n) for i in range(n))
        hop *= 2
    return _canonical(n, edges, f"exponential(n={n})")


GENERATOR_PARAMS: dict[str, tuple[str, ...]] = {
    "ring": (),
    "torus": (),
    "complete": (),
    "star": (),
    "regular": ("d",),
    "erdos_renyi": ("p",),
    "small_world": ("k", "p"),
    "exponential": (),
}

GENERATORS: dict[str, Callable[[int, int, dict[str, Any]], nx.Graph]] = {
    "ring": _gen_ring,
    "torus": _gen_torus,
    "complete": _gen_complete,
    "star": _gen_star,
    "regular": _gen_regular,
    "erdos_renyi": _gen_erdos_renyi,
    "small_world": _gen_small_world,
    "exponential": _gen_exponential,
}


def generate(name: str, n: int, seed: int = 0, **params: Any) -> nx.Graph:
    """Build the named topology on nodes 0..n-1 (connected, deterministic for a given seed).

    Names: ring, torus (most square rows x cols, both >= 3), complete, star (node 0 is the hub),
    regular (d=4), erdos_renyi (p=2 ln(n)/n), small_world (k=4, p=0.1), exponential
    (i -- i +- 2^k mod n). Random generators redraw with derived seeds until connected.
    """
    if name not in GENERATORS:
        raise TopologyError(f"unknown topology {name!r}; valid names: {', '.join(GENERATORS)}")
    if not _is_int(n) or n < 1:
        raise TopologyError(f"topology '{name}': n must be a positive integer, got {n!r}")
    if not _is_int(seed):
        raise TopologyError(f"topology '{name}': seed must be an integer, got {seed!r}")
    unknown = sorted(set(params) - set(GENERATOR_PARAMS[name]))
    if unknown:
        valid = ", ".join(GENERATOR_PARAMS[name]) or "none"
        raise TopologyError(f"topology '{name}': unknown parameter(s) {', '.join(unknown)} (valid: {valid})")
    return GENERATORS[name](int(n), int(seed), dict(params))


# --------------------------------------------------------------------------- files


def _extension(path: str | os.PathLike[str]) -> str:
    return Path(path).suffix.lower()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such topology file") from None
    except UnicodeDecodeError as e:
        raise TopologyError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TopologyError(f"{path}: cannot read ({e.strerror or e})") from None


def _load_edgelist(path: Path) -> nx.Graph:
    nodes: set[int] = set()
    edges: dict[tuple[int, int], int] = {}
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        where = f"{path}:{lineno}"
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if len(tokens) not in (1, 2):
            raise TopologyError(f"{where}: expected 'u v' (two node ids) or a lone node id, got {raw.strip()!r}")
        ids = [_to_node_id(t, where) for t in tokens]
        nodes.update(ids)
        if len(ids) == 1:
            continue
        u, v = ids
        if u == v:
            raise TopologyError(f"{where}: self-loop {u}-{v}; a node cannot be its own neighbour")
        key = (min(u, v), max(u, v))
        if key in edges:
            raise TopologyError(
                f"{where}: duplicate edge {u}-{v} (already on line {edges[key]}); "
                "the graph is undirected, list each edge once"
            )
        edges[key] = lineno
    return _canonical(nodes, edges)


def _json_list(data: Mapping[str, Any], path: Path, keys: tuple[str, ...]) -> tuple[str, list[Any]]:
    found = [k for k in keys if k in data]
    if len(found) != 1:
        raise TopologyError(f"{path}: node-link JSON needs exactly one of the fields {' / '.join(keys)}")
    value = data[found[0]]
    if not isinstance(value, list):
        raise TopologyError(f"{path}: field '{found[0]}' must be a list, got {type(value).__name__}")
    return found[0], value


def _load_json(path: Path) -> nx.Graph:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TopologyError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: expected a node-link JSON object, got {type(data).__name__}")
    for flag in ("directed", "multigraph"):
        if data.get(flag):
            raise TopologyError(f"{path}: field '{flag}' is true; topologies must be undirected simple graphs")
    _, node_items = _json_list(data, path, ("nodes",))
    edge_key, edge_items = _json_list(data, path, ("edges", "links"))
    nodes: set[int] = set()
    for i, item in enumerate(node_items):
        if not isinstance(item, dict) or "id" not in item:
            raise TopologyError(f"{path}: nodes[{i}] must be an object with an 'id' field")
        nid = _to_node_id(item["id"], f"{path}: nodes[{i}].id")
        if nid in nodes:
            raise TopologyError(f"{path}: nodes[{i}].id {nid} appears twice")
        nodes.add(nid)
    edges: dict[tuple[int, int], int] = {}
    for i, item in enumerate(edge_items):
        field = f"{path}: {edge_key}[{i}]"
        if not isinstance(item, dict) or "source" not in item or "target" not in item:
            raise TopologyError(f"{field} must be an object with 'source' and 'target' fields")
        u = _to_node_id(item["source"], f"{field}.source")
        v = _to_node_id(item["target"], f"{field}.target")
        for end, x in (("source", u), ("target", v)):
            if x not in nodes:
                raise TopologyError(f"{field}.{end} {x} is not listed in 'nodes'")
        if u == v:
            raise TopologyError(f"{field}: self-loop {u}-{v}; a node cannot be its own neighbour")
        key = (min(u, v), max(u, v))
        if key in edges:
            raise TopologyError(f"{field}: duplicate edge {u}-{v} (same as {edge_key}[{edges[key]}])")
        edges[key] = i
    graph_attrs = data.get("graph") if isinstance(data.get("graph"), dict) else {}
    return _canonical(nodes, edges, str(graph_attrs.get("name", "")))


def _load_graphml(path: Path) -> nx.Graph:
    if not path.is_file():
        raise TopologyError(f"{path}: no such topology file")
    try:
        raw = nx.read_graphml(path)
    except Exception as e:  # ElementTree, networkx and value errors all mean: malformed
        raise TopologyError(f"{path}: not a valid GraphML file ({type(e).__name__}: {e})") from None
    if raw.is_directed():
        raise TopologyError(f"{path}: graph is directed (edgedefault='directed'); topologies must be undirected")
    if raw.is_multigraph():
        raise TopologyError(f"{path}: graph has parallel edges; topologies must be simple graphs")
    mapping = {v: _to_node_id(v, f"{path}: node") for v in raw.nodes}
    if len(set(mapping.values())) != len(mapping):
        raise TopologyError(f"{path}: two node ids convert to the same integer")
    loops = sorted(mapping[v] for v, _ in nx.selfloop_edges(raw))
    if loops:
        raise TopologyError(f"{path}: self-loop(s) on node(s) {_fmt_ids(loops)}; a node cannot be its own neighbour")
    edges = ((mapping[u], mapping[v]) for u, v in raw.edges)
    return _canonical(mapping.values(), edges, str(raw.graph.get("name", "")))


_LOADERS: dict[str, Callable[[Path], nx.Graph]] = {
    ".graphml": _load_graphml,
    ".json": _load_json,
    ".edgelist": _load_edgelist,
    ".txt": _load_edgelist,
}


def _unknown_format(path: Path, ext: str) -> str:
    return f"{path}: unknown topology file format {ext or '(no extension)'!r}; use {', '.join(FILE_EXTENSIONS)}"


def load(path: str | os.PathLike[str]) -> nx.Graph:
    """Read a topology file (.graphml, node-link .json, .edgelist / .txt).

    The result is a connected, undirected simple graph with int node ids; which ids it
    must have is for ``validate(g, node_ids)`` to check.
    """
    p = Path(path)
    ext = _extension(p)
    if ext not in _LOADERS:
        raise TopologyError(_unknown_format(p, ext))
    g = _LOADERS[ext](p)
    _check_structure(g, str(p))
    return g


def _edgelist_text(g: nx.Graph) -> str:
    name = g.graph.get("name", "")
    lines = [
        f"# p2pfl topology{': ' + name if name else ''}",
        f"# {g.number_of_nodes()} nodes, {g.number_of_edges()} edges; one undirected edge 'u v' per line",
    ]
    lines += [str(v) for v in sorted(g.nodes) if g.degree(v) == 0]
    lines += [f"{u} {v}" for u, v in sorted(g.edges)]
    return "\n".join(lines) + "\n"


def _json_text(g: nx.Graph) -> str:
    """networkx node-link JSON, one edge per line so diffs stay readable."""
    head = {
        "directed": False,
        "multigraph": False,
        "graph": {"name": g.graph["name"]} if g.graph.get("name") else {},
        "nodes": [{"id": v} for v in sorted(g.nodes)],
    }
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    edges = [json.dumps({"source": u, "target": v}) for u, v in sorted(g.edges)]
    lines += [' "edges": ['] + ["  " + e + "," for e in edges[:-1]] + ["  " + e for e in edges[-1:]] + [" ]", "}"]
    return "\n".join(lines) + "\n"


def save(g: nx.Graph, path: str | os.PathLike[str]) -> None:
    """Write `g` in the format its extension names; only graphs ``load`` would accept are written."""
    p = Path(path)
    ext = _extension(p)
    if ext not in _LOADERS:
        raise TopologyError(_unknown_format(p, ext))
    _check_structure(g, f"cannot save {p}")
    name = str(g.graph.get("name", ""))
    clean = _canonical((int(v) for v in g.nodes), ((int(u), int(v)) for u, v in g.edges), name)
    try:
        if ext == ".graphml":
            nx.write_graphml(clean, p)
        else:
            p.write_text(_json_text(clean) if ext == ".json" else _edgelist_text(clean), encoding="utf-8")
    except OSError as e:
        raise TopologyError(f"{p}: cannot write ({e.strerror or e})") from None


# --------------------------------------------------------------------------- specs


def _parse_value(name: str, key: str, text: str) -> int | float:
    if _INT_RE.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise TopologyError(f"topology '{name}': parameter {key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise TopologyError(f"topology '{name}': parameter {key}={text!r} is not finite")
    return value


def parse_spec(spec: str) -> tuple[str, dict[str, int | float]]:
    """Split 'name' or 'name:key=value,key=value' into (name, params)."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in GENERATORS:
        raise TopologyError(
            f"unknown topology {spec!r}: not an existing file and not one of {', '.join(GENERATORS)} "
            f"(files must end in {', '.join(FILE_EXTENSIONS)})"
        )
    params: dict[str, int | float] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise TopologyError(f"topology {spec!r}: parameter {item!r} must look like key=value")
        if key in params:
            raise TopologyError(f"topology {spec!r}: parameter {key} given twice")
        params[key] = _parse_value(name, key, value)
    return name, params


def resolve(spec: str, n: int | None, seed: int) -> nx.Graph:
    """A file path (known extension, or an existing file that is not a generator spec) is loaded;
    anything else is parsed as 'name[:key=value,...]' and generated on n nodes with `seed`.

    A loaded file must have n nodes when n is given. Callers still run
    ``validate(g, node_ids)`` to check the ids match their cluster.
    """
    spec = str(spec)
    name = spec.partition(":")[0].strip()
    if _extension(spec) in FILE_EXTENSIONS or (name not in GENERATORS and os.path.isfile(spec)):
        g = load(spec)
        if n is not None and g.number_of_nodes() != n:
            raise TopologyError(f"{spec}: file has {g.number_of_nodes()} nodes but n={n} nodes were asked for")
        return g
    name, params = parse_spec(spec)
    if n is None:
        raise TopologyError(f"topology {spec!r}: the number of nodes n is required to generate it")
    return generate(name, n, seed, **params)


# --------------------------------------------------------------------------- checks


def validate(g: nx.Graph, node_ids: Iterable[int] | None = None) -> None:
    """Raise TopologyError unless `g` is a non-empty, connected, undirected simple graph
    whose nodes are exactly `node_ids` (default: 0..n-1)."""
    problems = _structure_problems(g)
    if isinstance(g, nx.Graph) and not any(p.startswith("node ids must be integers") for p in problems):
        have = set(g.nodes)
        want = set(range(g.number_of_nodes())) if node_ids is None else {_to_node_id(i, "node_ids") for i in node_ids}
        missing, extra = want - have, have - want
        label = "0..n-1" if node_ids is None else "node_ids"
        if missing:
            problems.append(f"nodes missing from the graph (expected {label}): {_fmt_ids(missing)}")
        if extra:
            problems.append(f"unexpected nodes in the graph (expected {label}): {_fmt_ids(extra)}")
    if problems:
        raise TopologyError("; ".join(problems))


# --------------------------------------------------------------------------- mixing


def metropolis_hastings(g: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings mixing matrix (n x n, sorted node order):
    W_ij = 1 / (1 + max(deg_i, deg_j)) on edges, W_ii = 1 - sum_j W_ij. Symmetric, doubly stochastic."""
    _check_simple(g)
    order = sorted(g.nodes)
    index = {v: i for i, v in enumerate(order)}
    deg = dict(g.degree)
    w = np.zeros((len(order), len(order)), dtype=np.float64)
    for u, v in g.edges:
        w[index[u], index[v]] = w[index[v], index[u]] = 1.0 / (1.0 + max(deg[u], deg[v]))
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def mh_weights(g: nx.Graph, node: int) -> dict[int, float]:
    """Row `node` of the Metropolis-Hastings matrix: {neighbour: weight, node: self weight}."""
    _check_simple(g)
    if node not in g:
        raise TopologyError(f"node {node} is not in the graph")
    d = g.degree(node)
    weights = {int(v): 1.0 / (1.0 + max(d, g.degree(v))) for v in sorted(g.neighbors(node))}
    weights[int(node)] = 1.0 - sum(weights.values())
    return weights


def spectral_gap(w: np.ndarray) -> float:
    """1 - max(|lambda_2|, |lambda_n|) of the symmetric mixing matrix `w` (eigenvalues sorted descending)."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] == 0:
        raise TopologyError(f"mixing matrix must be square and non-empty, got shape {w.shape}")
    if not np.allclose(w, w.T, atol=1e-12):
        raise TopologyError("mixing matrix is not symmetric")
    if w.shape[0] == 1:
        return 1.0
    lam = np.linalg.eigvalsh(w)  # ascending
    return float(1.0 - max(abs(lam[-2]), abs(lam[0])))


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class TopologyStats:
    """Summary figures of a topology. `low_degree_nodes` (degree < 2) cannot aggregate
    privately: a neighbourhood sum with fewer than 2 contributors reveals an input.
    `fragile_nodes` (degree 2) can, but their secure sum fails safely whenever one neighbour
    drops out (one survivor is below the floor); degree >= 3 survives one dropout."""

    nodes: int
    edges: int
    min_degree: int
    mean_degree: float
    max_degree: int
    diameter: int
    spectral_gap: float
    low_degree_nodes: tuple[int, ...]
    fragile_nodes: tuple[int, ...] = ()


def stats(g: nx.Graph) -> TopologyStats:
    """Figures of a valid (connected, simple) graph; spectral gap of its Metropolis-Hastings matrix."""
    _check_structure(g)
    degrees = [d for _, d in g.degree]
    return TopologyStats(
        nodes=g.number_of_nodes(),
        edges=g.number_of_edges(),
        min_degree=min(degrees),
        mean_degree=sum(degrees) / len(degrees),
        max_degree=max(degrees),
        diameter=nx.diameter(g) if g.number_of_nodes() > 1 else 0,
        spectral_gap=spectral_gap(metropolis_hastings(g)),
        low_degree_nodes=tuple(sorted(v for v, d in g.degree if d < 2)),
        fragile_nodes=tuple(sorted(v for v, d in g.degree if d == 2)),
    )


def _rounds_per_decade(gap: float) -> str:
    if gap >= 1.0 - 1e-12:
        return "1"
    if gap <= 1e-12:
        return "never"
    return f"{math.log(10.0) / -math.log1p(-gap):.1f}"


def describe(g: nx.Graph, name: str) -> str:
    """Multi-line human-readable report for `p2pfl topology show`; the last lines note nodes of
    degree 2 and warn about nodes of degree < 2, if any."""
    s = stats(g)
    lines = [
        f"topology: {name}",
        f"nodes: {s.nodes}",
        f"edges: {s.edges}",
        f"degree: min {s.min_degree}, mean {s.mean_degree:.2f}, max {s.max_degree}",
        f"diameter: {s.diameter}",
        f"spectral gap (Metropolis-Hastings): {s.spectral_gap:.4f}",
        f"gossip rounds to shrink disagreement 10x (at most): {_rounds_per_decade(s.spectral_gap)}",
    ]
    if s.fragile_nodes:
        lines.append(
            f"note: {len(s.fragile_nodes)} node(s) have degree 2: {_fmt_ids(s.fragile_nodes)}; with secure "
            "aggregation their neighbourhood sum fails safely (they keep their model) in any round where "
            "one neighbour drops out; degree 3 or more survives one dropout"
        )
    if s.low_degree_nodes:
        lines.append(
            f"WARNING: {len(s.low_degree_nodes)} node(s) have degree < 2: {_fmt_ids(s.low_degree_nodes)}; "
            "they cannot aggregate privately, because a neighbourhood sum with fewer than 2 "
            "contributors reveals an input"
        )
    return "\n".join(lines)
