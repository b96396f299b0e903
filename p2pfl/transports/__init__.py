"""Implementations of `p2pfl.transport.MessageTransport`: `zeromq` (tcp://, ipc://, inproc://)
and `memory` (mem://, nodes of one process, no sockets). `p2pfl.transport.create` picks one by
the scheme of the node's address; each uses a `p2pfl.channel.Channels` for everything secure."""
