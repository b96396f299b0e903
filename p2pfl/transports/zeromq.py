"""The ZeroMQ transport of one node: tcp:// between machines, ipc:// on one host, inproc:// in one process.

Owns one ROUTER socket bound at the node's own address (everything neighbours send us, and our
answers to their handshake steps on the same connection) and one DEALER per neighbour connected
to that neighbour's address (everything we send it, and its handshake answers), the socket
options of docs/wire.md (*Sockets*), and waiting: `recv` polls the sockets event-driven and
hands every frame set to the node's `channel.Channels`, which alone decides what is delivered
(sessions, authentication, replay, drop accounting). It does not know about training or rounds,
the byte layout of messages (`wire`) or keys (`crypto`, `session`, `channel`).

Guarantees (with `Channels`'): `send` never blocks (it returns False and counts
"send_queue_full" when the neighbour's queue is full; before the session with a neighbour is
agreed, the newest `session.MAX_QUEUED` messages wait for it); `recv` only ever returns messages
that a neighbour's current process sealed for this process, in a session this process accepted,
with a counter higher than any accepted in that session before; a process that neighbours refuse
as a second live copy of a node for `channel.DUPLICATE_GRACE_S` gets `session.DuplicateIdentity`.

Cipher: it seals with `cipher` ("auto": AES-256-GCM where this machine has it, else
XChaCha20-Poly1305; or either one by name) and opens whatever cipher a header names if this
machine can run it; a message sealed with one it cannot run is dropped as "bad_cipher".

One transport is used from one thread only. Several in one process share a zmq.Context (the one
passed in, else the process-wide `zmq.Context.instance()`); inproc:// addresses need that.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import zmq

from p2pfl import crypto, wire
from p2pfl.channel import Channels, Sent
from p2pfl.messages import Message
from p2pfl.transport import Peer, TransportStats

SCHEMES = ("tcp", "ipc", "inproc")
QUEUE_DEPTH = 16  # messages queued per neighbour (send) and per sender (receive) before refusing
HEARTBEAT_IVL_MS = 1000  # ZMTP heartbeats: a connection to a vanished process (a host that crashed,
HEARTBEAT_TIMEOUT_MS = 3000  # a cut cable) is closed after this long, not after TCP's minutes
CONNECT_TIMEOUT_MS = 1000  # a connect attempt into a cut gives up after this, instead of riding TCP's
# SYN backoff (1, 3, 7 s ...): reconnecting after a heal takes one attempt, not the next retransmission


class ZmqTransport:
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
        self._channels = Channels(node_id, private_key, peers, neighbours, limits, cipher)
        for j in (node_id, *self._channels.neighbours):
            scheme = peers[j].address.partition("://")[0]
            if scheme not in SCHEMES:
                raise ValueError(f"node {j}'s address {peers[j].address!r} is not one of {', '.join(SCHEMES)}://")
        self.node_id = node_id
        self.limits = limits
        self.cipher = self._channels.cipher
        self._address = peers[node_id].address
        self._peers = {j: peers[j] for j in self._channels.neighbours}
        self._context = context if context is not None else zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._poller = zmq.Poller()  # one for the node's life: Socket.poll builds a new one per call
        self._dealers: dict[int, zmq.Socket] = {}
        self._dealer_of: dict[zmq.Socket, int] = {}
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the node's own address and connect to every neighbour (who may not be up yet).

        Raises zmq.ZMQError if the address cannot be bound (e.g. still held by a socket closed a
        moment ago: libzmq releases it asynchronously); start may then be called again.
        """
        if self._router is not None or self._closed:
            raise RuntimeError("a Transport starts once")
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.RCVHWM, QUEUE_DEPTH)
        router.setsockopt(zmq.SNDHWM, QUEUE_DEPTH)
        # libzmq refuses a frame larger than this before allocating it (and drops that connection)
        router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)
        # A send to a routing id whose connection is gone fails (EHOSTUNREACH) instead of vanishing:
        # that is how a second session for a node id learns whether the first one's process is alive.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        _set_heartbeats(router)
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
            _set_heartbeats(dealer)
            # No IMMEDIATE: messages queue for a neighbour whose connection is not up (yet, or again
            # after a blip) and go when it is. IMMEDIATE was tried (2026-12-06): a lost connection
            # then takes its queue with it, but every send to a neighbour that has just finished
            # fails at once and is counted as a drop, and recovery after a heal was no faster
            # (docs/faults.md).
            dealer.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            dealer.connect(peer.address)
            self._dealers[j] = dealer
            self._dealer_of[dealer] = j
            self._poller.register(dealer, zmq.POLLIN)  # handshake answers come back on it
        self._channels.start(self)

    def close(self, linger: float = 0.0) -> None:
        """Close every socket; queued sends get up to `linger` seconds to leave. Safe to call twice.

        A node that finishes its last round passes a short linger so its final messages (a
        hub's last FedAvg answer, say) still reach live neighbours; a dead neighbour costs at
        most `linger` at the context's termination, never more.
        """
        self._closed = True
        for sock in self._dealers.values():
            self._poller.unregister(sock)
            sock.close(linger=int(linger * 1000))
        if self._router is not None:
            self._poller.unregister(self._router)
            self._router.close(linger=0)
        self._dealers.clear()
        self._dealer_of.clear()
        self._router = None
        self._channels.close()

    def __enter__(self) -> ZmqTransport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the node's calls --------------------------------------------------------------------------

    def send(self, to: int, msg: Message) -> bool:
        """Seal `msg` for neighbour `to` and queue it; False (and counted) if its queue is full.

        Never blocks. The message's arrays may be changed as soon as this returns. Sending to a
        non-neighbour, or a message that is not from this node or does not fit the limits, is a
        programming error (ValueError / wire.WireError).
        """
        return self._channels.send(to, msg)  # ValueError for a non-neighbour, or before start / after close

    def recv(self, timeout: float) -> Message | None:
        """The next authenticated, fresh message, or None once `timeout` seconds have passed.

        Handshakes run in here too (answers, retries); session.DuplicateIdentity if neighbours
        have refused this process for channel.DUPLICATE_GRACE_S.
        """
        if self._router is None:
            raise RuntimeError("recv before start (or after close)")
        channels = self._channels
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            # Take what is already queued without polling (messages come in bursts: a phase's
            # worth from every neighbour); wait on the poller only when nothing is.
            try:
                frames = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                now = time.monotonic()
                wait = deadline - now
                if not channels.all_established():
                    wait = min(wait, channels.tick(now))
                if deadline - now <= 0:
                    return None
                # ceil: a poll of 0 ms with time left would spin instead of waiting
                for sock, events in self._poller.poll(math.ceil(max(wait, 0.0) * 1000)):
                    if sock is self._router:
                        continue
                    if events & zmq.POLLOUT:  # room for an INIT that could not leave
                        channels.on_room(self._dealer_of[sock])
                    if events & zmq.POLLIN:
                        self._drain_dealer(sock)
                continue
            # the routing id names a connection, not a sender
            msg = channels.receive(frames[1:], frames[0].bytes, frames[0])
            if msg is not None:
                return msg
            if time.monotonic() >= deadline:
                return None

    def _drain_dealer(self, dealer: zmq.Socket) -> None:
        j = self._dealer_of.get(dealer)
        while j is not None:
            try:
                frames = dealer.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._channels.answer(j, frames, frames[0] if frames else None)

    def established(self, j: int) -> bool:
        """Whether our session with neighbour `j` is agreed (what we send it is sealed at once)."""
        return self._channels.established(j)

    def count_drop(self, reason: str) -> None:
        """Count one dropped message under `reason` (the node adds its own, e.g. wrong round)."""
        self._channels.count_drop(reason)

    def drop(self, reason: str, detail: str) -> None:
        """Count a message the node refused after the transport delivered it, and log it (rate-limited)."""
        self._channels.drop(reason, detail)

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters (later traffic does not change it)."""
        return self._channels.stats

    @property
    def neighbours(self) -> list[int]:
        return list(self._channels.neighbours)

    # -- channel.Links: the sockets as the channels see them ---------------------------------------

    def send_out(self, to: int, frames: Sequence[wire.Buffer]) -> Sent:
        # copy=False: zmq keeps a reference to the sealed buffers instead of copying them
        return _send(self._dealers[to], frames)

    def send_back(self, route: bytes, frames: Sequence[wire.Buffer]) -> Sent:
        assert self._router is not None
        return _send(self._router, [route, *frames])

    def has_room(self, to: int) -> bool:
        return bool(self._dealers[to].getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    def want_room(self, to: int, wanted: bool) -> None:
        self._poller.modify(self._dealers[to], zmq.POLLIN | zmq.POLLOUT if wanted else zmq.POLLIN)

    def origin(self, where: Any) -> str:
        try:
            return where.get("Peer-Address")  # the TCP peer, the only clue for garbage
        except (zmq.ZMQError, AttributeError):
            return "?"


def _send(sock: zmq.Socket, frames: Sequence[wire.Buffer]) -> Sent:
    """Queue one multipart message without blocking: EAGAIN is a full queue, EHOSTUNREACH (a
    ROUTER_MANDATORY send) a connection that is gone."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return Sent.FULL
    except zmq.ZMQError as exc:
        # Anything else (a socket closed under us) is not a full queue either, but nothing waits
        # on it: the caller counts the message as not sent.
        return Sent.GONE if exc.errno == zmq.EHOSTUNREACH else Sent.FULL
    return Sent.OK


def _set_heartbeats(sock: zmq.Socket) -> None:
    """ZMTP heartbeats: libzmq pings the peer and closes a connection that stays silent too long."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
