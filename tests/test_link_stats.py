"""Per-link traffic counters (`TransportStats.links`, the dashboard's edge widths and drop marks):
measured where the totals are, so they add up to them, and a drop lands on the link it came from.

Real channels and crypto over the in-memory transport; the attacker holds node 0's key on a bare
connection (as tests/test_transport_memory.py) and sends frames that must be refused."""

from __future__ import annotations

from test_transport import WAIT, assert_same, model_msg
from test_transport_memory import Attacker, MemCluster, handshake


def totals_match(stats) -> None:  # noqa: ANN001
    assert sum(v[0] for v in stats.links.values()) == stats.bytes_sent
    assert sum(v[1] for v in stats.links.values()) == stats.bytes_received


def test_links_add_up_to_the_totals_and_name_each_neighbour() -> None:
    c = MemCluster(3)
    try:
        a, b, d = c.transport(0, neighbours=[1]), c.transport(1, neighbours=[0, 2]), c.transport(2, neighbours=[1])
        handshake(a, b, d)
        big, small = model_msg(0, seed=1), model_msg(2, seed=2)
        assert a.send(1, big) and a.send(1, big) and d.send(1, small)
        for _ in range(3):
            assert b.recv(WAIT) is not None
        sa, sb, sd = a.stats, b.stats, d.stats
        for stats in (sa, sb, sd):
            totals_match(stats)
        assert sb.links[0][1] == sa.links[1][0] > 2 * big.payload_bytes()  # what 0 sent 1 is what 1 got from 0
        assert sb.links[2][1] == sd.links[1][0]
        assert sb.links[0][2] == sb.links[2][2] == 0
        assert set(sb.links) == {0, 2}
    finally:
        c.close()


def test_a_refused_frame_counts_on_the_link_it_names_and_forged_strangers_on_none() -> None:
    c = MemCluster(3)
    try:
        b = c.transport(1, neighbours=[0, 2])
        attacker = Attacker(c, b)  # plays node 0
        replayed = attacker.seal(model_msg(0, seed=3))
        attacker.send(replayed)
        assert b.recv(WAIT) is not None
        tampered = attacker.seal(model_msg(0, seed=4))
        tampered[2] = tampered[2][:100] + bytes([tampered[2][100] ^ 1]) + tampered[2][101:]
        stranger = attacker.seal(model_msg(7, seed=5))  # an id that is nobody's: no link to charge
        good = model_msg(0, seed=6)
        for frames in (replayed, tampered, stranger, attacker.seal(good)):
            attacker.send(frames)
        assert_same(b.recv(WAIT), good)
        stats = b.stats
        assert stats.dropped == {"replay": 1, "tampered": 1, "unknown_peer": 1}
        assert stats.links[0][2] == 2 and stats.links.get(2, [0, 0, 0])[2] == 0
        assert 7 not in stats.links
        # a message the node itself refused (a stale round, say) counts on its sender's link
        b.drop("stale_round", "round 3 during round 5", sender=2)
        b.drop("stale_round", "from an id that is not a neighbour", sender=9)
        stats = b.stats
        assert stats.links[2][2] == 1 and 9 not in stats.links
        assert stats.dropped["stale_round"] == 2
    finally:
        c.close()
