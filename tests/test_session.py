"""The session handshake as a sans-I/O state machine (p2pfl/session.py): no sockets, real X25519.

What both ends derive, the transition table, which answers an initiator takes and which it
refuses, and the bounds an attacker could try to exhaust. Sockets and whole processes are in
tests/test_sessions.py and tests/test_side_doors.py.
"""

from __future__ import annotations

import pytest

from p2pfl import crypto, session
from p2pfl.session import Identity, Inbound, Outbound, Stage


def _pair(initiator: int = 3, responder: int = 7):
    (si, pi), (sr, pr) = crypto.generate_keypair(), crypto.generate_keypair()
    ident = Identity(initiator, responder, pi, pr)
    bind_i = crypto.pairwise_key(si, initiator, pr, responder, session.SESSION_CONTEXT)
    bind_r = crypto.pairwise_key(sr, responder, pi, initiator, session.SESSION_CONTEXT)
    out = Outbound(ident, si, bind_i, session.Ephemeral.generate())
    inb = Inbound(ident, sr, bind_r, session.Ephemeral.generate())
    return out, inb


def _agree(out: Outbound, inb: Inbound, now: float = 0.0) -> session.Proposed:
    resp, _ = inb.on_init(out.start(now), route=b"r1")
    assert out.on_resp(resp) == {"t": session.CONFIRM}
    assert out.agreed is not None
    proposed = inb.get(out.agreed.sid)
    assert proposed is not None
    inb.accept(proposed)
    assert out.on_verdict(session.ACCEPT, out.agreed.sid, now)
    return proposed


def test_both_ends_derive_the_same_key_and_id_and_a_new_process_a_new_one():
    out, inb = _pair()
    proposed = _agree(out, inb)
    assert out.established and proposed.agreed == out.agreed
    out2 = Outbound(out.pair, out.static_private, out.static_key, session.Ephemeral.generate())  # a restart
    resp, _ = inb.on_init(out2.start(0.0), route=b"r2")
    out2.on_resp(resp)
    assert out2.agreed.sid != out.agreed.sid and out2.agreed.key != out.agreed.key


def test_the_key_binds_the_static_keys():
    out, inb = _pair()
    resp, _ = inb.on_init(out.start(0.0), route=b"r")
    # someone with the initiator's ephemeral key but not its static key: a different key
    stranger, _ = crypto.generate_keypair()
    forged = Outbound(out.pair, stranger, out.static_key, out.ephemeral)
    forged.attempts = dict(out.attempts)
    forged.stage = Stage.AWAIT_RESP
    forged.on_resp(resp)
    out.on_resp(resp)
    assert forged.agreed.sid == out.agreed.sid and forged.agreed.key != out.agreed.key


def test_transitions_follow_the_table_only():
    out, inb = _pair()
    assert out.stage is Stage.IDLE
    with pytest.raises(session.HandshakeError):
        out.on_reset({"t": session.RESET, "sid": b"x" * 8}, 0.0)  # nothing to reset yet
    _agree(out, inb)
    assert out.stage is Stage.ESTABLISHED
    assert not out.on_verdict(session.ACCEPT, out.agreed.sid, 0.0)  # a second ACCEPT changes nothing
    assert out.due(0.0, 1.0) == float("inf")
    for (stage, event), nxt in session.TRANSITIONS.items():
        assert isinstance(stage, Stage) and isinstance(nxt, Stage) and isinstance(event, str)


def test_an_answer_to_no_attempt_of_ours_is_stale_and_one_to_an_earlier_attempt_is_ignored():
    out, inb = _pair()
    first = out.start(0.0)
    second = out.start(1.0)  # a retry overtook the first
    resp_first, _ = inb.on_init(first, route=b"r")
    resp_second, _ = inb.on_init(second, route=b"r")
    assert out.on_resp(resp_first) is None  # ours, but not the current attempt: ignored, not counted
    assert out.on_resp(resp_second) == {"t": session.CONFIRM}
    assert out.on_resp(resp_second) is None  # already confirming
    other, other_inb = _pair()
    replay, _ = other_inb.on_init(other.start(0.0), route=b"r")
    with pytest.raises(session.HandshakeError) as info:
        out.on_resp(replay)  # a RESP recorded from another process's handshake
    assert info.value.reason == session.STALE_HANDSHAKE


def test_reset_only_for_our_current_session():
    out, inb = _pair()
    _agree(out, inb)
    with pytest.raises(session.HandshakeError):
        out.on_reset({"t": session.RESET, "sid": bytes(8)}, 0.0)
    assert out.established
    init = out.on_reset({"t": session.RESET, "sid": out.agreed.sid}, 0.0)
    assert init["t"] == session.INIT and out.stage is Stage.AWAIT_RESP


