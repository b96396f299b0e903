"""The transport seam: what a node needs from whatever carries its messages, and how one is made.

Owns the interface every transport implements (`MessageTransport`) and the registry that picks
an implementation by the scheme of the node's own address (`create`); the peer table's entry
(`Peer`) and the traffic counters (`TransportStats`) are `channel`'s, named here too for the
node:

| scheme | implementation | between |
|---|---|---|
| `tcp://host:port` | `transports.zeromq.ZmqTransport` | machines (and processes on one host) |
| `ipc:///path` | `transports.zeromq.ZmqTransport` | processes on one host (a Unix socket) |
| `inproc://name` | `transports.zeromq.ZmqTransport` | nodes of one process sharing one zmq.Context |
| `mem://name` | `transports.memory.MemoryTransport` | nodes of one process on one `MemoryNetwork`; no sockets |
| `hub+tcp://host:port`, `hub+ipc:///path` | `transports.hub.HubTransport` | many nodes of one process behind one endpoint (a `Hub`), to other hubs |

Every implementation sends and receives through a `channel.Channels` (sessions, AEAD, replay
counters, drop accounting), so they all put the same bytes on their links and deliver only
authenticated, fresh messages. This module does not touch sockets, keys or the byte layout.

Imports run one way: this module imports the implementations (`transports.*`), which import
`channel`; neither imports this one. Code that builds one implementation directly imports it
from its module (`transports.zeromq.ZmqTransport`, `transports.memory.MemoryTransport`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

from p2pfl import wire
from p2pfl.channel import Peer, TransportStats
from p2pfl.messages import Message
from p2pfl.transports.hub import HubTransport
from p2pfl.transports.memory import MemoryTransport
from p2pfl.transports.zeromq import ZmqTransport

__all__ = ["Factory", "MessageTransport", "Peer", "TransportStats", "create", "factory_for", "register", "scheme_of"]


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

    def restarted(self) -> set[int]:
        """Neighbours whose earlier process a new one replaced since the last call (each told once):
        nothing more comes from the old process, which held its part of the current round."""
        ...

    def discard_queued(self, j: int) -> None:
        """Throw away what waits to be sent to neighbour `j` (the node marked it down: by the time its
        link is back that is old). A transport that queues nothing for an unreachable peer does nothing."""
        ...

    def count_drop(self, reason: str) -> None:
        """Count one message the node dropped itself, in the same table."""
        ...

    def drop(self, reason: str, detail: str, sender: int | None = None) -> None:
        """Count and log (rate-limited) a message the node refused after delivery (on `sender`'s link too)."""
        ...

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters."""
        ...

    def close(self, linger: float = 0.0) -> None:
        """Stop; queued sends get up to `linger` s to leave; the sessions are forgotten. Idempotent."""
        ...


Factory = Callable[..., MessageTransport]  # (node_id, private_key, peers, neighbours, limits, context, **options)

_BUILTIN: dict[str, Factory] = {
    "tcp": ZmqTransport,
    "ipc": ZmqTransport,
    "inproc": ZmqTransport,
    "mem": MemoryTransport,
    "hub+tcp": HubTransport,
    "hub+ipc": HubTransport,
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
    return _BUILTIN[scheme]


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

