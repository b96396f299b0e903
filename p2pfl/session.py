"""Sessions: a fresh key for every (sender process, receiver process) pair, agreed by a handshake.

Owns the node's ephemeral X25519 key pair (new at every transport start, never written down),
the handshake's messages and checks, how a session's key and id are derived, and the state of
both roles towards one neighbour:

- `Outbound` (we initiate, on our connection to the neighbour, a DEALER over ZeroMQ; it seals
  what we send it):
  stages `Stage`, moves only along `TRANSITIONS` (as h11's `_state.py` does);
- `Inbound` (the neighbour initiates, on its connection to us, its DEALER to our ROUTER over
  ZeroMQ; it opens what it sends us):
  the sessions it has proposed (pending) and the one we accepted (active).

It is sans-I/O: it never touches a socket or a clock of its own. `channel.Channels` seals, sends
and receives the handshake messages this module builds and reads (over whichever transport), and
probes whether a connection is still up (docs/wire.md, *Sessions*, has the exact message sequence). It does not know the byte
layout of messages (`wire`).

Why: a key that survives restarts (the static pairwise key) cannot tell a frame of this run from
a recorded one, and a counter kept in memory forgets at every restart. A key that depends on
both ends' fresh ephemeral keys makes every frame of an earlier session of either end fail
authentication, and gives forward secrecy: once both processes are gone, so is the key.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from p2pfl import crypto

SESSION_CONTEXT = b"session"  # purpose of the static pairwise key that binds session keys
NONCE_BYTES = 16  # the initiator's per-attempt nonce (a retry is a new attempt)
MAX_PENDING = 4  # proposed sessions kept per sender: a replayed INIT cannot crowd out the rest
MAX_QUEUED = 16  # messages kept per neighbour while its session is being agreed
UNSENT_RETRY_S = 0.1  # an INIT that could not leave (its queue was full) is tried again this soon
RECENT_ATTEMPTS = 8  # our attempts remembered, so that late answers to retried ones are not counted as attacks
_KEY_PERSON = b"p2pfl-session"
_SID_PERSON = b"p2pfl-sid"
_LABEL = b"p2pfl-session-v1"

# Handshake message types (the "t" of a HANDSHAKE message's meta).
INIT, RESP, CONFIRM, ACCEPT, REFUSE, RESET, CONFLICT = "init", "resp", "confirm", "accept", "refuse", "reset", "conflict"

# Drop reasons of the handshake (transport counts them like any other).
NO_SESSION = "no_session"  # sealed for a session this process never agreed (an earlier run, a restart)
STALE_HANDSHAKE = "stale_handshake"  # a handshake answer for an attempt or session that is not ours now
BAD_HANDSHAKE = "bad_handshake"  # malformed handshake meta, or a step out of order
DUPLICATE_IDENTITY = "duplicate_identity"  # a second live process presents a node id that already has one


class DuplicateIdentity(Exception):
    """Neighbours keep refusing this process: another live process already runs as this node."""


class HandshakeError(Exception):
    """A handshake message was refused; `reason` is one of the drop reasons above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Ephemeral:
    """One process's ephemeral key pair: made at start, used for every neighbour, never stored."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> Ephemeral:
        private, public = crypto.generate_keypair()
        return cls(private, public)


@dataclass(frozen=True)
class Identity:
    """What both ends know of a directed pair: ids and static public keys, initiator first."""

    initiator: int
    responder: int
    initiator_static: bytes
    responder_static: bytes


@dataclass(frozen=True)
class Agreed:
    """A session's id (named in every header it seals) and key."""

    sid: bytes
    key: bytes


