"""The in-memory transport: nodes of one process exchanging frames through queues, no sockets.

Owns a `MemoryNetwork` (the mem:// addresses of one process and the connections between them:
bounded queues guarded by one lock, waking the receiving thread through a condition) and
`MemoryTransport`, which implements `transport.MessageTransport` on it with the same
`channel.Channels` as the ZeroMQ transport: the same handshake, the same sealed frames byte for
byte, the same checks and drop reasons. So a test or a benchmark that runs nodes in threads of
one process gets authenticated, fresh delivery without ports, kernel buffers or I/O threads.
`RawEndpoint` is a connection without a transport behind it (DEALER-like: `send_multipart`,
`poll`, `recv_multipart`), for tests that play a node or an attacker by hand.

It mirrors the ZeroMQ transport's connection model (docs/wire.md, *Sockets*): each node listens
at its address (the ROUTER) and opens one connection to each neighbour's (a DEALER); what it
sends a neighbour goes on that connection, and the neighbour's handshake answers come back on
it; a connection's frames wait (bounded) until someone listens at its address; an answer to a
connection whose owner closed fails as gone (as ROUTER_MANDATORY's EHOSTUNREACH does). It does
not know keys, sessions or the byte layout (`channel`, `wire`), nor rounds.
"""

from __future__ import annotations

import errno
import itertools
import threading
from collections import deque
from typing import Any, ClassVar, Iterable, Sequence

from p2pfl import crypto, wire
from p2pfl.channel import ChannelTransport, Peer, Sent
from p2pfl.messages import Message

SCHEME = "mem"
# Frames one connection holds (waiting to be taken by the receiver, or for it to listen) before a
# send fails as full: the ZeroMQ transport's send and receive queues (16 each) plus what its
# kernel socket buffers absorb, so nodes that are slow to receive lose no more here than there.
QUEUE_DEPTH = 64
ANSWER_DEPTH = 16  # answers one connection holds for its owner (the ROUTER's send queue)
# A connection closes only when its owner does (nothing here drops a live process's connection, as
# a network or ZeroMQ's heartbeats may), so one whose answer fails as gone is a closed process:
# no grace for a rival session's process to have reconnected unseen (`channel.Channels`).
ALIVE_GRACE_S = 0.0

Frames = Sequence[wire.Buffer]
_INSTANCE_LOCK = threading.Lock()


class Mailbox:
    """What one party receives: on the connections to its address, and back on its own connections."""

    def __init__(self, network: MemoryNetwork, label: str) -> None:
        self.label = label
        self.ready = threading.Condition(network._lock)
        self.inbound: deque[tuple[Connection, Frames]] = deque()
        self.answers: deque[tuple[Connection, Frames]] = deque()
        self.routes: dict[bytes, Connection] = {}  # connections that delivered here, by route
        self.closed = False


class Connection:
    """One party's connection to an address (a DEALER's): frames out, answers back to `owner`."""

    def __init__(self, route: bytes, address: str, owner: Mailbox, peer: int | None) -> None:
        self.route = route  # names the connection to the receiver (a ROUTER's routing id)
        self.address = address
        self.owner = owner
        self.peer = peer  # the neighbour it leads to, for the owner's transport
        self.pending: deque[Frames] = deque()  # frames waiting for someone to listen at `address`
        self.in_flight = 0  # frames in the receiver's inbound queue, not yet taken
        self.answers = 0  # answers in the owner's queue, not yet taken
        self.closed = False


