"""`p2pfl audit RUN_DIR`: attack a recorded run as a curious neighbour (or coalition) would, then score it.

The attack side (`view`, `reconstruct`, `membership`) sees only what the coalition legitimately
knows: `view.View` opens config.json, topology.json and view/ and refuses anything else. The
scoring side (`truth`, `score`) reads truth/ and the final models, and only after the attack has
produced its estimates. `tradeoff` draws attack success against accuracy for `compare --audit`.
"""
