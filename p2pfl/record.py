"""The run directory's records: what one node reports after one round.

Owns the schema of metrics.jsonl lines. Must not touch sockets, training or protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RoundRecord:
    """What one node reports after one round (the run directory's metrics.jsonl line)."""

    round: int
    node: int
    train_loss: float | None  # None when the node sat the round out (no local training)
    test_loss: float | None
    test_acc: float | None
    bytes_sent: int
    bytes_received: int
    wall_time: float
    round_time: float
    train_time: float  # seconds of local training within round_time
    cpu_time: float  # CPU seconds of the node's own thread this round (not the sockets' I/O threads)
    arrived: int
    dropped: dict[str, int]
    aggregation: str  # "ok", or why this node's aggregate failed safely (secure aggregation)
    epsilon: float | None = None  # DP: privacy spent so far at dp_delta (None without DP)
    participated: bool = True  # False: the node sat this round out (schedule or spent budget)
    delta: np.ndarray | None = field(default=None, repr=False)  # model - common init, for consensus

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "delta"}
        out["dropped"] = dict(self.dropped)
        return out