class MemoryNetwork:
    """The mem:// addresses of one process; thread-safe. `instance()` is the process-wide one."""

    _instance: ClassVar[MemoryNetwork | None] = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listening: dict[str, Mailbox] = {}
        self._connections: dict[str, list[Connection]] = {}  # open connections, by the address they lead to
        self._routes = itertools.count(1)

    @classmethod
    def instance(cls) -> MemoryNetwork:
        """The network of transports made without one (as zmq.Context.instance() for ZeroMQ)."""
        with _INSTANCE_LOCK:  # node threads may make their transports at the same moment
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    # -- listening and connecting ----------------------------------------------------------------

    def listen(self, address: str, mailbox: Mailbox) -> None:
        """Receive at `address`; OSError(EADDRINUSE) if someone else does. Waiting frames arrive now."""
        with self._lock:
            if address in self._listening:
                raise OSError(errno.EADDRINUSE, f"{address} is already in use")
            self._listening[address] = mailbox
            for conn in self._connections.get(address, []):
                while conn.pending:
                    self._deliver(conn, mailbox, conn.pending.popleft())

    def connect(self, address: str, owner: Mailbox, peer: int | None = None) -> Connection:
        """A new connection from `owner` to `address` (nobody need listen there yet)."""
        with self._lock:
            conn = Connection(next(self._routes).to_bytes(8, "big"), address, owner, peer)
            self._connections.setdefault(address, []).append(conn)
            return conn

    def close(self, mailbox: Mailbox, address: str | None, connections: Iterable[Connection]) -> None:
        """`mailbox` stops listening at `address` (what it had not taken is lost) and its
        `connections` close: their waiting frames are dropped, answers to them fail as gone."""
        with self._lock:
            mailbox.closed = True
            if address is not None and self._listening.get(address) is mailbox:
                del self._listening[address]
            for conn, _ in mailbox.inbound:
                conn.in_flight = 0
            mailbox.inbound.clear()
            mailbox.answers.clear()
            mailbox.routes.clear()
            for conn in connections:
                conn.closed = True
                conn.pending.clear()
                open_ = self._connections.get(conn.address, [])
                if conn in open_:
                    open_.remove(conn)
            mailbox.ready.notify_all()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, conn: Connection, frames: Frames) -> Sent:
        """Queue `frames` on `conn`, never blocking; FULL once it holds QUEUE_DEPTH."""
        with self._lock:
            if conn.closed or conn.in_flight + len(conn.pending) >= QUEUE_DEPTH:
                return Sent.FULL
            receiver = self._listening.get(conn.address)
            if receiver is None:
                conn.pending.append(frames)
            else:
                self._deliver(conn, receiver, frames)
            return Sent.OK

    def has_room(self, conn: Connection) -> bool:
        with self._lock:
            return not conn.closed and conn.in_flight + len(conn.pending) < QUEUE_DEPTH

    def answer(self, mailbox: Mailbox, route: bytes, frames: Frames) -> Sent:
        """Queue `frames` back on the connection `route` that delivered to `mailbox`."""
        with self._lock:
            conn = mailbox.routes.get(route)
            if conn is None or conn.closed:
                return Sent.GONE
            if conn.answers >= ANSWER_DEPTH:
                return Sent.FULL
            conn.answers += 1
            conn.owner.answers.append((conn, frames))
            conn.owner.ready.notify()
            return Sent.OK

    def _deliver(self, conn: Connection, receiver: Mailbox, frames: Frames) -> None:
        conn.in_flight += 1
        receiver.routes[conn.route] = conn
        receiver.inbound.append((conn, frames))
        receiver.ready.notify()

    # -- receiving -------------------------------------------------------------------------------

    def take(self, mailbox: Mailbox, timeout: float = 0.0) -> tuple[bool, Connection, Frames] | None:
        """The next (is_answer, connection, frames) for `mailbox`, waiting up to `timeout` s; None if none.

        Answers (handshake steps) come first: they are small and unblock what waits for a session.
        """
        with self._lock:
            if not mailbox.answers and not mailbox.inbound and timeout > 0 and not mailbox.closed:
                mailbox.ready.wait(timeout)
            if mailbox.answers:
                conn, frames = mailbox.answers.popleft()
                conn.answers -= 1
                return True, conn, frames
            if mailbox.inbound:
                conn, frames = mailbox.inbound.popleft()
                conn.in_flight = max(conn.in_flight - 1, 0)
                return False, conn, frames
            return None


