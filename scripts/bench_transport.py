#!/usr/bin/env python
"""Transport throughput: p2pfl's full path against raw pyzmq, between two processes over TCP loopback.

For each model size, the sender (this process) streams float32 models to a receiver process and
the receiver answers each one with a small ack; at most WINDOW messages are in flight, as when a
node sends its model to its neighbours. Both paths use the same socket types and layout:

- p2pfl: `Transport.send` (encode + encrypt + send) -> `Transport.recv` (receive + authenticate +
  decrypt + decode into a numpy array); the ack is a HEARTBEAT back through the transports.
  Sessions are on (wire version 4): both transports agree them in the untimed warm-up (the
  receiver's `recv` answers the sender's handshake and the sender's `recv` the receiver's), so
  the timed runs seal under the session keys.
  Once per cipher: AES-256-GCM (the default where the CPU has it) and XChaCha20-Poly1305 (the
  portable fallback), both ends forced to it; and AES-256-GCM once more through pynacl's public
  bindings (the copying fallback used when `nacl._sodium` is missing).
- raw:   the same bytes as one frame, DEALER -> ROUTER, `copy=False`, `np.frombuffer` on arrival;
  the ack is a 1-byte frame back DEALER -> ROUTER.
- raw + CURVE: the raw path with CurveZMQ on both connections (the alternative of issue 17):
  each ROUTER a CURVE server with its node's X25519 key pair, each DEALER a CURVE client, and a
  ZAP handler (zmq.auth ThreadAuthenticator, configure_curve_callback) admitting only the
  cluster's public keys.

MB/s = payload bytes / time from the first send to the last ack; median of --repeats runs. All
paths of one model size are set up at once and take turns run by run (raw, CURVE, AES, XChaCha,
bindings, raw, ...), so load from elsewhere on the machine hits them alike.
Ratio = p2pfl (or raw + CURVE) MB/s / raw MB/s, all measured in the same invocation.
Overhead = (all frames of one p2pfl message - payload) / payload, counted after the handshake.
Session handshake: CPU time of the session work per neighbour (both roles, single process, median)
and wall time from `Transport.start()` to established with one neighbour in another process;
beside it, a fresh connection's connect-to-first-echo with and without CURVE + ZAP.
A micro table shows what each AEAD costs per byte with pynacl's public bindings (bytes in, bytes
out: copies) and with the zero-copy cffi path p2pfl uses, single process.

    .venv/bin/python scripts/bench_transport.py [--sizes 100000 1000000 10000000] [--repeats 5]
        [--handshake-reps 500] [--wall-reps 9]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WINDOW = 4  # messages in flight (below the transport's queue depth, so a send never fails)
TARGET_BYTES = 400 << 20  # per timed run: enough messages to dwarf start-up effects


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def messages_for(params: int) -> int:
    return max(8, TARGET_BYTES // (4 * params))


# -- p2pfl path --------------------------------------------------------------------------------


def _cluster(keys, ports):
    from p2pfl.channel import Peer

    return {i: Peer(f"tcp://127.0.0.1:{ports[i]}", keys[i][1]) for i in (0, 1)}


def _p2pfl_receiver(keys, ports, params, total, aead, cipher) -> None:
    from p2pfl import crypto, wire
    from p2pfl.messages import Kind, Message
    from p2pfl.transports.zeromq import ZmqTransport as Transport

    if aead == "bindings":
        crypto._lib = None
    t = Transport(1, keys[1][0], _cluster(keys, ports), [0], wire.Limits.for_model(params), cipher=cipher)
    t.start()
    ack = Message(Kind.HEARTBEAT, 1, 0)
    for _ in range(total):
        msg = t.recv(120)
        assert msg is not None and msg.tensors["delta"].size == params, "lost or short message"
        assert t.send(0, ack)
    t.recv(5)  # the sender's "done": keeps this socket open until the last ack has left
    t.close()


class P2pflPath:
    """A sender Transport here and a receiver Transport in another process, both with `cipher`.

    `aead` "cffi" is p2pfl's zero-copy path; "bindings" forces pynacl's public functions (with
    their copies) on both ends, as when `nacl._sodium` is missing.
    """

    def __init__(self, params: int, repeats: int, aead: str, cipher: str) -> None:
        from p2pfl import crypto, wire
        from p2pfl.messages import Kind, Message
        from p2pfl.transports.zeromq import ZmqTransport as Transport

        self.aead, self.n = aead, messages_for(params)
        keys = {i: crypto.generate_keypair() for i in (0, 1)}
        ports = {i: free_port() for i in (0, 1)}
        self.receiver = mp.get_context("spawn").Process(
            target=_p2pfl_receiver, args=(keys, ports, params, (self.n + WINDOW) * repeats + WINDOW, aead, cipher))
        self.receiver.start()
        self.t = Transport(0, keys[0][0], _cluster(keys, ports), [1], wire.Limits.for_model(params), cipher=cipher)
        self.t.start()
        self.msg = Message(Kind.MODEL, 0, 1, {"samples": 100},
                           {"delta": np.random.default_rng(0).random(params, np.float32)})
        self._warm_up()
        # the session handshake's steps count in bytes_sent: measure the overhead after it
        self._base = self.t.stats

    def _warm_up(self) -> None:
        """Untimed: wait until the receiver process is up (it is still importing at first) and
        both sessions are agreed (the first WINDOW messages wait in the transport for it; the
        receiver's recv answers our handshake, ours answers its)."""
        from p2pfl import crypto

        lib = crypto._lib
        if self.aead == "bindings":
            crypto._lib = None
        try:
            for _ in range(WINDOW):
                assert self.t.send(1, self.msg), "send refused"
            for _ in range(WINDOW):
                assert self.t.recv(120) is not None, "receiver did not start"
        finally:
            crypto._lib = lib

    def run(self) -> float:
        """One timed run: MB/s of payload."""
        from p2pfl import crypto

        lib = crypto._lib
        if self.aead == "bindings":
            crypto._lib = None
        try:
            t, in_flight = self.t, 0
            for i in range(self.n + WINDOW):
                if i == WINDOW:  # the first WINDOW messages warm the path up; time from here
                    start = time.perf_counter()
                if in_flight == WINDOW:
                    assert t.recv(120) is not None, "ack lost"
                    in_flight -= 1
                assert t.send(1, self.msg), "send refused"
                in_flight += 1
            for _ in range(in_flight):
                assert t.recv(120) is not None, "ack lost"
            return self.n * self.msg.payload_bytes() / (time.perf_counter() - start) / 1e6
        finally:
            crypto._lib = lib

    def overhead(self) -> int:
        """Bytes of one message on the wire beyond its tensor payload."""
        stats, base = self.t.stats, self._base
        sent = stats.messages_sent - base.messages_sent
        return (stats.bytes_sent - base.bytes_sent) // sent - self.msg.payload_bytes()

    def close(self) -> None:
        from p2pfl.messages import Kind, Message

        self.t.send(1, Message(Kind.HEARTBEAT, 0, 0))
        self.receiver.join(60)
        self.t.close()


# -- raw pyzmq path ----------------------------------------------------------------------------


class _Allowlist:
    """The ZAP handler's check: a CURVE client is let in only if its public key is a cluster member's."""

    def __init__(self, publics) -> None:
        import zmq

        self.allowed = {zmq.utils.z85.encode(k) for k in publics}

    def callback(self, domain: str, client_key: bytes) -> bool:  # pyzmq passes the key Z85-encoded
        return client_key in self.allowed


def _curve_server(ctx, sock, keys, me: int):
    """Make `sock` a CURVE server with node `me`'s cluster key pair, clients checked through ZAP
    against the cluster's public keys (a zmq.auth ThreadAuthenticator on `ctx`). Call before bind."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowlist(pub for _, pub in keys.values()))
    sock.curve_secretkey, sock.curve_publickey = keys[me]
    sock.curve_server = True
    return auth


def _curve_client(sock, keys, me: int, server: int) -> None:
    """Make `sock` a CURVE client with node `me`'s key pair, expecting node `server`'s public key."""
    sock.curve_secretkey, sock.curve_publickey = keys[me]
    sock.curve_serverkey = keys[server][1]


def _raw_receiver(ports, params, total, keys=None) -> None:
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    auth = _curve_server(ctx, router, keys, 1) if keys else None
    router.bind(f"tcp://127.0.0.1:{ports[1]}")
    back = ctx.socket(zmq.DEALER)
    if keys:
        _curve_client(back, keys, 1, 0)
    back.connect(f"tcp://127.0.0.1:{ports[0]}")
    for _ in range(total):
        frames = router.recv_multipart(copy=False)
        assert np.frombuffer(frames[1], np.float32).size == params
        back.send(b"a")
    router.recv_multipart()  # "done"
    if auth is not None:
        auth.stop()
    ctx.destroy(linger=0)


class RawPath:
    """The same payload as one frame, DEALER -> ROUTER in another process, 1-byte acks back.

    `curve`: both connections (data and acks) under CurveZMQ, each ROUTER a CURVE server with
    its node's cluster key pair and a ZAP handler admitting only the cluster's public keys, each
    DEALER a CURVE client with its node's key pair: what a transport on CURVE would do.
    """

    def __init__(self, params: int, repeats: int, curve: bool = False) -> None:
        import zmq

        from p2pfl import crypto

        ports = {i: free_port() for i in (0, 1)}
        keys = {i: crypto.generate_keypair() for i in (0, 1)} if curve else None  # X25519 = CURVE keys
        self.n = messages_for(params)
        self.receiver = mp.get_context("spawn").Process(
            target=_raw_receiver, args=(ports, params, (self.n + WINDOW) * repeats + WINDOW, keys))
        self.receiver.start()
        self.ctx = zmq.Context()
        self.acks = self.ctx.socket(zmq.ROUTER)
        self.auth = _curve_server(self.ctx, self.acks, keys, 0) if keys else None
        self.acks.bind(f"tcp://127.0.0.1:{ports[0]}")
        self.out = self.ctx.socket(zmq.DEALER)
        if keys:
            _curve_client(self.out, keys, 0, 1)
        self.out.connect(f"tcp://127.0.0.1:{ports[1]}")
        self.data = np.random.default_rng(0).random(params, np.float32)
        for _ in range(WINDOW):  # untimed: wait until the receiver process is up
            self.out.send(self.data, copy=False)
        for _ in range(WINDOW):
            assert self.acks.poll(120_000), "receiver did not start (or CURVE/ZAP refused us)"
            self.acks.recv_multipart()

    def run(self) -> float:
        in_flight = 0
        for i in range(self.n + WINDOW):
            if i == WINDOW:
                start = time.perf_counter()
            if in_flight == WINDOW:
                self.acks.recv_multipart()
                in_flight -= 1
            self.out.send(self.data, copy=False)
            in_flight += 1
        for _ in range(in_flight):
            self.acks.recv_multipart()
        return self.n * self.data.nbytes / (time.perf_counter() - start) / 1e6

    def close(self) -> None:
        self.out.send(b"done")
        self.receiver.join(60)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)


def measure(params: int, repeats: int, ciphers: list[str]) -> dict[str, Any]:
    """Median MB/s of every path for one model size; the paths take turns, run by run, so a
    burst of load from elsewhere on the machine hits all of them alike."""
    paths: dict[str, Any] = {"raw": RawPath(params, repeats), "curve": RawPath(params, repeats, curve=True)}
    for cipher in ciphers:
        paths[cipher] = P2pflPath(params, repeats, "cffi", cipher)
    paths["bindings"] = P2pflPath(params, repeats, "bindings", ciphers[0])
    rates: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(repeats):
            for name, path in paths.items():
                rates[name].append(path.run())
        result: dict[str, Any] = {name: statistics.median(r) for name, r in rates.items()}
        result["overhead"] = paths[ciphers[0]].overhead()
        return result
    finally:
        for path in paths.values():
            path.close()


# -- session handshake cost ---------------------------------------------------------------------


def handshake_cpu(reps: int) -> dict[str, float]:
    """Median CPU microseconds (this thread) of the session work for one neighbour, one process.

    Per neighbour a process plays both roles once: initiator of the session that seals what it
    sends (Outbound.start, Outbound.on_resp: 3 X25519 + derive) and responder to the neighbour's
    (Inbound.on_init: 3 X25519 + derive). One direction's complete handshake (both ends) is that
    same work, which is what is timed here. "+ wire" adds what the transport does around it:
    sealing and opening the 4 messages (INIT, RESP with the static key; CONFIRM, ACCEPT with
    the session key). "start" is Transport.start's per-neighbour key work (the session bind key,
    and our public key, recomputed per neighbour); the ephemeral key pair is made once per process.
    """
    from p2pfl import crypto, session, wire
    from p2pfl.messages import Kind, Message
    from p2pfl.session import Ephemeral, Identity, Inbound, Outbound

    (a, a_pub), (b, b_pub) = crypto.generate_keypair(), crypto.generate_keypair()
    pair = Identity(0, 1, a_pub, b_pub)
    bind = crypto.pairwise_key(a, 0, b_pub, 1, session.SESSION_CONTEXT)
    static_a = crypto.pairwise_key(a, 0, b_pub, 1, b"wire")
    static_b = crypto.pairwise_key(b, 1, a_pub, 0, b"wire")
    e_a, e_b = Ephemeral.generate(), Ephemeral.generate()
    limits = wire.Limits.for_model(1000)
    counter = [0]

    def ship(meta, frm, to, key, sid=b""):  # seal as the transport does, then read and open
        counter[0] += 1
        frames = wire.seal(Message(Kind.HANDSHAKE, frm, 0, meta=meta), to, counter[0], key, limits, session=sid)
        frames = [bytes(f) for f in frames]
        return wire.open_meta(wire.read_header(frames, limits), frames, key, limits)

    def roles(with_wire: bool) -> None:
        out = Outbound(pair, a, bind, e_a)
        inbound = Inbound(pair, b, bind, e_b)
        init = out.start(0.0)
        if with_wire:
            init = ship(init, 0, 1, static_a)
        resp, _ = inbound.on_init(init, b"route")
        if with_wire:
            resp = ship(resp, 1, 0, static_b)
        confirm = out.on_resp(resp)
        sid, key = out.agreed.sid, out.agreed.key
        if with_wire:
            ship(confirm, 0, 1, key, sid)
        proposed = inbound.get(sid)
        assert proposed is not None and proposed.agreed.key == key, "the two ends disagree"
        inbound.accept(proposed)
        if with_wire:
            ship({"t": session.ACCEPT}, 1, 0, key, sid)
        assert out.on_verdict(session.ACCEPT, sid, 0.0) and out.established

    def start_work() -> None:
        crypto.pairwise_key(a, 0, b_pub, 1, session.SESSION_CONTEXT)
        crypto.public_from_private(a)

    cases = {"both roles (session.py)": lambda: roles(False), "both roles + wire seal/open of the 4 messages":
             lambda: roles(True), "Transport.start per neighbour (bind key + own public key)": start_work,
             "ephemeral key pair (once per process)": Ephemeral.generate, "one X25519": lambda: crypto.x25519(a, b_pub)}
    result = {}
    for name, fn in cases.items():
        fn()
        times = []
        for _ in range(reps):
            t0 = time.thread_time_ns()
            fn()
            times.append(time.thread_time_ns() - t0)
        result[name] = statistics.median(times) / 1e3
    return result


def _session_peer(conn, keys) -> None:
    """The neighbour for handshake_wall: for each ports it is sent, start a Transport (node 1),
    queue a message for node 0 and serve until node 0's "done" comes; then close."""
    from p2pfl import wire
    from p2pfl.messages import Kind, Message
    from p2pfl.transports.zeromq import ZmqTransport as Transport

    while (ports := conn.recv()) is not None:
        t = Transport(1, keys[1][0], _cluster(keys, ports), [0], wire.Limits.for_model(1000))
        t.start()
        assert t.send(0, Message(Kind.HEARTBEAT, 1, 0))  # waits in the transport for our session
        conn.send("up")
        while t.recv(60) is None:
            pass
        t.close()
        conn.send("closed")


