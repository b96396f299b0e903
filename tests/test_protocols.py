"""The plain round protocols, driven without sockets."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.messages import Kind, Message
from p2pfl.protocols import DELTA, FedAvgRound, GossipRound, Rejected, mix


def _vec(value: float, n: int = 5) -> np.ndarray:
    return np.full(n, value, dtype=np.float32)


def test_gossip_round_mixes_with_weights_and_sends_to_every_neighbour() -> None:
    proto = GossipRound(0, 3, {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}, _vec(3.0))
    out = proto.start()
    assert sorted(to for to, _ in out) == [1, 2]
    assert all(m.kind == Kind.MODEL and m.round == 3 for _, m in out)
    proto.on_message(Message(Kind.MODEL, 1, 3, tensors={DELTA: _vec(0.0)}))
    assert not proto.finished()
    proto.on_message(Message(Kind.MODEL, 2, 3, tensors={DELTA: _vec(6.0)}))
    assert proto.finished()
    np.testing.assert_allclose(proto.result(), _vec(3.0), rtol=1e-6)
    assert proto.arrived() == 2


def test_gossip_missing_neighbour_weight_stays_home() -> None:
    proto = GossipRound(0, 1, {0: 0.5, 1: 0.25, 2: 0.25}, _vec(4.0))
    proto.start()
    proto.on_message(Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(0.0)}))
    proto.on_deadline()
    assert proto.finished()
    # 0.75 * 4 (own weight plus the absent neighbour's) + 0.25 * 0
    np.testing.assert_allclose(proto.result(), _vec(3.0), rtol=1e-6)


def test_gossip_stops_waiting_for_a_neighbour_that_moved_on_without_a_deadline() -> None:
    """Neighbour 2 skipped this round (it caught up after a heal): the round ends once 1 is in,
    and 2's weight stays home as for a missing neighbour."""
    proto = GossipRound(0, 1, {0: 0.5, 1: 0.25, 2: 0.25}, _vec(4.0))
    proto.start()
    proto.on_message(Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(0.0)}))
    assert not proto.finished()
    assert proto.peer_moved_on(2, 2) == []
    assert proto.finished() and proto.arrived() == 1
    np.testing.assert_allclose(proto.result(), _vec(3.0), rtol=1e-6)


def test_gossip_waits_for_a_neighbour_heard_again_but_not_once_it_moved_on() -> None:
    """2 was down as the round began; heard again (a heal), the round waits for its model, unless
    it turns out to be past this round already (then its weight stays home)."""
    proto = GossipRound(0, 1, {0: 0.5, 1: 0.25, 2: 0.25}, _vec(4.0), expected={1})
    proto.start()
    proto.peer_back(2)
    assert proto.rejoin_round() == 1  # it takes part in this very round
    proto.on_message(Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(0.0)}))
    assert not proto.finished()
    proto.on_message(Message(Kind.MODEL, 2, 1, tensors={DELTA: _vec(0.0)}))
    assert proto.finished() and proto.arrived() == 2
    other = GossipRound(0, 1, {0: 0.5, 1: 0.25, 2: 0.25}, _vec(4.0), expected={1})
    other.peer_back(2)
    other.on_message(Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(0.0)}))
    other.peer_moved_on(2, 2)
    assert other.finished() and other.arrived() == 1


@pytest.mark.parametrize(
    "msg, reason",
    [
        (Message(Kind.MODEL, 7, 1, tensors={DELTA: _vec(1.0)}), "not_neighbour"),
        (Message(Kind.GLOBAL, 1, 1, tensors={DELTA: _vec(1.0)}), "unexpected_kind"),
        (Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(1.0, 4)}), "wrong_shape"),
        (Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(1.0).astype(np.float64)}), "wrong_shape"),
        (Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(np.nan)}), "non_finite"),
        (Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(np.inf)}), "non_finite"),
        (Message(Kind.MODEL, 1, 1, tensors={}), "missing_tensor"),
    ],
)
def test_gossip_rejects_bad_messages_without_changing_the_result(msg: Message, reason: str) -> None:
    proto = GossipRound(0, 1, {0: 0.5, 1: 0.5}, _vec(2.0))
    with pytest.raises(Rejected) as err:
        proto.on_message(msg)
    assert err.value.reason == reason
    proto.on_deadline()
    np.testing.assert_array_equal(proto.result(), _vec(2.0))


def test_gossip_rejects_a_duplicate() -> None:
    proto = GossipRound(0, 1, {0: 0.5, 1: 0.5}, _vec(2.0))
    proto.on_message(Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(0.0)}))
    with pytest.raises(Rejected, match="duplicate"):
        proto.on_message(Message(Kind.MODEL, 1, 1, tensors={DELTA: _vec(9.0)}))
    np.testing.assert_allclose(proto.result(), _vec(1.0))


def test_mix_is_a_convex_combination() -> None:
    rng = np.random.default_rng(0)
    own = rng.normal(size=50).astype(np.float32)
    others = {j: (0.2, rng.normal(size=50).astype(np.float32)) for j in range(1, 4)}
    expected = 0.4 * own + sum(0.2 * v for _, v in others.values())
    np.testing.assert_allclose(mix(own, others), expected, rtol=1e-5, atol=1e-6)


def _fedavg_network(samples: list[int], vectors: list[np.ndarray], absent: set[int] = frozenset()) -> list[FedAvgRound]:
    nodes = [FedAvgRound(i, 1, 0, list(range(len(samples))), vectors[i], samples[i]) for i in range(len(samples))]
    inbox: list[tuple[int, Message]] = []
    for node in nodes:
        if node.node_id not in absent:
            inbox += node.start()
    while inbox:
        to, msg = inbox.pop(0)
        if to not in absent:
            inbox += nodes[to].on_message(msg)
    for node in nodes:
        while not node.finished():
            inbox += node.on_deadline()
        while inbox:
            to, msg = inbox.pop(0)
            if to not in absent:
                nodes[to].on_message(msg)
    return nodes


def test_fedavg_hub_weights_by_samples_and_everyone_ends_identical() -> None:
    samples = [10, 30, 60]
    vectors = [_vec(1.0), _vec(2.0), _vec(4.0)]
    nodes = _fedavg_network(samples, vectors)
    expected = (10 * 1 + 30 * 2 + 60 * 4) / 100
    for node in nodes:
        np.testing.assert_allclose(node.result(), _vec(expected), rtol=1e-6)


def test_fedavg_leaf_that_missed_the_round_keeps_its_model_and_hub_averages_the_rest() -> None:
    samples = [10, 10, 10]
    vectors = [_vec(0.0), _vec(3.0), _vec(9.0)]
    nodes = _fedavg_network(samples, vectors, absent={2})
    np.testing.assert_allclose(nodes[0].result(), _vec(1.5))
    np.testing.assert_allclose(nodes[1].result(), _vec(1.5))
    assert nodes[0].arrived() == 1


def test_fedavg_hub_rejects_bad_sample_count() -> None:
    hub = FedAvgRound(0, 1, 0, [0, 1], _vec(1.0), 10)
    with pytest.raises(Rejected, match="bad_meta"):
        hub.on_message(Message(Kind.MODEL, 1, 1, meta={"samples": -3}, tensors={DELTA: _vec(1.0)}))
