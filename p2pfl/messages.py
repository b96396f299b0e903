"""The message model: what nodes say to each other, as plain data.

Owns the `Kind` of each message and the `Message` dataclass. It does not know how messages
become bytes (that is `wire`), how they are encrypted (`crypto`) or sent (`transport`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np


class Kind(IntEnum):
    """What a message is for; part of the authenticated header and of the nonce."""

    MODEL = 1  # a node's (weighted) model delta for a neighbour's average
    GLOBAL = 2  # the star hub's FedAvg result, sent back to a leaf
    SECAGG = 3  # a step of the secure-aggregation protocol (meta: step, body)
    HEARTBEAT = 4  # liveness, carries no model
    HANDSHAKE = 5  # a session handshake step (p2pfl/session.py); the transport's own, never delivered


@dataclass
class Message:
    """One message between two nodes.

    `meta` holds msgpack primitives only (int, float, str, bytes, bool, None, lists, dicts);
    `tensors` holds numpy arrays sent as raw little-endian bytes with dtype and shape.
    """

    kind: Kind
    sender: int
    round: int
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def payload_bytes(self) -> int:
        """Bytes of tensor data carried (for accounting, not the exact wire size)."""
        return sum(int(t.nbytes) for t in self.tensors.values())


Outbound = tuple[int, Message]
"""A message to send, with its recipient's node id."""
