#!/usr/bin/env python
"""Transport throughput: p2pfl's full path against raw pyzmq, between two processes over TCP loopback.

For each model size, the sender (this process) streams float32 models to a receiver process and
the receiver answers each one with a small ack; at most WINDOW messages are in flight, as when a
node sends its model to its neighbours. Both paths use the same socket types and layout:

- p2pfl: `Transport.send` (encode + encrypt + send) -> `Transport.recv` (receive + authenticate +
  decrypt + decode into a numpy array); the ack is a HEARTBEAT back through the transports.
- raw:   the same bytes as one frame, DEALER -> ROUTER, `copy=False`, `np.frombuffer` on arrival;
  the ack is a 1-byte frame back DEALER -> ROUTER.

MB/s = payload bytes / time from the first send to the last ack; median of --repeats runs.
Overhead = (all frames of one p2pfl message - payload) / payload.
A micro table shows what the AEAD costs per byte with pynacl's public bindings (bytes in, bytes
out: copies) and with the zero-copy cffi path p2pfl uses, single process.

    .venv/bin/python scripts/bench_transport.py [--sizes 100000 1000000 10000000] [--repeats 5]
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
    from p2pfl.transport import Peer

    return {i: Peer(f"tcp://127.0.0.1:{ports[i]}", keys[i][1]) for i in (0, 1)}


def _p2pfl_receiver(keys, ports, params, total, aead) -> None:
    from p2pfl import crypto, wire
    from p2pfl.messages import Kind, Message
    from p2pfl.transport import Transport

    if aead == "bindings":
        crypto._lib = None
    t = Transport(1, keys[1][0], _cluster(keys, ports), [0], wire.Limits.for_model(params))
    t.start()
    ack = Message(Kind.HEARTBEAT, 1, 0)
    for _ in range(total):
        msg = t.recv(60)
        assert msg is not None and msg.tensors["delta"].size == params, "lost or short message"
        assert t.send(0, ack)
    t.recv(5)  # the sender's "done": keeps this socket open until the last ack has left
    t.close()


def run_p2pfl(params: int, repeats: int, aead: str) -> tuple[list[float], int]:
    from p2pfl import crypto, wire
    from p2pfl.messages import Kind, Message
    from p2pfl.transport import Transport

    if aead == "bindings":
        crypto._lib = None
    keys = {i: crypto.generate_keypair() for i in (0, 1)}
    ports = {i: free_port() for i in (0, 1)}
    n = messages_for(params)
    receiver = mp.get_context("spawn").Process(
        target=_p2pfl_receiver, args=(keys, ports, params, (n + WINDOW) * repeats, aead))
    receiver.start()
    t = Transport(0, keys[0][0], _cluster(keys, ports), [1], wire.Limits.for_model(params))
    t.start()
    msg = Message(Kind.MODEL, 0, 1, {"samples": 100}, {"delta": np.random.default_rng(0).random(params, np.float32)})
    rates = []
    for _ in range(repeats):
        in_flight = 0
        for i in range(n + WINDOW):
            if i == WINDOW:  # the first WINDOW messages warm the path up; time from here
                start = time.perf_counter()
            if in_flight == WINDOW:
                assert t.recv(60) is not None, "ack lost"
                in_flight -= 1
            assert t.send(1, msg), "send refused"
            in_flight += 1
        for _ in range(in_flight):
            assert t.recv(60) is not None, "ack lost"
        rates.append(n * msg.payload_bytes() / (time.perf_counter() - start) / 1e6)
    bytes_per_msg = t.stats.bytes_sent // t.stats.messages_sent
    t.send(1, Message(Kind.HEARTBEAT, 0, 0))
    receiver.join(60)
    t.close()
    return rates, bytes_per_msg - msg.payload_bytes()


# -- raw pyzmq path ----------------------------------------------------------------------------


def _raw_receiver(ports, params, total) -> None:
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{ports[1]}")
    back = ctx.socket(zmq.DEALER)
    back.connect(f"tcp://127.0.0.1:{ports[0]}")
    for _ in range(total):
        frames = router.recv_multipart(copy=False)
        assert np.frombuffer(frames[1], np.float32).size == params
        back.send(b"a")
    router.recv_multipart()  # "done"
    ctx.destroy(linger=0)


def run_raw(params: int, repeats: int) -> list[float]:
    import zmq

    ports = {i: free_port() for i in (0, 1)}
    n = messages_for(params)
    receiver = mp.get_context("spawn").Process(target=_raw_receiver, args=(ports, params, (n + WINDOW) * repeats))
    receiver.start()
    ctx = zmq.Context()
    acks = ctx.socket(zmq.ROUTER)
    acks.bind(f"tcp://127.0.0.1:{ports[0]}")
    out = ctx.socket(zmq.DEALER)
    out.connect(f"tcp://127.0.0.1:{ports[1]}")
    data = np.random.default_rng(0).random(params, np.float32)
    rates = []
    for _ in range(repeats):
        in_flight = 0
        for i in range(n + WINDOW):
            if i == WINDOW:
                start = time.perf_counter()
            if in_flight == WINDOW:
                acks.recv_multipart()
                in_flight -= 1
            out.send(data, copy=False)
            in_flight += 1
        for _ in range(in_flight):
            acks.recv_multipart()
        rates.append(n * data.nbytes / (time.perf_counter() - start) / 1e6)
    out.send(b"done")
    receiver.join(60)
    ctx.destroy(linger=0)
    return rates


# -- AEAD micro-benchmark ----------------------------------------------------------------------


def aead_micro(params: int, repeats: int) -> list[tuple[str, float]]:
    """MB/s of sealing/opening `params` float32 in 1 MiB chunks, per binding style."""
    import nacl.bindings as b

    from p2pfl import crypto

    data = np.random.default_rng(0).random(params, np.float32)
    flat = data.view(np.uint8)
    chunks = [flat[i:i + (1 << 20)] for i in range(0, flat.size, 1 << 20)]
    key, nonce, aad = bytes(32), bytes(24), bytes(64)
    enc, dec = b.crypto_aead_xchacha20poly1305_ietf_encrypt, b.crypto_aead_xchacha20poly1305_ietf_decrypt
    sealed = [enc(bytes(c), aad, nonce, key) for c in chunks]

    def seal_bindings():
        return [enc(bytes(c), aad, nonce, key) for c in chunks]  # bytes(memoryview): a copy in

    def seal_cffi():
        return [crypto.seal(key, nonce, c, aad) for c in chunks]

    def open_bindings():
        out, pos = np.empty(flat.size, np.uint8), 0
        for s in sealed:
            plain = dec(s, aad, nonce, key)
            out[pos:pos + len(plain)] = np.frombuffer(plain, np.uint8)  # into the tensor: a copy out
            pos += len(plain)
        return out

    def open_cffi():
        out, pos = np.empty(flat.size, np.uint8), 0
        for s in sealed:
            size = len(s) - crypto.TAG_BYTES
            crypto.unseal(key, nonce, s, aad, out[pos:pos + size])
            pos += size
        return out

    def copy_only():
        return [bytes(c) for c in chunks]

    rows = []
    for name, fn in [("bytes(memoryview) copy alone", copy_only),
                     ("seal: pynacl bindings (bytes in, bytes out)", seal_bindings),
                     ("seal: cffi from/into buffers (p2pfl)", seal_cffi),
                     ("open: pynacl bindings + copy into tensor", open_bindings),
                     ("open: cffi straight into tensor (p2pfl)", open_cffi)]:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append((name, data.nbytes / statistics.median(times) / 1e6))
    return rows


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import nacl
    import zmq

    print(f"command: {' '.join(['.venv/bin/python', *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), pynacl {nacl.__version__}, numpy {np.__version__}")
    print(f"window {WINDOW} messages in flight, ~{TARGET_BYTES >> 20} MiB per run, median of {args.repeats} runs\n")
    print("| params | payload | raw pyzmq MB/s | p2pfl MB/s | ratio | p2pfl, public pynacl bindings MB/s | overhead |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for params in args.sizes:
        raw = statistics.median(run_raw(params, args.repeats))
        rates, overhead = run_p2pfl(params, args.repeats, "cffi")
        ours = statistics.median(rates)
        copying = statistics.median(run_p2pfl(params, args.repeats, "bindings")[0])
        print(f"| {params:,} | {4 * params / 1e6:.1f} MB | {raw:,.0f} | {ours:,.0f} | {ours / raw:.2f} | {copying:,.0f} | "
              f"{overhead} B = {100 * overhead / (4 * params):.3f}% |", flush=True)
    print(f"\nAEAD alone, {args.sizes[-1]:,} float32 in 1 MiB chunks, one process:\n")
    print("| operation | MB/s |")
    print("|---|---:|")
    for name, rate in aead_micro(args.sizes[-1], args.repeats):
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
