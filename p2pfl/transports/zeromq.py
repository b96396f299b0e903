"""The ZeroMQ transport of one node: tcp:// between machines, ipc:// on one host, inproc:// in one process.

Owns one ROUTER socket bound at the node's own address (everything neighbours send us, and our
answers to their handshake steps on the same connection) and one DEALER per neighbour connected
to that neighbour's address (everything we send it, and its handshake answers), the socket
options of docs/wire.md (*Sockets*), and waiting: `recv` polls the sockets event-driven and
hands every frame set to the node's `channel.Channels`, which alone decides what is delivered
(sessions, authentication, replay, drop accounting). It does not know about training or rounds,
the byte layout of messages (`wire`) or keys (`crypto`, `session`, `channel`).

Guarantees (with `Channels`'): `send` never blocks (it returns False and counts
"send_queue_full" when the neighbour's queue is full, or "send_failed", logged with the error,
when ZeroMQ refuses it for another reason; before the session with a neighbour is agreed, the
newest `session.MAX_QUEUED` messages wait for it); `recv` only ever returns messages
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
from typing import Any, Callable, Iterable, Sequence

import zmq

from p2pfl import crypto, wire
from p2pfl.channel import SEND_FAILED, ChannelTransport, Peer, Sent
from p2pfl.messages import Message

SCHEMES = ("tcp", "ipc", "inproc")
QUEUE_DEPTH = 16  # messages queued per neighbour (send) and per sender (receive) before refusing
HEARTBEAT_IVL_MS = 1000  # ZMTP heartbeats: a connection to a vanished process (a host that crashed,
HEARTBEAT_TIMEOUT_MS = 3000  # a cut cable) is closed after this long, not after TCP's minutes
CONNECT_TIMEOUT_MS = 1000  # a connect attempt into a cut gives up after this, instead of riding TCP's
# SYN backoff (1, 3, 7 s ...): reconnecting after a heal takes one attempt, not the next retransmission
# Reconnecting to a neighbour marked down (`_discard_link`): attempts of RTT_FACTOR x the round trip
# its session handshake took, within [RECONNECT_TIMEOUT_MIN_MS, CONNECT_TIMEOUT_MS]. A heal is noticed
# by the next attempt, so shorter attempts find it sooner; a SYN-ACK that needs ten times the
# handshake's round trip belongs to a link a 1 s attempt would struggle with too.
RTT_FACTOR = 10
RECONNECT_TIMEOUT_MIN_MS = 100
RECONNECT_IVL_MS = 50  # and the pause between its attempts (libzmq's default is 100 ms): a cycle of 150 ms on a LAN


class ZmqTransport(ChannelTransport):
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
        # a rival whose connection is gone may have reconnected unseen until the heartbeats close it
        self._make_channels(node_id, private_key, peers, neighbours, limits, cipher,
                            alive_grace_s=HEARTBEAT_TIMEOUT_MS / 1000)
        for j in (node_id, *self._channels.neighbours):
            scheme = peers[j].address.partition("://")[0]
            if scheme not in SCHEMES:
                raise ValueError(f"node {j}'s address {peers[j].address!r} is not one of {', '.join(SCHEMES)}://")
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
        router = bound_router(self._context, self._address, QUEUE_DEPTH, self.limits.max_frame_bytes)
        self._router = router
        self._poller.register(router, zmq.POLLIN)
        for j in self._peers:
            self._connect(j)
        self._channels.start(self)

    def _connect(self, j: int, connect_timeout_ms: int = CONNECT_TIMEOUT_MS, reconnect_ivl_ms: int | None = None) -> None:
        dealer = connected_dealer(self._context, self._peers[j].address, QUEUE_DEPTH, connect_timeout_ms=connect_timeout_ms,
                                  reconnect_ivl_ms=reconnect_ivl_ms)
        self._dealers[j] = dealer
        self._dealer_of[dealer] = j
        self._poller.register(dealer, zmq.POLLIN)  # handshake answers come back on it

    def _discard_link(self, j: int) -> None:
        """A new DEALER for `j`: closing the old one (linger 0) drops its queue, which libzmq keeps
        across reconnects and would send, oldest first, once the link is back. The session is not
        the connection's, so it carries on over the new one, whose attempts are paced by the
        handshake's round trip (`reconnect_timeout_ms`)."""
        old = self._dealers.pop(j, None)
        if old is None or self._closed:
            return
        self._poller.unregister(old)
        del self._dealer_of[old]
        old.close(linger=0)
        self._connect(j, reconnect_timeout_ms(self._channels.rtt.get(j)), RECONNECT_IVL_MS)

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

    # -- what ChannelTransport.recv takes from the sockets ------------------------------------------

    @property
    def _started(self) -> bool:
        return self._router is not None

    def _take(self, wait: float | None) -> tuple[bool, Message | None]:
        if wait is not None:
            # ceil: a poll of 0 ms with time left would spin instead of waiting
            for sock, events in self._poller.poll(math.ceil(max(wait, 0.0) * 1000)):
                if sock is self._router:
                    continue
                if events & zmq.POLLOUT:  # room for an INIT that could not leave
                    self._channels.on_room(self._dealer_of[sock])
                if events & zmq.POLLIN:
                    self._drain_dealer(sock)
        assert self._router is not None
        try:
            frames = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False, None  # answers on the dealers do not count: they deliver nothing
        # the routing id names a connection, not a sender
        return True, self._channels.receive(frames[1:], frames[0].bytes, frames[0])

    def _drain_dealer(self, dealer: zmq.Socket) -> None:
        j = self._dealer_of.get(dealer)
        while j is not None:
            try:
                frames = dealer.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._channels.answer(j, frames, frames[0] if frames else None)

    # -- channel.Links: the sockets as the channels see them ---------------------------------------

    def send_out(self, to: int, frames: Sequence[wire.Buffer]) -> Sent:
        return self._send(self._dealers[to], frames, to)

    def send_back(self, route: bytes, frames: Sequence[wire.Buffer]) -> Sent:
        assert self._router is not None
        return self._send(self._router, [route, *frames], route)

    def has_room(self, to: int) -> bool:
        return bool(self._dealers[to].getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    def want_room(self, to: int, wanted: bool) -> None:
        self._poller.modify(self._dealers[to], zmq.POLLIN | zmq.POLLOUT if wanted else zmq.POLLIN)

    def origin(self, where: Any) -> str:
        try:
            return where.get("Peer-Address")  # the TCP peer, the only clue for garbage
        except (zmq.ZMQError, AttributeError):
            return "?"

    def _send(self, sock: zmq.Socket, frames: Sequence[wire.Buffer], where: int | bytes) -> Sent:
        """Queue one multipart message without blocking: EAGAIN is a full queue (FULL), EHOSTUNREACH
        (a ROUTER_MANDATORY send) a connection that is gone (GONE).

        Any other error (a socket closed or a context terminated under us) is neither congestion
        nor a vanished peer: it is counted as SEND_FAILED and logged with its errno (FAILED), and
        the node keeps running (the message is not sent, as for a full queue).
        """
        to = f"to node {where}" if isinstance(where, int) else f"back on connection {where.hex()}"
        return send_frames(sock, frames, lambda exc: self._channels.drop(
            SEND_FAILED, f"send {to} failed: {exc} (errno {exc.errno})"))


def send_frames(sock: zmq.Socket, frames: Sequence[Any], failed: Callable[[zmq.ZMQError], None]) -> Sent:
    """Queue one multipart message on `sock` without blocking (shared with `transports.hub`).

    EAGAIN is a full queue (FULL), EHOSTUNREACH (a ROUTER_MANDATORY send) a connection that is
    gone (GONE); any other error is handed to `failed` (to count and log it) and is FAILED.
    """
    try:
        # copy=False: zmq keeps a reference to the sealed buffers instead of copying them
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return Sent.FULL
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return Sent.GONE
        failed(exc)
        return Sent.FAILED
    return Sent.OK


def bound_router(context: zmq.Context, endpoint: str, hwm: int, max_message: int) -> zmq.Socket:
    """A ROUTER with the options of docs/wire.md (*Sockets*), bound at `endpoint` (zmq.ZMQError if it
    cannot be, leaving nothing open: the caller may retry)."""
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, hwm)
    router.setsockopt(zmq.SNDHWM, hwm)
    # libzmq refuses a frame larger than this before allocating it (and drops that connection)
    router.setsockopt(zmq.MAXMSGSIZE, max_message)
    # A send to a routing id whose connection is gone fails (EHOSTUNREACH) instead of vanishing:
    # that is how a second session for a node id learns whether the first one's process is alive.
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    _set_heartbeats(router)
    try:
        router.bind(endpoint)
    except zmq.ZMQError:
        router.close(linger=0)
        raise
    return router


