"""Recording a run for a privacy audit (`simulate --record K,...`): the coalition's view, apart from the truth.

Two things are written into the run directory, never mixed:

- `view/`: what the recorded nodes (a curious node or a colluding coalition) legitimately decrypt
  and know. Per recorded node K, `view/node-K/`: every received message that carries tensors
  (`messages.jsonl`, one line each: round, sender, kind, secure-aggregation step, and the .npz
  holding its tensors) and, once per round, its own vectors (`rounds.jsonl` + `round-R.npz`: the
  vector it put into the round, its public state at the round start and its result, all as deltas
  from the common reference model) with the round's mixing row and contributor count.
  `view/coalition.json` names the coalition and holds its own shards' indices (its own data).
- `truth/`: what only the experimenter knows, for scoring an attack and never for running one
  (`p2pfl.audit.view.View` cannot open it). Per node J, `truth/node-J.npz`: its model after local
  training (before any clipping or noise) and the vector it contributed, per round, and the
  indices of its training shard.

Everything is numpy .npz (read back with allow_pickle=False) and JSON: nothing is pickled.

Owns: the `Observer` interface the node calls (`received` for an authenticated message it
admits, `round_done` once per round with `RoundSeen`), the recorders and the file layout.
Must not touch: sockets, torch, rounds or protocols (the node hands it finished values), and it
is used by `simulate` only: `p2pfl node` refuses to record, so no deployment records by accident.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from p2pfl.messages import Message

VIEW_DIR = "view"
TRUTH_DIR = "truth"
COALITION_FILE = "coalition.json"
MESSAGES_FILE = "messages.jsonl"
ROUNDS_FILE = "rounds.jsonl"


@dataclass(frozen=True)
class RoundSeen:
    """One node's own round, as the node knows it (deltas from the common reference model).

    own: the vector it put into the round (after DP clipping and local noise, where on).
    start: its public state when the round began (the last round's result).
    result: its state after the round (its new delta).
    trained: its model right after local training, before clipping or noise (private).
    weights: its mixing row this round ({neighbour: W_ij}); contributors: how many neighbours'
    inputs made it into its aggregate (`RoundProtocol.arrived`); outcome: "ok" or why it failed.
    """

    round: int
    own: np.ndarray
    start: np.ndarray
    result: np.ndarray
    trained: np.ndarray
    weights: Mapping[int, float]
    contributors: int
    outcome: str


class Observer(Protocol):
    """What a node tells its recorder (`Node.observer`; None everywhere but `simulate --record`)."""

    def received(self, msg: Message) -> None: ...

    def round_done(self, seen: RoundSeen) -> None: ...

    def close(self) -> None: ...


def _atomic_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


class ViewRecorder:
    """What one coalition member decrypted and knows, written as it happens (`view/node-K/`)."""

    def __init__(self, run_dir: Path, node_id: int) -> None:
        self.node_id = node_id
        self.dir = Path(run_dir) / VIEW_DIR / f"node-{node_id}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._messages = open(self.dir / MESSAGES_FILE, "a")
        self._rounds = open(self.dir / ROUNDS_FILE, "a")
        self._seq = 0

    def received(self, msg: Message) -> None:
        if not msg.tensors:
            return  # hellos, readies, share bodies without a tensor: nothing to reconstruct from
        self._seq += 1
        name = f"msg-{self._seq:06d}.npz"
        _atomic_savez(self.dir / name, {k: np.asarray(v) for k, v in msg.tensors.items()})
        step = msg.meta.get("step")
        line = {"seq": self._seq, "round": int(msg.round), "sender": int(msg.sender), "kind": msg.kind.name,
                "step": step if isinstance(step, str) else None, "tensors": sorted(msg.tensors), "file": name}
        self._messages.write(json.dumps(line) + "\n")
        self._messages.flush()

    def round_done(self, seen: RoundSeen) -> None:
        name = f"round-{seen.round:05d}.npz"
        _atomic_savez(self.dir / name, {"own": seen.own, "start": seen.start, "result": seen.result,
                                        "trained": seen.trained})
        line = {"round": seen.round, "weights": {str(j): float(w) for j, w in sorted(seen.weights.items())},
                "contributors": int(seen.contributors), "outcome": seen.outcome, "file": name}
        self._rounds.write(json.dumps(line) + "\n")
        self._rounds.flush()

    def close(self) -> None:
        self._messages.close()
        self._rounds.close()


@dataclass
class TruthRecorder:
    """One node's private truth, kept in memory and written when the node ends (`truth/node-J.npz`)."""

    run_dir: Path
    node_id: int
    shard: np.ndarray
    rounds: list[int] = field(default_factory=list)
    trained: list[np.ndarray] = field(default_factory=list)
    own: list[np.ndarray] = field(default_factory=list)

    def received(self, msg: Message) -> None:
        return None

    def round_done(self, seen: RoundSeen) -> None:
        self.rounds.append(seen.round)
        self.trained.append(np.asarray(seen.trained, dtype=np.float32))
        self.own.append(np.asarray(seen.own, dtype=np.float32))

    def close(self) -> None:
        out = Path(self.run_dir) / TRUTH_DIR
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        size = self.own[0].size if self.own else 0
        _atomic_savez(out / f"node-{self.node_id}.npz", {
            "rounds": np.asarray(self.rounds, dtype=np.int64),
            "trained": np.stack(self.trained) if self.trained else np.zeros((0, size), np.float32),
            "own": np.stack(self.own) if self.own else np.zeros((0, size), np.float32),
            "shard": np.asarray(self.shard, dtype=np.int64)})


class Recorder:
    """A node's observer under `simulate --record`: the truth always, the view for a coalition member."""

    def __init__(self, run_dir: Path, node_id: int, shard: np.ndarray, coalition: Iterable[int]) -> None:
        self.truth = TruthRecorder(Path(run_dir), node_id, np.asarray(shard))
        self.view = ViewRecorder(Path(run_dir), node_id) if node_id in set(coalition) else None

    def received(self, msg: Message) -> None:
        if self.view is not None:
            self.view.received(msg)

    def round_done(self, seen: RoundSeen) -> None:
        self.truth.round_done(seen)
        if self.view is not None:
            self.view.round_done(seen)

    def close(self) -> None:
        self.truth.close()
        if self.view is not None:
            self.view.close()


def write_coalition(run_dir: Path, coalition: Iterable[int], shards: Mapping[int, np.ndarray]) -> None:
    """`view/coalition.json`: who records, and the coalition's own shards (its own data, known to it)."""
    members = sorted(coalition)
    out = Path(run_dir) / VIEW_DIR
    out.mkdir(parents=True, exist_ok=True)
    body = {"nodes": members, "own_shards": {str(k): [int(i) for i in shards[k]] for k in members}}
    (out / COALITION_FILE).write_text(json.dumps(body) + "\n")
