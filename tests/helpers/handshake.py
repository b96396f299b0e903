"""The session handshake spoken by hand over raw sockets, for tests that play a node themselves.

A `Transport` agrees a session with every neighbour before it sends anything (p2pfl/session.py,
docs/wire.md *Sessions*). A test that seals frames by hand (to tamper with them, replay them, or
send anything else on an honest connection) must do the same, with the same code: these helpers
drive `session.Outbound` / `session.Inbound` over raw ZeroMQ sockets and seal with `wire.seal`.

- `Initiator`: our DEALER connected to a neighbour's ROUTER; `agree(...)` runs INIT, RESP,
  CONFIRM, ACCEPT and leaves `agreed` (the session id and key to seal with).
- `Responder`: our ROUTER; `answer(frames)` handles a neighbour's INIT / CONFIRM and returns the
  reply to send back on the same connection, and `key(sender, sid)` opens its later messages.
"""

from __future__ import annotations

import time
from typing import Callable

import zmq

from p2pfl import crypto, session, wire
from p2pfl.channel import KEY_CONTEXT
from p2pfl.messages import Kind, Message
from p2pfl.session import Identity, Inbound, Outbound


class Counter:
    """A sender's counter: starts at the clock, only grows (as a Transport's does)."""

    def __init__(self) -> None:
        self.value = time.time_ns()

    def __call__(self) -> int:
        self.value += 1
        return self.value


def _static_key(private: bytes, me: int, peer_public: bytes, peer: int, context: bytes) -> bytes:
    return crypto.pairwise_key(private, me, peer_public, peer, context)


def _seal(me: int, to: int, meta: dict, key: bytes, sid: bytes, counter: Counter, limits: wire.Limits) -> list[bytes]:
    msg = Message(Kind.HANDSHAKE, me, 0, meta=meta)
    return [bytes(f) for f in wire.seal(msg, to, counter(), key, limits, session=sid)]


class Initiator:
    """Node `me` agreeing the session that seals what it sends `peer`, on a DEALER of ours."""

    def __init__(self, me: int, private: bytes, peer: int, peer_public: bytes, limits: wire.Limits,
                 counter: Counter | None = None, ephemeral: session.Ephemeral | None = None) -> None:
        self.me, self.peer, self.limits = me, peer, limits
        self.counter = counter or Counter()
        self.static = _static_key(private, me, peer_public, peer, KEY_CONTEXT)
        bind = _static_key(private, me, peer_public, peer, session.SESSION_CONTEXT)
        pair = Identity(me, peer, crypto.public_from_private(private), peer_public)
        self.out = Outbound(pair, private, bind, ephemeral or session.Ephemeral.generate())
        self.sent: list[list[bytes]] = []  # every handshake frame set we sent, in order (for replays)

    def _send(self, dealer: zmq.Socket, frames: list[bytes]) -> None:
        self.sent.append(frames)
        dealer.send_multipart(frames)

    @property
    def agreed(self) -> session.Agreed:
        assert self.out.established and self.out.agreed is not None, "no session agreed yet"
        return self.out.agreed

    def agree(self, dealer: zmq.Socket, pump: Callable[[], None] = lambda: None, timeout: float = 10.0) -> session.Agreed:
        """Run the handshake on `dealer`; `pump` lets a same-thread receiver answer between steps."""
        self._send(dealer, _seal(self.me, self.peer, self.out.start(time.monotonic()), self.static, b"",
                                 self.counter, self.limits))
        deadline = time.monotonic() + timeout
        while not self.out.established:
            assert time.monotonic() < deadline, f"no session with node {self.peer} within {timeout}s"
            pump()
            if dealer.poll(10, zmq.POLLIN):
                self.on_answer(dealer, dealer.recv_multipart())
        return self.agreed

    def on_answer(self, dealer: zmq.Socket, frames: list[bytes]) -> None:
        header = wire.read_header(frames, self.limits)
        if not header.session:
            meta = wire.open_meta(header, frames, self.static, self.limits)
            if session.read(meta, {session.RESP, session.RESET}) == session.RESP:
                confirm = self.out.on_resp(meta)
                if confirm is not None:
                    assert self.out.agreed is not None
                    self._send(dealer, _seal(self.me, self.peer, confirm, self.out.agreed.key,
                                             self.out.agreed.sid, self.counter, self.limits))
            return
        key = self.out.key_for(header.session)
        assert key is not None, "an answer for a session that is not ours"
        meta = wire.open_meta(header, frames, key, self.limits)
        kind = session.read(meta, {session.ACCEPT, session.REFUSE, session.CONFLICT})
        if kind != session.CONFLICT:
            self.out.on_verdict(kind, header.session, time.monotonic())

    def seal(self, msg: Message, *, recipient: int | None = None, key: bytes | None = None,
             sid: bytes | None = None, counter: int | None = None, limits: wire.Limits | None = None,
             chunk_bytes: int = wire.CHUNK_BYTES, cipher: str = crypto.AUTO) -> list[bytes]:
        """`msg` sealed in our session (or with the given fields), as a Transport would send it."""
        frames = wire.seal(msg, self.peer if recipient is None else recipient,
                           self.counter() if counter is None else counter,
                           self.agreed.key if key is None else key, limits or self.limits, chunk_bytes,
                           cipher=cipher, session=self.agreed.sid if sid is None else sid)
        return [bytes(f) for f in frames]


class Responder:
    """Node `me`'s ROUTER side: answers its neighbours' handshakes, opens their messages."""

    def __init__(self, me: int, private: bytes, publics: dict[int, bytes], limits: wire.Limits,
                 counter: Counter | None = None) -> None:
        self.me, self.limits = me, limits
        self.counter = counter or Counter()
        ephemeral = session.Ephemeral.generate()
        mine = crypto.public_from_private(private)
        self.static = {j: _static_key(private, me, pub, j, KEY_CONTEXT) for j, pub in publics.items()}
        self.inbound = {j: Inbound(Identity(j, me, pub, mine), private,
                                   _static_key(private, me, pub, j, session.SESSION_CONTEXT), ephemeral)
                        for j, pub in publics.items()}

    def answer(self, route: bytes, parts: list[bytes]) -> list[bytes] | None:
        """The reply (routing id first) to a neighbour's INIT or CONFIRM; None if `parts` is not one."""
        header = wire.read_header(parts, self.limits)
        if header.kind != Kind.HANDSHAKE or header.sender not in self.inbound:
            return None
        j, inbound = header.sender, self.inbound[header.sender]
        if not header.session:
            meta = wire.open_meta(header, parts, self.static[j], self.limits)
            session.read(meta, {session.INIT})
            resp, _ = inbound.on_init(meta, route)
            return [route, *_seal(self.me, j, resp, self.static[j], b"", self.counter, self.limits)]
        proposed = inbound.get(header.session)
        if proposed is None:
            return None
        session.read(wire.open_meta(header, parts, proposed.agreed.key, self.limits), {session.CONFIRM})
        inbound.accept(proposed)
        return [route, *_seal(self.me, j, {"t": session.ACCEPT}, proposed.agreed.key, proposed.agreed.sid,
                              self.counter, self.limits)]

    def key(self, sender: int, sid: bytes) -> bytes | None:
        """The key of `sender`'s accepted session `sid`, None if there is none."""
        inbound = self.inbound.get(sender)
        accepted = inbound.accepted(sid) if inbound is not None else None
        return accepted.agreed.key if accepted is not None else None
