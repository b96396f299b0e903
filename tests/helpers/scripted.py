"""A scripted neighbour: a cluster member that speaks the wire protocol by hand.

It is not a `p2pfl.node.Node`: it binds its own ROUTER at its cluster address, connects raw
DEALERs to its neighbours, agrees sessions on them by hand (tests/helpers/handshake.py: as
initiator on its DEALERs, as responder on its ROUTER), seals every frame itself with `wire.seal`
and its own counter sequence, and decodes what it receives with `wire.read_header` /
`open_meta` / `open_tensors`.
Because it holds every frame it ever sent, it can re-send exact old bytes (replays) or anything
else a test scripts, on the very connection its honest traffic uses.

Its honest behaviour is plain gossip with a fixed delta per round:
  - at start, `on_start(self)` if given, then a HEARTBEAT of round 0 (a hello, `hello_meta`) to
    every neighbour: the nodes' start-up barrier; they answer it with a sync (their round and
    model), which it records;
  - for r = 1..rounds: wait for the watched node's round-r MODEL, call `on_round(self, r)`
    (the test's script: attacks, fuzz, ...), then send its own round-r MODEL to every neighbour
    (unless `on_round` returned a later round: the script goes on there, sending nothing for r);
  - after its last round, `done_after` seconds later (default at once), a HEARTBEAT{done} to every
    neighbour: the farewell real nodes wait for before they close (docs/protocol.md, *The end*).
Frames sent by `on_round` on `dealer(to)` reach `to` *before* the honest round-r MODEL (ZeroMQ
keeps the order of one connection), and the watched node cannot finish round r without that
MODEL: whatever the script sends in round r is processed by the watched node during round r.
No timing luck is involved anywhere.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable

import numpy as np
import zmq

from p2pfl import crypto, wire
from p2pfl.channel import KEY_CONTEXT
from p2pfl.config import Cluster
from p2pfl.messages import Kind, Message
from p2pfl.protocols import DELTA

from helpers.handshake import Counter, Initiator, Responder

POLL_MS = 50


def honest_delta(round_: int, length: int, seed: int = 1234) -> np.ndarray:
    """The scripted neighbour's model delta for `round_`: fixed, small, float32."""
    rng = np.random.default_rng([seed, round_])
    return (0.01 * rng.standard_normal(length)).astype(np.float32)


def flip(frame, index: int, mask: int = 0x01) -> bytes:
    """A copy of `frame` with byte `index` XOR `mask` (negative index from the end)."""
    data = bytearray(bytes(frame))
    data[index] ^= mask
    return bytes(data)


