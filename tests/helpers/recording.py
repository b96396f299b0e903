"""Run a real `p2pfl node` process that records everything it receives (a curious neighbour).

    python tests/helpers/recording.py --record DIR [--curious 2,4] -- <p2pfl node options>

The node is the ordinary one (`p2pfl.cli node`: real sockets, real keys, real crypto); this
module only wraps a few methods before the command runs:

- `channel.ChannelTransport.recv`, every transport's `recv` (public signature
  `recv(self, timeout) -> Message | None`): every message it returns is logged to
  DIR/messages.jsonl (kind, sender, round, meta keys, secagg step, tensor names), and every
  message that carries tensors is saved whole as an .npz next to it.
  A curious neighbour keeps everything it is sent; this is exactly that.
- with `--curious J,K`: before each receive, at most every `HELLO_EVERY` seconds, the node
  sends a burst of `HELLO_BURST` extra `hello`s to each of J, K (honest nodes send one hello,
  at start-up). The burst is what makes rate limiting observable without timing luck: at
  most one hello of a burst is answered (per round of the receiver), the rest are dropped.
- ground truth for the test: `LocalTrainer.train` saves the model before and after local
  training (the node's own input and update), and `CheckpointStore.save` copies every
  checkpoint it writes to DIR/ckpt/ (the store itself keeps only the newest two).

Everything goes to disk as it happens, so a SIGKILLed process leaves what it had; file names
carry the process id, so a restarted node's records sit beside its first life's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HELLO_EVERY = 0.5  # seconds between bursts of extra hellos
HELLO_BURST = 3  # hellos per neighbour per burst


class Recorder:
    """Appends what one node process receives to a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ckpt").mkdir(exist_ok=True)
        self.pid = os.getpid()
        self.seq = 0
        self._log = open(directory / "messages.jsonl", "a")

    def message(self, msg: Any) -> None:
        self.seq += 1
        entry = {"pid": self.pid, "seq": self.seq, "kind": msg.kind.name, "sender": msg.sender, "round": msg.round,
                 "meta": sorted(msg.meta), "step": msg.meta.get("step") if isinstance(msg.meta.get("step"), str) else None,
                 "tensors": sorted(msg.tensors), "file": None}
        if msg.tensors:
            name = f"recv-{self.pid}-{self.seq:06d}.npz"
            np.savez(self.directory / name, **{k: np.asarray(v) for k, v in msg.tensors.items()})
            entry["file"] = name
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()

    def vector(self, label: str, vec: np.ndarray) -> None:
        self.seq += 1
        np.save(self.directory / f"{label}-{self.pid}-{self.seq:06d}.npy", vec)

    def checkpoint(self, path: Path) -> None:
        shutil.copyfile(path, self.directory / "ckpt" / f"{self.pid}-{path.name}")


def _hello(node_id: int) -> Any:
    from p2pfl.messages import Kind, Message

    return Message(Kind.HEARTBEAT, node_id, 0, meta={"hello": True, "round": 1})


def install(recorder: Recorder, node_id: int, curious: list[int]) -> None:
    """Wrap the methods named in the module docstring; the wrapped calls behave as before."""
    from p2pfl.channel import ChannelTransport as Transport  # its recv is every transport's
    from p2pfl.checkpoint import CheckpointStore
    from p2pfl.training import LocalTrainer

    real_recv, real_train, real_save = Transport.recv, LocalTrainer.train, CheckpointStore.save
    last_burst = [0.0]

    def recv(self: Transport, timeout: float) -> Any:
        now = time.monotonic()
        if curious and now - last_burst[0] >= HELLO_EVERY:
            last_burst[0] = now
            for j in curious:
                for _ in range(HELLO_BURST):
                    self.send(j, _hello(node_id))
        msg = real_recv(self, timeout)
        if msg is not None:
            recorder.message(msg)
        return msg

    def train(self: LocalTrainer, *args: Any, **kwargs: Any) -> Any:
        before = self.get_flat()
        loss = real_train(self, *args, **kwargs)
        after = self.get_flat()
        recorder.vector("trained", after)
        recorder.vector("update", after - before)
        return loss

    def save(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
        path = real_save(self, *args, **kwargs)
        if isinstance(path, Path):
            recorder.checkpoint(path)
        return path

    Transport.recv, LocalTrainer.train, CheckpointStore.save = recv, train, save  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    split = argv.index("--")
    ours, node_args = argv[:split], argv[split + 1:]
    record = Path(ours[ours.index("--record") + 1])
    curious = [int(j) for j in ours[ours.index("--curious") + 1].split(",")] if "--curious" in ours else []
    node_id = int(node_args[node_args.index("--id") + 1])
    install(Recorder(record), node_id, curious)
    from p2pfl.cli import main as cli

    try:
        cli.main(args=["node", *node_args], prog_name="p2pfl", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
