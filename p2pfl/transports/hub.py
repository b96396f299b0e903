"""The hub transport: many nodes of one process behind one ZeroMQ endpoint (hub+tcp://, hub+ipc://).

Owns a `Hub`, the sockets of one process that hosts many nodes (a ROUTER bound at the hub's
endpoint, and one DEALER to each hub its nodes talk to, its own included), and `HubTransport`,
one node's `transport.MessageTransport` on a hub. A simulation of ten thousand nodes cannot give
each node a ROUTER and a DEALER per neighbour (libzmq caps a context at 1,023 sockets, and every
socket and connection costs file descriptors), so the nodes of one worker process share its
hub: sockets per process grow with the number of processes, not of nodes. Every message is
still a real ZeroMQ message between real sockets (nodes of one process reach each other through
their hub's connection to itself), sealed and opened by the node's own `channel.Channels` with
its own keys and sessions, byte for byte as the ZeroMQ transport does.

The hub puts one routing frame before the sealed frames: `tag | to | from` (1 + 4 + 4 bytes, one
frame because every frame costs a send call), tag `M` for a message to node `to` (what channel
calls an inbound connection) and `A` for a handshake answer back to node `to` on its own
outbound connection. The prefix is not trusted: the sealed header
names sender and recipient and the channels check both (a frame routed to the wrong node is
dropped as `wrong_recipient`, one that lies about its sender fails authentication). Frame sets
the hub cannot route (too short, an unknown node) are dropped, counted in `Hub.dropped` and
logged, rate-limited.

A hub and its transports are used from one thread: `p2pfl.host.Host` runs all of a process's
nodes in one event loop; a lone node (`p2pfl node` with a hub+ address) runs its own hub in its
own thread. It does not know keys, sessions or the byte layout (`channel`, `wire`), nor rounds.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from collections import deque
from typing import Any, Iterable, Sequence

import zmq

from p2pfl import crypto, wire
from p2pfl.channel import SEND_FAILED, ChannelTransport, Peer, Sent
from p2pfl.messages import Message
from p2pfl.transports.zeromq import HEARTBEAT_TIMEOUT_MS, QUEUE_DEPTH, bound_router, connected_dealer, send_frames

log = logging.getLogger("p2pfl.transport")

SCHEMES = ("hub+tcp", "hub+ipc")
MESSAGE, ANSWER = b"M", b"A"
_ID_BYTES = 4
_ROUTE = struct.Struct(">cII")  # tag, to, from
LOG_EVERY_S = 1.0


def endpoint_of(address: str) -> str:
    """The ZeroMQ endpoint of a hub address ("tcp://h:p" of "hub+tcp://h:p"); ValueError otherwise."""
    scheme, sep, _ = address.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"{address!r} is not a hub address ({', '.join(s + '://' for s in SCHEMES)})")
    return address[len("hub+"):]


def _id(node: int) -> bytes:
    return node.to_bytes(_ID_BYTES, "big")


class Hub:
    """The sockets of one process's nodes; see the module docstring.

    `capacity`: how many nodes it will host; its queues hold `QUEUE_DEPTH` messages per node, so
    a hub's nodes together may have as many in flight as they would on sockets of their own.
    """

    def __init__(self, address: str, context: zmq.Context | None = None, capacity: int = 1) -> None:
        self.address = address
        self.endpoint = endpoint_of(address)
        self.context = context if context is not None else zmq.Context.instance()
        self.hwm = QUEUE_DEPTH * max(1, capacity)
        self.dropped: dict[str, int] = {}
        self._router: zmq.Socket | None = None
        self._dealers: dict[str, zmq.Socket] = {}  # by the remote hub's endpoint
        self._endpoint_of: dict[zmq.Socket, str] = {}
        self._poller = zmq.Poller()
        self._nodes: dict[int, HubTransport] = {}
        self._ready: dict[int, None] = {}  # nodes with frames waiting, in arrival order
        self._room_wanted: dict[str, set[tuple[HubTransport, int]]] = {}
        self._last_log: dict[str, float] = {}
        self._closed = False

    # -- nodes joining and leaving -----------------------------------------------------------------

    def attach(self, transport: HubTransport) -> None:
        """Host `transport`'s node: start listening if this is the first, connect to its peers' hubs."""
        if self._closed:
            raise RuntimeError("the hub is closed")
        if transport.node_id in self._nodes:
            raise ValueError(f"node {transport.node_id} is already on this hub")
        if self._router is None:
            self._bind(transport.limits.max_frame_bytes)
        self._nodes[transport.node_id] = transport
        for peer in transport.peer_endpoints():
            self._dealer(peer)

    def detach(self, transport: HubTransport, linger: float) -> None:
        """Stop delivering to `transport`'s node; the last node to leave closes the sockets (`linger`:
        how long their queued messages get to leave, a node's last model to a neighbour among them)."""
        if self._nodes.get(transport.node_id) is transport:
            del self._nodes[transport.node_id]
            self._ready.pop(transport.node_id, None)
            for wanted in self._room_wanted.values():
                wanted.difference_update({w for w in wanted if w[0] is transport})
        if not self._nodes:
            self.close(linger)

    def close(self, linger: float = 0.0) -> None:
        self._closed = True
        for sock in self._dealers.values():
            self._poller.unregister(sock)
            sock.close(linger=int(linger * 1000))
        if self._router is not None:
            self._poller.unregister(self._router)
            self._router.close(linger=0)
        self._dealers.clear()
        self._endpoint_of.clear()
        self._router = None

    def _bind(self, max_frame: int) -> None:
        # a hub's frame set is a node's plus the routing frame
        self._router = bound_router(self.context, self.endpoint, self.hwm, max_frame + 64)
        self._poller.register(self._router, zmq.POLLIN)

    def _dealer(self, endpoint: str) -> zmq.Socket:
        sock = self._dealers.get(endpoint)
        if sock is None:
            sock = connected_dealer(self.context, endpoint, self.hwm, self.hwm)  # answers for all its nodes
            self._dealers[endpoint] = sock
            self._endpoint_of[sock] = endpoint
            self._poller.register(sock, zmq.POLLIN)
        return sock

    # -- sending -------------------------------------------------------------------------------------

    def send_message(self, endpoint: str, to: int, sender: int, frames: Sequence[wire.Buffer]) -> Sent:
        return self._send(self._dealer(endpoint), [_ROUTE.pack(MESSAGE, to, sender), *frames], sender, f"to node {to}")

    def send_answer(self, connection: bytes, to: int, sender: int, frames: Sequence[wire.Buffer]) -> Sent:
        assert self._router is not None
        return self._send(self._router, [connection, _ROUTE.pack(ANSWER, to, sender), *frames], sender,
                          f"back to node {to}")

    def has_room(self, endpoint: str) -> bool:
        return bool(self._dealer(endpoint).getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    def want_room(self, endpoint: str, transport: HubTransport, j: int, wanted: bool) -> None:
        waiting = self._room_wanted.setdefault(endpoint, set())
        (waiting.add if wanted else waiting.discard)((transport, j))
        self._poller.modify(self._dealer(endpoint), zmq.POLLIN | zmq.POLLOUT if waiting else zmq.POLLIN)

    def _send(self, sock: zmq.Socket, frames: list, sender: int, what: str) -> Sent:
        """`zeromq.send_frames`; a failure other than FULL or GONE is counted on the sending node."""
        def failed(exc: zmq.ZMQError) -> None:
            node = self._nodes.get(sender)
            if node is not None:
                node.drop(SEND_FAILED, f"send {what} failed: {exc} (errno {exc.errno})")
        return send_frames(sock, frames, failed)

    # -- receiving ---------------------------------------------------------------------------------

    def pump(self, wait: float) -> None:
        """Wait up to `wait` s for frames, then hand everything queued to the nodes it is for."""
        if self._router is None:
            time.sleep(max(wait, 0.0))
            return
        # ceil: a poll of 0 ms with time left would spin instead of waiting
        for sock, events in self._poller.poll(math.ceil(max(wait, 0.0) * 1000)):
            if sock is self._router:
                continue
            if events & zmq.POLLOUT:
                for transport, j in list(self._room_wanted.get(self._endpoint_of[sock], ())):
                    transport.on_room(j)
        self._drain_dealers()
        self._drain_router()

    def ready(self) -> list[int]:
        """The nodes that have frames waiting (and forget them: each takes its own until empty)."""
        ready = list(self._ready)
        self._ready.clear()
        return ready

    def _drain_router(self) -> None:
        assert self._router is not None
        while True:
            try:
                frames = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 3:
                self._drop("bad_routing", f"{len(frames)} frames, not a routed message")
                continue
            self._deliver(frames[1].bytes, frames[2:], frames[0].bytes, MESSAGE)

    def _drain_dealers(self) -> None:
        for sock in self._dealers.values():
            while True:
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                if len(frames) < 2:
                    self._drop("bad_routing", f"{len(frames)} frames, not a routed answer")
                    continue
                self._deliver(frames[0].bytes, frames[1:], b"", ANSWER)

    def _deliver(self, route: bytes, frames: list, connection: bytes, expected: bytes) -> None:
        """Queue `frames` for the node `route` names, if it is a routing frame of the `expected` tag."""
        if len(route) != _ROUTE.size or route[:1] != expected:
            self._drop("bad_routing", f"routing frame of {len(route)} bytes, not a {expected.decode()} route")
            return
        _, to, sender = _ROUTE.unpack(route)
        node = self._nodes.get(to)
        if node is None:
            self._drop("unknown_node", f"frames for node {to}, which this hub does not host (now)")
            return
        node.inbox.append((expected == ANSWER, sender, connection, frames))
        self._ready[to] = None

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -math.inf) >= LOG_EVERY_S:
            self._last_log[reason] = now
            log.warning("hub %s dropped frames (%s): %s [%d so far]", self.address, reason, detail, self.dropped[reason])


