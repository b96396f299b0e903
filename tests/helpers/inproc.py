"""Every node of a config in this process, one thread each: real sockets and crypto, no spawn.

For tests that look inside the nodes (their protocols, what they send) or need a run quickly.
`run_nodes(cfg, run_dir, sent=None)` returns the finished `Node`s and their `RoundRecord`s;
`sent` (optional) collects every (sender, recipient, message) a node hands to its transport.
It is the package's own `p2pfl.inprocess.run_nodes` over tcp:// (benchmarks use it too).
"""

from __future__ import annotations

from pathlib import Path

from p2pfl.config import ExperimentConfig
from p2pfl.inprocess import run_nodes as _run_nodes
from p2pfl.messages import Message
from p2pfl.node import Node, RoundRecord


def run_nodes(cfg: ExperimentConfig, run_dir: Path,
              sent: list[tuple[int, int, Message]] | None = None) -> tuple[dict[int, Node], dict[int, list[RoundRecord]]]:
    return _run_nodes(cfg, run_dir, "tcp", sent)