class MemoryTransport(ChannelTransport):
    """Node `node_id` on a `MemoryNetwork` (`context`; None: `MemoryNetwork.instance()`).

    Same interface and guarantees as the ZeroMQ transport (`transport.MessageTransport`):
    `send` never blocks, `recv` returns only authenticated, fresh messages, everything else is
    dropped, counted and logged by the same `channel.Channels`. Used from one thread only.
    """

    def __init__(
        self,
        node_id: int,
        private_key: bytes,
        peers: dict[int, Peer],
        neighbours: Iterable[int],
        limits: wire.Limits,
        context: MemoryNetwork | None = None,
        cipher: str = crypto.AUTO,
    ) -> None:
        self._make_channels(node_id, private_key, peers, neighbours, limits, cipher, alive_grace_s=ALIVE_GRACE_S)
        for j in (node_id, *self._channels.neighbours):
            if not peers[j].address.startswith(f"{SCHEME}://"):
                raise ValueError(f"node {j}'s address {peers[j].address!r} is not a {SCHEME}:// address")
        self.network = context if context is not None else MemoryNetwork.instance()
        self._mailbox = Mailbox(self.network, self._address)
        self._out: dict[int, Connection] = {}
        self._listening = False
        self._closed = False

    def start(self) -> None:
        """Listen at the node's address and connect to every neighbour (who may not be up yet).

        OSError(EADDRINUSE) if another transport listens there; start may then be called again.
        """
        if self._listening or self._closed:
            raise RuntimeError("a Transport starts once")
        self.network.listen(self._address, self._mailbox)
        self._listening = True
        for j, peer in self._peers.items():
            self._out[j] = self.network.connect(peer.address, self._mailbox, peer=j)
        self._channels.start(self)

    def close(self, linger: float = 0.0) -> None:
        """Stop listening and close every connection; the sessions are forgotten. Safe to call twice.

        What was sent is already in the receivers' queues (or, for a neighbour not listening,
        dropped), so `linger` has nothing to wait for.
        """
        self._closed = True
        self.network.close(self._mailbox, self._address if self._listening else None, self._out.values())
        self._listening = False
        self._out.clear()
        self._channels.close()

    # -- what ChannelTransport.recv takes from the queues -------------------------------------------

    @property
    def _started(self) -> bool:
        return self._listening

    def _take(self, wait: float | None) -> tuple[bool, Message | None]:
        # a due retry was just made when `wait` is 0: wait a moment, do not spin
        item = self.network.take(self._mailbox, 0.0 if wait is None else max(wait, 1e-4))
        if item is None:
            return False, None
        is_answer, conn, frames = item
        if is_answer:
            self._channels.answer(conn.peer, frames, conn)
            return True, None
        return True, self._channels.receive(frames, conn.route, conn)

    # -- channel.Links -----------------------------------------------------------------------------

    def send_out(self, to: int, frames: Frames) -> Sent:
        return self.network.send(self._out[to], frames)

    def send_back(self, route: bytes, frames: Frames) -> Sent:
        return self.network.answer(self._mailbox, route, frames)

    def has_room(self, to: int) -> bool:
        return self.network.has_room(self._out[to])

    def want_room(self, to: int, wanted: bool) -> None:
        # Nothing to register: an INIT that could not leave is retried by `Channels.tick` within
        # session.UNSENT_RETRY_S, which `recv` waits no longer than.
        pass

    def origin(self, where: Any) -> str:
        return f"mem connection {where.route.hex()}" if isinstance(where, Connection) else "?"


class RawEndpoint:
    """A bare connection to `address` on `network`, for tests that speak the wire by hand.

    Quacks like the ZeroMQ DEALER such tests use: `send_multipart(frames)`, `poll(ms)`,
    `recv_multipart()` (the answers that come back on it).
    """

    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self.network = network
        self.mailbox = Mailbox(network, f"raw->{address}")
        self.conn = network.connect(address, self.mailbox)

    def send_multipart(self, frames: Frames) -> Sent:
        return self.network.send(self.conn, [bytes(f) for f in frames])

    def poll(self, timeout_ms: int = 0, flags: int = 1) -> bool:
        with self.network._lock:
            if not self.mailbox.answers and timeout_ms > 0:
                self.mailbox.ready.wait(timeout_ms / 1000)
            return bool(self.mailbox.answers)

    def recv_multipart(self) -> list[bytes]:
        item = self.network.take(self.mailbox, 10.0)
        assert item is not None and item[0], "nothing came back"
        return [bytes(f) for f in item[2]]

    def close(self) -> None:
        self.network.close(self.mailbox, None, [self.conn])
