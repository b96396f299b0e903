"""Which p2pfl modules one round's path enters: profile node 0's round 3 in a 3-node ring, in process.

Prints the modules whose functions run during `Node._round` (plain, then secure), and which
modules call back into `node`. Issue 18 measured the architecture refactor with it (the code
before it was run with the same logic through its test helper; see the issue's note):

    .venv/bin/python scripts/round_path.py
"""

from __future__ import annotations

import collections
import sys
import tempfile
import threading
from pathlib import Path

import p2pfl.node as node_module
from p2pfl.config import ExperimentConfig
from p2pfl.inprocess import run_nodes


def trace(secure: bool) -> tuple[list[str], dict[str, int]]:
    """(modules entered, {caller module: calls into node}) during node 0's round 3."""
    entered: collections.Counter[str] = collections.Counter()
    into_node: collections.Counter[str] = collections.Counter()
    original = node_module.Node._round

    def profile(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("p2pfl"):
            return
        entered[module] += 1
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
        if module == "p2pfl.node" and caller.startswith("p2pfl") and caller != module:
            into_node[caller] += 1

    def traced(self, r):  # noqa: ANN001
        if self.id != 0 or r != 3:
            return original(self, r)
        sys.setprofile(profile)  # this thread only: node 0's
        try:
            return original(self, r)
        finally:
            sys.setprofile(None)

    node_module.Node._round = traced
    try:
        cfg = ExperimentConfig(nodes=3, topology="ring", rounds=4, seed=1, secure_agg=secure).validate()
        with tempfile.TemporaryDirectory() as run_dir:
            run_nodes(cfg, Path(run_dir))
    finally:
        node_module.Node._round = original
    return sorted(m.removeprefix("p2pfl.") for m in entered), dict(into_node)


def main() -> None:
    assert threading.current_thread() is threading.main_thread()
    for secure in (False, True):
        modules, into_node = trace(secure)
        print(f"{'secure' if secure else 'plain'}: {len(modules)} modules entered by node 0's round 3: {', '.join(modules)}")
        print(f"  calls into node from other modules: {into_node or 'none'}")


if __name__ == "__main__":
    main()
