#!/usr/bin/env python
"""Transport throughput: p2pfl's full path against raw pyzmq, between two processes over TCP loopback.

For each model size, the sender (this process) streams float32 models to a receiver process and
the receiver answers each one with a small ack; at most WINDOW messages are in flight, as when a
node sends its model to its neighbours. Both paths use the same socket types and layout:

- p2pfl: `Transport.send` (encode + encrypt + send) -> `Transport.recv` (receive + authenticate +
  decrypt + decode into a numpy array); the ack is a HEARTBEAT back through the transports.
  Once per cipher: AES-256-GCM (the default where the CPU has it) and XChaCha20-Poly1305 (the
  portable fallback), both ends forced to it; and AES-256-GCM once more through pynacl's public
  bindings (the copying fallback used when `nacl._sodium` is missing).
- raw:   the same bytes as one frame, DEALER -> ROUTER, `copy=False`, `np.frombuffer` on arrival;
  the ack is a 1-byte frame back DEALER -> ROUTER.

MB/s = payload bytes / time from the first send to the last ack; median of --repeats runs. All
paths of one model size are set up at once and take turns run by run (raw, AES, XChaCha,
bindings, raw, ...), so load from elsewhere on the machine hits them alike.
Ratio = p2pfl MB/s / raw MB/s, both measured in the same invocation.
Overhead = (all frames of one p2pfl message - payload) / payload.
A micro table shows what each AEAD costs per byte with pynacl's public bindings (bytes in, bytes
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
    from p2pfl.transport import Peer

    return {i: Peer(f"tcp://127.0.0.1:{ports[i]}", keys[i][1]) for i in (0, 1)}


def _p2pfl_receiver(keys, ports, params, total, aead, cipher) -> None:
    from p2pfl import crypto, wire
    from p2pfl.messages import Kind, Message
    from p2pfl.transport import Transport

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
        from p2pfl.transport import Transport

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

    def _warm_up(self) -> None:
        """Untimed: wait until the receiver process is up (it is still importing at first)."""
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
        stats = self.t.stats
        return stats.bytes_sent // stats.messages_sent - self.msg.payload_bytes()

    def close(self) -> None:
        from p2pfl.messages import Kind, Message

        self.t.send(1, Message(Kind.HEARTBEAT, 0, 0))
        self.receiver.join(60)
        self.t.close()


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


class RawPath:
    """The same payload as one frame, DEALER -> ROUTER in another process, 1-byte acks back."""

    def __init__(self, params: int, repeats: int) -> None:
        import zmq

        ports = {i: free_port() for i in (0, 1)}
        self.n = messages_for(params)
        self.receiver = mp.get_context("spawn").Process(
            target=_raw_receiver, args=(ports, params, (self.n + WINDOW) * repeats + WINDOW))
        self.receiver.start()
        self.ctx = zmq.Context()
        self.acks = self.ctx.socket(zmq.ROUTER)
        self.acks.bind(f"tcp://127.0.0.1:{ports[0]}")
        self.out = self.ctx.socket(zmq.DEALER)
        self.out.connect(f"tcp://127.0.0.1:{ports[1]}")
        self.data = np.random.default_rng(0).random(params, np.float32)
        for _ in range(WINDOW):  # untimed: wait until the receiver process is up
            self.out.send(self.data, copy=False)
        for _ in range(WINDOW):
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
        self.ctx.destroy(linger=0)


def measure(params: int, repeats: int, ciphers: list[str]) -> dict[str, Any]:
    """Median MB/s of every path for one model size; the paths take turns, run by run, so a
    burst of load from elsewhere on the machine hits all of them alike."""
    paths: dict[str, Any] = {"raw": RawPath(params, repeats)}
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
        print("| params | payload | raw pyzmq MB/s | p2pfl AES-256-GCM MB/s | ratio "
              "| p2pfl XChaCha20-Poly1305 MB/s | ratio | AES-256-GCM via public pynacl bindings MB/s | overhead |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    else:
        print("| params | payload | raw pyzmq MB/s | p2pfl XChaCha20-Poly1305 MB/s | ratio "
              "| XChaCha20-Poly1305 via public pynacl bindings MB/s | overhead |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
    for params in args.sizes:
        m = measure(params, args.repeats, ciphers)
        raw, overhead = m["raw"], m["overhead"]
        cells = [f"{m[c]:,.0f} | {m[c] / raw:.2f}" for c in ciphers]
        print(f"| {params:,} | {4 * params / 1e6:.1f} MB | {raw:,.0f} | {' | '.join(cells)} | {m['bindings']:,.0f} | "
              f"{overhead} B = {100 * overhead / (4 * params):.3f}% |", flush=True)
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
