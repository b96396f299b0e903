"""What the coalition knows, as an object that cannot reach the experimenter's ground truth.

A `View` reads a run directory's public files (config.json: the protocol's settings, which every
node runs with; topology.json: the graph, known to every node in gossip) and view/ (what
`simulate --record` kept of the coalition's decrypted traffic and own rounds). Every file it opens
goes through `View._open`, which resolves the path (symlinks included) and refuses anything
outside those: truth/, models/, metrics.jsonl and summary.json are the experimenter's, and an
attack given a `View` cannot read them (tests/test_audit.py checks both the refusal and that an
attack on a copy without them gives the same estimates).

Owns: reading and validating the recorded view (`ViewError` names the file). Must not touch:
truth/, models/, metrics, scoring, torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl import topology
from p2pfl.recording import COALITION_FILE, MESSAGES_FILE, ROUNDS_FILE, VIEW_DIR, RoundSeen

PUBLIC_FILES = ("config.json", "topology.json")


class ViewError(Exception):
    """The recorded view is missing or malformed, or an attack asked for a file outside it."""


@dataclass(frozen=True)
class Received:
    """One message a coalition member decrypted: its round, sender, kind and tensors."""

    round: int
    sender: int
    kind: str
    step: str | None
    tensors: Mapping[str, np.ndarray]


# A coalition member's own round, read back as `recording` wrote it (deltas from the reference).
OwnRound = RoundSeen


class View:
    """The coalition's knowledge of one recorded run; it holds no path to, and opens no file of, the truth."""

    __slots__ = ("_root", "__dict__")

    def __init__(self, run_dir: str | Path) -> None:
        self._root = Path(run_dir).resolve()
        if not (self._root / VIEW_DIR / COALITION_FILE).is_file():
            raise ViewError(f"{run_dir}: no {VIEW_DIR}/{COALITION_FILE}: this run was not recorded "
                            "(run simulate with --record K)")

    def _open(self, relative: str) -> Path:
        """The path of a file the coalition may read; ViewError for anything else (truth/, models/, ...)."""
        path = (self._root / relative).resolve()
        allowed = path in {self._root / name for name in PUBLIC_FILES} or (self._root / VIEW_DIR) in path.parents
        if not allowed:
            raise ViewError(f"{relative}: not part of the coalition's view (an attack may read only "
                            f"{', '.join(PUBLIC_FILES)} and {VIEW_DIR}/)")
        if not path.is_file():
            raise ViewError(f"{path}: missing from the recorded view")
        return path

    def _json(self, relative: str) -> Any:
        try:
            return json.loads(self._open(relative).read_text())
        except json.JSONDecodeError as exc:
            raise ViewError(f"{relative}: not JSON ({exc})") from None

    def _lines(self, relative: str) -> list[dict[str, Any]]:
        path = self._open(relative)
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ViewError(f"{relative} line {n}: not JSON ({exc})") from None
        return out

    def _arrays(self, relative: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self._open(relative), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError) as exc:
            raise ViewError(f"{relative}: not a readable .npz ({exc})") from None

    # -- what the coalition knows -------------------------------------------------------------

    @cached_property
    def config(self) -> dict[str, Any]:
        """The experiment's settings: the protocol every node runs, public to the coalition."""
        return self._json("config.json")

    @cached_property
    def topology(self) -> topology.Topology:
        try:
            return topology.load(self._open("topology.json"))
        except topology.TopologyError as exc:
            raise ViewError(f"topology.json: {exc}") from None

    @cached_property
    def coalition(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self._json(f"{VIEW_DIR}/{COALITION_FILE}")["nodes"])

    @cached_property
    def own_shards(self) -> dict[int, np.ndarray]:
        """The coalition's own training indices (its own data)."""
        body = self._json(f"{VIEW_DIR}/{COALITION_FILE}")["own_shards"]
        return {int(k): np.asarray(v, dtype=np.int64) for k, v in body.items()}

    @property
    def nodes(self) -> int:
        return int(self.config["nodes"])

    @property
    def rounds(self) -> int:
        return int(self.config["rounds"])

    def mixing_row(self, r: int, i: int) -> dict[int, float]:
        """Node i's Metropolis-Hastings row in round r ({j: W_ij}, itself included): public."""
        topo = self.topology
        if isinstance(topo, topology.TimeVarying):
            return dict(topo.weights_at(r, i))
        rows = self.__dict__.setdefault("_rows", {})
        if i not in rows:
            rows[i] = topology.mh_weights(topo, i)
        return rows[i]

    def neighbours(self, i: int) -> set[int]:
        """Every node i can ever exchange with (the union over the rounds of a time-varying topology)."""
        topo = self.topology
        graph = topo.union() if isinstance(topo, topology.TimeVarying) else topo
        return set(graph.neighbors(i))

    def received(self, k: int) -> list[Received]:
        """Every tensor-carrying message coalition member k decrypted, in arrival order."""
        out = []
        for line in self._lines(f"{VIEW_DIR}/node-{k}/{MESSAGES_FILE}"):
            arrays = self._arrays(f"{VIEW_DIR}/node-{k}/{line['file']}")
            out.append(Received(int(line["round"]), int(line["sender"]), str(line["kind"]), line.get("step"), arrays))
        return out

    def own_rounds(self, k: int) -> list[OwnRound]:
        """Coalition member k's own rounds: what it contributed, started from and ended with."""
        out = []
        for line in self._lines(f"{VIEW_DIR}/node-{k}/{ROUNDS_FILE}"):
            a = self._arrays(f"{VIEW_DIR}/node-{k}/{line['file']}")
            out.append(OwnRound(int(line["round"]), a["own"], a["start"], a["result"], a["trained"],
                                {int(j): float(w) for j, w in line["weights"].items()},
                                int(line["contributors"]), str(line["outcome"])))
        return out
