"""p2pfl: peer-to-peer decentralized learning over encrypted ZeroMQ gossip.

Data flows one way: cli -> config -> node -> (training, aggregation) -> transport -> wire.
"""

__version__ = "0.1.0"
