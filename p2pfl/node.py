"""One node's life: meet the neighbours, then for every round train, exchange, average, evaluate.

Owns the round loop: which protocol runs each round, the per-phase deadlines, the round window
(messages of the next round are kept, stale and far-future ones dropped and counted), and the
per-round metrics. It drives a sans-I/O `RoundProtocol` over a `Transport`; it does not know
the byte layout of messages (wire) nor how sockets work (transport), and it never blocks
without a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from p2pfl import topology
from p2pfl.config import Cluster, ExperimentConfig, hub_of
from p2pfl.data import Shard
from p2pfl.messages import Kind, Message, Outbound
from p2pfl.protocols import FedAvgRound, GossipRound, Rejected, RoundProtocol
from p2pfl.training import LocalTrainer, Task, TrainConfig, init_model
from p2pfl.transport import Peer, Transport
from p2pfl.wire import Limits

log = logging.getLogger(__name__)

MAX_BUFFERED = 256  # messages of the next round kept while this one finishes
FINAL_LINGER = 2.0  # seconds the last round's messages get to leave after the node is done


@dataclass
class RoundRecord:
    """What one node reports after one round (the run directory's metrics.jsonl line)."""

    round: int
    node: int
    train_loss: float
    test_loss: float | None
    test_acc: float | None
    bytes_sent: int
    bytes_received: int
    wall_time: float
    round_time: float
    arrived: int
    dropped: dict[str, int]
    delta: np.ndarray | None = field(default=None, repr=False)  # model - common init, for consensus

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "delta"}
        out["dropped"] = dict(self.dropped)
        return out


@dataclass
class NodeSpec:
    """What a node needs to know about itself and its cluster."""

    node_id: int
    config: ExperimentConfig
    cluster: Cluster
    private_key: bytes