class ScriptedNeighbour:
    """Node `node_id` of `cluster`, played by a script; see the module docstring."""

    def __init__(
        self,
        node_id: int,
        cluster: Cluster,
        private_key: bytes,
        context: zmq.Context,
        rounds: int,
        delta_length: int,
        limits: wire.Limits,
        watch: int = 0,
        on_round: Callable[["ScriptedNeighbour", int], int | None] | None = None,
        on_start: Callable[["ScriptedNeighbour"], None] | None = None,
        timeout: float = 60.0,
        delta_seed: int = 1234,
        done_after: float = 0.0,
    ) -> None:
        self.id = node_id
        self.cluster = cluster
        self.private_key = private_key
        self.context = context
        self.rounds = rounds
        self.delta_length = delta_length
        self.limits = limits
        self.watch = watch
        self.on_round = on_round
        self.on_start = on_start
        self.delta_seed = delta_seed
        self.timeout = timeout
        self.done_after = done_after
        self.done_sent_at: float | None = None  # time.monotonic() just before the farewell left
        self.hello_meta: dict = {"hello": True, "round": 1}  # what a node starting at round 1 says
        self.neighbours = cluster.neighbours(node_id)
        self.counter = Counter()
        publics = {j: cluster.nodes[j].public_key for j in self.neighbours}
        self.sessions = {j: Initiator(node_id, private_key, j, publics[j], limits, self.counter) for j in self.neighbours}
        self.responder = Responder(node_id, private_key, publics, limits, self.counter)
        self.sent: dict[tuple[int, int], list[bytes]] = {}  # (to, round) -> honest frames as sent
        self.heartbeat_frames: dict[int, list[bytes]] = {}
        self.received: list[wire.Header] = []  # every message neighbours sent us, authenticated
        self.heartbeats: list[tuple[int, int, dict]] = []  # (sender, round, meta) of each heartbeat among them
        self.decode_errors: list[str] = []  # honest nodes never produce one
        self.rounds_done = 0
        self.error: str | None = None
        self._last_counter: dict[bytes, int] = {}  # per session
        self._seen_models: set[tuple[int, int]] = set()  # (sender, round)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._router: zmq.Socket | None = None
        self._dealers: dict[int, zmq.Socket] = {}
        self._extra: list[zmq.Socket] = []

    # -- keys, counters, sealing -------------------------------------------------------------

    def key_for(self, peer: int, private_key: bytes | None = None, as_id: int | None = None) -> bytes:
        """Static pairwise wire key of (`as_id`, default us) with `peer`, from `private_key` (default ours)."""
        return crypto.pairwise_key(private_key or self.private_key, self.id if as_id is None else as_id,
                                   self.cluster.nodes[peer].public_key, peer, KEY_CONTEXT)

    def next_counter(self) -> int:
        return self.counter()

    def seal(self, msg: Message, to: int, *, recipient: int | None = None, key: bytes | None = None,
             counter: int | None = None, limits: wire.Limits | None = None,
             chunk_bytes: int = wire.CHUNK_BYTES) -> list[bytes]:
        """Frames of `msg` sealed in our session with `to`, with a fresh counter (or the given fields)."""
        return self.sessions[to].seal(msg, recipient=recipient, key=key, counter=counter, limits=limits,
                                      chunk_bytes=chunk_bytes)

    def model(self, round_: int, delta: np.ndarray | None = None, *, sender: int | None = None,
              kind: Kind = Kind.MODEL, meta: dict | None = None) -> Message:
        """A MODEL message of ours (or of `sender`) with `delta` (default: the honest one)."""
        if delta is None:
            delta = honest_delta(round_, self.delta_length, self.delta_seed)
        return Message(kind, self.id if sender is None else sender, round_, meta or {}, {DELTA: delta})

    # -- sockets -----------------------------------------------------------------------------

    def dealer(self, to: int) -> zmq.Socket:
        """The DEALER our honest traffic to `to` uses (only from the script's thread)."""
        return self._dealers[to]

    def send(self, to: int, frames: list) -> None:
        """Queue `frames` on our connection to `to` (blocks while its queue is full)."""
        self._dealers[to].send_multipart(frames, copy=True)

    def raw_socket(self, kind: int = zmq.DEALER, address: str | None = None) -> zmq.Socket:
        """An extra socket closed with ours; a DEALER is connected to `address`."""
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if address is not None:
            sock.connect(address)
        self._extra.append(sock)
        return sock

    def address(self, node: int) -> str:
        return self.cluster.nodes[node].address

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, connect, and run the script in a thread (sockets belong to that thread)."""
        self._router = self.context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(self.address(self.id))
        self._thread = threading.Thread(target=self._main, name=f"scripted-{self.id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop draining and close every socket (call after the nodes finished)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "scripted neighbour did not stop"

    def _main(self) -> None:
        try:
            for j in self.neighbours:
                dealer = self.context.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))  # a dead node fails the script
                dealer.connect(self.address(j))
                self._dealers[j] = dealer
            for j in self.neighbours:  # answering the nodes' own handshakes meanwhile
                self.sessions[j].agree(self._dealers[j], pump=lambda: self._receive_one(0), timeout=self.timeout)
            if self.on_start is not None:  # before our hello: processed during the nodes' start-up
                self.on_start(self)
            for j in self.neighbours:
                frames = self.seal(Message(Kind.HEARTBEAT, self.id, 0, meta=dict(self.hello_meta)), j)
                self.heartbeat_frames[j] = frames
                self.send(j, frames)
            r = 1
            while r <= self.rounds:
                self._wait_for_model(self.watch, r)
                jump = self.on_round(self, r) if self.on_round is not None else None
                if jump is not None:  # the script moved on to a later round instead of this one's MODEL
                    r = jump
                    continue
                for j in self.neighbours:
                    frames = self.seal(self.model(r), j)
                    self.sent[(j, r)] = frames
                    self.send(j, frames)
                self.rounds_done = r
                r += 1
            self._farewell()
            while not self._stop.is_set():  # keep our queues drained until the nodes are done
                self._receive_one(POLL_MS)
        except BaseException:  # noqa: BLE001 - reported to the test, which asserts on it
            self.error = traceback.format_exc()
        finally:
            for sock in [*self._dealers.values(), *self._extra, self._router]:
                if sock is not None:
                    sock.close(linger=0)

    def _farewell(self) -> None:
        """Say done, as an honest node does after its last round (after reading `done_after` s)."""
        until = time.monotonic() + self.done_after
        while time.monotonic() < until and not self._stop.is_set():
            self._receive_one(POLL_MS)
        self.done_sent_at = time.monotonic()  # before the send: a node that waited for it returns later
        for j in self.neighbours:
            self.send(j, self.seal(Message(Kind.HEARTBEAT, self.id, self.rounds, meta={"done": True}), j))

    def _wait_for_model(self, sender: int, round_: int) -> None:
        deadline = time.monotonic() + self.timeout
        while (sender, round_) not in self._seen_models:
            if self._stop.is_set():
                raise RuntimeError("stopped while waiting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no round-{round_} MODEL from node {sender} within {self.timeout}s")
            self._receive_one(POLL_MS)

    def _receive_one(self, timeout_ms: int) -> None:
        """Receive and authenticate at most one message; record it (or the decode error)."""
        if not self._router.poll(timeout_ms, zmq.POLLIN):
            return
        route, *parts = self._router.recv_multipart()
        try:
            header = wire.read_header(parts, self.limits)
            if header.recipient != self.id:
                raise wire.WireError("wrong_recipient", f"{header.sender} -> {header.recipient}")
            if header.kind == Kind.HANDSHAKE:
                reply = self.responder.answer(route, parts)
                if reply is not None:
                    self._router.send_multipart(reply)
                return
            key = self.responder.key(header.sender, header.session)
            if key is None:
                raise wire.WireError("no_session", f"from {header.sender}")
            meta = wire.open_meta(header, parts, key, self.limits)
            if header.counter <= self._last_counter.get(header.session, 0):
                raise wire.WireError("replay", str(header.counter))
            tensors = wire.open_tensors(header, parts, key)
        except wire.WireError as exc:
            self.decode_errors.append(str(exc))
            return
        self._last_counter[header.session] = header.counter
        self.received.append(header)
        if header.kind == Kind.HEARTBEAT:
            self.heartbeats.append((header.sender, header.round, meta))
        if header.kind == Kind.MODEL:
            vec = tensors.get(DELTA)
            if vec is None or vec.shape != (self.delta_length,) or not np.isfinite(vec).all():
                self.decode_errors.append(f"bad MODEL from {header.sender}")
            self._seen_models.add((header.sender, header.round))
