"""A small delaying TCP relay: every byte leaves `--delay` seconds after it arrived.

This machine's kernel has no `netem` qdisc, so latency is added in user space instead. The relay
listens on one port per target and forwards each accepted connection to that target, both ways,
holding every chunk it reads until its time has come (a constant one-way delay; throughput is
not limited). Combined with DNAT rules (`Lab.redirect` in scripts/netns.py) the hosts' own
connections go through it without them knowing.

    python scripts/relay.py --delay 0.05 --map 21003=10.231.0.4:5555 --map 21005=10.231.0.6:5555 \
        --stats relay.json

`--stats` is rewritten (atomically) once a second and at exit: `ready` (all ports listen),
`connections`, `chunks`, `bytes`, `min_delay`/`mean_delay`/`max_delay` (seconds, as applied).
Only the standard library; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

CHUNK = 65536
MAX_BUFFERED = 16 * 2**20  # bytes held per direction before the relay stops reading


class Stats:
    def __init__(self, delay: float) -> None:
        self.lock = threading.Lock()
        self.delay = delay
        self.ready = False
        self.connections = 0
        self.failed_upstream = 0
        self.chunks = 0
        self.bytes = 0
        self.delay_sum = 0.0
        self.min_delay: float | None = None
        self.max_delay: float | None = None

    def chunk(self, size: int, applied: float) -> None:
        with self.lock:
            self.chunks += 1
            self.bytes += size
            self.delay_sum += applied
            self.min_delay = applied if self.min_delay is None else min(self.min_delay, applied)
            self.max_delay = applied if self.max_delay is None else max(self.max_delay, applied)

    def to_json(self) -> dict:
        with self.lock:
            return {"delay": self.delay, "ready": self.ready, "connections": self.connections,
                    "failed_upstream": self.failed_upstream, "chunks": self.chunks, "bytes": self.bytes,
                    "min_delay": self.min_delay, "max_delay": self.max_delay,
                    "mean_delay": self.delay_sum / self.chunks if self.chunks else None}

    def write(self, path: Path | None) -> None:
        if path is None:
            return
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json()) + "\n")
        tmp.replace(path)


class Pipe:
    """One direction of one connection: read as it comes, write each chunk `delay` later."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, stats: Stats, done: threading.Event) -> None:
        self.src, self.dst, self.delay, self.stats, self.done = src, dst, delay, stats, done
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.cond = threading.Condition()
        self.buffered = 0

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                data = b""
            with self.cond:
                while self.buffered > MAX_BUFFERED and not self.done.is_set():
                    self.cond.wait(0.1)
                self.queue.append((time.monotonic(), data or None))
                self.buffered += len(data)
                self.cond.notify_all()
            if not data:
                return

    def _write(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                arrived, data = self.queue.popleft()
                self.buffered -= len(data or b"")
                self.cond.notify_all()
            wait = arrived + self.delay - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if data is None:  # the source closed: pass the end on, after the data before it
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                self.dst.sendall(data)
            except OSError:
                self.done.set()
                for s in (self.src, self.dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            self.stats.chunk(len(data), time.monotonic() - arrived)


def serve(listener: socket.socket, target: tuple[str, int], delay: float, stats: Stats) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
            upstream.settimeout(None)
        except OSError:
            with stats.lock:
                stats.failed_upstream += 1
            client.close()  # the caller (ZeroMQ) reconnects by itself
            continue
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with stats.lock:
            stats.connections += 1
        done = threading.Event()
        Pipe(client, upstream, delay, stats, done).start()
        Pipe(upstream, client, delay, stats, done).start()


def parse_map(text: str) -> tuple[int, tuple[str, int]]:
    port, _, target = text.partition("=")
    host, _, tport = target.rpartition(":")
    if not port.isdigit() or not host or not tport.isdigit():
        raise argparse.ArgumentTypeError(f"--map wants LISTEN_PORT=HOST:PORT, got {text!r}")
    return int(port), (host, int(tport))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delay", type=float, required=True, help="one-way delay in seconds")
    ap.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    ap.add_argument("--map", type=parse_map, action="append", required=True, help="LISTEN_PORT=HOST:PORT")
    ap.add_argument("--stats", type=Path, help="JSON file with the counters")
    args = ap.parse_args(argv)
    stats = Stats(args.delay)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for port, target in args.map:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((args.listen, port))
        listener.listen(64)
        threading.Thread(target=serve, args=(listener, target, args.delay, stats), daemon=True).start()
    stats.ready = True
    stats.write(args.stats)
    while not stop.wait(1.0):
        stats.write(args.stats)
    stats.write(args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
