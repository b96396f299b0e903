"""The ZeroMQ sockets of one node: bind, connect to neighbours, send, receive, authenticate.

Owns one ROUTER socket bound at the node's own address (everything it receives) and one DEALER
per neighbour connected to that neighbour's address (everything it sends), the per-sender replay
counters, and the traffic/drop counters (`TransportStats`). It does not know about training or
rounds (a message of any kind and round is delivered; round checks belong to the node), the
byte layout of messages (`wire`) or how keys are made (`crypto`).

Guarantees: `send` never blocks (it returns False and counts "send_queue_full" when the
neighbour's queue is full); `recv` waits event-driven on the socket and only ever returns
messages that a neighbour sealed for this node with a counter higher than any accepted from it
before; everything else is dropped, counted in `stats.dropped[reason]` and logged.

Cipher: a Transport seals with `cipher` ("auto": AES-256-GCM where this machine has it, else
XChaCha20-Poly1305; or either one by name) and opens whatever cipher a header names if this
machine can run it; a message sealed with one it cannot run is dropped as "bad_cipher". So in a
cluster whose machines do not all have AES-256-GCM, every node must be given "xchacha20poly1305".

One Transport is used from one thread only. Several Transports in one process share a
zmq.Context (the one passed in, else the process-wide `zmq.Context.instance()`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable

import zmq

from p2pfl import crypto, wire
from p2pfl.messages import Message

log = logging.getLogger(__name__)

QUEUE_DEPTH = 16  # messages queued per neighbour (send) and per sender (receive) before refusing
KEY_CONTEXT = b"wire"  # purpose of the pairwise key that seals messages
LOG_EVERY_S = 1.0  # at most one warning per drop reason per second; the counters miss nothing

# Drop reasons of the transport itself (wire.WireError reasons are used as they are).
SEND_QUEUE_FULL = "send_queue_full"
UNKNOWN_PEER = "unknown_peer"
WRONG_RECIPIENT = "wrong_recipient"
REPLAY = "replay"


@dataclass(frozen=True)
class Peer:
    """Where a node listens and its long-term X25519 public key."""

    address: str  # "tcp://host:port"
    public_key: bytes


@dataclass
class TransportStats:
    """Traffic counters; bytes count every frame of every message sent or received (dropped ones too)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Transport:
    """The sockets of node `node_id`; see the module docstring for the guarantees."""

    def __init__(
        self,
        node_id: int,
        private_key: bytes,
        peers: dict[int, Peer],
        neighbours: Iterable[int],
        limits: wire.Limits,
        context: zmq.Context | None = None,
        cipher: str = crypto.AUTO,
    ) -> None:
        if node_id not in peers:
            raise ValueError(f"node {node_id} is not in the peer table")
        if crypto.public_from_private(private_key) != peers[node_id].public_key:
            raise ValueError(f"the private key does not belong to node {node_id}'s public key")
        neighbours = sorted(set(neighbours))
        for j in neighbours:
            if j == node_id or j not in peers:
                raise ValueError(f"neighbour {j} is {'this node' if j == node_id else 'not in the peer table'}")
        self.node_id = node_id
        self.limits = limits
        try:  # resolved once: what every message this node sends is sealed with
            self.cipher = crypto.choose_cipher(cipher)
        except crypto.CipherUnavailable as exc:
            raise ValueError(str(exc)) from None
        self._address = peers[node_id].address
        self._peers = {j: peers[j] for j in neighbours}
        # keys once, up front: a send or receive is then only symmetric crypto
        self._keys = {j: crypto.pairwise_key(private_key, node_id, peers[j].public_key, j, KEY_CONTEXT)
                      for j in neighbours}
        self._context = context if context is not None else zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._poller = zmq.Poller()  # one for the node's life: Socket.poll builds a new one per call
        self._dealers: dict[int, zmq.Socket] = {}
        self._counter = 0
        self._last_counter: dict[int, int] = {}  # highest counter accepted per sender
        self._stats = TransportStats()
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the node's own address and connect to every neighbour (who may not be up yet).

        Raises zmq.ZMQError if the address cannot be bound (e.g. still held by a socket closed a
        moment ago: libzmq releases it asynchronously); start may then be called again.
        """
        if self._router is not None or self._closed:
            raise RuntimeError("a Transport starts once")
        # Counters start at the clock so a restarted node never reuses one (nonce) nor goes
        # back (its neighbours would drop it as a replay).
        self._counter = time.time_ns()
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, QUEUE_DEPTH)
        # libzmq refuses a frame larger than this before allocating it (and drops that connection)
        router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        try:
            router.bind(self._address)
        except zmq.ZMQError:
            router.close(linger=0)  # leave nothing half-started: the caller may retry
            raise
        self._router = router
        self._poller.register(router, zmq.POLLIN)
        for j, peer in self._peers.items():
            dealer = self._context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)  # close() must not wait for a dead neighbour
            dealer.setsockopt(zmq.SNDHWM, QUEUE_DEPTH)
            # No IMMEDIATE: messages queue for a neighbour that is not up yet and go when it is.
            dealer.connect(peer.address)
            self._dealers[j] = dealer

    def close(self, linger: float = 0.0) -> None:
        """Close every socket; queued sends get up to `linger` seconds to leave. Safe to call twice.

        A node that finishes its last round passes a short linger so its final messages (a
        hub's last FedAvg answer, say) still reach live neighbours; a dead neighbour costs at
        most `linger` at the context's termination, never more.
        """
        self._closed = True
        for sock in self._dealers.values():
            sock.close(linger=int(linger * 1000))
        if self._router is not None:
            self._poller.unregister(self._router)
            self._router.close(linger=0)
        self._dealers.clear()
        self._router = None

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, to: int, msg: Message) -> bool:
        """Seal `msg` for neighbour `to` and queue it; False (and counted) if its queue is full.

        Never blocks. The message's arrays may be changed as soon as this returns (only the
        sealed copy is queued). Sending to a non-neighbour, or a message that is not from this
        node or does not fit the limits, is a programming error (ValueError / wire.WireError).
        """
        dealer = self._dealers.get(to)
        if dealer is None:
            raise ValueError(f"node {to} is not a neighbour of node {self.node_id} (or not started)")
        if msg.sender != self.node_id:
            raise ValueError(f"message from node {msg.sender} sent by node {self.node_id}")
        # Check for room before sealing: a dead neighbour must not cost a model's worth of crypto.
        if not dealer.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            return self._send_failed(to)
        self._counter += 1
        frames = wire.seal(msg, to, self._counter, self._keys[to], self.limits, cipher=self.cipher)
        try:
            # copy=False: zmq keeps a reference to the sealed buffers instead of copying them
            dealer.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return self._send_failed(to)
        self._stats.messages_sent += 1
        self._stats.bytes_sent += sum(memoryview(f).nbytes for f in frames)
        return True

    def _send_failed(self, to: int) -> bool:
        self.count_drop(SEND_QUEUE_FULL)
        self._log_drop(SEND_QUEUE_FULL, f"queue to node {to} is full")
        return False

    # -- receiving -------------------------------------------------------------------------------

    def recv(self, timeout: float) -> Message | None:
        """The next authenticated, fresh message, or None once `timeout` seconds have passed."""
        if self._router is None:
            raise RuntimeError("recv before start (or after close)")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            # Take what is already queued without polling (messages come in bursts: a phase's
            # worth from every neighbour); wait on the poller only when nothing is.
            try:
                msg = self._accept(self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False))
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                # ceil: a poll of 0 ms with time left would spin instead of waiting
                self._poller.poll(math.ceil(remaining * 1000))
                continue
            if msg is not None:
                return msg
            if time.monotonic() >= deadline:
                return None

    def _accept(self, frames: list[zmq.Frame]) -> Message | None:
        """Check one received frame set (routing id first); the message, or None if dropped."""
        parts = frames[1:]  # the ROUTER's routing id says nothing trustworthy: drop it
        self._stats.bytes_received += sum(len(f) for f in parts)
        sender: int | str = "?"
        try:
            header = wire.read_header(parts, self.limits)
            sender = header.sender
            key = self._keys.get(sender)
            if key is None:
                return self._drop(UNKNOWN_PEER, sender, frames, "not a neighbour")
            if header.recipient != self.node_id:
                return self._drop(WRONG_RECIPIENT, sender, frames, f"addressed to node {header.recipient}")
            aead = wire.message_aead(header, key)
            meta = wire.open_meta(header, parts, aead, self.limits)  # authenticates the header
            # Before decrypting the tensors: a replayed model costs no bulk crypto.
            if header.counter <= self._last_counter.get(sender, 0):
                return self._drop(REPLAY, sender, frames, f"counter {header.counter} not above the last accepted")
            tensors = wire.open_tensors(header, parts, aead)
        except wire.WireError as exc:
            return self._drop(exc.reason, sender, frames, exc.detail)
        self._last_counter[sender] = header.counter
        self._stats.messages_received += 1
        return wire.to_message(header, meta, tensors)

    # -- accounting ------------------------------------------------------------------------------

    def count_drop(self, reason: str) -> None:
        """Count one dropped message under `reason` (the node adds its own, e.g. wrong round)."""
        self._stats.dropped[reason] = self._stats.dropped.get(reason, 0) + 1

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters (later traffic does not change it)."""
        return replace(self._stats, dropped=dict(self._stats.dropped))

    def _drop(self, reason: str, sender: int | str, frames: list[zmq.Frame], detail: str) -> None:
        self.count_drop(reason)
        try:
            origin = frames[0].get("Peer-Address")  # the TCP peer, the only clue for garbage
        except zmq.ZMQError:
            origin = "?"
        self._log_drop(reason, f"from node {sender} ({origin}): {detail}")
        return None

    def drop(self, reason: str, detail: str) -> None:
        """Count a message the node refused after the transport delivered it, and log it (rate-limited)."""
        self.count_drop(reason)
        self._log_drop(reason, detail)

    def _log_drop(self, reason: str, detail: str) -> None:
        # A flood of bad frames must not become a flood of log lines: one per reason per second.
        now = time.monotonic()
        if now - self._last_log.get(reason, -math.inf) < LOG_EVERY_S:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return
        self._last_log[reason] = now
        more = self._unlogged.pop(reason, 0)
        log.warning("node %d dropped a message (%s) %s%s", self.node_id, reason, detail,
                    f" [+{more} more since the last warning]" if more else "")
