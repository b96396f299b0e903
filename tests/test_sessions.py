"""Sessions against an attacker: replays across restarts, a second process with one identity, bad handshakes.

Real ZeroMQ sockets on 127.0.0.1 and real keys; the attacker speaks the handshake by hand
(tests/helpers/handshake.py) or simply re-sends bytes it recorded. The same claims against
whole `p2pfl node` processes are in tests/test_side_doors.py.
"""

from __future__ import annotations

import time

import pytest
import zmq

from helpers.handshake import Initiator
from test_transport import (LIMITS, WAIT, RawPeer, assert_same, closed_and_seen, free_port, handshake,  # noqa: F401
                            make_cluster, model_msg)

from p2pfl import channel, session, wire
from p2pfl.channel import Peer
from p2pfl.messages import Kind, Message
from p2pfl.transports.zeromq import ZmqTransport as Transport


def restart(c, t: Transport) -> Transport:
    """Close `t` and start a new process of the same node at the same address (new ephemeral key)."""
    t.close()
    again = c.transport(t.node_id, start=False)
    deadline = time.monotonic() + WAIT
    while True:  # libzmq releases the closed listener asynchronously
        try:
            again.start()
            return again
        except zmq.ZMQError:
            assert time.monotonic() < deadline, "the old socket never released its port"
            time.sleep(0.01)


def test_a_recorded_session_replayed_at_a_restarted_receiver_is_refused_frame_by_frame(make_cluster):
    c = make_cluster(2)
    b = c.transport(1)
    raw = RawPeer(c, b)
    data = [raw.seal(model_msg(0, round_=r, seed=r)) for r in range(1, 4)]
    for frames in data:
        raw.send(frames)
        assert b.recv(WAIT) is not None  # genuine in their own session
    recording = [*raw.session.sent, *data]  # INIT, CONFIRM, three models: the whole session
    fresh = restart(c, b)
    replayer = c.raw(zmq.DEALER, c.peers[1].address)
    for frames in recording:
        replayer.send_multipart(frames)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert fresh.recv(0.05) is None  # nothing of it is ever delivered
    stats = fresh.stats
    assert stats.messages_received == 0 and stats.sessions_accepted == 0
    # the INIT only earns a RESP (and a pending slot); the CONFIRM and every model are counted
    assert stats.dropped == {"no_session": 1 + len(data)}


def test_frames_of_a_senders_earlier_process_are_refused_after_it_restarts(make_cluster):
    c = make_cluster(2)
    b = c.transport(1)
    raw = RawPeer(c, b)  # node 0's earlier process, played by hand
    old = raw.seal(model_msg(0, seed=1))
    raw.send(old)
    assert b.recv(WAIT) is not None
    closed_and_seen(b, lambda: raw.dealer.close(linger=0))  # that process is gone
    a = c.transport(0)
    handshake(a, b)  # node 0 again: a new process, a new session
    raw2 = c.raw(zmq.DEALER, c.peers[1].address)
    raw2.send_multipart(old)
    msg = model_msg(0, round_=2, seed=2)
    assert a.send(1, msg)
    assert_same(b.recv(WAIT), msg)
    assert b.stats.dropped == {"no_session": 1}


def test_a_restarted_receiver_gets_new_sessions_without_losing_later_messages(make_cluster):
    c = make_cluster(2)
    a, b = c.transport(0), c.transport(1)
    handshake(a, b)
    assert a.restarted() == set()  # a first session replaces nothing
    b2 = restart(c, b)
    handshake(a, b2)  # a learns of the restart from b2's own handshake and agrees anew
    assert a.restarted() == {1} and a.restarted() == set()  # told once: the round stops waiting for b's old process
    msg = model_msg(0, round_=2)
    assert a.send(1, msg)
    assert_same(b2.recv(WAIT), msg)
    assert b2.stats.dropped == {} and a.stats.dropped == {}


def test_a_second_live_process_with_the_same_identity_is_refused_and_the_first_keeps_its_session(
        make_cluster, monkeypatch, caplog):
    monkeypatch.setattr(channel, "DUPLICATE_GRACE_S", 1.5)
    c = make_cluster(2)
    real, b = c.transport(0), c.transport(1)
    handshake(real, b)
    # the same key file, started on another port (its own cluster file says so)
    impostor = c.transport(0, peers={**c.peers, 0: Peer(f"tcp://127.0.0.1:{free_port()}", c.peers[0].public_key)})
    assert impostor.send(1, Message(Kind.MODEL, 0, 7, {"impostor": True}))
    refused = None
    deadline = time.monotonic() + WAIT
    with caplog.at_level("ERROR", logger="p2pfl.transport"):
        while refused is None:
            assert time.monotonic() < deadline, "the impostor was never told to stop"
            assert b.recv(0.01) is None  # nothing of the impostor's is ever delivered
            real.recv(0.01)
            try:
                impostor.recv(0.01)
            except session.DuplicateIdentity as exc:
                refused = exc
    assert "another live process already runs as node 0" in str(refused)
    assert not impostor.established(1)
    assert b.stats.dropped.get("duplicate_identity", 0) >= 1  # refused, counted ...
    assert real.stats.dropped.get("duplicate_identity", 0) >= 1  # ... and the real node was told
    assert any("refused a second live process presenting node 0" in r.message for r in caplog.records)
    assert any("another process presented this node's identity" in r.message for r in caplog.records)
    msg = model_msg(0, round_=8)
    assert real.send(1, msg)  # the real node was never displaced
    assert_same(b.recv(WAIT), msg)
    assert b.stats.sessions_accepted == 1
    assert b.restarted() == set()  # a refused impostor is no restart: the real node's round is not cut short


@pytest.mark.parametrize("bad", ["low_order", "short", "no_nonce", "type_a_list", "nonce_a_map"])
def test_a_malformed_init_is_dropped_and_counted(make_cluster, bad):
    c = make_cluster(2)
    b = c.transport(1)
    init = Initiator(0, c.keys[0][0], 1, c.peers[1].public_key, LIMITS)
    meta = init.out.start(time.monotonic())
    if bad == "low_order":
        meta["e"] = bytes(32)  # X25519 refuses it: the shared secret would be all zeros
    elif bad == "short":
        meta["e"] = meta["e"][:31]
    elif bad == "type_a_list":  # unhashable where a str belongs: must be refused, not raise TypeError
        meta["t"] = [1]
    elif bad == "nonce_a_map":
        meta["n"] = {"a": 1}
    else:
        del meta["n"]
    frames = wire.seal(Message(Kind.HANDSHAKE, 0, 0, meta=meta), 1, init.counter(), init.static, LIMITS)
    raw = c.raw(zmq.DEALER, c.peers[1].address)
    raw.send_multipart(frames)
    good = RawPeer(c, b)  # the service goes on
    m = model_msg(0)
    good.send(good.seal(m))
    assert_same(b.recv(WAIT), m)
    assert b.stats.dropped == {"bad_handshake": 1}
    assert not raw.poll(100)  # and it earned no answer