def handshake_wall(reps: int) -> tuple[list[float], list[float]]:
    """Wall ms from Transport.start() (node 0, here) to (a) its session to node 1 established
    and (b) node 1's first message received (node 1's session to us accepted, its queued message
    in), with node 1 already started in another process; fresh ports and processes' keys per try."""
    from p2pfl import crypto, wire
    from p2pfl.messages import Kind, Message
    from p2pfl.transports.zeromq import ZmqTransport as Transport

    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    keys = {i: crypto.generate_keypair() for i in (0, 1)}
    peer = ctx.Process(target=_session_peer, args=(there, keys))
    peer.start()
    out_ms, in_ms = [], []
    try:
        for _ in range(reps + 1):  # the first is a warm-up (imports, first connections)
            ports = {i: free_port() for i in (0, 1)}
            here.send(ports)
            assert here.poll(120) and here.recv() == "up"
            t = Transport(0, keys[0][0], _cluster(keys, ports), [1], wire.Limits.for_model(1000))
            t0 = time.perf_counter()
            t.start()
            t_out = t_in = None
            while t_out is None or t_in is None:
                msg = t.recv(0.001)
                now = time.perf_counter()
                if t_out is None and t.established(1):
                    t_out = now
                if msg is not None:
                    t_in = now
                assert now - t0 < 30, "no session within 30 s"
            assert t.send(1, Message(Kind.HEARTBEAT, 0, 0))
            assert here.poll(60) and here.recv() == "closed"
            t.close()
            out_ms.append((t_out - t0) * 1e3)
            in_ms.append((t_in - t0) * 1e3)
    finally:
        here.send(None)
        peer.join(30)
    return out_ms[1:], in_ms[1:]


