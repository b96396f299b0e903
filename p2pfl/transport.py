"""The ZeroMQ sockets of one node: bind, connect, agree sessions, send, receive, authenticate.

Owns one ROUTER socket bound at the node's own address (everything it receives) and one DEALER
per neighbour connected to that neighbour's address (everything it sends), the sessions agreed
on those connections (`session`: a fresh key per pair of processes, so frames of any earlier
run fail authentication), the per-session replay counters, and the traffic/drop counters
(`TransportStats`). It does not know about training or rounds (a message of any kind and round
is delivered; round checks belong to the node), the byte layout of messages (`wire`) or how
keys are made (`crypto`, `session`).

Guarantees: `send` never blocks (it returns False and counts "send_queue_full" when the
neighbour's queue is full; before the session with a neighbour is agreed, the newest
`session.MAX_QUEUED` messages wait for it, and each older one pushed out is counted the same way); `recv` waits event-driven on the sockets and only
ever returns messages that a neighbour's current process sealed for this process, in a session
this process accepted, with a counter higher than any accepted in that session before;
everything else is dropped, counted in `stats.dropped[reason]` and logged. A second live
process presenting a neighbour's id is refused (`duplicate_identity`) while the first one's
connection is up; a process that every attempt of which is refused that way for
`DUPLICATE_GRACE_S` gets `session.DuplicateIdentity` from `recv`.

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

from p2pfl import crypto, session, wire
from p2pfl.messages import Kind, Message
from p2pfl.session import Identity, Inbound, Outbound

log = logging.getLogger(__name__)

QUEUE_DEPTH = 16  # messages queued per neighbour (send) and per sender (receive) before refusing
KEY_CONTEXT = b"wire"  # purpose of the static pairwise key that seals the handshake's first steps
LOG_EVERY_S = 1.0  # at most one warning per drop reason per second; the counters miss nothing
RETRY_S = 1.0  # a handshake attempt with no answer for this long is made again
RESET_EVERY_S = 0.5  # at most one "unknown session" notice per connection per this many seconds
RESET_ROUTES = 4096  # connections whose last notice is remembered
DUPLICATE_GRACE_S = 12.0  # refused this long (> the heartbeat timeout: a crashed predecessor's
# connection is gone by then) means another live process holds our id
HEARTBEAT_IVL_MS = 1000  # ZMTP heartbeats: a connection to a vanished process (a host that crashed,
HEARTBEAT_TIMEOUT_MS = 3000  # a cut cable) is closed after this long, not after TCP's minutes
CONNECT_TIMEOUT_MS = 1000  # a connect attempt into a cut gives up after this, instead of riding TCP's
# SYN backoff (1, 3, 7 s ...): reconnecting after a heal takes one attempt, not the next retransmission

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
    handshake_messages: int = 0  # session handshake steps sent and received (their bytes are in the totals)
    sessions_accepted: int = 0  # sessions neighbours' processes agreed with us and we accepted


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
        self._private_key = private_key
        # static keys once, up front: the handshake's first steps are sealed with them
        self._keys = {j: crypto.pairwise_key(private_key, node_id, peers[j].public_key, j, KEY_CONTEXT)
                      for j in neighbours}
        self._context = context if context is not None else zmq.Context.instance()
        self._router: zmq.Socket | None = None
        self._poller = zmq.Poller()  # one for the node's life: Socket.poll builds a new one per call
        self._dealers: dict[int, zmq.Socket] = {}
        self._dealer_of: dict[zmq.Socket, int] = {}
        self._out: dict[int, Outbound] = {}  # the sessions that seal what we send, per neighbour
        self._in: dict[int, Inbound] = {}  # the sessions that open what neighbours send us
        self._last_reset: dict[bytes, float] = {}  # per connection (routing id)
        self._counter = 0
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
        ephemeral = session.Ephemeral.generate()  # this process's, for every neighbour; never stored
        me = crypto.public_from_private(self._private_key)
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
            bind = crypto.pairwise_key(self._private_key, self.node_id, peer.public_key, j, session.SESSION_CONTEXT)
            self._out[j] = Outbound(Identity(self.node_id, j, me, peer.public_key), self._private_key, bind, ephemeral)
            self._in[j] = Inbound(Identity(j, self.node_id, peer.public_key, me), self._private_key, bind, ephemeral)
        now = time.monotonic()
        for j in self._out:
            self._initiate(j, now)

    def _initiate(self, j: int, now: float) -> None:
        """Send neighbour `j` the INIT of a new attempt (it is retried soon if not connected yet)."""
        self._send_init(j, self._out[j].start(now))

    def _send_init(self, j: int, init: dict) -> None:
        out, dealer = self._out[j], self._dealers[j]
        sent = self._send_handshake(dealer, j, init)
        if not sent:
            out.unsent()
        # The queue is full: wake up the moment it has room (POLLOUT), not a poll later.
        self._poller.modify(dealer, zmq.POLLIN if sent else zmq.POLLIN | zmq.POLLOUT)

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
        # Forget every session: forward secrecy rests on no copy of these keys outliving the process.
        self._out.clear()
        self._in.clear()

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, to: int, msg: Message) -> bool:
        """Seal `msg` for neighbour `to` and queue it; False (and counted) if its queue is full.

        Never blocks. The message's arrays may be changed as soon as this returns (only the
        sealed copy, or before the session is agreed a copy, is queued). Sending to a
        non-neighbour, or a message that is not from this node or does not fit the limits, is a
        programming error (ValueError / wire.WireError).
        """
        dealer = self._dealers.get(to)
        if dealer is None:
            raise ValueError(f"node {to} is not a neighbour of node {self.node_id} (or not started)")
        if msg.sender != self.node_id:
            raise ValueError(f"message from node {msg.sender} sent by node {self.node_id}")
        out = self._out[to]
        if not out.established:
            if len(out.queued) >= session.MAX_QUEUED:
                # the oldest goes, not the newest: rounds move on, and a stale model is worth nothing
                out.queued.pop(0)
                self._send_failed(to)
            # a copy: the caller may change its arrays once send returns
            out.queued.append(replace(msg, tensors={k: v.copy() for k, v in msg.tensors.items()}))
            return True
        return self._seal_and_send(dealer, to, out, msg)

    def _seal_and_send(self, dealer: zmq.Socket, to: int, out: Outbound, msg: Message) -> bool:
        # Check for room before sealing: a dead neighbour must not cost a model's worth of crypto.
        if not dealer.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            return self._send_failed(to)
        assert out.agreed is not None
        self._counter += 1
        frames = wire.seal(msg, to, self._counter, out.agreed.key, self.limits, cipher=self.cipher,
                           session=out.agreed.sid)
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

    def _send_handshake(self, sock: zmq.Socket, to: int, meta: dict, key: bytes | None = None,
                        sid: bytes = b"", route: bytes | None = None) -> bool:
        """Seal one handshake step (static key unless `key`/`sid` name a session) and send it.

        On the ROUTER, `route` is the connection to answer on; False if it is gone or full.
        """
        return self._try_handshake(sock, to, meta, key, sid, route) is None

    def _try_handshake(self, sock: zmq.Socket, to: int, meta: dict, key: bytes | None, sid: bytes,
                       route: bytes | None) -> zmq.ZMQError | None:
        """`_send_handshake`, returning why it failed: EAGAIN (full) or EHOSTUNREACH (connection gone)."""
        self._counter += 1
        msg = Message(Kind.HANDSHAKE, self.node_id, 0, meta=meta)
        frames = wire.seal(msg, to, self._counter, self._keys[to] if key is None else key, self.limits,
                           cipher=self.cipher, session=sid)
        try:
            sock.send_multipart(frames if route is None else [route, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            return exc
        self._stats.handshake_messages += 1
        self._stats.bytes_sent += sum(memoryview(f).nbytes for f in frames)
        return None

    def established(self, j: int) -> bool:
        """Whether our session with neighbour `j` is agreed (what we send it is sealed at once)."""
        out = self._out.get(j)
        return out is not None and out.established

    # -- receiving -------------------------------------------------------------------------------

    def recv(self, timeout: float) -> Message | None:
        """The next authenticated, fresh message, or None once `timeout` seconds have passed.

        Handshakes run in here too (answers, retries); session.DuplicateIdentity if neighbours
        have refused this process for DUPLICATE_GRACE_S.
        """
        if self._router is None:
            raise RuntimeError("recv before start (or after close)")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            # Take what is already queued without polling (messages come in bursts: a phase's
            # worth from every neighbour); wait on the poller only when nothing is.
            try:
                msg = self._accept(self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False))
            except zmq.Again:
                now = time.monotonic()
                wait = deadline - now
                if not all(out.established for out in self._out.values()):
                    wait = min(wait, self._tick(now))
                if deadline - now <= 0:
                    return None
                # ceil: a poll of 0 ms with time left would spin instead of waiting
                for sock, events in self._poller.poll(math.ceil(max(wait, 0.0) * 1000)):
                    if sock is self._router:
                        continue
                    if events & zmq.POLLOUT:  # room for an INIT that could not leave
                        self._initiate(self._dealer_of[sock], time.monotonic())
                    if events & zmq.POLLIN:
                        self._drain_dealer(sock)
                continue
            if msg is not None:
                return msg
            if time.monotonic() >= deadline:
                return None

    def _tick(self, now: float) -> float:
        """Retry handshakes that went unanswered; seconds until the next one is due."""
        wait = RETRY_S
        for j, out in self._out.items():
            if out.established:
                continue
            if out.refused_since is not None and now - out.refused_since >= DUPLICATE_GRACE_S:
                raise session.DuplicateIdentity(
                    f"node {self.node_id}: neighbour {j} has refused this process for {now - out.refused_since:.0f}s "
                    f"because another live process already runs as node {self.node_id}; stop one of them")
            if out.due(now, RETRY_S) <= 0:
                self._initiate(j, now)
            wait = min(wait, max(0.0, out.due(now, RETRY_S)))
        return wait

    def _accept(self, frames: list[zmq.Frame]) -> Message | None:
        """Check one frame set from the ROUTER (routing id first); the message, or None if dropped."""
        route, parts = frames[0].bytes, frames[1:]  # the routing id names a connection, not a sender
        self._stats.bytes_received += sum(len(f) for f in parts)
        sender: int | str = "?"
        try:
            header = wire.read_header(parts, self.limits)
            sender = header.sender
            inbound = self._in.get(sender)
            if inbound is None:
                return self._drop(UNKNOWN_PEER, sender, frames, "not a neighbour")
            if header.recipient != self.node_id:
                return self._drop(WRONG_RECIPIENT, sender, frames, f"addressed to node {header.recipient}")
            if header.kind == Kind.HANDSHAKE:
                return self._on_initiator_step(inbound, header, parts, route)
            current = inbound.accepted(header.session)
            if current is None:
                self._reset(sender, header.session, route)
                return self._drop(session.NO_SESSION, sender, frames, "sealed for a session this process did not agree")
            aead = wire.message_aead(header, current.agreed.key)
            meta = wire.open_meta(header, parts, aead, self.limits)  # authenticates the header
            # Before decrypting the tensors: a replayed model costs no bulk crypto.
            if header.counter <= current.last_counter:
                return self._drop(REPLAY, sender, frames, f"counter {header.counter} not above the last accepted")
            tensors = wire.open_tensors(header, parts, aead)
        except (wire.WireError, session.HandshakeError) as exc:
            return self._drop(exc.reason, sender, frames, exc.detail)
        current.last_counter, current.last_heard = header.counter, time.monotonic()
        current.route = route  # its process may have reconnected: probe the connection it uses now
        self._stats.messages_received += 1
        return wire.to_message(header, meta, tensors)

    # -- handshake: the responder's side (on the ROUTER) -------------------------------------------

    def _on_initiator_step(self, inbound: Inbound, header: wire.Header, parts: list, route: bytes) -> None:
        """INIT (static key) or CONFIRM (the proposed session's key) from a neighbour's process."""
        j = header.sender
        self._stats.handshake_messages += 1
        if not header.session:
            meta = wire.open_meta(header, parts, self._keys[j], self.limits)
            session.read(meta, {session.INIT})
            resp, _ = inbound.on_init(meta, route)
            self._send_handshake(self._router, j, resp, route=route)
            return None
        proposed = inbound.get(header.session)
        if proposed is None:
            raise session.HandshakeError(session.NO_SESSION, "confirm of a session this process did not agree")
        meta = wire.open_meta(header, parts, proposed.agreed.key, self.limits)
        if header.counter <= proposed.last_counter:
            raise session.HandshakeError(REPLAY, f"counter {header.counter} not above the last accepted")
        session.read(meta, {session.CONFIRM})
        proposed.last_counter, proposed.route, proposed.last_heard = header.counter, route, time.monotonic()
        rival = inbound.rival(proposed)
        alive = rival is not None and self._alive(j, rival)
        if rival is not None and not alive and time.monotonic() - rival.last_heard < HEARTBEAT_TIMEOUT_MS / 1000:
            # Its connection is gone but it spoke a moment ago: it may have reconnected on a
            # connection we have not seen it use yet. No verdict: the new process retries, and is
            # accepted once the old one has been silent for a heartbeat timeout (or refused if it speaks).
            return None
        if alive:
            inbound.refuse(proposed)
            self.count_drop(session.DUPLICATE_IDENTITY)
            log.error("node %d: refused a second live process presenting node %d's identity (node %d's current "
                      "process is still connected); the current one keeps its session", self.node_id, j, j)
            self._send_handshake(self._router, j, {"t": session.REFUSE, "reason": session.DUPLICATE_IDENTITY},
                                 proposed.agreed.key, proposed.agreed.sid, route)
            return None
        inbound.accept(proposed)
        self._stats.sessions_accepted += 1
        self._send_handshake(self._router, j, {"t": session.ACCEPT}, proposed.agreed.key, proposed.agreed.sid, route)
        if rival is not None:
            log.warning("node %d: node %d restarted (its earlier process is gone); new sessions", self.node_id, j)
            # What we send j is still sealed for its earlier process: agree anew now rather than
            # lose a message to find out.
            init = self._out[j].restart(time.monotonic())
            if init is not None:
                self._send_init(j, init)
        return None

    def _alive(self, j: int, rival: session.Proposed) -> bool:
        """Whether the process of `rival` is still connected; it is told someone uses its id.

        Only EHOSTUNREACH (no such connection) means gone: a full queue (EAGAIN) is a live
        process that is busy, and taking it for a dead one would let a flood displace it.
        """
        failed = self._try_handshake(self._router, j, {"t": session.CONFLICT}, rival.agreed.key, rival.agreed.sid,
                                     rival.route)
        return failed is None or failed.errno != zmq.EHOSTUNREACH

    def _reset(self, j: int, sid: bytes, route: bytes) -> None:
        """Tell the process on `route` we do not know its session `sid` (rate-limited per connection:
        the sender id is not authenticated yet, so forged frames must not use up an honest one's)."""
        now = time.monotonic()
        if not sid or now - self._last_reset.get(route, -math.inf) < RESET_EVERY_S:
            return
        if len(self._last_reset) >= RESET_ROUTES:  # bounded: connections come and go
            self._last_reset.clear()
        self._last_reset[route] = now
        self._send_handshake(self._router, j, {"t": session.RESET, "sid": sid}, route=route)

    # -- handshake: the initiator's side (answers on a DEALER) -------------------------------------

    def _drain_dealer(self, dealer: zmq.Socket) -> None:
        j = self._dealer_of.get(dealer)
        while j is not None:
            try:
                frames = dealer.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._stats.bytes_received += sum(len(f) for f in frames)
            try:
                self._on_responder_step(j, frames)
            except (wire.WireError, session.HandshakeError) as exc:
                self._drop(exc.reason, j, frames, exc.detail)

    def _on_responder_step(self, j: int, frames: list) -> None:
        """RESP or RESET (static key), ACCEPT, REFUSE or CONFLICT (session key) from neighbour `j`."""
        header = wire.read_header(frames, self.limits)
        if header.sender != j or header.recipient != self.node_id or header.kind != Kind.HANDSHAKE:
            raise session.HandshakeError(session.BAD_HANDSHAKE, f"{header.kind.name} from {header.sender} to "
                                         f"{header.recipient} on the connection to node {j}")
        self._stats.handshake_messages += 1
        out, now = self._out[j], time.monotonic()
        if not header.session:
            meta = wire.open_meta(header, frames, self._keys[j], self.limits)
            kind = session.read(meta, {session.RESP, session.RESET})
            if kind == session.RESP:
                confirm = out.on_resp(meta)
                if confirm is not None:  # None: a late answer to an earlier attempt of ours
                    assert out.agreed is not None
                    self._send_handshake(self._dealers[j], j, confirm, out.agreed.key, out.agreed.sid)
                return
            init = out.on_reset(meta, now)
            if init is None:
                return  # about a session of ours we already replaced
            log.warning("node %d: node %d no longer knows our session (it restarted); agreeing a new one",
                        self.node_id, j)
            self._send_init(j, init)
            return
        key = out.key_for(header.session)
        if key is None:
            raise session.HandshakeError(session.STALE_HANDSHAKE, "sealed for a session that is not one of ours")
        meta = wire.open_meta(header, frames, key, self.limits)
        if header.counter <= out.last_counter:
            raise session.HandshakeError(REPLAY, f"counter {header.counter} not above the last accepted")
        out.last_counter = header.counter
        kind = session.read(meta, {session.ACCEPT, session.REFUSE, session.CONFLICT})
        if kind == session.CONFLICT and not (out.established and out.agreed and header.session == out.agreed.sid):
            raise session.HandshakeError(session.STALE_HANDSHAKE, "conflict notice for a session that is not our current one")
        if kind == session.CONFLICT:
            self.count_drop(session.DUPLICATE_IDENTITY)
            log.error("node %d: another process presented this node's identity to node %d and was refused; this "
                      "process keeps its session. Find and stop the other one (same key file).", self.node_id, j)
            return
        if not out.on_verdict(kind, header.session, now):
            return  # the verdict on an earlier attempt of ours: a retry overtook it
        if kind == session.REFUSE:
            self.count_drop(session.DUPLICATE_IDENTITY)
            if out.tries > 1:
                return  # logged at the first refusal
            log.error("node %d: node %d refused this process: another live process already runs as node %d "
                      "(same key file). Retrying for %.0fs in case it is a crashed predecessor.",
                      self.node_id, j, self.node_id, DUPLICATE_GRACE_S)
            return
        log.info("node %d: session to node %d agreed", self.node_id, j)
        queued, out.queued = out.queued, []
        for msg in queued:
            self._seal_and_send(self._dealers[j], j, out, msg)

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
        except (zmq.ZMQError, AttributeError):
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


def _set_heartbeats(sock: zmq.Socket) -> None:
    """ZMTP heartbeats: libzmq pings the peer and closes a connection that stays silent too long."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
