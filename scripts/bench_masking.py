#!/usr/bin/env python
"""Per-node masking throughput of secure aggregation, against the raw ChaCha20 PRG in the same run.

A node of a gossip topology is a member of one group per neighbour. For each group it encodes
W * x to fixed point and adds its self mask and one pairwise mask per co-member (what
`SecureGossipRound` does with its input, via `masking.EncodingCache`: in a regular graph every
group takes the same encoding, so it is computed once and each group masks a copy). We time all
groups of one node and report:

  model MB/s   groups * 4 * params / time   (float32 bytes masked per second, per group)
  mask MB/s    streams * 4 * params / time  (PRG bytes generated and applied per second)
  vs PRG       mask MB/s / raw PRG MB/s     (raw: libsodium's randombytes_buf_deterministic
                                            writing 256 KiB at a time into one reused buffer:
                                            the PRG alone, with no allocation, copy or arithmetic)
  OpenSSL      the keystream from OpenSSL's ChaCha20 (what masking uses, p2pfl/masking.py: one
               cipher context per stream, read 256 KiB at a time), raw, and mask MB/s against it

Goal: model MB/s >= 300 and vs PRG >= 0.5 (the issue's baseline: libsodium). Usage:

    .venv/bin/python scripts/bench_masking.py [--params 1000000 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from nacl._sodium import ffi, lib

from p2pfl.fixedpoint import FixedPoint
from p2pfl.masking import CHUNK_WORDS, EncodingCache, mask_vector, stream_seed

TOPOLOGIES = {
    # name: (groups the node is in, members per group) for a regular graph of that degree
    "ring (degree 2)": (2, 2),
    "degree 4": (4, 4),
}


def best_of(repeats: int, fn) -> float:
    fn()  # warm-up: page faults, caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def raw_prg_seconds(params: int, streams: int, repeats: int, openssl: bool = False) -> float:
    """The keystreams alone, chunk by chunk into one reused buffer: libsodium's or OpenSSL's."""
    seed = stream_seed(os.urandom(32), 1, 2)
    n_chunks = -(-params // CHUNK_WORDS)
    sizes = [4 * min(CHUNK_WORDS, params - c * CHUNK_WORDS) for c in range(n_chunks)]

    buf = np.empty(4 * min(CHUNK_WORDS, params), np.uint8)
    out = ffi.from_buffer(buf, require_writable=True)
    zeros, view, nonce = memoryview(bytes(buf.nbytes)), memoryview(buf), b"\0\0\0\0LibsodiumDRG"

    def sodium() -> None:
        for _ in range(streams):
            for size in sizes:  # libsodium's call has no offset: each piece restarts the stream
                lib.randombytes_buf_deterministic(out, size, seed)

    def ossl() -> None:
        for _ in range(streams):
            stream = Cipher(algorithms.ChaCha20(seed, nonce), None).encryptor()
            for size in sizes:
                stream.update_into(zeros[:size], view[:size])

    return best_of(repeats, ossl if openssl else sodium)


def node_masking_seconds(x: np.ndarray, groups: int, members: int, repeats: int) -> float:
    enc = FixedPoint(16.0, 1.0, members)
    weight = 1.0 / (1 + members)
    masks = [[(os.urandom(32), 1)] + [(os.urandom(32), 1 if k % 2 else -1) for k in range(members - 1)] for _ in range(groups)]

    def run() -> None:
        cache = EncodingCache(x)  # fresh every round, as the node's
        for g in range(groups):
            cache.masked(enc, weight, masks[g], 1, g)

    return best_of(repeats, run)


def aggregator_seconds(params: int, members: int, repeats: int) -> float:
    """Unmasking at the aggregator: sum `members` inputs and remove their self masks."""
    inputs = [np.random.default_rng(i).integers(0, 2**32, params, dtype=np.uint32) for i in range(members)]
    keys = [(os.urandom(32), -1) for _ in range(members)]
    total = np.empty(params, np.uint32)

    def run() -> None:
        total[:] = 0
        for v in inputs:
            np.add(total, v, out=total)
        mask_vector(total, keys, 1, 0)

    return best_of(repeats, run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, chunk {CHUNK_WORDS} words")
    print("| params | node in | groups x streams | node time (ms) | model MB/s | mask MB/s | raw PRG MB/s | vs PRG "
          "| raw OpenSSL MB/s | vs OpenSSL |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for params in args.params:
        x = (np.random.default_rng(0).standard_normal(params) * 0.5).astype(np.float32)
        mb = 4 * params / 1e6
        for name, (groups, members) in TOPOLOGIES.items():
            streams = groups * members  # per group: self mask + (members - 1) pairwise masks
            t_node = node_masking_seconds(x, groups, members, args.repeats)
            t_prg = raw_prg_seconds(params, streams, args.repeats)
            ossl_rate = streams * mb / raw_prg_seconds(params, streams, args.repeats, openssl=True)
            prg_rate = streams * mb / t_prg
            mask_rate = streams * mb / t_node
            print(
                f"| {params:,} | {name} | {groups} x {members} | {1e3 * t_node:.1f} | {groups * mb / t_node:.0f} "
                f"| {mask_rate:.0f} | {prg_rate:.0f} | {mask_rate / prg_rate:.2f} | {ossl_rate:.0f} | {mask_rate / ossl_rate:.2f} |"
            )
    print()
    print("| params | aggregator of | unmask time (ms) | MB/s per input |")
    print("|---:|---|---:|---:|")
    for params in args.params:
        for name, (_, members) in TOPOLOGIES.items():
            t = aggregator_seconds(params, members, args.repeats)
            print(f"| {params:,} | {name}: {members} inputs | {1e3 * t:.1f} | {members * 4 * params / 1e6 / t:.0f} |")


if __name__ == "__main__":
    main()