def _echo_server(port_plain: int, port_curve: int, keys) -> None:
    import zmq

    ctx = zmq.Context()
    plain, curve = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    auth = _curve_server(ctx, curve, keys, 1)
    plain.bind(f"tcp://127.0.0.1:{port_plain}")
    curve.bind(f"tcp://127.0.0.1:{port_curve}")
    poller = zmq.Poller()
    poller.register(plain, zmq.POLLIN)
    poller.register(curve, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart()
            if frames[1] == b"stop":
                auth.stop()
                ctx.destroy(linger=0)
                return
            sock.send_multipart(frames)


def connect_wall(reps: int) -> dict[str, Any]:
    """Wall ms from a fresh DEALER's connect to its first echo back from a ROUTER in another
    process, plain and with CURVE + ZAP (what CURVE's handshake costs a new connection), and
    whether a client key outside the allowlist is kept out."""
    import zmq

    from p2pfl import crypto

    keys = {i: crypto.generate_keypair() for i in (0, 1)}
    ports = (free_port(), free_port())
    server = mp.get_context("spawn").Process(target=_echo_server, args=(*ports, keys))
    server.start()
    ctx = zmq.Context()
    result: dict[str, Any] = {}
    try:
        for name, port, curve in (("plain", ports[0], False), ("curve", ports[1], True)):
            times = []
            for _ in range(reps + 1):  # the first waits for the server process to be up
                sock = ctx.socket(zmq.DEALER)
                if curve:
                    _curve_client(sock, keys, 0, 1)
                t0 = time.perf_counter()
                sock.connect(f"tcp://127.0.0.1:{port}")
                sock.send(b"x")
                assert sock.poll(120_000), f"no echo ({name})"
                sock.recv()
                times.append((time.perf_counter() - t0) * 1e3)
                sock.close(linger=0)
            result[name] = times[1:]
        rogue = ctx.socket(zmq.DEALER)
        _curve_client(rogue, {0: crypto.generate_keypair(), 1: keys[1]}, 0, 1)  # right server, unlisted key
        rogue.connect(f"tcp://127.0.0.1:{ports[1]}")
        rogue.send(b"x")
        result["rogue_refused"] = not rogue.poll(1000)
        rogue.close(linger=0)
        stop = ctx.socket(zmq.DEALER)
        stop.connect(f"tcp://127.0.0.1:{ports[0]}")
        stop.send(b"stop")
        server.join(30)
        stop.close(linger=0)
    finally:
        ctx.destroy(linger=0)
        if server.is_alive():
            server.terminate()
    return result


# -- AEAD micro-benchmark ----------------------------------------------------------------------


def aead_micro(params: int, repeats: int, ciphers: list[str]) -> list[tuple[str, float]]:
    """MB/s of sealing/opening `params` float32 in 1 MiB chunks, per cipher and binding style."""
    import nacl.bindings as b

    from p2pfl import crypto

    data = np.random.default_rng(0).random(params, np.float32)
    flat = data.view(np.uint8)
    chunks = [flat[i:i + (1 << 20)] for i in range(0, flat.size, 1 << 20)]
    aad = bytes(64)

    def copy_only():
        return [bytes(c) for c in chunks]

    cases = [("bytes(memoryview) copy alone", copy_only)]
    for cipher in ciphers:
        aead = crypto.MessageAead(cipher, bytes(32), 1, 1, 1, 1)
        key, nonce = aead._key, aead.nonce(1)  # what p2pfl passes to libsodium for part 1
        name = {"aes256gcm": "crypto_aead_aes256gcm", "xchacha20poly1305": "crypto_aead_xchacha20poly1305_ietf"}[cipher]
        enc, dec = getattr(b, name + "_encrypt"), getattr(b, name + "_decrypt")
        sealed = [enc(bytes(c), aad, nonce, key) for c in chunks]

        def seal_bindings(enc=enc, key=key, nonce=nonce):
            return [enc(bytes(c), aad, nonce, key) for c in chunks]  # bytes(memoryview): a copy in

        def seal_cffi(aead=aead):
            # as wire.seal does: one output buffer per message, each sealed part a view of it
            out, pos, parts = np.empty(flat.size + len(chunks) * crypto.TAG_BYTES, np.uint8), 0, []
            for c in chunks:
                parts.append(aead.seal(1, c, aad, out[pos:pos + c.size + crypto.TAG_BYTES]))
                pos += c.size + crypto.TAG_BYTES
            return parts

        def open_bindings(dec=dec, key=key, nonce=nonce, sealed=sealed):
            out, pos = np.empty(flat.size, np.uint8), 0
            for s in sealed:
                plain = dec(s, aad, nonce, key)
                out[pos:pos + len(plain)] = np.frombuffer(plain, np.uint8)  # into the tensor: a copy out
                pos += len(plain)
            return out

        def open_cffi(aead=aead, sealed=sealed):
            out, pos = np.empty(flat.size, np.uint8), 0
            for s in sealed:
                size = len(s) - crypto.TAG_BYTES
                aead.unseal(1, s, aad, out[pos:pos + size])
                pos += size
            return out

        cases += [(f"{cipher} seal: pynacl bindings (bytes in, bytes out)", seal_bindings),
                  (f"{cipher} seal: cffi from/into buffers (p2pfl)", seal_cffi),
                  (f"{cipher} open: pynacl bindings + copy into tensor", open_bindings),
                  (f"{cipher} open: cffi straight into tensor (p2pfl)", open_cffi)]
    rows = []
    for name, fn in cases:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append((name, data.nbytes / statistics.median(times) / 1e6))
    return rows


# -- how parallel is this machine? --------------------------------------------------------------


def _aead_loop(cipher: str, seconds: float, start, out) -> None:
    from p2pfl import crypto

    data = np.random.default_rng(0).random(1 << 18, np.float32)  # 1 MiB: one p2pfl chunk
    aead = crypto.MessageAead(cipher, bytes(32), 1, 1, 1, 1)
    sealed = np.empty(data.nbytes + crypto.TAG_BYTES, np.uint8)
    start.wait()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        aead.seal(1, data, b"", sealed)
        n += 1
    out.put(n * data.nbytes / (time.perf_counter() - t0) / 1e6)


def parallel_check(cipher: str, seconds: float = 1.5) -> list[list[float]]:
    """MB/s of sealing 1 MiB parts in a loop, in 1 process and then in 2 processes at once.

    The end-to-end path needs two cipher loops at once (sender seals, receiver opens): if two
    processes get no more in total than one, the machine has about one core's throughput.
    """
    ctx = mp.get_context("spawn")
    result = []
    for n in (1, 2):
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_aead_loop, args=(cipher, seconds, start, out)) for _ in range(n)]
        for proc in procs:
            proc.start()
        time.sleep(1.0)  # let them import
        start.set()
        result.append(sorted(out.get() for _ in procs))
        for proc in procs:
            proc.join()
    return result


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--handshake-reps", type=int, default=500, help="repetitions of the handshake CPU timing")
    parser.add_argument("--wall-reps", type=int, default=9, help="repetitions of the handshake wall-time timings")
    args = parser.parse_args()

    import nacl
    import zmq

    from p2pfl import crypto

    aes = crypto.aes256gcm_available()
    ciphers = [crypto.AES256GCM, crypto.XCHACHA20POLY1305] if aes else [crypto.XCHACHA20POLY1305]
    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), pynacl {nacl.__version__}, numpy {np.__version__}")
    print(f"AES-256-GCM available: {aes}; Transport(cipher='auto') uses {crypto.choose_cipher('auto')}")
    print(f"window {WINDOW} messages in flight, ~{TARGET_BYTES >> 20} MiB per run, median of {args.repeats} runs\n")
    if aes:
        print("| params | payload | raw pyzmq MB/s | raw + CURVE MB/s | ratio | p2pfl AES-256-GCM MB/s | ratio "
              "| p2pfl XChaCha20-Poly1305 MB/s | ratio | AES-256-GCM via public pynacl bindings MB/s | overhead |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| params | payload | raw pyzmq MB/s | raw + CURVE MB/s | ratio | p2pfl XChaCha20-Poly1305 MB/s | ratio "
              "| XChaCha20-Poly1305 via public pynacl bindings MB/s | overhead |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    against_curve = []
    for params in args.sizes:
        m = measure(params, args.repeats, ciphers)
        raw, overhead = m["raw"], m["overhead"]
        cells = [f"{m[c]:,.0f} | {m[c] / raw:.2f}" for c in ciphers]
        print(f"| {params:,} | {4 * params / 1e6:.1f} MB | {raw:,.0f} | {m['curve']:,.0f} | {m['curve'] / raw:.2f} | "
              f"{' | '.join(cells)} | {m['bindings']:,.0f} | {overhead} B = {100 * overhead / (4 * params):.3f}% |",
              flush=True)
        against_curve.append(f"{params:,}: {m[ciphers[0]] / m['curve']:.2f}")
    print(f"\np2pfl {ciphers[0]} MB/s / raw + CURVE MB/s: {'; '.join(against_curve)}")

    def spread(ms: list[float]) -> str:
        return f"median {statistics.median(ms):.2f} ms (min {min(ms):.2f}, max {max(ms):.2f}, n={len(ms)})"

    print(f"\nSession handshake, CPU time of one thread, median of {args.handshake_reps} (microseconds):\n")
    print("| work | us |")
    print("|---|---:|")
    for name, us in handshake_cpu(args.handshake_reps).items():
        print(f"| {name} | {us:,.0f} |")
    out_ms, in_ms = handshake_wall(args.wall_reps)
    print("\nTransport.start() to established, one neighbour already up in another process, loopback:")
    print(f"  our session to it established: {spread(out_ms)}")
    print(f"  its first message to us received (its session to us accepted): {spread(in_ms)}")
    conn = connect_wall(args.wall_reps)
    print(f"Fresh DEALER connect to first echo from a ROUTER in another process: plain {spread(conn['plain'])}; "
          f"CURVE + ZAP {spread(conn['curve'])}; unlisted client key refused by ZAP: {conn['rogue_refused']}", flush=True)
    print(f"\nAEAD alone, {args.sizes[-1]:,} float32 in 1 MiB chunks, one process:\n")
    print("| operation | MB/s |")
    print("|---|---:|")
    for name, rate in aead_micro(args.sizes[-1], args.repeats, ciphers):
        print(f"| {name} | {rate:,.0f} |")
    one, two = parallel_check(ciphers[0])
    print(f"\nParallelism: {ciphers[0]} seal loop (1 MiB parts) in one process {one[0]:,.0f} MB/s; "
          f"in two processes at once {' + '.join(f'{r:,.0f}' for r in two)} = {sum(two):,.0f} MB/s")


if __name__ == "__main__":
    main()
