"""Many nodes of one process, run by one event loop in one thread.

Owns the loop that drives the lives of a process's nodes (`node.Node.lifecycle`, a generator that
yields how long it may wait and is sent the next message or None) over their transports on one
`transports.hub.Hub`: it waits on the hub's sockets until a message for some node arrives or
some node's wait ends, then resumes exactly that node. A node costs a generator and its state,
not an OS thread; nothing is polled per node. It also runs the handshake retries the transports'
own receive loop would run (`HubTransport.tick`, swept every `TICK_S`), and charges each node the
CPU spent on its behalf (its `Meter`): opening its messages and running its code.

It does not know rounds, protocols, keys or the byte layout; it reports each node's end through
the callbacks it was given and keeps running the others when one fails.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from p2pfl.messages import Message
from p2pfl.node import Life, Node
from p2pfl.transports.hub import Hub, HubTransport

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often nodes whose sessions are not all agreed get their handshake retries
BUSY_TICK_S = 60.0  # ... at the latest, while frames keep arriving (see `run`)


@dataclass(eq=False)
class _Running:
    node: Node
    life: Life
    transport: HubTransport
    generation: int = 0  # bumped at every resume: a timer of an earlier wait is stale


class Host:
    """Runs the nodes `add`ed to it, all on `hub`, until every one has ended (`run`)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._running: dict[int, _Running] = {}
        self._timers: list[tuple[float, int, int, int]] = []  # (deadline, tie, node, generation)
        self._tie = itertools.count()
        self._on_done: dict[int, Callable[[Node, list], None]] = {}
        self._on_error: dict[int, Callable[[Node, BaseException], None]] = {}

    def add(self, node: Node, on_done: Callable[[Node, list], None],
            on_error: Callable[[Node, BaseException], None]) -> None:
        """Run `node` here; `on_done(node, records)` when its life ends, `on_error(node, exc)` if it raises."""
        if not isinstance(node.transport, HubTransport) or node.transport.hub is not self.hub:
            raise ValueError(f"node {node.id} is not on this host's hub")
        self._running[node.id] = _Running(node, node.lifecycle(), node.transport)
        self._on_done[node.id] = on_done
        self._on_error[node.id] = on_error

    def run(self) -> None:
        """Start every node, then serve them until all have ended."""
        for run in list(self._running.values()):
            self._resume(run, None, first=True)
        next_tick = time.monotonic() + TICK_S
        busy = False
        while self._running:
            now = time.monotonic()
            self._expire(now)
            # Handshake retries are for lost frames: while frames wait to be read, the answer may be
            # among them, and retrying (a fresh key agreement each time) only deepens the backlog of
            # a loop that thousands of starting nodes keep busy (an attempt superseded by its retry
            # is never confirmed: with a round trip longer than the backoff, none ever would be).
            # So retry when idle, or at the latest after `BUSY_TICK_S` of continuous work.
            if now >= next_tick and (not busy or now >= next_tick + BUSY_TICK_S):
                self._tick(now)
                next_tick = now + TICK_S
            if not self._running:
                break
            soonest = self._timers[0][0] if self._timers else math.inf
            self.hub.pump(max(0.0, min(soonest, next_tick) - time.monotonic()))
            ready = self.hub.ready()
            busy = bool(ready)
            for node_id in ready:
                self._serve(node_id)

    def _serve(self, node_id: int) -> None:
        """Hand node `node_id` each message its transport opens, until its frames are used up."""
        run = self._running.get(node_id)
        while run is not None and run.transport.inbox:
            run.node.meter.begin()
            try:
                _, msg = run.transport.take_one()
            except BaseException as exc:  # e.g. DuplicateIdentity: this node ends, the others go on
                run.node.meter.end()
                self._fail(run, exc)
                return
            run.node.meter.end()
            if msg is not None:
                self._resume(run, msg)
            run = self._running.get(node_id)

    def _expire(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, node_id, generation = heapq.heappop(self._timers)
            run = self._running.get(node_id)
            if run is not None and run.generation == generation:
                self._resume(run, None)

    def _tick(self, now: float) -> None:
        for run in list(self._running.values()):
            try:
                run.transport.tick(now)
            except BaseException as exc:
                self._fail(run, exc)

    def _resume(self, run: _Running, msg: Message | None, first: bool = False) -> None:
        meter = run.node.meter
        meter.begin()
        try:
            wait = next(run.life) if first else run.life.send(msg)
        except StopIteration as done:
            meter.end()
            self._end(run)
            self._on_done[run.node.id](run.node, done.value or [])
            return
        except BaseException as exc:
            meter.end()
            self._fail(run, exc)
            return
        meter.end()
        run.generation += 1
        deadline = time.monotonic() + max(0.0, wait)
        heapq.heappush(self._timers, (deadline, next(self._tie), run.node.id, run.generation))

    def _fail(self, run: _Running, exc: BaseException) -> None:
        self._end(run)
        run.life.close()  # its finally blocks run: the transport leaves the hub
        run.transport.close()
        self._on_error[run.node.id](run.node, exc)

    def _end(self, run: _Running) -> None:
        self._running.pop(run.node.id, None)
