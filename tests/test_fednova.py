"""FedNova on the star, driven without sockets: the normalised average, and why it exists."""

from __future__ import annotations

import numpy as np
import pytest

from p2pfl.messages import Kind, Message
from p2pfl.protocols import DELTA, FedAvgRound, Rejected
from p2pfl.strategies.fednova import FedNovaRound

HUB, LEAVES = 0, [1, 2]


def _round(own: dict[int, np.ndarray], start: dict[int, np.ndarray], samples: dict[int, int], steps: dict[int, int],
           r: int = 1) -> dict[int, np.ndarray]:
    """One complete FedNova round of a 3-node star in memory; every node's new vector."""
    protos = {i: FedNovaRound(i, r, HUB, LEAVES, own[i], start[i], samples[i], steps[i]) for i in own}
    assert protos[HUB].start() == []
    out = []
    for leaf in LEAVES:
        for to, msg in protos[leaf].start():
            assert to == HUB and msg.meta == {"samples": samples[leaf], "steps": steps[leaf]}
            out += protos[HUB].on_message(msg)
    assert protos[HUB].finished() and sorted(to for to, _ in out) == LEAVES
    for to, msg in out:
        protos[to].on_message(msg)
    return {i: p.result() for i, p in protos.items()}


def test_uneven_local_steps_give_the_hand_computed_normalised_average() -> None:
    start = {i: np.array([1.0, -2.0, 0.5], np.float32) for i in range(3)}
    upd = {0: np.array([0.3, 0.0, -0.6]), 1: np.array([-1.0, 2.0, 0.4]), 2: np.array([0.5, 0.5, 0.5])}
    own = {i: (start[i] + upd[i]).astype(np.float32) for i in range(3)}
    n, tau = {0: 10, 1: 30, 2: 60}, {0: 1, 1: 3, 2: 12}
    got = _round(own, start, n, tau)
    # p = (0.1, 0.3, 0.6); tau_eff = 0.1 + 0.9 + 7.2 = 8.2
    direction = 0.1 * upd[0] / 1 + 0.3 * upd[1] / 3 + 0.6 * upd[2] / 12
    expected = start[0] + 8.2 * direction
    for i in range(3):
        np.testing.assert_allclose(got[i], expected, rtol=1e-6, atol=1e-6)
    fedavg = start[0] + 0.1 * upd[0] + 0.3 * upd[1] + 0.6 * upd[2]
    assert np.abs(got[0] - fedavg).max() > 0.1  # uneven steps: not FedAvg


def test_equal_local_steps_is_fedavg() -> None:
    rng = np.random.default_rng(4)
    start = {i: np.zeros(5, np.float32) for i in range(3)}
    own = {i: rng.normal(size=5).astype(np.float32) for i in range(3)}
    n = {0: 7, 1: 11, 2: 13}
    got = _round(own, start, n, {i: 4 for i in range(3)})
    avg = FedAvgRound(HUB, 1, HUB, LEAVES, own[HUB], n[HUB])
    for leaf in LEAVES:
        avg.on_message(Message(Kind.MODEL, leaf, 1, meta={"samples": n[leaf]}, tensors={DELTA: own[leaf]}))
    np.testing.assert_allclose(got[HUB], avg.result(), rtol=1e-6, atol=1e-7)


def _quadratic_run(normalised: bool, rounds: int = 1500, lr: float = 0.002) -> np.ndarray:
    """Three nodes, f_i(x) = |x - c_i|^2 / 2, tau_i local gradient steps each round (1, 4, 16).

    FedAvg converges to a point weighted by how far each node moves in a round (~ tau_i p_i);
    FedNova to the minimiser of sum_i p_i f_i (up to O(lr)), the objective actually asked for.
    """
    c = {0: np.array([4.0, 0.0]), 1: np.array([0.0, 4.0]), 2: np.array([-4.0, -4.0])}
    n, tau = {0: 1, 1: 1, 2: 1}, {0: 1, 1: 4, 2: 16}
    x = np.array([3.0, -3.0], np.float32)
    for r in range(1, rounds + 1):
        own = {}
        for i in c:
            y = x.astype(np.float64)
            for _ in range(tau[i]):
                y -= lr * (y - c[i])
            own[i] = y.astype(np.float32)
        if normalised:
            x = _round(own, {i: x for i in c}, n, tau, r)[HUB]
        else:
            hub = FedAvgRound(HUB, r, HUB, LEAVES, own[HUB], n[HUB])
            for leaf in LEAVES:
                hub.on_message(Message(Kind.MODEL, leaf, r, meta={"samples": n[leaf]}, tensors={DELTA: own[leaf]}))
            x = hub.result()
    return x