def reconnect_timeout_ms(rtt: float | None) -> int:
    """The connect timeout of a link to a neighbour marked down whose handshake took `rtt` seconds."""
    if rtt is None:
        return CONNECT_TIMEOUT_MS
    return int(min(CONNECT_TIMEOUT_MS, max(RECONNECT_TIMEOUT_MIN_MS, RTT_FACTOR * rtt * 1000)))


def connected_dealer(context: zmq.Context, endpoint: str, hwm: int, receive_hwm: int | None = None,
                     connect_timeout_ms: int = CONNECT_TIMEOUT_MS, reconnect_ivl_ms: int | None = None) -> zmq.Socket:
    """A DEALER with the options of docs/wire.md (*Sockets*), connecting to `endpoint` (who may not be
    up yet); `receive_hwm`: its receive queue, when not libzmq's default; `reconnect_ivl_ms`: the pause
    between connect attempts, when not libzmq's default."""
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)  # close() must not wait for a dead neighbour
    dealer.setsockopt(zmq.SNDHWM, hwm)
    if receive_hwm is not None:  # options apply to the connections made after they are set
        dealer.setsockopt(zmq.RCVHWM, receive_hwm)
    _set_heartbeats(dealer)
    # No IMMEDIATE: messages queue for a neighbour whose connection is not up (yet, or again
    # after a blip) and go when it is. IMMEDIATE was tried (2026-12-06): a lost connection
    # then takes its queue with it, but every send to a neighbour that has just finished
    # fails at once and is counted as a drop, and recovery after a heal was no faster
    # (docs/faults.md).
    dealer.setsockopt(zmq.CONNECT_TIMEOUT, connect_timeout_ms)
    if reconnect_ivl_ms is not None:
        dealer.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl_ms)
    dealer.connect(endpoint)
    return dealer


def _set_heartbeats(sock: zmq.Socket) -> None:
    """ZMTP heartbeats: libzmq pings the peer and closes a connection that stays silent too long."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