def test_refusals_are_remembered_until_an_accept():
    out, inb = _pair()
    resp, _ = inb.on_init(out.start(0.0), route=b"r")
    out.on_resp(resp)
    assert out.on_verdict(session.REFUSE, out.agreed.sid, 5.0)
    assert out.stage is Stage.REFUSED and out.refused_since == 5.0
    assert out.due(6.0, 1.0) <= 0  # retried
    resp, _ = inb.on_init(out.start(6.0), route=b"r")
    out.on_resp(resp)
    out.on_verdict(session.REFUSE, out.agreed.sid, 7.0)
    assert out.refused_since == 5.0  # an unbroken run of refusals
    resp, _ = inb.on_init(out.start(8.0), route=b"r")
    out.on_resp(resp)
    out.on_verdict(session.ACCEPT, out.agreed.sid, 9.0)
    assert out.established and out.refused_since is None


def test_a_rival_is_another_process_never_the_same_one():
    out, inb = _pair()
    first = _agree(out, inb)
    retry = {"t": session.INIT, "e": out.ephemeral.public, "n": bytes(16)}  # same process, a new attempt
    inb.on_init(retry, route=b"r")
    same = [p for p in inb.sessions.values() if p is not first][0]
    assert inb.rival(same) is None  # the same process re-agreeing (a retry or after a reset)
    twin = Outbound(out.pair, out.static_private, out.static_key, session.Ephemeral.generate())
    resp, _ = inb.on_init(twin.start(0.0), route=b"r9")
    twin.on_resp(resp)
    assert inb.rival(inb.get(twin.agreed.sid)) is first


def test_replayed_inits_cannot_crowd_out_the_active_session():
    out, inb = _pair()
    active = _agree(out, inb)
    for i in range(50):
        inb.on_init({"t": session.INIT, "e": crypto.generate_keypair()[1], "n": i.to_bytes(16, "big")}, b"x")
    pending = [s for s in inb.sessions.values() if not s.accepted]
    assert len(pending) == session.MAX_PENDING
    assert inb.accepted(active.agreed.sid) is active


@pytest.mark.parametrize("meta", [{"t": session.INIT, "e": bytes(32), "n": bytes(16)},  # low order
                                  {"t": session.INIT, "e": b"short", "n": bytes(16)},
                                  {"t": session.INIT, "e": bytes(range(32))},  # no nonce
                                  {"t": session.INIT, "e": 5, "n": bytes(16)}])
def test_malformed_inits_are_refused_with_a_reason(meta):
    _, inb = _pair()
    with pytest.raises(session.HandshakeError) as info:
        inb.on_init(meta, route=b"r")
    assert info.value.reason == session.BAD_HANDSHAKE
    assert not inb.sessions


def test_retries_back_off_but_an_unsent_init_does_not():
    out, _ = _pair()
    out.start(0.0)
    assert out.due(0.0, 1.0) == pytest.approx(1.0)
    out.start(1.0)
    assert out.due(1.0, 1.0) == pytest.approx(2.0)  # x2
    out.start(3.0)
    out.unsent()  # the connection is not up yet: try again soon, no backoff
    assert out.due(3.0, 1.0) == pytest.approx(session.UNSENT_RETRY_S)
    assert out.tries == 2


@pytest.mark.parametrize("meta", [{"t": [1]}, {"t": {"a": 1}}, {"t": None}, {"t": b"init"}])
def test_a_handshake_type_of_the_wrong_type_is_refused_not_raised(meta):
    with pytest.raises(session.HandshakeError) as info:
        session.read(meta, {session.INIT})
    assert info.value.reason == session.BAD_HANDSHAKE


@pytest.mark.parametrize("nonce", [[1, 2], {"a": 1}, None, "n"])
def test_a_resp_whose_nonce_is_not_bytes_is_refused_not_raised(nonce):
    out, _ = _pair()
    out.start(0.0)
    with pytest.raises(session.HandshakeError):
        out.on_resp({"t": session.RESP, "e": bytes(range(32)), "n": nonce})
    assert out.stage is Stage.AWAIT_RESP


def test_a_held_back_confirm_of_an_earlier_attempt_cannot_replace_the_accepted_session():
    out, inb = _pair()
    resp1, _ = inb.on_init(out.start(0.0), route=b"r")
    nonce1 = next(iter(out.attempts))
    out.stage = Stage.AWAIT_RESP
    out.attempts = {nonce1: None}
    out.on_resp(resp1)
    held_back = out.agreed  # the attacker keeps this CONFIRM; the initiator's retry goes through
    out.stage = Stage.REFUSED  # (any stage a retry starts from)
    resp2, _ = inb.on_init(out.start(1.0), route=b"r")
    out.on_resp(resp2)
    current = inb.get(out.agreed.sid)
    inb.accept(current)
    assert inb.get(held_back.sid) is None  # the same process's other attempt went with the accept
    assert inb.accepted(out.agreed.sid) is current


def test_a_refused_initiator_retries_every_interval_without_backoff():
    out, inb = _pair()
    for t in range(6):
        resp, _ = inb.on_init(out.start(float(t)), route=b"r")
        out.on_resp(resp)
        out.on_verdict(session.REFUSE, out.agreed.sid, float(t))
        assert out.due(float(t), 1.0) == pytest.approx(1.0)