class Node:
    """A p2pfl node: a local trainer plus a transport, run round by round."""

    def __init__(
        self,
        spec: NodeSpec,
        task: Task,
        shard: Shard,
        context: zmq.Context | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.id = spec.node_id
        self.config = spec.config
        self.graph = spec.cluster.graph
        self.neighbours = sorted(self.graph.neighbors(self.id))
        self.on_round = on_round
        self.task = task
        self.samples = len(shard.y)
        # All nodes measure deltas against the same reference model, built from the seed.
        self.reference = LocalTrainer(init_model(task, self.config.seed), shard, self._train_config(), 0).get_flat()
        start_seed = self.config.seed if self.config.same_init else self.config.seed + 1 + self.id
        self.trainer = LocalTrainer(init_model(task, start_seed), shard, self._train_config(), self.config.seed * 7919 + self.id)
        self.transport = Transport(
            self.id,
            spec.private_key,
            peers={j: Peer(e.address, e.public_key) for j, e in spec.cluster.nodes.items()},
            neighbours=self.neighbours,
            limits=Limits.for_model(self.trainer.num_params),
            context=context,
        )
        self.own_address = spec.cluster.nodes[self.id].address
        self.weights = topology.mh_weights(self.graph, self.id)
        self.hub = hub_of(self.graph) if self.config.aggregation == "fedavg" else None
        self._buffer: list[Message] = []
        self._t0 = 0.0

    def _train_config(self) -> TrainConfig:
        c = self.config
        return TrainConfig(lr=c.lr, momentum=c.momentum, batch_size=c.batch_size, local_epochs=c.local_epochs,
                           local_steps=c.local_steps or None, optimizer=c.optimizer)

    # -- life cycle ---------------------------------------------------------------------------

    def run(self) -> list[RoundRecord]:
        """Run every round; returns the records. Always closes the transport."""
        records = []
        self.transport.start()
        try:
            self._t0 = time.monotonic()
            self._await_neighbours()
            for r in range(1, self.config.rounds + 1):
                records.append(self._round(r))
        finally:
            self.transport.close(linger=FINAL_LINGER)
        return records

    def _await_neighbours(self) -> None:
        """Say hello and wait (bounded) until every neighbour has said hello too.

        Nodes start at different moments (importing torch takes seconds); without this, the
        first round's deadline would be spent waiting for processes that are still starting.
        """
        hello = Message(Kind.HEARTBEAT, self.id, 0)
        self._send_all([(j, hello) for j in self.neighbours])
        heard: set[int] = set()
        deadline = time.monotonic() + self.config.startup_timeout
        while heard != set(self.neighbours) and (remaining := deadline - time.monotonic()) > 0:
            msg = self.transport.recv(remaining)
            if msg is None:
                continue
            heard.add(msg.sender)  # any authenticated message proves the neighbour is up
            self._admit(msg, 0)
        if heard != set(self.neighbours):
            log.warning("node %d: neighbours %s did not come up within %.0fs; starting without them",
                        self.id, sorted(set(self.neighbours) - heard), self.config.startup_timeout)

    # -- one round ----------------------------------------------------------------------------

    def _round(self, r: int) -> RoundRecord:
        started = time.monotonic()
        train_loss = self.trainer.train()
        delta = self.trainer.get_flat() - self.reference
        protocol = self._protocol(r, delta)
        new_delta = self._exchange(protocol, r)
        self.trainer.set_flat(self.reference + new_delta)
        test_loss = test_acc = None
        if r % self.config.eval_every == 0 or r == self.config.rounds:
            data = self.task.dataset
            test_loss, test_acc = self.trainer.evaluate(data.x_test, data.y_test)
        stats = self.transport.stats
        record = RoundRecord(
            round=r, node=self.id, train_loss=float(train_loss), test_loss=test_loss, test_acc=test_acc,
            bytes_sent=stats.bytes_sent, bytes_received=stats.bytes_received,
            wall_time=time.monotonic() - self._t0, round_time=time.monotonic() - started,
            arrived=protocol.arrived(), dropped=dict(stats.dropped), delta=new_delta,
        )
        log.info("node %d round %d: loss %.4f acc %s arrived %d/%d", self.id, r, train_loss,
                 "-" if test_acc is None else f"{test_acc:.3f}", record.arrived, len(self.neighbours))
        if self.on_round is not None:
            self.on_round(record)
        return record

    def _protocol(self, r: int, delta: np.ndarray) -> RoundProtocol:
        if self.config.aggregation == "fedavg":
            assert self.hub is not None
            leaves = [v for v in sorted(self.graph.nodes) if v != self.hub]
            return FedAvgRound(self.id, r, self.hub, leaves, delta, self.samples)
        return GossipRound(self.id, r, self.weights, delta)

    def _exchange(self, protocol: RoundProtocol, r: int) -> np.ndarray:
        """Run `protocol` to completion: event-driven receive, a deadline per phase."""
        self._send_all(protocol.start())
        early, self._buffer = [m for m in self._buffer if m.round == r], [m for m in self._buffer if m.round != r]
        for msg in early:
            self._feed(protocol, msg)
        phase, deadline = protocol.phase, time.monotonic() + self.config.round_timeout
        while not protocol.finished():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.info("node %d round %d: phase %d deadline passed", self.id, r, protocol.phase)
                self._send_all(protocol.on_deadline())
                phase, deadline = protocol.phase, time.monotonic() + self.config.round_timeout
                continue
            msg = self.transport.recv(remaining)
            if msg is not None and self._admit(msg, r):
                self._feed(protocol, msg)
            if protocol.phase != phase:
                phase, deadline = protocol.phase, time.monotonic() + self.config.round_timeout
        return protocol.result()

    def _admit(self, msg: Message, r: int) -> bool:
        """True if `msg` belongs to round `r`; keep next-round messages, drop the rest (counted)."""
        if msg.kind == Kind.HEARTBEAT:
            return False  # a late hello from a neighbour that started after us: nothing to do
        if msg.round == r:
            return True
        if msg.round == r + 1 and len(self._buffer) < MAX_BUFFERED:  # a neighbour slightly ahead
            self._buffer.append(msg)
            return False
        reason = "stale_round" if msg.round < r else "wrong_round"
        self._drop(reason, f"{msg.kind.name} from {msg.sender} for round {msg.round} during round {r}")
        return False

    def _feed(self, protocol: RoundProtocol, msg: Message) -> None:
        try:
            out = protocol.on_message(msg)
        except Rejected as exc:
            self._drop(exc.reason, str(exc))
            return
        self._send_all(out)

    def _send_all(self, outbound: list[Outbound]) -> None:
        for to, msg in outbound:
            self.transport.send(to, msg)

    def _drop(self, reason: str, detail: str) -> None:
        self.transport.count_drop(reason)
        log.warning("node %d dropped a message (%s): %s", self.id, reason, detail)