def derive(pair: Identity, static_key: bytes, dh: bytes, e_init: bytes, e_resp: bytes, nonce: bytes) -> Agreed:
    """Session id and key from the three DH values `dh` (see docs/wire.md) and the transcript.

    The key is BLAKE2b keyed with the static pairwise key (so it binds the static-static DH as
    well) over the ephemeral DH values and the transcript; the id hashes the transcript only
    (public values), so both ends and the header can name the session without revealing anything.
    """
    transcript = (_LABEL + struct.pack(">QQ", pair.initiator, pair.responder) + pair.initiator_static
                  + pair.responder_static + e_init + e_resp + nonce)
    key = hashlib.blake2b(dh + transcript, digest_size=crypto.KEY_BYTES, key=static_key, person=_KEY_PERSON).digest()
    sid = hashlib.blake2b(transcript, digest_size=8, person=_SID_PERSON).digest()
    return Agreed(sid, key)


def read(meta: dict[str, Any], expected: set[str] | frozenset[str]) -> str:
    """The handshake type of `meta`, checked against `expected`; HandshakeError otherwise."""
    kind = meta.get("t")
    if type(kind) is not str or kind not in expected:  # `type is`: a list here must not raise TypeError
        raise HandshakeError(BAD_HANDSHAKE, f"handshake step {kind!r} where {sorted(expected)} may come")
    return kind


def _field(meta: dict[str, Any], name: str, size: int) -> bytes:
    value = meta.get(name)
    if type(value) is not bytes or len(value) != size:
        raise HandshakeError(BAD_HANDSHAKE, f"field {name!r} is not {size} bytes")
    return value


# -- the initiator: what we send a neighbour ----------------------------------------------------


class Stage(enum.Enum):
    """Where our outbound session with one neighbour stands."""

    IDLE = "idle"  # nothing sent yet
    AWAIT_RESP = "await_resp"  # INIT sent: waiting for the neighbour's ephemeral key
    AWAIT_ACCEPT = "await_accept"  # CONFIRM sent under the new key: waiting for its verdict
    ESTABLISHED = "established"  # messages are sealed under the session key
    REFUSED = "refused"  # the neighbour holds a live session of another process with our id


# (stage, event) -> next stage; anything else is a step out of order.
TRANSITIONS: dict[tuple[Stage, str], Stage] = {
    (Stage.IDLE, "start"): Stage.AWAIT_RESP,
    (Stage.AWAIT_RESP, "retry"): Stage.AWAIT_RESP,
    (Stage.AWAIT_ACCEPT, "retry"): Stage.AWAIT_RESP,
    (Stage.REFUSED, "retry"): Stage.AWAIT_RESP,
    (Stage.AWAIT_RESP, RESP): Stage.AWAIT_ACCEPT,
    (Stage.AWAIT_ACCEPT, ACCEPT): Stage.ESTABLISHED,
    (Stage.AWAIT_ACCEPT, REFUSE): Stage.REFUSED,
    (Stage.ESTABLISHED, RESET): Stage.AWAIT_RESP,
}


