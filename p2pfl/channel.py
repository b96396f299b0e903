"""The secure channels of one node to its neighbours, apart from any socket type.

Owns what makes a frame trustworthy, whatever carried it: the static pairwise keys that seal the
handshake's first steps, the sessions agreed with every neighbour's current process (`session`
builds and reads the handshake; this module runs it), AEAD sealing and opening of every message
(`wire` lays the bytes out), the per-session replay counters, this process's message counter,
and the traffic and drop accounting (`TransportStats`, drop warnings rate-limited to one per
reason per second), and the peer table's entry (`Peer`). It does not own sockets, queues,
threads or waiting: a transport hands it the frames it received and gives it `Links` to send on
(docs/wire.md has the exact rules this module enforces, in order). `ChannelTransport` is the
base of every transport: the methods that only hand over to the `Channels`, and the receive loop
around the transport's own way of taking frames and waiting (`_take`). It does not import the
seam (`transport`), which imports the transports, which import this module.

So every transport of the package (ZeroMQ over tcp:// and ipc://, the in-memory one) delivers
only messages that a neighbour's current process sealed for this process, in a session this
process accepted, with a counter above any accepted in that session, and counts and logs
everything else under the same reasons.

A `Channels` is used from one thread only (its transport's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import enum
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Protocol, Self, Sequence

from p2pfl import crypto, session, wire
from p2pfl.messages import Kind, Message
from p2pfl.session import Identity, Inbound, Outbound

# The drop warnings and the duplicate-identity errors keep the logger name they always had:
# operators' filters and the tests that read the log know them by it.
log = logging.getLogger("p2pfl.transport")

KEY_CONTEXT = b"wire"  # purpose of the static pairwise key that seals the handshake's first steps
LOG_EVERY_S = 1.0  # at most one warning per drop reason per second; the counters miss nothing
RETRY_S = 1.0  # a handshake attempt with no answer for this long is made again
RESET_EVERY_S = 0.5  # at most one "unknown session" notice per connection per this many seconds
RESET_ROUTES = 4096  # connections whose last notice is remembered
DUPLICATE_GRACE_S = 12.0  # refused this long (> the heartbeat timeout: a crashed predecessor's
# connection is gone by then) means another live process holds our id

# Drop reasons of the channel itself (wire.WireError and session reasons are used as they are).
SEND_QUEUE_FULL = "send_queue_full"
SEND_FAILED = "send_failed"  # a link failed otherwise (not full, not gone): counted and logged by its transport
UNKNOWN_PEER = "unknown_peer"
WRONG_RECIPIENT = "wrong_recipient"
REPLAY = "replay"


@dataclass(frozen=True)
class Peer:
    """Where a node listens ("tcp://host:port", "ipc:///path", "inproc://name", "mem://name") and
    its long-term X25519 public key."""

    address: str
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
    # Per neighbour j: [bytes sent to j, bytes received from j, messages of j's link dropped]. Bytes
    # count as the totals do (handshakes too); a drop counts on j's link when we could not queue to j
    # or refused a frame whose header names j (unauthenticated: a forger can charge a link, not hide one).
    links: dict[int, list[int]] = field(default_factory=dict)


class Sent(enum.Enum):
    """What became of frames handed to a link."""

    OK = "ok"  # queued
    FULL = "full"  # not queued: no room now (a busy or slow peer, not a dead one)
    GONE = "gone"  # not queued: the connection named by the route no longer exists
    FAILED = "failed"  # not queued: the link failed otherwise; the transport counted (SEND_FAILED) and logged it


class Links(Protocol):
    """The connections of one node, as a transport provides them to its `Channels`.

    Each neighbour j has one outbound connection (what we send j, and j's handshake answers on
    it); inbound connections are named by an opaque `route` the transport hands in with every
    frame set it received on them (answers go back on the same connection).
    """

    def send_out(self, to: int, frames: Sequence[wire.Buffer]) -> Sent:
        """Queue `frames` on the outbound connection to neighbour `to`, never blocking.

        FAILED (any failure that is neither FULL nor GONE) only once the transport has counted it
        as SEND_FAILED and logged why (`Channels.drop`); the channels count nothing more for it.
        """
        ...

    def send_back(self, route: bytes, frames: Sequence[wire.Buffer]) -> Sent:
        """Queue `frames` on the inbound connection `route`; GONE if it no longer exists."""
        ...

    def has_room(self, to: int) -> bool:
        """Whether a send to neighbour `to` would be queued now (checked before sealing a model)."""
        ...

    def want_room(self, to: int, wanted: bool) -> None:
        """Ask to be woken (`Channels.on_room`) when the outbound connection to `to` has room."""
        ...

    def origin(self, where: object) -> str:
        """Where a dropped frame set came from, for the log (`where` is what `receive` was given)."""
        ...


class Channels:
    """The secure channels of node `node_id`; see the module docstring for the guarantees.

    Checks its arguments when made (ValueError); `start` begins the handshakes over `links`.
    `alive_grace_s`: how long after a rival process (one whose session a new process of the same
    node would replace) last spoke it may have reconnected on a connection not seen yet although
    its old one is gone; the transport's time to close a vanished connection (0: its connections
    never vanish while their owner runs).
    """

    def __init__(self, node_id: int, private_key: bytes, peers: dict[int, Peer], neighbours: Iterable[int],
                 limits: wire.Limits, cipher: str = crypto.AUTO, *, alive_grace_s: float) -> None:
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
        self.alive_grace_s = alive_grace_s
        try:  # resolved once: what every message this node sends is sealed with
            self.cipher = crypto.choose_cipher(cipher)
        except crypto.CipherUnavailable as exc:
            raise ValueError(str(exc)) from None
        self.neighbours = neighbours
        self._peers = {j: peers[j] for j in neighbours}
        self._private_key = private_key
        # static keys once, up front: the handshake's first steps are sealed with them
        self._keys = {j: crypto.pairwise_key(private_key, node_id, peers[j].public_key, j, KEY_CONTEXT)
                      for j in neighbours}
        self._links: Links | None = None
        self._out: dict[int, Outbound] = {}  # the sessions that seal what we send, per neighbour
        self._in: dict[int, Inbound] = {}  # the sessions that open what neighbours send us
        self._last_reset: dict[bytes, float] = {}  # per connection (route)
        # Per neighbour: when our CONFIRM left, and the round trip to its ACCEPT (the network's and
        # its process's: an upper bound on the network's alone), for a transport's reconnect timing.
        self._confirm_at: dict[int, float] = {}
        self.rtt: dict[int, float] = {}
        self._restarted: set[int] = set()  # neighbours whose new process replaced its old one, not yet taken
        self._counter = 0
        self._stats = TransportStats(links={j: [0, 0, 0] for j in neighbours})
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, links: Links) -> None:
        """Make this process's sessions (a fresh ephemeral key) and send every neighbour an INIT.

        Call once the connections of `links` exist (a neighbour need not be up yet).
        """
        self._links = links
        # Counters start at the clock so a restarted node never reuses one (nonce) nor goes
        # back (its neighbours would drop it as a replay).
        self._counter = time.time_ns()
        ephemeral = session.Ephemeral.generate()  # this process's, for every neighbour; never stored
        me = crypto.public_from_private(self._private_key)
        for j, peer in self._peers.items():
            bind = crypto.pairwise_key(self._private_key, self.node_id, peer.public_key, j, session.SESSION_CONTEXT)
            self._out[j] = Outbound(Identity(self.node_id, j, me, peer.public_key), self._private_key, bind, ephemeral)
            self._in[j] = Inbound(Identity(j, self.node_id, peer.public_key, me), self._private_key, bind, ephemeral)
        now = time.monotonic()
        for j in self._out:
            self._initiate(j, now)

    def close(self) -> None:
        """Forget every session: forward secrecy rests on no copy of these keys outliving the process."""
        self._out.clear()
        self._in.clear()
        self._links = None

    def established(self, j: int) -> bool:
        """Whether our session with neighbour `j` is agreed (what we send it is sealed at once)."""
        out = self._out.get(j)
        return out is not None and out.established

    def all_established(self) -> bool:
        return all(out.established for out in self._out.values())

    def take_restarted(self) -> set[int]:
        """The neighbours whose earlier process a new one replaced since the last call."""
        taken, self._restarted = self._restarted, set()
        return taken

    # -- sending ---------------------------------------------------------------------------------

    def send(self, to: int, msg: Message) -> bool:
        """Seal `msg` for neighbour `to` and queue it; False (and counted) if its link is full.

        Before the session is agreed the newest `session.MAX_QUEUED` messages wait (copies: the
        caller may change its arrays once this returns); each older one pushed out is counted.
        """
        out = self._out.get(to)
        if out is None:
            raise ValueError(f"node {to} is not a neighbour of node {self.node_id} (or not started)")
        if msg.sender != self.node_id:
            raise ValueError(f"message from node {msg.sender} sent by node {self.node_id}")
        if not out.established:
            if len(out.queued) >= session.MAX_QUEUED:
                # the oldest goes, not the newest: rounds move on, and a stale model is worth nothing
                out.queued.pop(0)
                self._send_failed(to)
            out.queued.append(replace(msg, tensors={k: v.copy() for k, v in msg.tensors.items()}))
            return True
        return self._seal_and_send(to, out, msg)

    def discard_queued(self, j: int) -> None:
        """Forget the messages waiting for the session with `j` to be agreed."""
        out = self._out.get(j)
        if out is not None:
            out.queued.clear()

    def _seal_and_send(self, to: int, out: Outbound, msg: Message) -> bool:
        links = self._links  # set while started; `send` found `to`'s session, so it is
        assert links is not None
        # Check for room before sealing: a dead neighbour must not cost a model's worth of crypto.
        if not links.has_room(to):
            return self._send_failed(to)
        assert out.agreed is not None
        self._counter += 1
        frames = wire.seal(msg, to, self._counter, out.agreed.key, self.limits, cipher=self.cipher,
                           session=out.agreed.sid)
        sent = links.send_out(to, frames)
        if sent is Sent.FAILED:
            return False  # counted and logged by the transport
        if sent is not Sent.OK:
            return self._send_failed(to)
        self._stats.messages_sent += 1
        size = sum(memoryview(f).nbytes for f in frames)
        self._stats.bytes_sent += size
        self._stats.links[to][0] += size
        return True

    def _send_failed(self, to: int) -> bool:
        self._stats.links[to][2] += 1
        self.count_drop(SEND_QUEUE_FULL)
        self._log_drop(SEND_QUEUE_FULL, f"queue to node {to} is full")
        return False

    def _handshake(self, to: int, meta: dict, key: bytes | None = None, sid: bytes = b"",
                   route: bytes | None = None) -> Sent:
        """Seal one handshake step (static key unless `key`/`sid` name a session) and send it:
        on the outbound connection to `to`, or back on the inbound connection `route`."""
        links = self._require_links()
        self._counter += 1
        msg = Message(Kind.HANDSHAKE, self.node_id, 0, meta=meta)
        frames = wire.seal(msg, to, self._counter, self._keys[to] if key is None else key, self.limits,
                           cipher=self.cipher, session=sid)
        sent = links.send_out(to, frames) if route is None else links.send_back(route, frames)
        if sent is Sent.OK:
            self._stats.handshake_messages += 1
            size = sum(memoryview(f).nbytes for f in frames)
            self._stats.bytes_sent += size
            self._stats.links[to][0] += size
        return sent

    def _require_links(self) -> Links:
        if self._links is None:
            raise RuntimeError("the channels are not started (or already closed)")
        return self._links

    # -- the initiator's attempts ------------------------------------------------------------------

    def _initiate(self, j: int, now: float) -> None:
        """Send neighbour `j` the INIT of a new attempt (it is retried soon if it could not leave)."""
        self._send_init(j, self._out[j].start(now))

    def _send_init(self, j: int, init: dict) -> None:
        sent = self._handshake(j, init) is Sent.OK
        if not sent:
            self._out[j].unsent()
        # The link is full: be woken the moment it has room, not a poll later.
        self._require_links().want_room(j, not sent)

    def on_room(self, j: int) -> None:
        """The outbound connection to `j` has room again: the INIT that could not leave goes now."""
        if j in self._out:
            self._initiate(j, time.monotonic())

    def tick(self, now: float) -> float:
        """Retry handshakes that went unanswered; seconds until the next one is due.

        session.DuplicateIdentity if a neighbour has refused this process for DUPLICATE_GRACE_S.
        """
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

    # -- receiving on an inbound connection ---------------------------------------------------------

    def receive(self, parts: Sequence[wire.Buffer], route: bytes, where: object = None) -> Message | None:
        """Check one frame set that arrived on the inbound connection `route`; the message, or
        None if it was a handshake step or was dropped (counted, logged with `links.origin(where)`)."""
        # len is the size in bytes of every frame a transport delivers (zmq.Frame, bytes, the 1-D
        # uint8 views wire.seal makes), and cheaper than a memoryview per frame
        size = sum(len(f) for f in parts)
        self._stats.bytes_received += size
        sender: int | str = "?"
        try:
            header = wire.read_header(parts, self.limits)
            sender = header.sender
            inbound = self._in.get(sender)
            if inbound is None:
                return self._drop(UNKNOWN_PEER, sender, where, "not a neighbour")
            self._stats.links[sender][1] += size
            if header.recipient != self.node_id:
                return self._drop(WRONG_RECIPIENT, sender, where, f"addressed to node {header.recipient}")
            if header.kind == Kind.HANDSHAKE:
                return self._on_initiator_step(inbound, header, parts, route)
            current = inbound.accepted(header.session)
            if current is None:
                self._reset(sender, header.session, route)
                return self._drop(session.NO_SESSION, sender, where, "sealed for a session this process did not agree")
            aead = wire.message_aead(header, current.agreed.key)
            meta = wire.open_meta(header, parts, aead, self.limits)  # authenticates the header
            # Before decrypting the tensors: a replayed model costs no bulk crypto.
            if header.counter <= current.last_counter:
                return self._drop(REPLAY, sender, where, f"counter {header.counter} not above the last accepted")
            tensors = wire.open_tensors(header, parts, aead)
        except (wire.WireError, session.HandshakeError) as exc:
            return self._drop(exc.reason, sender, where, exc.detail)
        current.last_counter, current.last_heard = header.counter, time.monotonic()
        current.route = route  # its process may have reconnected: probe the connection it uses now
        self._stats.messages_received += 1
        return wire.to_message(header, meta, tensors)

    def _on_initiator_step(self, inbound: Inbound, header: wire.Header, parts: Sequence[wire.Buffer],
                           route: bytes) -> None:
        """INIT (static key) or CONFIRM (the proposed session's key) from a neighbour's process."""
        j = header.sender
        self._stats.handshake_messages += 1
        if not header.session:
            meta = wire.open_meta(header, parts, self._keys[j], self.limits)
            session.read(meta, {session.INIT})
            resp, _ = inbound.on_init(meta, route)
            self._handshake(j, resp, route=route)
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
        if rival is not None and not alive and time.monotonic() - rival.last_heard < self.alive_grace_s:
            # Its connection is gone but it spoke a moment ago: it may have reconnected on a
            # connection we have not seen it use yet. No verdict: the new process retries, and is
            # accepted once the old one has been silent for `alive_grace_s` (or refused if it speaks).
            return None
        if alive:
            inbound.refuse(proposed)
            self.count_drop(session.DUPLICATE_IDENTITY)
            log.error("node %d: refused a second live process presenting node %d's identity (node %d's current "
                      "process is still connected); the current one keeps its session", self.node_id, j, j)
            self._handshake(j, {"t": session.REFUSE, "reason": session.DUPLICATE_IDENTITY},
                            proposed.agreed.key, proposed.agreed.sid, route)
            return None
        inbound.accept(proposed)
        self._stats.sessions_accepted += 1
        self._handshake(j, {"t": session.ACCEPT}, proposed.agreed.key, proposed.agreed.sid, route)
        if rival is not None:
            log.warning("node %d: node %d restarted (its earlier process is gone); new sessions", self.node_id, j)
            self._restarted.add(j)
            # What we send j is still sealed for its earlier process: agree anew now rather than
            # lose a message to find out.
            init = self._out[j].restart(time.monotonic())
            if init is not None:
                self._send_init(j, init)
        return None

    def _alive(self, j: int, rival: session.Proposed) -> bool:
        """Whether the process of `rival` is still connected; it is told someone uses its id.

        Only GONE (no such connection) means gone: a full link is a live process that is busy,
        and taking it for a dead one would let a flood displace it.
        """
        sent = self._handshake(j, {"t": session.CONFLICT}, rival.agreed.key, rival.agreed.sid, rival.route)
        return sent is not Sent.GONE

    def _reset(self, j: int, sid: bytes, route: bytes) -> None:
        """Tell the process on `route` we do not know its session `sid` (rate-limited per connection:
        the sender id is not authenticated yet, so forged frames must not use up an honest one's)."""
        now = time.monotonic()
        if not sid or now - self._last_reset.get(route, -math.inf) < RESET_EVERY_S:
            return
        if len(self._last_reset) >= RESET_ROUTES:  # bounded: connections come and go
            self._last_reset.clear()
        self._last_reset[route] = now
        self._handshake(j, {"t": session.RESET, "sid": sid}, route=route)

    # -- receiving on an outbound connection (the responder's answers) ------------------------------

    def answer(self, j: int, frames: Sequence[wire.Buffer], where: object = None) -> None:
        """Take one frame set that came back on the outbound connection to neighbour `j`."""
        if j not in self._out:
            return  # closed meanwhile
        size = sum(len(f) for f in frames)
        self._stats.bytes_received += size
        self._stats.links[j][1] += size
        try:
            self._on_responder_step(j, frames)
        except (wire.WireError, session.HandshakeError) as exc:
            self._drop(exc.reason, j, where, exc.detail)

    def _on_responder_step(self, j: int, frames: Sequence[wire.Buffer]) -> None:
        """RESP or RESET (static key), ACCEPT, REFUSE or CONFLICT (session key) from neighbour `j`."""
        header = wire.read_header(frames, self.limits)
        if header.sender != j or header.recipient != self.node_id or header.kind != Kind.HANDSHAKE:
            raise session.HandshakeError(session.BAD_HANDSHAKE, f"{header.kind.name} from {header.sender} to "
                                         f"{header.recipient} on the connection to node {j}")
        self._stats.handshake_messages += 1
        out, now = self._out[j], time.monotonic()
        if not header.session:
            self._on_static_answer(j, out, header, frames, now)
        else:
            self._on_session_answer(j, out, header, frames, now)

    def _on_static_answer(self, j: int, out: Outbound, header: wire.Header, frames: Sequence[wire.Buffer],
                          now: float) -> None:
        """RESP (go on: CONFIRM) or RESET (start over: INIT), sealed with the static key."""
        meta = wire.open_meta(header, frames, self._keys[j], self.limits)
        kind = session.read(meta, {session.RESP, session.RESET})
        if kind == session.RESP:
            confirm = out.on_resp(meta)
            if confirm is not None:  # None: a late answer to an earlier attempt of ours
                assert out.agreed is not None
                self._handshake(j, confirm, out.agreed.key, out.agreed.sid)
                self._confirm_at[j] = time.monotonic()
            return
        init = out.on_reset(meta, now)
        if init is None:
            return  # about a session of ours we already replaced
        log.warning("node %d: node %d no longer knows our session (it restarted); agreeing a new one",
                    self.node_id, j)
        self._send_init(j, init)

    def _on_session_answer(self, j: int, out: Outbound, header: wire.Header, frames: Sequence[wire.Buffer],
                           now: float) -> None:
        """The verdict ACCEPT or REFUSE on our CONFIRM, or a CONFLICT notice, sealed with a session key."""
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
        if j in self._confirm_at:
            self.rtt[j] = now - self._confirm_at.pop(j)
        log.info("node %d: session to node %d agreed (round trip %.1f ms)", self.node_id, j, 1000 * self.rtt.get(j, math.nan))
        queued, out.queued = out.queued, []
        for msg in queued:
            self._seal_and_send(j, out, msg)

    # -- accounting ------------------------------------------------------------------------------

    def count_drop(self, reason: str) -> None:
        """Count one dropped message under `reason` (the node adds its own, e.g. wrong round)."""
        self._stats.dropped[reason] = self._stats.dropped.get(reason, 0) + 1

    def drop(self, reason: str, detail: str, sender: int | None = None) -> None:
        """Count a message refused after delivery (on `sender`'s link too, if a neighbour), and log it (rate-limited)."""
        self._count_on_link(reason, sender)
        self._log_drop(reason, detail)

    def _count_on_link(self, reason: str, sender: int | str | None) -> None:
        """Count a drop, and on the link of `sender` when that is a neighbour."""
        self.count_drop(reason)
        link = self._stats.links.get(sender) if isinstance(sender, int) else None
        if link is not None:
            link[2] += 1

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters (later traffic does not change it)."""
        return replace(self._stats, dropped=dict(self._stats.dropped),
                       links={j: list(v) for j, v in self._stats.links.items()})

    def _drop(self, reason: str, sender: int | str, where: object, detail: str) -> None:
        self._count_on_link(reason, sender)
        origin = self._links.origin(where) if self._links is not None else "?"  # the only clue for garbage
        self._log_drop(reason, f"from node {sender} ({origin}): {detail}")
        return None

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


class ChannelTransport(ABC):
    """What every transport of the package does the same way around its `Channels`.

    The `transport.MessageTransport` methods that only hand over to the channels (`send`,
    `established`, `count_drop`, `drop`, `stats`, `neighbours`), the context manager, and the
    loop of `recv`: take what is queued, hand it to the channels, retry due handshakes, wait.
    A subclass makes `self._channels` (`_make_channels`) and provides what differs: `start` and
    `close`, `_started` and `_take` (its sockets or queues), and the `Links` methods.
    """

    _channels: Channels

    def _make_channels(self, node_id: int, private_key: bytes, peers: dict[int, Peer], neighbours: Iterable[int],
                       limits: wire.Limits, cipher: str, alive_grace_s: float) -> None:
        """Make `self._channels` (ValueError for a bad key, peer table or cipher) and the attributes every
        transport has: `node_id`, `limits`, `cipher` (resolved), `_address` (its own), `_peers` (its neighbours')."""
        self._channels = Channels(node_id, private_key, peers, neighbours, limits, cipher, alive_grace_s=alive_grace_s)
        self.node_id = node_id
        self.limits = limits
        self.cipher = self._channels.cipher
        self._address = peers[node_id].address
        self._peers = {j: peers[j] for j in self._channels.neighbours}

    # -- what differs --------------------------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """See `transport.MessageTransport`."""

    @abstractmethod
    def close(self, linger: float = 0.0) -> None:
        """See `transport.MessageTransport`."""

    @property
    @abstractmethod
    def _started(self) -> bool:
        """Whether `recv` may run: started and not closed."""

    @abstractmethod
    def _take(self, wait: float | None) -> tuple[bool, Message | None]:
        """Hand the channels what comes next: (whether an inbound frame set or an answer was taken, the
        message it delivered). `wait` None: only what is queued now; else wait up to `wait` s first."""

    # -- the same for every transport ----------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        have refused this process for DUPLICATE_GRACE_S.
        """
        if not self._started:
            raise RuntimeError("recv before start (or after close)")
        channels = self._channels
        deadline = time.monotonic() + max(0.0, timeout)
        wait: float | None = None  # take what is already queued before waiting
        while True:
            # Messages come in bursts (a phase's worth from every neighbour): take what is queued
            # without waiting, and wait only when nothing is.
            taken, msg = self._take(wait)
            if msg is not None:
                return msg
            wait = None
            if taken and time.monotonic() < deadline:
                continue
            now = time.monotonic()
            wait = deadline - now
            if not channels.all_established():
                wait = min(wait, channels.tick(now))
            if deadline - now <= 0:
                return None

    def established(self, j: int) -> bool:
        """Whether our session with neighbour `j` is agreed (what we send it is sealed at once)."""
        return self._channels.established(j)

    def restarted(self) -> set[int]:
        """Neighbours whose earlier process a new one replaced since the last call (each told once)."""
        return self._channels.take_restarted()

    def discard_queued(self, j: int) -> None:
        """Throw away what waits to be sent to neighbour `j`: in the channels (before its session is
        agreed) and on the link (`_discard_link`)."""
        self._channels.discard_queued(j)
        self._discard_link(j)

    def _discard_link(self, j: int) -> None:
        """Drop what the outbound link to `j` holds; nothing by default (a link that queues nothing for
        an unreachable peer, or one shared with other nodes, which it must not take from)."""

    def count_drop(self, reason: str) -> None:
        """Count one dropped message under `reason` (the node adds its own, e.g. wrong round)."""
        self._channels.count_drop(reason)

    def drop(self, reason: str, detail: str, sender: int | None = None) -> None:
        """Count a message the node refused after the transport delivered it, and log it (rate-limited)."""
        self._channels.drop(reason, detail, sender)

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters (later traffic does not change it)."""
        return self._channels.stats

    @property
    def neighbours(self) -> list[int]:
        return list(self._channels.neighbours)
