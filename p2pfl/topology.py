"""Communication graphs of a p2pfl network.

Owns: generating graphs by name (``generate``), loading and saving graph files
(``load`` / ``save``: GraphML, networkx node-link JSON, plain edge lists),
turning a user's topology spec into a graph (``resolve``), checking a graph is
usable (``validate``), Metropolis-Hastings mixing weights
(``metropolis_hastings`` / ``mh_weights``) and spectral figures
(``spectral_gap``, ``stats``, ``describe``), and time-varying topologies (``TimeVarying``: a
fresh graph every round that every node computes alike from the seed and the round).

Must not touch: sockets, torch, or any other module's internals. Every problem
with a graph or a graph file raises ``TopologyError`` (a ``ValueError``) whose
message names the file / field and the problem.

Graphs are undirected, simple ``networkx.Graph`` objects whose nodes are ints
(normally 0..n-1). Matrices use the sorted node order for rows and columns. A time-varying
topology's graph of one round is such a graph too, but need not be connected: only the union
over the rounds must be (``TimeVarying.union``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import weakref
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import networkx as nx
import numpy as np

__all__ = [
    "TopologyError",
    "GENERATORS",
    "GENERATOR_PARAMS",
    "FILE_EXTENSIONS",
    "TIME_VARYING",
    "TimeVarying",
    "Topology",
    "generate",
    "load",
    "save",
    "resolve",
    "validate",
    "metropolis_hastings",
    "mh_weights",
    "adjacency",
    "members",
    "spectral_gap",
    "effective_gap",
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

GENERATORS: dict[str, Callable[[int, int, dict[str, Any]], nx.Graph]] = {  # static graphs
    "ring": _gen_ring,
    "torus": _gen_torus,
    "complete": _gen_complete,
    "star": _gen_star,
    "regular": _gen_regular,
    "erdos_renyi": _gen_erdos_renyi,
    "small_world": _gen_small_world,
    "exponential": _gen_exponential,
}


# --------------------------------------------------------------------------- time-varying topologies

TIME_VARYING: dict[str, tuple[str, ...]] = {  # name -> parameters
    "epidemic": ("s",),
    "onepeer-exp": (),
}
_ALL_NAMES = (*GENERATORS, *TIME_VARYING)
_TV_SALT = 0x7E1DE  # separates the time-varying draws from every other use of the run's seed
_TV_CACHE_ROUNDS = 16  # rounds whose graphs a TimeVarying keeps (the nodes of a process run rounds r-1..r+1)
_GAP_ROUNDS = 64  # effective_gap looks at most this many rounds ahead
_EXACT_GAP_NODES = 256  # up to this many nodes effective_gap multiplies dense matrices; beyond, power iteration


@dataclass(frozen=True)
class TimeVarying:
    """A topology whose graph changes every round; every node computes round r's graph on its own,
    from the seed and r, so no message is needed to agree on it.

    kind "epidemic": Epidemic Learning's s-peer sampling (de Vos et al., NeurIPS 2023), EL-Oracle
        style: round r's graph is a random s-regular *undirected* graph on the n nodes, drawn from
        a generator seeded by (seed, r). (EL-Local, where each node picks s peers to send to on its
        own, gives a directed graph with uneven in-degrees: its mixing matrix is not symmetric, so
        Metropolis-Hastings weights and secure gossip's neighbourhood groups would not apply. Its
        advantage, needing no coordination, is moot here: the oracle's graph costs no messages.)
        Each round's graph need not be connected; Metropolis-Hastings weights on an s-regular graph
        are 1/(s + 1) for the node and each of its s peers, EL's uniform average.
    kind "onepeer-exp": the one-peer exponential graph (Ying et al., NeurIPS 2021), undirected
        one-peer hypercube variant: round r pairs node i with i XOR 2^((r - 1) mod log2 n), weight
        1/2 each; n must be a power of two. Any log2 n consecutive rounds average exactly.

    nodes: n (the nodes are 0..n-1); seed: the run's seed (epidemic's draws); s: epidemic's degree.
    The draws use numpy's PCG64 bit stream under a SeedSequence, both stable across numpy versions,
    and an own pairing algorithm, so nodes on different machines agree. A round's graph is computed
    once per object and kept for the last `_TV_CACHE_ROUNDS` rounds (the nodes of one process share
    their cluster's object); it is frozen, callers must not change it.
    """

    kind: str
    nodes: int
    seed: int = 0
    s: int = 0
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, compare=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in TIME_VARYING:
            raise TopologyError(f"unknown time-varying topology {kind!r}; valid names: {', '.join(TIME_VARYING)}")
        n = self.nodes
        if not _is_int(n) or n < 2:
            raise TopologyError(f"topology '{kind}': n must be an integer >= 2, got {n!r}")
        if not _is_int(self.seed):
            raise TopologyError(f"topology '{kind}': seed must be an integer, got {self.seed!r}")
        if not _is_int(self.s):
            raise TopologyError(f"topology '{kind}': parameter s must be an integer, got {self.s!r}")
        if kind == "epidemic":
            s = self.s
            _need(1 <= s < n, kind, f"s (peers per round) must be in [1, n - 1], got s={s}, n={n}")
            _need(n * s % 2 == 0, kind, f"n * s must be even (an s-regular graph on n nodes), got n={n}, s={s}")
        else:
            _need(self.s == 0, kind, f"takes no parameter s (every node has one peer per round), got s={self.s}")
            _need(n & (n - 1) == 0, kind, f"needs n to be a power of two (2, 4, 8, 16, ...), got n={n}")

    def __reduce__(self) -> tuple[Any, ...]:  # the cache and its lock stay behind
        return (TimeVarying, (self.kind, self.nodes, self.seed, self.s))

    # -- what it is ---------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        """The topology spec that names it ("epidemic:s=3", "onepeer-exp")."""
        return f"epidemic:s={self.s}" if self.kind == "epidemic" else self.kind

    @property
    def degree(self) -> int:
        """Every node's degree in every round's graph."""
        return self.s if self.kind == "epidemic" else 1

    @property
    def period(self) -> int | None:
        """Rounds after which the graphs repeat (onepeer-exp: log2 n), None if they never do."""
        return self.nodes.bit_length() - 1 if self.kind == "onepeer-exp" else None

    def node_ids(self) -> range:
        return range(self.nodes)

    # -- the graphs ---------------------------------------------------------------------------

    def graph_at(self, round_: int) -> nx.Graph:
        """Round `round_`'s graph (1-based), the same on every node; frozen, shared: do not change it."""
        return self._entry(round_)[0]

    def adjacency_at(self, round_: int) -> Mapping[int, tuple[int, ...]]:
        """Round `round_`'s graph as {node: its sorted neighbours}, every node (read-only, shared)."""
        return self._entry(round_)[1]

    def weights_at(self, round_: int, node: int) -> dict[int, float]:
        """Row `node` of round `round_`'s Metropolis-Hastings matrix ({neighbour: weight, node: self weight})."""
        adj = self.adjacency_at(round_)
        if node not in adj:
            raise TopologyError(f"node {node} is not in the graph")
        d = len(adj[node])
        weights = {j: 1.0 / (1.0 + max(d, len(adj[j]))) for j in adj[node]}
        weights[int(node)] = 1.0 - sum(weights.values())
        return weights

    def union(self) -> nx.Graph:
        """Every edge that can occur in some round: the graph the nodes' transports connect over.

        epidemic: the complete graph (any pair can be drawn); onepeer-exp: the log2 n-dimensional
        hypercube. Built anew on each call: callers keep it.
        """
        n = self.nodes
        if self.kind == "epidemic":
            return _canonical(n, nx.complete_graph(n).edges, f"union of {self.spec} (n={n}): complete")
        dims = self.nodes.bit_length() - 1
        edges = [(i, i ^ (1 << k)) for i in range(n) for k in range(dims) if i < i ^ (1 << k)]
        return _canonical(n, edges, f"union of {self.spec} (n={n}): {dims}-dimensional hypercube")

    def _entry(self, round_: int) -> tuple[nx.Graph, Mapping[int, tuple[int, ...]]]:
        if not _is_int(round_) or round_ < 1:
            raise TopologyError(f"topology '{self.spec}': rounds are 1-based, got {round_!r}")
        with self._lock:
            hit = self._cache.get(round_)
            if hit is not None:
                self._cache.move_to_end(round_)
                return hit
            g = nx.freeze(_canonical(self.nodes, self._edges(round_), f"{self.spec} round {round_}"))
            adjacency = MappingProxyType({v: tuple(sorted(g.neighbors(v))) for v in g.nodes})
            self._cache[round_] = (g, adjacency)
            while len(self._cache) > _TV_CACHE_ROUNDS:
                self._cache.popitem(last=False)
            return g, adjacency

    def _edges(self, round_: int) -> list[tuple[int, int]]:
        n = self.nodes
        if self.kind == "onepeer-exp":
            bit = 1 << ((round_ - 1) % (n.bit_length() - 1))
            return [(i, i ^ bit) for i in range(n) if i < i ^ bit]
        for attempt in range(MAX_ATTEMPTS):
            bits = np.random.PCG64(np.random.SeedSequence([_TV_SALT, self.seed % 2**64, round_, attempt]))
            edges = _pair_stubs(n, self.s, bits)
            if edges is not None:
                return sorted(edges)
        raise TopologyError(f"topology '{self.spec}': no {self.s}-regular graph on {n} nodes drawn in "
                            f"{MAX_ATTEMPTS} attempts (round {round_})")

    # -- figures ------------------------------------------------------------------------------

    def effective_gap(self, rounds: int) -> float:
        """1 - ||W_T ... W_1 - J||_2^(1/T) over the first T = min(rounds, 64) rounds' Metropolis-Hastings
        matrices (J: the exact average): the per-round contraction of disagreement. For a fixed
        symmetric W it is the usual spectral gap; onepeer-exp over a whole period gives 1 (exact)."""
        T = max(1, min(int(rounds), _GAP_ROUNDS))
        n = self.nodes
        mats = [self._sparse_mh(r) for r in range(1, T + 1)]
        # Disagreement D_t = W_t D_{t-1}, D_0 = I - J, kept of mean 0 and renormalised every round
        # (its scale goes into `log_scale`), so neither underflow nor roundoff sets the figure.
        if n <= _EXACT_GAP_NODES:
            d = np.eye(n) - 1.0 / n
            steps: list[list[tuple]] = [[m] for m in mats]
        else:  # power iteration on A^T A, A = W_T ... W_1 on vectors of mean 0 (each W_t symmetric)
            d = np.random.default_rng([_TV_SALT, self.seed % 2**64]).standard_normal(n)
            steps = [mats + mats[::-1]] * 60
        log_scale = 0.0
        for chain in steps:
            if n > _EXACT_GAP_NODES:
                d = d - d.mean()
                d /= np.linalg.norm(d)
                log_scale = 0.0
            for m in chain:
                d = _apply_sparse(m, d)
                d -= d.mean(axis=0)
                norm = float(np.linalg.norm(d))
                if norm < 1e-10:  # averaged exactly (onepeer-exp over a period)
                    return 1.0
                log_scale += math.log(norm)
                d /= norm
        if n <= _EXACT_GAP_NODES:
            log_sigma = log_scale + math.log(float(np.linalg.norm(d, 2)) / float(np.linalg.norm(d)))
        else:
            log_sigma = log_scale / 2.0  # the last chain gave ||A^T A x|| = sigma^2 for the top x
        return float(min(1.0, max(0.0, 1.0 - math.exp(log_sigma / T))))

    def _sparse_mh(self, round_: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, w_uv, self weights) of round `round_`'s MH matrix, without touching the cache."""
        edges = np.array(self._edges(round_), dtype=np.int64).reshape(-1, 2)
        deg = np.bincount(edges.ravel(), minlength=self.nodes)
        w = 1.0 / (1.0 + np.maximum(deg[edges[:, 0]], deg[edges[:, 1]]))
        own = 1.0 - np.bincount(edges.ravel(), weights=np.repeat(w, 2), minlength=self.nodes)
        return edges[:, 0], edges[:, 1], w, own

    # -- files --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time_varying": self.kind, "nodes": self.nodes}
        if self.kind == "epidemic":
            out["s"] = self.s
        out["seed"] = self.seed
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "TimeVarying":
        """Read the fields of a time-varying topology file; a bad one is refused naming the field."""
        kind = data.get("time_varying")
        if not isinstance(kind, str) or kind not in TIME_VARYING:
            raise TopologyError(f"{where}: field 'time_varying' must be one of {', '.join(TIME_VARYING)}, got {kind!r}")
        fields_ = ("time_varying", "nodes", "seed") + TIME_VARYING[kind]
        unknown = sorted(set(data) - set(fields_))
        if unknown:
            raise TopologyError(f"{where}: unknown field '{unknown[0]}' in a time-varying topology "
                                f"(fields of {kind}: {', '.join(fields_)})")
        required = ("nodes", "seed") + TIME_VARYING[kind]
        for key in required:
            if key not in data:
                raise TopologyError(f"{where}: field '{key}' is missing ({kind} needs {', '.join(required)})")
            if not _is_int(data[key]):
                raise TopologyError(f"{where}: field '{key}' must be an integer, got {data[key]!r}")
        try:
            return cls(kind, int(data["nodes"]), int(data["seed"]), int(data.get("s", 0)))
        except TopologyError as exc:
            raise TopologyError(f"{where}: {exc}") from None


def _pair_stubs(n: int, s: int, bits: np.random.PCG64) -> set[tuple[int, int]] | None:
    """A random s-regular simple graph's edges, or None if this draw got stuck.

    Each node has s stubs; shuffle them, pair neighbours in the order, keep the pairs that make
    a new edge between two different nodes, and shuffle again the stubs of the rest (Steger and
    Wormald's method, as networkx's random_regular_graph, here with a version-stable shuffle)."""
    edges: set[tuple[int, int]] = set()
    stubs = np.repeat(np.arange(n, dtype=np.int64), s)
    while stubs.size:
        order = np.argsort(bits.random_raw(stubs.size), kind="stable")
        left: dict[int, int] = {}
        for a, b in stubs[order].reshape(-1, 2).tolist():
            u, v = (a, b) if a < b else (b, a)
            if u != v and (u, v) not in edges:
                edges.add((u, v))
            else:
                left[u] = left.get(u, 0) + 1
                left[v] = left.get(v, 0) + 1
        ends = sorted(left)
        if ends and not any((u, v) not in edges for i, u in enumerate(ends) for v in ends[i + 1:]):
            return None
        stubs = np.array([v for v in ends for _ in range(left[v])], dtype=np.int64)
    return edges


def _apply_sparse(m: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """W @ x for a symmetric MH matrix given as (u, v, w_uv, self weights); x: (n,) or (n, k)."""
    u, v, w, own = m
    wcol = w if x.ndim == 1 else w[:, None]
    y = (own if x.ndim == 1 else own[:, None]) * x
    np.add.at(y, u, wcol * x[v])
    np.add.at(y, v, wcol * x[u])
    return y


Topology = Union[nx.Graph, TimeVarying]  # what a topology spec resolves to


def generate(name: str, n: int, seed: int = 0, **params: Any) -> Topology:
    """Build the named topology on nodes 0..n-1 (connected, deterministic for a given seed).

    Names: ring, torus (most square rows x cols, both >= 3), complete, star (node 0 is the hub),
    regular (d=4), erdos_renyi (p=2 ln(n)/n), small_world (k=4, p=0.1), exponential
    (i -- i +- 2^k mod n). Random generators redraw with derived seeds until connected.
    The time-varying names epidemic (s=4) and onepeer-exp give a `TimeVarying`, not a graph.
    """
    if name not in GENERATORS and name not in TIME_VARYING:
        raise TopologyError(f"unknown topology {name!r}; valid names: {', '.join(_ALL_NAMES)}")
    if not _is_int(n) or n < 1:
        raise TopologyError(f"topology '{name}': n must be a positive integer, got {n!r}")
    if not _is_int(seed):
        raise TopologyError(f"topology '{name}': seed must be an integer, got {seed!r}")
    valid_params = GENERATOR_PARAMS[name] if name in GENERATORS else TIME_VARYING[name]
    unknown = sorted(set(params) - set(valid_params))
    if unknown:
        valid = ", ".join(valid_params) or "none"
        raise TopologyError(f"topology '{name}': unknown parameter(s) {', '.join(unknown)} (valid: {valid})")
    if name in TIME_VARYING:
        s = params.get("s", 4 if name == "epidemic" else 0)
        return TimeVarying(name, int(n), int(seed), s)
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


def _load_json(path: Path) -> Topology:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TopologyError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(data, dict):
        raise TopologyError(f"{path}: expected a node-link JSON object, got {type(data).__name__}")
    if "time_varying" in data:  # {"time_varying": "epidemic", "nodes": n, "s": s, "seed": seed}
        return TimeVarying.from_json(data, str(path))
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


_LOADERS: dict[str, Callable[[Path], Topology]] = {
    ".graphml": _load_graphml,
    ".json": _load_json,
    ".edgelist": _load_edgelist,
    ".txt": _load_edgelist,
}


def _unknown_format(path: Path, ext: str) -> str:
    return f"{path}: unknown topology file format {ext or '(no extension)'!r}; use {', '.join(FILE_EXTENSIONS)}"


def load(path: str | os.PathLike[str]) -> Topology:
    """Read a topology file (.graphml, node-link .json, .edgelist / .txt).

    The result is a connected, undirected simple graph with int node ids; which ids it
    must have is for ``validate(g, node_ids)`` to check. A .json file holding
    {"time_varying": ...} gives a `TimeVarying` (its fields are checked, a bad one named).
    """
    p = Path(path)
    ext = _extension(p)
    if ext not in _LOADERS:
        raise TopologyError(_unknown_format(p, ext))
    g = _LOADERS[ext](p)
    if isinstance(g, TimeVarying):
        return g
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


def save(g: Topology, path: str | os.PathLike[str]) -> None:
    """Write `g` in the format its extension names; only graphs ``load`` would accept are written.
    A `TimeVarying` is written as its .json fields (every node computes its graphs from them)."""
    p = Path(path)
    ext = _extension(p)
    if ext not in _LOADERS:
        raise TopologyError(_unknown_format(p, ext))
    if isinstance(g, TimeVarying):
        if ext != ".json":
            raise TopologyError(f"{p}: a time-varying topology is saved as .json, not {ext}")
        try:
            p.write_text(json.dumps(g.to_json()) + "\n", encoding="utf-8")
        except OSError as e:
            raise TopologyError(f"{p}: cannot write ({e.strerror or e})") from None
        return
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
    if name not in GENERATORS and name not in TIME_VARYING:
        raise TopologyError(
            f"unknown topology {spec!r}: not an existing file and not one of {', '.join(_ALL_NAMES)} "
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


def resolve(spec: str, n: int | None, seed: int) -> Topology:
    """A file path (known extension, or an existing file that is not a generator spec) is loaded;
    anything else is parsed as 'name[:key=value,...]' and generated on n nodes with `seed`.

    A loaded file must have n nodes when n is given. Callers still run
    ``validate(g, node_ids)`` to check the ids match their cluster. The time-varying specs
    (epidemic:s=S, onepeer-exp) and files give a `TimeVarying`.
    """
    spec = str(spec)
    name = spec.partition(":")[0].strip()
    if _extension(spec) in FILE_EXTENSIONS or (name not in _ALL_NAMES and os.path.isfile(spec)):
        g = load(spec)
        size = g.nodes if isinstance(g, TimeVarying) else g.number_of_nodes()
        if n is not None and size != n:
            raise TopologyError(f"{spec}: file has {size} nodes but n={n} nodes were asked for")
        return g
    name, params = parse_spec(spec)
    if n is None:
        raise TopologyError(f"topology {spec!r}: the number of nodes n is required to generate it")
    return generate(name, n, seed, **params)


# --------------------------------------------------------------------------- checks


def validate(g: Topology, node_ids: Iterable[int] | None = None) -> None:
    """Raise TopologyError unless `g` is a non-empty, connected, undirected simple graph
    whose nodes are exactly `node_ids` (default: 0..n-1). A `TimeVarying` (valid by construction,
    its union connected) is checked for its ids: 0..n-1 must be `node_ids`."""
    if isinstance(g, TimeVarying):
        if node_ids is not None:
            want = {_to_node_id(i, "node_ids") for i in node_ids}
            missing, extra = want - set(g.node_ids()), set(g.node_ids()) - want
            if missing or extra:
                raise TopologyError(f"time-varying topology {g.spec} runs on nodes 0..{g.nodes - 1}; node_ids "
                                    + ", ".join(([f"lacks {_fmt_ids(extra)}"] if extra else [])
                                                + ([f"has {_fmt_ids(missing)} beyond them"] if missing else [])))
        return
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


_ADJACENCY: "weakref.WeakKeyDictionary[nx.Graph, Mapping[int, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def adjacency(g: nx.Graph) -> Mapping[int, tuple[int, ...]]:
    """Every node's sorted neighbours, read-only, made once per graph object: the nodes of one
    process share it (one copy per node would cost O(n^2) time and memory at 10,000 nodes).
    The graph must not change afterwards (the cluster's does not)."""
    hit = _ADJACENCY.get(g)
    if hit is None:
        hit = _ADJACENCY[g] = MappingProxyType({v: tuple(sorted(g.neighbors(v))) for v in g.nodes})
    return hit


_MEMBERS: "weakref.WeakKeyDictionary[nx.Graph, tuple[tuple[int, ...], frozenset[int]]]" = weakref.WeakKeyDictionary()


def members(g: nx.Graph) -> tuple[tuple[int, ...], frozenset[int]]:
    """The graph's node ids, sorted, and as a set, made once per graph object (shared as `adjacency` is)."""
    hit = _MEMBERS.get(g)
    if hit is None:
        ids = tuple(sorted(g.nodes))
        hit = _MEMBERS[g] = (ids, frozenset(ids))
    return hit


def mh_weights(g: nx.Graph, node: int) -> dict[int, float]:
    """Row `node` of the Metropolis-Hastings matrix: {neighbour: weight, node: self weight}.

    Checks only what this row depends on (the graph's kind, the node, its edges): every node of
    a 10,000-node simulation asks for its row, and checking the whole graph each time would cost
    O(n^2); `validate` checks the whole graph once, when it is loaded.
    """
    kind = _structure_problems(g) if not isinstance(g, nx.Graph) or g.is_directed() or g.is_multigraph() else []
    if kind:
        raise TopologyError("; ".join(kind))
    if node not in g:
        raise TopologyError(f"node {node} is not in the graph")
    bad = [v for v in (node, *g.neighbors(node)) if not _is_int(v)]
    if bad:
        raise TopologyError(f"node ids must be integers, got {_fmt_ids(bad)}")
    if g.has_edge(node, node):
        raise TopologyError(f"self-loop(s) on node(s) {_fmt_ids([node])}")
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


def effective_gap(g: Topology, rounds: int) -> float:
    """A graph's Metropolis-Hastings spectral gap; a `TimeVarying`'s effective gap over `rounds` rounds."""
    if isinstance(g, TimeVarying):
        return g.effective_gap(rounds)
    return spectral_gap(metropolis_hastings(g))


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
    if isinstance(g, TimeVarying):
        return _describe_time_varying(g, name)
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


_DESCRIBE_ROUNDS = 16  # rounds whose graphs `describe` looks at


def _describe_time_varying(t: TimeVarying, name: str) -> str:
    n, d = t.nodes, t.degree
    if t.kind == "epidemic":
        what = f"Epidemic Learning s-peer sampling: a fresh random {d}-regular graph every round (seed {t.seed})"
        union_edges, union_degree = n * (n - 1) // 2, n - 1
    else:
        what = f"one-peer exponential graph: round r pairs node i with i XOR 2^((r - 1) mod {t.period})"
        union_edges, union_degree = n * (t.period or 0) // 2, t.period or 0
    lines = [
        f"topology: {name}",
        f"time-varying: {what}",
        f"nodes: {n}",
        f"degree: {d} in every round, every node",
        f"union of the rounds (every node connects to its union neighbours): {union_edges} edges, degree {union_degree}",
    ]
    if n <= _EXACT_GAP_NODES:
        gaps = [spectral_gap(metropolis_hastings(t.graph_at(r))) for r in range(1, _DESCRIBE_ROUNDS + 1)]
        lines.append(f"spectral gap (Metropolis-Hastings) of one round's graph: mean {np.mean(gaps):.4f} "
                     f"over rounds 1-{_DESCRIBE_ROUNDS}")
    gap = t.effective_gap(_DESCRIBE_ROUNDS)
    lines += [f"effective spectral gap over rounds 1-{_DESCRIBE_ROUNDS} (1 - ||W_T...W_1 - J||^(1/T)): {gap:.4f}",
              f"gossip rounds to shrink disagreement 10x (about): {_rounds_per_decade(gap)}"]
    if d == 2:
        lines.append("note: every node has degree 2 in a round; with secure aggregation its neighbourhood sum fails "
                     "safely in any round where one of its two peers drops out")
    if d < 2:
        lines.append(f"WARNING: every node has {d} peer(s) per round; secure aggregation cannot run on it (a "
                     "neighbourhood sum with fewer than 2 contributors reveals an input)")
    return "\n".join(lines)
