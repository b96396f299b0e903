"""Implementations of `p2pfl.transport.MessageTransport`, one module each: `zeromq` (tcp://,
ipc://, inproc://) and `memory` (mem://, nodes of one process, no sockets).

Owns: how frames travel for one kind of address (sockets or queues, connecting, waiting, the
`channel.Links` a transport gives its channels) and what a transport does at start and close.
Each implementation subclasses `channel.ChannelTransport`, which hands everything secure to a
`channel.Channels` (sessions, sealing and opening, replay, drop accounting) and runs the receive
loop; an implementation provides only what differs (`start`, `close`, `_started`, `_take`, the
links).

Must not touch: keys, sessions or the handshake (`crypto`, `session`, `channel`), the byte layout
(`wire`), training and rounds (`node`, `protocols`), nor `p2pfl.transport`: the seam imports the
implementations for its registry (`transport.create` picks one by the scheme of the node's
address), so they import `channel`, never the seam.
"""