def test_fednova_converges_to_the_true_objective_where_fedavg_drifts() -> None:
    optimum = np.array([0.0, 0.0])  # the mean of the c_i: equal samples
    nova, avg = _quadratic_run(True), _quadratic_run(False)
    assert np.linalg.norm(nova - optimum) < 0.05
    assert np.linalg.norm(avg - optimum) > 1.5  # pulled towards c_2, the node with 16 steps
    assert np.linalg.norm(avg - np.array([-4.0, -4.0])) < np.linalg.norm(nova - np.array([-4.0, -4.0]))


@pytest.mark.parametrize("meta", [{"samples": 5}, {"samples": 5, "steps": 0}, {"samples": 5, "steps": True},
                                  {"samples": 0, "steps": 3}, {"samples": 5, "steps": 2.5}])
def test_hub_refuses_bad_steps_or_samples(meta: dict) -> None:
    hub = FedNovaRound(HUB, 1, HUB, LEAVES, np.zeros(3, np.float32), np.zeros(3, np.float32), 4, 2)
    with pytest.raises(Rejected) as err:
        hub.on_message(Message(Kind.MODEL, 1, 1, meta=meta, tensors={DELTA: np.ones(3, np.float32)}))
    assert err.value.reason == "bad_meta"


def test_hub_averages_whoever_arrived_and_a_leaf_keeps_its_fallback_without_an_answer() -> None:
    zero = np.zeros(2, np.float32)
    hub = FedNovaRound(HUB, 1, HUB, LEAVES, np.full(2, 1.0, np.float32), zero, 1, 2)
    hub.on_message(Message(Kind.MODEL, 1, 1, meta={"samples": 1, "steps": 1}, tensors={DELTA: np.full(2, 3.0, np.float32)}))
    out = hub.on_deadline()  # leaf 2 never came
    assert hub.finished() and sorted(to for to, _ in out) == LEAVES
    # p = (1/2, 1/2), tau_eff = 1.5, direction = 1/2 * 1/2 + 1/2 * 3/1 = 1.75
    np.testing.assert_allclose(hub.result(), np.full(2, 1.5 * 1.75))
    assert hub.arrived() == 1
    leaf = FedNovaRound(2, 1, HUB, LEAVES, np.full(2, 5.0, np.float32), zero, 1, 3, fallback=zero)
    leaf.on_deadline()
    assert not leaf.finished() and leaf.phase == 1
    leaf.on_deadline()
    assert leaf.finished() and leaf.result() is leaf.fallback and leaf.arrived() == 0


def test_a_hub_that_sits_out_gives_its_own_update_no_weight_and_a_leaf_that_sits_out_sends_nothing() -> None:
    zero = np.zeros(2, np.float32)
    hub = FedNovaRound(HUB, 1, HUB, LEAVES, np.full(2, 9.0, np.float32), zero, 0, 0, active=[1])
    assert hub.start() == []
    hub.on_message(Message(Kind.MODEL, 1, 1, meta={"samples": 3, "steps": 2}, tensors={DELTA: np.full(2, 2.0, np.float32)}))
    np.testing.assert_allclose(hub.result(), np.full(2, 2.0))  # tau_eff = 2, direction = 2 / 2
    idle = FedNovaRound(2, 1, HUB, LEAVES, zero, zero, 5, 0, active=[1])
    assert idle.start() == []
    with pytest.raises(ValueError, match="local steps"):
        FedNovaRound(1, 1, HUB, LEAVES, zero, zero, 5, 0, active=[1])
