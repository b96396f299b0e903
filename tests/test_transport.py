"""transport: real ZeroMQ sockets on 127.0.0.1 and real crypto; no mocks, no timing luck.

Attack frames are sent from a raw DEALER that holds node 0's private key, so the test can
seal exactly what it wants; a good message sent after them on the same connection arrives
after them (ZeroMQ keeps the order of one connection), so one `recv` call must skip the bad
frames and return the good one.
"""

from __future__ import annotations

from typing import Callable

import socket
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from p2pfl import crypto, wire
from p2pfl.messages import Kind, Message
from helpers.handshake import Initiator

from p2pfl import session
from p2pfl.channel import KEY_CONTEXT, Peer, Sent
from p2pfl.transports.zeromq import (CONNECT_TIMEOUT_MS, QUEUE_DEPTH, RECONNECT_IVL_MS, RECONNECT_TIMEOUT_MIN_MS,
                                     ZmqTransport as Transport, bound_router, reconnect_timeout_ms)

LIMITS = wire.Limits.for_model(100_000)
WAIT = 10.0  # generous: only a broken transport ever waits this long
needs_aes = pytest.mark.skipif(not crypto.aes256gcm_available(), reason="no AES-256-GCM on this CPU")
CIPHERS = [crypto.XCHACHA20POLY1305, pytest.param(crypto.AES256GCM, marks=needs_aes)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Ids, keys and addresses of n nodes; transports made on demand, all closed at the end."""

    def __init__(self, n: int, context: zmq.Context) -> None:
        self.context = context
        self.keys = {i: crypto.generate_keypair() for i in range(n)}
        self.peers = {i: Peer(f"tcp://127.0.0.1:{free_port()}", self.keys[i][1]) for i in range(n)}
        self.opened: list[Transport] = []
        self.sockets: list[zmq.Socket] = []

    def transport(self, i: int, neighbours=None, peers=None, start: bool = True, cipher: str = "auto") -> Transport:
        neighbours = [j for j in self.peers if j != i] if neighbours is None else neighbours
        t = Transport(i, self.keys[i][0], peers or self.peers, neighbours, LIMITS, self.context, cipher=cipher)
        self.opened.append(t)
        if start:
            t.start()
        return t

    def key(self, a: int, b: int, private: bytes | None = None) -> bytes:
        return crypto.pairwise_key(private or self.keys[a][0], a, self.peers[b].public_key, b, KEY_CONTEXT)

    def raw(self, kind: int, address: str) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.ROUTER:
            sock.bind(address)
        else:
            sock.connect(address)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for t in self.opened:
            t.close()
        for s in self.sockets:
            s.close(linger=0)


@pytest.fixture
def make_cluster():
    context = zmq.Context()
    clusters: list[Cluster] = []

    def make(n: int) -> Cluster:
        clusters.append(Cluster(n, context))
        return clusters[-1]

    yield make
    for c in clusters:
        c.close()
    # LINGER 0 everywhere: terminating the context must not wait for queued messages
    done = threading.Thread(target=context.term, daemon=True)
    done.start()
    done.join(WAIT)
    assert not done.is_alive(), "context.term() hung: a socket was left open or lingering"


def model_msg(sender: int, round_: int = 1, seed: int = 0, n: int = 100_000) -> Message:
    data = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    return Message(Kind.MODEL, sender, round_, {"samples": 7}, {"delta": data})


def assert_same(got: Message | None, sent: Message) -> None:
    assert got is not None, "no message arrived"
    assert (got.kind, got.sender, got.round, got.meta) == (sent.kind, sent.sender, sent.round, sent.meta)
    assert got.tensors.keys() == sent.tensors.keys()
    for name in sent.tensors:
        assert got.tensors[name].dtype == sent.tensors[name].dtype
        assert np.array_equal(got.tensors[name], sent.tensors[name])


def handshake(*transports: Transport, timeout: float = WAIT) -> dict[int, list[Message]]:
    """Pump every transport (as their nodes would) until all sessions among them are agreed.

    A session needs both ends receiving; a test that calls one transport's recv at a time must
    agree sessions first. Returns what each transport received meanwhile, by node id.
    """
    got: dict[int, list[Message]] = {t.node_id: [] for t in transports}
    ids = {t.node_id for t in transports}
    deadline = time.monotonic() + timeout
    while not all(t.established(j) for t in transports for j in ids if j != t.node_id and j in t.neighbours):
        assert time.monotonic() < deadline, "sessions not agreed in time"
        for t in transports:
            msg = t.recv(0.005)
            if msg is not None:
                got[t.node_id].append(msg)
    return got


def closed_and_seen(receiver: Transport, close: Callable[[], None]) -> None:
    """Run `close` (of a connection to `receiver`) and wait until receiver's libzmq has seen it go.

    A restart in real life takes seconds; in a test it can take less than libzmq's noticing the
    old connection's end, and the receiver would then (rightly) take the new process for a second
    live one. Waiting for the disconnect event keeps the test about restarts, not about that race.
    """
    monitor = receiver._router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        close()
        assert monitor.poll(int(WAIT * 1000)), "the receiver never saw the connection close"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        receiver._router.disable_monitor()
        monitor.close(linger=0)


class RawPeer:
    """Node `sender` played by hand on a raw DEALER to `victim`, with a session agreed as a Transport would."""

    def __init__(self, c: Cluster, victim: Transport, sender: int = 0) -> None:
        self.dealer = c.raw(zmq.DEALER, c.peers[victim.node_id].address)
        self.session = Initiator(sender, c.keys[sender][0], victim.node_id, c.peers[victim.node_id].public_key, LIMITS)
        self.session.agree(self.dealer, pump=lambda: victim.recv(0))

    def seal(self, msg: Message, **changes) -> list[bytes]:
        return self.session.seal(msg, **changes)

    def send(self, frames: list) -> None:
        self.dealer.send_multipart(frames)


# -- delivery --------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", CIPHERS)
def test_two_transports_exchange_messages_intact(make_cluster, cipher):
    c = make_cluster(2)
    a, b = c.transport(0, cipher=cipher), c.transport(1, cipher=cipher)
    assert a.cipher == b.cipher == cipher
    assert handshake(a, b) == {0: [], 1: []}
    to_b, to_a = model_msg(0, seed=1), model_msg(1, seed=2)
    assert a.send(1, to_b) and b.send(0, to_a)
    assert_same(b.recv(WAIT), to_b)
    assert_same(a.recv(WAIT), to_a)
    assert a.stats.messages_sent == 1 and b.stats.messages_received == 1
    assert b.stats.bytes_received == a.stats.bytes_sent
    overhead = a.stats.bytes_sent - to_b.payload_bytes()  # the handshake's bytes included
    assert 0 < overhead < 0.01 * to_b.payload_bytes()
    assert a.stats.dropped == b.stats.dropped == {}


def test_auto_is_aes_gcm_where_available_and_mixed_ciphers_interoperate(make_cluster):
    c = make_cluster(2)
    a, b = c.transport(0), c.transport(1, cipher="xchacha20poly1305")  # b sends with the fallback
    handshake(a, b)
    assert a.cipher == crypto.choose_cipher("auto")
    assert b.cipher == crypto.XCHACHA20POLY1305
    to_b, to_a = model_msg(0, seed=1), model_msg(1, seed=2)
    assert a.send(1, to_b) and b.send(0, to_a)
    assert_same(b.recv(WAIT), to_b)  # a receiver opens whichever cipher the header names
    assert_same(a.recv(WAIT), to_a)
    assert a.stats.dropped == b.stats.dropped == {}


def test_cipher_argument_is_checked(make_cluster, monkeypatch):
    c = make_cluster(2)
    with pytest.raises(ValueError, match="unknown cipher"):
        c.transport(0, cipher="aes128gcm", start=False)
    monkeypatch.setattr(crypto, "aes256gcm_available", lambda: False)  # a CPU without AES-NI
    with pytest.raises(ValueError, match="not available"):
        c.transport(0, cipher="aes256gcm", start=False)
    assert c.transport(0, start=False).cipher == crypto.XCHACHA20POLY1305


def test_three_transports_all_to_all(make_cluster):
    c = make_cluster(3)
    ts = [c.transport(i) for i in range(3)]
    handshake(*ts)
    sent = {}
    for i, t in enumerate(ts):
        for j in range(3):
            if j != i:
                sent[(i, j)] = model_msg(i, round_=i + 1, seed=10 * i + j)
                assert t.send(j, sent[(i, j)])
    for j, t in enumerate(ts):
        got = [t.recv(WAIT) for _ in range(2)]
        assert sorted(m.sender for m in got) == sorted(i for i in range(3) if i != j)
        for m in got:
            assert_same(m, sent[(m.sender, j)])
        assert t.recv(0) is None


def test_recv_times_out_with_none(make_cluster):
    c = make_cluster(2)
    a = c.transport(0)
    assert a.recv(0.05) is None
    assert a.recv(0) is None


def test_messages_sent_before_the_neighbour_starts_are_delivered(make_cluster):
    c = make_cluster(2)
    a = c.transport(0)
    hello = Message(Kind.HEARTBEAT, 0, 0)
    assert a.send(1, hello)  # kept until the session is agreed
    assert a.stats.messages_sent == 0
    b = c.transport(1)  # starts later, like a node still importing torch
    got = handshake(a, b)
    assert len(got[1]) == 1 and got[0] == []
    assert_same(got[1][0], hello)
    assert a.stats.dropped == b.stats.dropped == {}


def test_a_restarted_sender_is_not_taken_for_a_replay(make_cluster):
    c = make_cluster(2)
    b = c.transport(1)
    first = c.transport(0)
    handshake(b, first)
    assert first.send(1, model_msg(0, seed=1))
    assert b.recv(WAIT) is not None
    closed_and_seen(b, first.close)
    again = c.transport(0, start=False)  # same id, key and address: counters start from the clock again
    deadline = time.monotonic() + WAIT
    while True:  # libzmq releases the closed listener asynchronously: wait until the port is free
        try:
            again.start()
            break
        except zmq.ZMQError:
            assert time.monotonic() < deadline, "the old socket never released its port"
            time.sleep(0.01)
    handshake(b, again)  # b sees the earlier process's connection gone: a restart, not a duplicate
    msg = model_msg(0, round_=2, seed=2)
    assert again.send(1, msg)
    assert_same(b.recv(WAIT), msg)
    assert b.stats.dropped == {}
    assert b.stats.sessions_accepted == 2


# -- drops: each counted with its reason, the good message after it still delivered --------


def inject_then_good(raw: RawPeer, victim: Transport, bad: list[list]) -> Message:
    """Send `bad` frame sets then a good message from node 0 on its session's connection to `victim`."""
    for frames in bad:
        raw.send(frames)
    good = model_msg(0, round_=3, seed=5)
    raw.send(raw.seal(good))
    got = victim.recv(WAIT)
    assert_same(got, good)
    return good


@pytest.mark.parametrize("cipher", CIPHERS)
def test_tampered_frame_dropped_counted_and_logged(make_cluster, caplog, cipher):
    c = make_cluster(2)
    b = c.transport(1)
    raw = RawPeer(c, b)
    frames = raw.seal(model_msg(0), cipher=cipher)
    frames[2] = frames[2][:100] + bytes([frames[2][100] ^ 1]) + frames[2][101:]
    with caplog.at_level("WARNING", logger="p2pfl.transport"):
        inject_then_good(raw, b, [frames])
    assert b.stats.dropped == {"tampered": 1}
    assert any("tampered" in r.message and "from node 0" in r.message for r in caplog.records)


def test_forged_sender_with_a_key_not_in_the_cluster_dropped(make_cluster):
    c = make_cluster(3)
    b = c.transport(1, neighbours=[0])  # node 2 is in the cluster but not a neighbour
    raw = RawPeer(c, b)
    outsider_private, _ = crypto.generate_keypair()
    stranger = raw.seal(model_msg(7), key=c.key(0, 1, private=outsider_private))  # id 7: nobody
    not_neighbour = raw.seal(model_msg(2), key=c.key(2, 1))
    impostor = raw.seal(model_msg(0), key=c.key(0, 1, private=outsider_private))  # 0's session, not 0's key
    static = raw.seal(model_msg(0), key=c.key(0, 1), sid=b"")  # 0's static key, but no session
    inject_then_good(raw, b, [stranger, not_neighbour, impostor, static])
    assert b.stats.dropped == {"unknown_peer": 2, "tampered": 1, "no_session": 1}


@needs_aes
def test_cipher_this_machine_cannot_run_or_unknown_id_dropped(make_cluster, monkeypatch, caplog):
    c = make_cluster(2)
    b = c.transport(1)
    raw = RawPeer(c, b)
    aes = raw.seal(model_msg(0), cipher=crypto.AES256GCM)
    fields = msgpack.unpackb(bytes(aes[0]))
    fields[9] = 9  # a cipher id this version does not know
    unknown = [msgpack.packb(fields), *aes[1:]]
    monkeypatch.setattr(crypto, "aes256gcm_available", lambda: False)  # now b cannot run AES-GCM
    with caplog.at_level("WARNING", logger="p2pfl.transport"):
        raw.send(aes)
        raw.send(unknown)
        good = model_msg(0, round_=3, seed=5)
        raw.send(raw.seal(good, cipher=crypto.XCHACHA20POLY1305))
        assert_same(b.recv(WAIT), good)
    assert b.stats.dropped == {"bad_cipher": 1, "bad_header": 1}
    assert any("bad_cipher" in r.message and "xchacha20poly1305" in r.message for r in caplog.records)
    assert any("unknown cipher id 9" in r.message for r in caplog.records)


def test_frame_addressed_to_someone_else_dropped(make_cluster):
    c = make_cluster(3)
    b = c.transport(1)
    raw = RawPeer(c, b)
    inject_then_good(raw, b, [raw.seal(model_msg(0), recipient=2)])
    assert b.stats.dropped == {"wrong_recipient": 1}


def test_garbage_frames_dropped_and_counted_in_bytes(make_cluster):
    c = make_cluster(2)
    b = c.transport(1)
    raw = RawPeer(c, b)
    garbage = [[b"garbage"], [b"\xc1" * 50, b"x"], [b"\x92\x01", b"", b""]]
    inject_then_good(raw, b, garbage)
    assert b.stats.dropped == {"bad_header": 2, "truncated": 1}
    assert b.stats.messages_received == 1
    assert b.stats.bytes_received > sum(len(f) for fs in garbage for f in fs) + 400_000


@pytest.mark.parametrize("cipher", CIPHERS)
def test_replayed_frames_dropped(make_cluster, cipher):
    c = make_cluster(2)
    b = c.transport(1)
    raw = RawPeer(c, b)
    sent = [model_msg(0, seed=i) for i in range(3)]
    captured = [raw.seal(m, cipher=cipher) for m in sent]  # genuine frames of one session, in order
    raw.send(captured[0])
    assert_same(b.recv(WAIT), sent[0])  # accepted once
    raw.send(captured[0])  # the same again
    raw.send(captured[1])
    assert_same(b.recv(WAIT), sent[1])
    raw.send(captured[0])  # older ones after a newer one
    raw.send(captured[1])
    raw.send(captured[2])  # same connection: arrives after the replays
    assert_same(b.recv(WAIT), sent[2])
    assert b.stats.dropped == {"replay": 3}


def test_oversized_frame_refused_by_libzmq_then_service_goes_on(make_cluster):
    c = make_cluster(2)
    b = c.transport(1)
    raw = c.raw(zmq.DEALER, c.peers[1].address)
    raw.send_multipart([b"x" * (LIMITS.max_frame_bytes + 1)])  # libzmq closes that connection
    a = c.transport(0)
    handshake(a, b)
    good = model_msg(0)
    assert a.send(1, good)
    assert_same(b.recv(WAIT), good)
    assert b.stats.bytes_received < LIMITS.max_frame_bytes  # never reached the application


def test_node_counts_its_own_drops_in_the_same_table(make_cluster):
    c = make_cluster(2)
    a = c.transport(0)
    a.count_drop("stale_round")
    a.count_drop("stale_round")
    snapshot = a.stats
    a.count_drop("wrong_round")
    assert snapshot.dropped == {"stale_round": 2}
    assert a.stats.dropped == {"stale_round": 2, "wrong_round": 1}


# -- sending never blocks --------------------------------------------------------------------


def test_send_to_a_neighbour_that_is_not_running_never_blocks(make_cluster):
    c = make_cluster(2)
    a = c.transport(0)  # node 1 never starts: no session, so messages wait for one, the newest kept
    results = [a.send(1, model_msg(0, round_=r, n=1000)) for r in range(10 * QUEUE_DEPTH)]
    assert all(results)
    pushed_out = len(results) - session.MAX_QUEUED
    assert a.stats.dropped == {"send_queue_full": pushed_out}
    assert a.stats.messages_sent == 0
    b = c.transport(1)  # when it does start, it gets the newest MAX_QUEUED, in order
    got = handshake(a, b)[1]
    while len(got) < session.MAX_QUEUED and (m := b.recv(WAIT)) is not None:
        got.append(m)
    assert [m.round for m in got] == list(range(pushed_out, len(results)))


def test_send_to_a_dead_neighbour_with_a_session_never_blocks(make_cluster):
    c = make_cluster(2)
    a, b = c.transport(0), c.transport(1)
    handshake(a, b)
    # Until a's I/O thread has read b's close, what a sends goes into the kernel's socket
    # buffers (hundreds of KiB), not the queue; the bound below is about the queue, so the test
    # waits for libzmq to report the disconnect instead of racing it.
    monitor = a._dealers[1].get_monitor_socket(zmq.EVENT_DISCONNECTED)
    b.close()  # the session stays agreed on a's side; its connection is gone
    assert monitor.poll(WAIT * 1000), "a's connection to the closed node was never reported gone"
    a._dealers[1].disable_monitor()
    monitor.close(linger=0)
    results = [a.send(1, model_msg(0, n=1000)) for _ in range(10 * QUEUE_DEPTH)]
    assert not results[-1]
    refused = results.count(False)
    assert results == [True] * (len(results) - refused) + [False] * refused  # failing stays failing
    assert len(results) - refused <= QUEUE_DEPTH  # never more than a queue's worth for a dead process
    assert a.stats.dropped == {"send_queue_full": refused}
    assert a.stats.messages_sent == len(results) - refused


class BrokenDealer:
    """Stands in for a DEALER that has room but whose sends fail with `errno`."""

    def __init__(self, errno: int) -> None:
        self.errno = errno

    def getsockopt(self, option: int) -> int:
        return zmq.POLLOUT

    def send_multipart(self, frames, flags: int = 0, copy: bool = True) -> None:
        raise zmq.Again() if self.errno == zmq.EAGAIN else zmq.ZMQError(self.errno)


@pytest.mark.parametrize("errno, sent, reason", [
    (zmq.EAGAIN, Sent.FULL, "send_queue_full"),  # a full queue: congestion
    (zmq.EHOSTUNREACH, Sent.GONE, "send_queue_full"),  # (on a DEALER it cannot happen; counted as before)
    (zmq.ENOTSOCK, Sent.FAILED, "send_failed"),  # a socket closed under us: not congestion
    (zmq.ETERM, Sent.FAILED, "send_failed"),  # the context terminated under us
])
def test_a_send_that_zeromq_refuses_is_counted_under_its_own_reason(make_cluster, caplog, errno, sent, reason):
    c = make_cluster(2)
    a, b = c.transport(0), c.transport(1)
    handshake(a, b)
    dealer, a._dealers[1] = a._dealers[1], BrokenDealer(errno)
    try:
        with caplog.at_level("WARNING", logger="p2pfl.transport"):
            assert a.send_out(1, [b"x"]) is sent
            assert a.send(1, model_msg(0, n=10)) is False  # the node keeps running: no exception
    finally:
        a._dealers[1] = dealer
    failed = 2 if sent is Sent.FAILED else 1  # the transport counts FAILED itself, send_out's too
    assert a.stats.dropped == {reason: failed} and a.stats.messages_sent == 0
    if sent is Sent.FAILED:
        assert any("send_failed" in r.getMessage() and f"errno {errno}" in r.getMessage() for r in caplog.records)
    msg = model_msg(0, n=10)
    assert a.send(1, msg)  # the real socket again
    assert_same(b.recv(WAIT), msg)


def test_programming_errors_raise(make_cluster):
    c = make_cluster(3)
    a = c.transport(0, neighbours=[1])
    with pytest.raises(ValueError, match="not a neighbour"):
        a.send(2, model_msg(0))
    with pytest.raises(ValueError, match="message from node 1"):
        a.send(1, model_msg(1))
    with pytest.raises(ValueError, match="does not belong"):
        Transport(0, c.keys[1][0], c.peers, [1], LIMITS, c.context)
    with pytest.raises(ValueError, match="not in the peer table"):
        Transport(0, c.keys[0][0], c.peers, [5], LIMITS, c.context)
    a.close()
    a.close()  # twice is fine
    with pytest.raises(RuntimeError):
        a.recv(0)


def cut_inbound(t: Transport) -> None:
    """Close `t`'s ROUTER: every connection to it goes, its process and sessions stay (a link cut)."""
    assert t._router is not None
    t._poller.unregister(t._router)
    t._router.close(linger=0)
    t._router = None


def heal_inbound(t: Transport) -> None:
    """Listen at `t`'s address again (libzmq frees a closed socket's port asynchronously: retry)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            t._router = bound_router(t._context, t._address, QUEUE_DEPTH, LIMITS.max_frame_bytes)
            break
        except zmq.ZMQError:
            assert time.monotonic() < deadline, f"could not bind {t._address} again"
            time.sleep(0.05)
    t._poller.register(t._router, zmq.POLLIN)


@pytest.mark.parametrize("discard", [False, True])
def test_what_waits_for_a_cut_link_is_sent_after_the_heal_unless_discarded(make_cluster, discard):
    """A link cut while its process lives on (a partition): libzmq keeps what we send it and sends
    it, oldest first, once the link is back. A node that marked the neighbour down discards that
    backlog (`discard_queued`), and the session carries on over the new connection."""
    c = make_cluster(2)
    a, b = c.transport(0), c.transport(1)
    handshake(a, b)
    monitor = a._dealers[1].get_monitor_socket(zmq.EVENT_DISCONNECTED)
    cut_inbound(b)
    assert monitor.poll(WAIT * 1000), "a's connection was never reported gone"
    a._dealers[1].disable_monitor()
    monitor.close(linger=0)
    assert all(a.send(1, model_msg(0, round_=r, n=1000)) for r in (1, 2, 3))  # queued for the link
    if discard:
        a.discard_queued(1)
        # the new link's attempts are paced by the handshake's round trip (loopback: the floor)
        assert 0 < a._channels.rtt[1] < WAIT
        assert a._dealers[1].getsockopt(zmq.CONNECT_TIMEOUT) == reconnect_timeout_ms(a._channels.rtt[1])
        assert a._dealers[1].getsockopt(zmq.RECONNECT_IVL) == RECONNECT_IVL_MS
    fresh = model_msg(0, round_=4, n=1000)
    assert a.send(1, fresh)
    heal_inbound(b)
    got: list[Message] = []
    while not got or got[-1].round != 4:
        msg = b.recv(WAIT)
        assert msg is not None, f"round 4 never arrived (got rounds {[m.round for m in got]})"
        got.append(msg)
    assert [m.round for m in got] == ([4] if discard else [1, 2, 3, 4])
    assert_same(got[-1], fresh)
    assert b.stats.dropped == {}  # nothing refused: the same session, a new connection


def test_reconnect_attempts_follow_the_handshake_round_trip_within_bounds():
    assert reconnect_timeout_ms(None) == CONNECT_TIMEOUT_MS  # never agreed: the first connect's timeout
    assert reconnect_timeout_ms(0.0005) == RECONNECT_TIMEOUT_MIN_MS  # a LAN
    assert reconnect_timeout_ms(0.05) == 500  # 10 round trips
    assert reconnect_timeout_ms(0.3) == CONNECT_TIMEOUT_MS  # never longer than the first connect's