@dataclass
class Outbound:
    """Our side of the session that seals what we send `pair.responder`."""

    pair: Identity
    static_private: bytes
    static_key: bytes  # the static pairwise key of SESSION_CONTEXT
    ephemeral: Ephemeral
    stage: Stage = Stage.IDLE
    agreed: Agreed | None = None  # the confirmed attempt's session; sealing uses it once ESTABLISHED
    attempt_at: float = 0.0  # when the current attempt's INIT went out
    tries: int = 0  # attempts since the last ESTABLISHED: retries back off
    sent: bool = True  # whether the current attempt's INIT left (False: its queue was full)
    refused_since: float | None = None  # first refusal of an unbroken run of refusals
    queued: list[Any] = field(default_factory=list)  # messages waiting for ESTABLISHED
    last_counter: int = 0  # replay rule for the answers sealed under the session key
    # Our recent attempts (nonce -> its session once answered), oldest first. An answer to any of
    # them is this process's own traffic (a retry overtook it), never a replay from another run.
    attempts: dict[bytes, Agreed | None] = field(default_factory=dict)

    def _move(self, event: str) -> None:
        nxt = TRANSITIONS.get((self.stage, event))
        if nxt is None:
            raise HandshakeError(STALE_HANDSHAKE, f"{event} while {self.stage.value}")
        self.stage = nxt

    def start(self, now: float) -> dict[str, Any]:
        """The INIT of a new attempt (the first, or a retry): a fresh nonce, our ephemeral key."""
        self._move("start" if self.stage is Stage.IDLE else "retry")
        return self._init(now)

    def _init(self, now: float) -> dict[str, Any]:
        self.last_counter = 0  # a new attempt: the answers come under a new key
        nonce = os.urandom(NONCE_BYTES)
        self.attempts[nonce] = None
        while len(self.attempts) > RECENT_ATTEMPTS:
            del self.attempts[next(iter(self.attempts))]
        self.attempt_at, self.tries, self.sent = now, self.tries + 1, True
        return {"t": INIT, "e": self.ephemeral.public, "n": nonce}

    def on_resp(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """Take the neighbour's ephemeral key from RESP; the CONFIRM to seal under the new key.

        None for an answer to one of our attempts while another one is already confirming.
        """
        nonce = meta.get("n")
        if type(nonce) is not bytes or nonce not in self.attempts:
            raise HandshakeError(STALE_HANDSHAKE, "answer to an attempt that is not one of ours")
        # Only the current attempt's answer counts: an earlier one's may come from the neighbour's
        # previous process (or be replayed), and confirming it would only wait out a retry.
        if self.stage is not Stage.AWAIT_RESP or nonce != next(reversed(self.attempts)):
            return None
        e_resp = _field(meta, "e", crypto.KEY_BYTES)
        try:
            dh = (crypto.x25519(self.ephemeral.private, e_resp) + crypto.x25519(self.static_private, e_resp)
                  + crypto.x25519(self.ephemeral.private, self.pair.responder_static))
        except crypto.CryptoError as exc:
            raise HandshakeError(BAD_HANDSHAKE, str(exc)) from None
        self.agreed = self.attempts[nonce] = derive(self.pair, self.static_key, dh, self.ephemeral.public,
                                                    e_resp, nonce)
        self._move(RESP)
        return {"t": CONFIRM}

    def key_for(self, sid: bytes) -> bytes | None:
        """The key of our attempt `sid` (the current one or a recent one), None if none is ours."""
        for agreed in self.attempts.values():
            if agreed is not None and agreed.sid == sid:
                return agreed.key
        return None

    def on_verdict(self, kind: str, sid: bytes, now: float) -> bool:
        """ACCEPT or REFUSE of our CONFIRM; False if it is for an earlier attempt (ignored)."""
        if self.agreed is None or sid != self.agreed.sid or self.stage is not Stage.AWAIT_ACCEPT:
            return False
        self._move(kind)
        if kind == ACCEPT:
            self.refused_since, self.tries = None, 0
        elif self.refused_since is None:
            self.refused_since = now
        return True

    def on_reset(self, meta: dict[str, Any], now: float) -> dict[str, Any] | None:
        """The neighbour does not know our session (it restarted): a new attempt's INIT.

        None for a reset of an earlier session of ours (we are already agreeing a new one).
        """
        sid = meta.get("sid")
        if self.stage is Stage.ESTABLISHED and self.agreed is not None and sid == self.agreed.sid:
            self._move(RESET)
            return self._init(now)
        if type(sid) is bytes and self.key_for(sid) is not None:
            return None
        raise HandshakeError(STALE_HANDSHAKE, "reset of a session that is not one of ours")

    def unsent(self) -> None:
        """The current attempt's INIT could not leave (its queue was full): it costs no backoff."""
        self.sent, self.tries = False, max(self.tries - 1, 0)

    def restart(self, now: float) -> dict[str, Any] | None:
        """The neighbour's process changed (we accepted its new process's session): our session
        with the old one is useless, so a new attempt's INIT; None if none is established."""
        if self.stage is not Stage.ESTABLISHED:
            return None
        self._move(RESET)
        return self._init(now)

    def due(self, now: float, retry_s: float) -> float:
        """Seconds until the current attempt should be made again (<= 0: now); inf once established.

        Retries back off (x1, x2, x4, x8): a neighbour busy training answers late, not never.
        """
        if self.stage is Stage.ESTABLISHED:
            return float("inf")
        if not self.sent:  # nothing left: try again soon
            return self.attempt_at + UNSENT_RETRY_S - now
        if self.stage is Stage.REFUSED:  # no backoff: a crashed predecessor's connection is gone in seconds
            return self.attempt_at + retry_s - now
        return self.attempt_at + retry_s * 2 ** min(max(self.tries - 1, 0), 3) - now

    @property
    def established(self) -> bool:
        return self.stage is Stage.ESTABLISHED


# -- the responder: what a neighbour sends us ---------------------------------------------------


@dataclass
class Proposed:
    """A session a neighbour's process proposed (INIT); accepted once its CONFIRM passes the channel's checks."""

    agreed: Agreed
    peer_ephemeral: bytes
    route: bytes  # names the connection it came on (a ROUTER routing id; updated by later frames)
    accepted: bool = False
    last_counter: int = 0  # replay rule within the session: counters only grow
    last_heard: float = 0.0  # monotonic time of its last authenticated frame


@dataclass
class Inbound:
    """The sessions `pair.initiator` proposed to us; at most one accepted (active) at a time."""

    pair: Identity
    static_private: bytes
    static_key: bytes
    ephemeral: Ephemeral
    sessions: dict[bytes, Proposed] = field(default_factory=dict)
    active: bytes | None = None

    def on_init(self, meta: dict[str, Any], route: bytes) -> tuple[dict[str, Any], int]:
        """Agree a session from INIT; returns (the RESP, how many stale proposals were evicted)."""
        e_init = _field(meta, "e", crypto.KEY_BYTES)
        nonce = _field(meta, "n", NONCE_BYTES)
        try:
            dh = (crypto.x25519(self.ephemeral.private, e_init) + crypto.x25519(self.ephemeral.private, self.pair.initiator_static)
                  + crypto.x25519(self.static_private, e_init))
        except crypto.CryptoError as exc:
            raise HandshakeError(BAD_HANDSHAKE, str(exc)) from None
        agreed = derive(self.pair, self.static_key, dh, e_init, self.ephemeral.public, nonce)
        evicted = 0
        if agreed.sid not in self.sessions:
            # A replayed INIT costs one RESP and one of MAX_PENDING slots, never the active session.
            pending = [sid for sid, s in self.sessions.items() if not s.accepted]
            while len(pending) >= MAX_PENDING:
                del self.sessions[pending.pop(0)]
                evicted += 1
            self.sessions[agreed.sid] = Proposed(agreed, e_init, route)
        return {"t": RESP, "e": self.ephemeral.public, "n": nonce}, evicted

    def get(self, sid: bytes) -> Proposed | None:
        return self.sessions.get(sid)

    def rival(self, proposed: Proposed) -> Proposed | None:
        """The active session of another process of the same node id, if there is one.

        The same process re-agreeing (a retry, or after a reset) has the same ephemeral key:
        not a rival. Whether the rival's process is still alive is for the channel to probe.
        """
        current = self.sessions.get(self.active) if self.active is not None else None
        if current is None or current is proposed or current.peer_ephemeral == proposed.peer_ephemeral:
            return None
        return current

    def accept(self, proposed: Proposed) -> None:
        """Make `proposed` the active session; the one it replaces is forgotten (its frames then
        fail as `no_session`), other pending proposals stay until they are confirmed or evicted."""
        if self.active is not None and self.active != proposed.agreed.sid:
            self.sessions.pop(self.active, None)
        # The same process's other attempts go too: a CONFIRM of one of them (a late one, or one an
        # attacker held back and replays) must not replace the session just accepted.
        for sid in [sid for sid, p in self.sessions.items()
                    if p is not proposed and p.peer_ephemeral == proposed.peer_ephemeral]:
            del self.sessions[sid]
        proposed.accepted = True
        self.active = proposed.agreed.sid

    def refuse(self, proposed: Proposed) -> None:
        self.sessions.pop(proposed.agreed.sid, None)

    def accepted(self, sid: bytes) -> Proposed | None:
        """The active session if `sid` names it, else None."""
        s = self.sessions.get(sid)
        return s if s is not None and s.accepted else None
