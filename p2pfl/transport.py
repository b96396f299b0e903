"""The transport seam: what a node needs from whatever carries its messages, and how one is made.

Owns the interface every transport implements (`MessageTransport`), the peer table's entry
(`Peer`), the traffic counters (`TransportStats`), and the registry that picks an
implementation by the scheme of the node's own address (`create`):

| scheme | implementation | between |
|---|---|---|
| `tcp://host:port` | `transports.zeromq.ZmqTransport` | machines (and processes on one host) |
| `ipc:///path` | `transports.zeromq.ZmqTransport` | processes on one host (a Unix socket) |
| `inproc://name` | `transports.zeromq.ZmqTransport` | nodes of one process sharing one zmq.Context |
| `mem://name` | `transports.memory.MemoryTransport` | nodes of one process on one `MemoryNetwork`; no sockets |

Every implementation sends and receives through a `channel.Channels` (sessions, AEAD, replay
counters, drop accounting), so they all put the same bytes on their links and deliver only
authenticated, fresh messages. This module does not touch sockets, keys or the byte layout.

`Transport` (the name of the ZeroMQ transport before the seam existed) still names it, for the
code and tests that build one directly or wrap its methods.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from p2pfl import wire
from p2pfl.messages import Message


@dataclass(frozen=True)
class Peer:
    """Where a node listens ("tcp://host:port", "ipc:///path", "inproc://name", "mem://name") and
    its long-term X25519 public key."""

    address: str
    public_key: bytes


@dataclass
class TransportStats:
    """Traffic counters; bytes count every frame of every message sent or received (dropped ones too)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    handshake_messages: int = 0  # session handshake steps sent and received (their bytes are in the totals)
    sessions_accepted: int = 0  # sessions neighbours' processes agreed with us and we accepted


class MessageTransport(Protocol):
    """One node's transport (docs/architecture.md, *Transport*): used from one thread only."""

    node_id: int
    cipher: str

    def start(self) -> None:
        """Listen at the node's own address, connect to every neighbour, begin the handshakes."""
        ...

    def send(self, to: int, msg: Message) -> bool:
        """Seal and queue `msg` for neighbour `to`; never blocks; False (and counted) if it could not."""
        ...

    def recv(self, timeout: float) -> Message | None:
        """The next authenticated, fresh message, or None after `timeout` s; runs the handshakes."""
        ...

    def established(self, j: int) -> bool:
        """Whether our session to neighbour `j` is agreed."""
        ...

    def count_drop(self, reason: str) -> None:
        """Count one message the node dropped itself, in the same table."""
        ...

    def drop(self, reason: str, detail: str) -> None:
        """Count and log (rate-limited) a message the node refused after delivery."""
        ...

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        ...

    def close(self, linger: float = 0.0) -> None:
        """Stop; queued sends get up to `linger` s to leave; the sessions are forgotten. Idempotent."""
        ...


Factory = Callable[..., MessageTransport]  # (node_id, private_key, peers, neighbours, limits, context, **options)

# Built-in implementations, imported on first use (module, class): their modules import this one.
_BUILTIN: dict[str, tuple[str, str]] = {
    "tcp": ("p2pfl.transports.zeromq", "ZmqTransport"),
    "ipc": ("p2pfl.transports.zeromq", "ZmqTransport"),
    "inproc": ("p2pfl.transports.zeromq", "ZmqTransport"),
    "mem": ("p2pfl.transports.memory", "MemoryTransport"),
}
_registered: dict[str, Factory] = {}


def register(scheme: str, factory: Factory) -> None:
    """Serve addresses `scheme://...` with `factory` (replacing a built-in one of that scheme)."""
    _registered[scheme] = factory


def scheme_of(address: str) -> str:
    """The scheme of `address` ("tcp" of "tcp://10.0.0.1:5555"); ValueError if it has none."""
    scheme, sep, rest = address.partition("://")
    if not sep or not scheme or not rest:
        raise ValueError(f"address {address!r} is not SCHEME://WHERE")
    return scheme


def factory_for(address: str) -> Factory:
    """The implementation that serves `address`; ValueError for a scheme nobody registered."""
    scheme = scheme_of(address)
    if scheme in _registered:
        return _registered[scheme]
    if scheme not in _BUILTIN:
        raise ValueError(f"no transport for {scheme}:// addresses (known: {', '.join(sorted({*_BUILTIN, *_registered}))})")
    module, name = _BUILTIN[scheme]
    return getattr(importlib.import_module(module), name)


def create(node_id: int, private_key: bytes, peers: dict[int, Peer], neighbours: Iterable[int],
           limits: wire.Limits, context: Any = None, **options: Any) -> MessageTransport:
    """The transport of node `node_id`, chosen by the scheme of its own address.

    `context` is the implementation's shared state (a zmq.Context for ZeroMQ, a
    `MemoryNetwork` for mem://; None: the process-wide one); `options` go to the implementation
    (e.g. `cipher`). Every neighbour's address must be served by the same implementation: a
    ZeroMQ node cannot reach an in-memory one.
    """
    neighbours = list(neighbours)
    if node_id not in peers:
        raise ValueError(f"node {node_id} is not in the peer table")
    factory = factory_for(peers[node_id].address)
    for j in neighbours:
        if j in peers and factory_for(peers[j].address) is not factory:
            raise ValueError(f"node {j}'s address {peers[j].address!r} needs another transport than node "
                             f"{node_id}'s {peers[node_id].address!r}")
    return factory(node_id, private_key, peers, neighbours, limits, context, **options)


def __getattr__(name: str) -> Any:
    """The names this module had when it was the ZeroMQ transport (imported lazily: no cycle)."""
    if name in ("Transport", "QUEUE_DEPTH"):
        zeromq = importlib.import_module("p2pfl.transports.zeromq")
        return zeromq.ZmqTransport if name == "Transport" else zeromq.QUEUE_DEPTH
    if name == "KEY_CONTEXT":
        return importlib.import_module("p2pfl.channel").KEY_CONTEXT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