class HubTransport(ChannelTransport):
    """Node `node_id`'s transport on a `Hub` (the `context` argument; None: a hub of its own)."""

    def __init__(
        self,
        node_id: int,
        private_key: bytes,
        peers: dict[int, Peer],
        neighbours: Iterable[int],
        limits: wire.Limits,
        context: Hub | None = None,
        cipher: str = crypto.AUTO,
    ) -> None:
        # A hub's connections close when a process vanishes, as the ZeroMQ transport's do.
        self._make_channels(node_id, private_key, peers, neighbours, limits, cipher,
                            alive_grace_s=HEARTBEAT_TIMEOUT_MS / 1000)
        for j in (node_id, *self._channels.neighbours):
            endpoint_of(peers[j].address)  # ValueError for an address that is not a hub's
        if context is not None and not isinstance(context, Hub):
            raise ValueError(f"a hub address needs a Hub as its context, not {type(context).__name__}")
        if context is not None and context.address != self._address:
            raise ValueError(f"node {node_id}'s address {self._address} is not its hub's ({context.address})")
        self._hub = context if context is not None else Hub(self._address)
        self.inbox: deque[tuple[bool, int, bytes, list]] = deque()
        self._running = False

    @property
    def hub(self) -> Hub:
        return self._hub

    def peer_endpoints(self) -> set[str]:
        return {endpoint_of(p.address) for p in self._peers.values()}

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            raise RuntimeError("a Transport starts once")
        self._hub.attach(self)
        self._running = True
        self._channels.start(self)

    def close(self, linger: float = 0.0) -> None:
        if self._running:
            self._running = False
            self._hub.detach(self, linger)
        self.inbox.clear()
        self._channels.close()

    # -- what the host and ChannelTransport.recv take -----------------------------------------------

    @property
    def _started(self) -> bool:
        return self._running

    def _take(self, wait: float | None) -> tuple[bool, Message | None]:
        if not self.inbox:
            self._hub.pump(0.0 if wait is None else wait)
        return self.take_one()

    def take_one(self) -> tuple[bool, Message | None]:
        """Hand the channels the frames waiting for this node, up to the first message; (whether a
        message frame set was taken, the message it delivered or None)."""
        while self.inbox:
            answer, sender, connection, frames = self.inbox.popleft()
            if answer:
                self._channels.answer(sender, frames, f"hub answer from node {sender}")
                continue
            return True, self._channels.receive(frames, connection + _id(sender), connection)
        return False, None

    def tick(self, now: float) -> float:
        """Handshake retries (`channel.Channels.tick`); seconds until the next is due (inf: none)."""
        if self._channels.all_established():
            return math.inf
        return self._channels.tick(now)

    def on_room(self, j: int) -> None:
        self._channels.on_room(j)

    # -- channel.Links -------------------------------------------------------------------------------

    def send_out(self, to: int, frames: Sequence[wire.Buffer]) -> Sent:
        return self._hub.send_message(endpoint_of(self._peers[to].address), to, self.node_id, frames)

    def send_back(self, route: bytes, frames: Sequence[wire.Buffer]) -> Sent:
        return self._hub.send_answer(route[:-_ID_BYTES], int.from_bytes(route[-_ID_BYTES:], "big"), self.node_id, frames)

    def has_room(self, to: int) -> bool:
        return self._hub.has_room(endpoint_of(self._peers[to].address))

    def want_room(self, to: int, wanted: bool) -> None:
        self._hub.want_room(endpoint_of(self._peers[to].address), self, to, wanted)

    def origin(self, where: Any) -> str:
        return f"hub connection {where.hex()}" if isinstance(where, bytes) else str(where)

